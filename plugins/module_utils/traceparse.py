# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming parsers for ftrace text output (pure functions, stdlib only).

Two families:

- ``function_graph`` output (the seed's two recipes): ``FunctionGraphParser``
  turns lines into calls ``{cpu, duration_us, depth, function, ...}`` and keeps
  the slow chains (outermost first) and the "syscall then exit work" pairs.
- event output of ``syscalls:sys_enter_X``/``sys_exit_X`` and
  ``sched:sched_switch`` with a ``stacktrace`` trigger: ``EventParser``
  pairs enter/exit per task (latency per syscall) and switch-out/switch-in
  per task (off-CPU time grouped by kernel stack).

Both are fed line by line (``feed``/``feed_lines``) and keep memory bounded:
per syscall a log-bucket histogram and a top-N heap, per stack one
aggregate, per task one pending item. ``result()`` may be called at any time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import heapq
import math
import re

# ---------------------------------------------------------------------------
# common helpers


class LatencyStats:
    """Count, max and approximate percentiles in flat memory.

    Values go into logarithmic buckets 0.5% wide (so p50/p99 are within 0.5%
    of the exact value); min and max are exact.
    """

    _LOG_BASE = math.log(1.005)

    def __init__(self, top=10):
        self.count = 0
        self.total = 0.0
        self.min = None
        self.max = None
        self.buckets = {}
        self.top = top
        self._heap = []  # (value, seq, item): the slowest ``top`` items
        self._seq = 0

    def add(self, value, item=None):
        self.count += 1
        self.total += value
        if self.max is None or value > self.max:
            self.max = value
        if self.min is None or value < self.min:
            self.min = value
        key = int(math.log(value) / self._LOG_BASE) if value > 0.01 else -1000
        self.buckets[key] = self.buckets.get(key, 0) + 1
        if self.top and item is not None:
            self._seq += 1
            if len(self._heap) < self.top:
                heapq.heappush(self._heap, (value, self._seq, item))
            elif value > self._heap[0][0]:
                heapq.heapreplace(self._heap, (value, self._seq, item))

    def percentile(self, fraction):
        if not self.count:
            return None
        rank = max(1, int(math.ceil(fraction * self.count)))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                if key == -1000:
                    value = 0.0
                else:
                    value = math.exp((key + 0.5) * self._LOG_BASE)
                return min(max(value, self.min), self.max)
        return self.max

    def slowest(self):
        return [item for _value, _seq, item in sorted(self._heap, key=lambda e: (-e[0], e[1]))]


def _round(value, digits=1):
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------
# function_graph

_DURATION_MARKS = '+!#*@$'
_SYSCALL_FN = re.compile(r'^(?:SyS_|sys_|__x64_sys_|__ia32_sys_|__arm64_sys_|__se_sys_|__do_sys_|ksys_|__sys_)'
                         r'(?P<name>\w+)$')
_EXIT_WORK_FN = re.compile(r'(?:exit_work|exit_to_user_mode|syscall_exit)')
# kernels >= 6.9 dispatch through a table function: do_syscall_64 -> x64_sys_call -> __x64_sys_accept4
SYSCALL_DISPATCHERS = frozenset(('x64_sys_call', 'ia32_sys_call', 'x32_sys_call', 'invoke_syscall',
                                 '__invoke_syscall'))


def syscall_from_function(function):
    """``SyS_accept4``/``__x64_sys_accept4``/... -> ``accept4``; else None."""
    match = _SYSCALL_FN.match(function or '')
    return match.group('name') if match else None


def _fg_fields(line):
    """Split one function_graph line: (cpu, ts, proc, duration, kind, function, indent) or None.

    kind: 'entry', 'leaf', 'exit', 'switch' (then function is "prev => next"). Split on '|'
    rather than a regex: the columns are ``[abstime |] cpu) [proc |] [mark] [duration us] | text``.
    """
    parts = line.split('|')
    n = len(parts)
    if n < 2:
        arrow = line.find('=>')
        if arrow > 0 and ')' in line[:arrow] and not line.lstrip().startswith('#'):
            close = line.find(')')
            try:
                cpu = int(line[:close].rsplit(None, 1)[-1])
            except (ValueError, IndexError):
                return None
            return (cpu, None, None, None, 'switch',
                    '%s => %s' % (line[close + 1:arrow].strip(), line[arrow + 2:].strip()), 0)
        return None
    first = parts[0]
    close = first.find(')')
    ts = None
    c = 0
    if close < 0:
        if n < 3 or first.lstrip()[:1] == '#':
            return None
        try:
            ts = float(first)
        except ValueError:
            return None
        c = 1
        first = parts[1]
        close = first.find(')')
        if close < 0:
            return None
    try:
        cpu = int(first[:close])
    except ValueError:
        return None
    rest = first[close + 1:].strip()
    proc = None
    if n == c + 3:
        proc = rest or None
        rest = parts[c + 1].strip()
    elif n != c + 2:
        return None
    duration = None
    if rest:
        if rest[0] in _DURATION_MARKS or rest[0] == '-':
            rest = rest[1:].lstrip()
        if rest.endswith('us'):
            rest = rest[:-2]
        try:
            duration = float(rest)
        except ValueError:
            return None
    raw = parts[-1]
    text = raw.lstrip(' ')
    indent = len(raw) - len(text)
    text = text.rstrip()
    if not text:
        return None
    last = text[-1]
    if text[0] == '}':
        function = None
        open_c = text.find('/*')
        if open_c > 0:
            close_c = text.find('*/', open_c)
            function = text[open_c + 2:close_c if close_c > 0 else None].strip() or None
        kind = 'exit'
    elif last == '{':
        kind = 'entry'
        function = text[:-1].strip()
        if function.endswith('()'):
            function = function[:-2]
    elif last == ';':
        kind = 'leaf'
        function = text[:-1].strip()
        if function.endswith('()'):
            function = function[:-2]
    else:
        return None  # comments (trace_printk, "/* event */"), irq markers: not calls
    return (cpu, ts, proc, duration, kind, function, indent)


def parse_function_graph_line(line):
    """One function_graph line as a dict, or None for headers and noise.

    kinds: ``entry`` (``func() {``), ``leaf`` (``func();``), ``exit``
    (``}`` or ``} /* func */``), ``switch`` (``=>`` context switch marker).
    Handles ``funcgraph-abstime``, ``funcgraph-proc``, the duration markers
    ``+ ! # * @ $``, ``} /* name */`` closing comments and CPU switch lines.
    """
    if not line:
        return None
    fields = _fg_fields(line)
    if fields is None:
        return None
    cpu, ts, proc, duration, kind, function, indent = fields
    if kind == 'switch':
        prev, _sep, nxt = function.partition(' => ')
        return {'kind': 'switch', 'cpu': cpu, 'prev': prev, 'next': nxt}
    return {'cpu': cpu, 'depth': max(0, (indent - 1) // 2), 'duration_us': duration, 'ts_s': ts,
            'proc': proc, 'kind': kind, 'function': function}


class _Agg:
    """What a parent needs to know about its finished children at one depth."""
    __slots__ = ('best_dur', 'best_chain', 'syscall', 'exit_work', 'last_syscall')

    def __init__(self):
        self.best_dur = -1.0
        self.best_chain = None
        self.syscall = None      # (function, duration)  last syscall-like child
        self.exit_work = None    # (function, duration)  slowest exit-work child
        self.last_syscall = None


class FunctionGraphParser:
    """Streaming function_graph parser.

    Keeps, per CPU, the open entries and one aggregate per depth of finished
    children, so memory depends on the call depth, not on the trace length.
    Results: the ``top`` slowest top-level calls with their chain to the
    slowest leaf (outermost first), and for each top-level call with a
    syscall child and an exit-work child (the depth-2 recipe) the pair
    ``{syscall, syscall_us, exit_work, exit_work_us}`` (slowest ``top`` by
    exit work, plus per-syscall stats of the exit work).
    """

    def __init__(self, top=10, min_duration_us=0.0):
        self.top = top
        self.min_duration_us = min_duration_us
        self.lines = 0
        self.calls = 0
        self._open = {}      # key -> [(depth, function, ts)]
        self._pending = {}   # key -> {depth: _Agg}
        self._slow = LatencyStats(top=top)
        self._exits = LatencyStats(top=top)
        self._exit_by_syscall = {}
        self._class_cache = {}
        self._last_root_syscall = {}

    def feed(self, line):
        """Feed one line; returns the finished call as a dict
        ``{cpu, duration_us, depth, function, ts_s, proc}`` or None."""
        call = self._feed(line)
        if call is None:
            return None
        cpu, duration, depth, function, ts, proc = call
        return {'cpu': cpu, 'duration_us': duration, 'depth': depth, 'function': function,
                'ts_s': ts, 'proc': proc}

    def feed_lines(self, lines):
        feed = self._feed
        for line in lines:
            feed(line)
        return self

    def _feed(self, line):
        self.lines += 1
        fields = _fg_fields(line) if line else None
        if fields is None:
            return None
        cpu, ts, proc, duration, kind, function, indent = fields
        if kind == 'switch':
            return None
        # per task when the trace names it (funcgraph-proc: a call may close on another CPU), else per CPU
        key = proc or cpu
        stack = self._open.get(key)
        if stack is None:
            stack = self._open[key] = []
        depth = (indent - 1) // 2 if indent > 1 else 0
        if kind == 'entry':
            # an entry at depth d closes nothing, but drops stale deeper entries
            while stack and stack[-1][0] >= depth:
                stack.pop()
            stack.append((depth, function, ts))
            return None
        if kind == 'exit':
            while stack and stack[-1][0] > depth:
                stack.pop()
            if stack and stack[-1][0] == depth:
                opened = stack.pop()[1]
                function = function or opened
        if duration is None:
            return None
        call = (cpu, duration, depth, function or '?', ts, proc)
        self._finish(key, call)
        return call

    def _classify(self, function):
        """1: a syscall function (SyS_x, __x64_sys_x, ...), 2: exit work, 3: dispatcher, 0: other (cached)."""
        try:
            return self._class_cache[function]
        except KeyError:
            if function in SYSCALL_DISPATCHERS:
                kind = 3
            elif syscall_from_function(function):
                kind = 1
            elif _EXIT_WORK_FN.search(function):
                kind = 2
            else:
                kind = 0
            if len(self._class_cache) < 8192:
                self._class_cache[function] = kind
            return kind

    def _finish(self, key, call):
        self.calls += 1
        duration = call[1]
        depth = call[2]
        name = call[3]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = {}
        # children: the finished calls at the nearest deeper level
        child = None
        if pending:
            deeper = [d for d in pending if d > depth]
            if deeper:
                deeper.sort()
                child = pending.pop(deeper[0])
                for d in deeper[1:]:
                    del pending[d]
        if depth == 0:
            chain = [name] + child.best_chain if child is not None and child.best_chain else [name]
            if child is not None and child.syscall and child.exit_work:
                self._top_level(call, child)
            else:
                self._root_pair(key, call, child)
            self._record_root(call, chain)
            return
        agg = pending.get(depth)
        if agg is None:
            agg = pending[depth] = _Agg()
        if duration > agg.best_dur:
            agg.best_dur = duration
            agg.best_chain = [name] + child.best_chain if child is not None and child.best_chain else [name]
        kind = self._classify(name)
        if kind == 1:
            agg.syscall = (name, duration)
            agg.exit_work = None
        elif kind == 3:
            # the dispatcher stands for the syscall it called (seen one level deeper)
            inner = child.syscall[0] if child is not None and child.syscall else name
            agg.syscall = (inner, duration)
            agg.exit_work = None
        elif kind == 2 and agg.syscall is not None:
            if agg.exit_work is None or duration > agg.exit_work[1]:
                agg.exit_work = (name, duration)

    def _root_pair(self, key, call, child):
        """Roots that are the syscall and the exit work themselves (set_graph_function
        __x64_sys_accept4 syscall_exit_work): pair a syscall root with the next exit-work root
        of the same task (or CPU)."""
        name = call[3]
        kind = self._classify(name)
        if kind in (1, 3):
            inner = child.syscall[0] if kind == 3 and child is not None and child.syscall else name
            self._last_root_syscall[key] = (inner, call[1])
        elif kind == 2:
            last = self._last_root_syscall.pop(key, None)
            if last is not None:
                pair = _Agg()
                pair.syscall = last
                pair.exit_work = (name, call[1])
                self._top_level(call, pair)

    def _record_root(self, call, chain):
        cpu, duration, _depth, _name, ts, proc = call
        if duration >= self.min_duration_us:
            item = {'cpu': cpu, 'duration_us': duration, 'chain': chain}
            if ts is not None:
                item['ts_s'] = ts
            if proc:
                item['proc'] = proc
            self._slow.add(duration, item)

    def _top_level(self, call, child):
        sys_fn, sys_us = child.syscall
        exit_fn, exit_us = child.exit_work
        name = syscall_from_function(sys_fn)  # None when only the dispatcher was seen
        item = {'cpu': call[0], 'syscall': name, 'syscall_function': sys_fn,
                'syscall_us': sys_us, 'exit_work': exit_fn, 'exit_work_us': exit_us}
        self._exits.add(exit_us, item)
        key = name or sys_fn
        stats = self._exit_by_syscall.get(key)
        if stats is None:
            stats = self._exit_by_syscall[key] = LatencyStats(top=0)
        stats.add(exit_us)

    def flush(self):
        """End of input: calls still pending without a depth-0 parent become roots."""
        for key, pending in list(self._pending.items()):
            if pending:
                first = min(pending)
                agg = pending[first]
                if agg.best_chain:
                    item = {'cpu': key if isinstance(key, int) else None,
                            'duration_us': agg.best_dur, 'chain': agg.best_chain}
                    if not isinstance(key, int):
                        item['proc'] = key
                    self._slow.add(agg.best_dur, item)
            self._pending[key] = {}
        return self

    def result(self):
        return {
            'slow_calls': self._slow.slowest(),
            'syscall_exits': self._exits.slowest(),
            'exit_work_by_syscall': dict(
                (name, {'count': s.count, 'p50_us': _round(s.percentile(0.5)),
                        'p99_us': _round(s.percentile(0.99)), 'max_us': _round(s.max)})
                for name, s in self._exit_by_syscall.items()),
            'calls': self.calls,
            'lines': self.lines,
        }


def parse_function_graph(lines, top=10, min_duration_us=0.0):
    """Parse an iterable of function_graph lines; see ``FunctionGraphParser``."""
    return FunctionGraphParser(top=top, min_duration_us=min_duration_us).feed_lines(lines).flush().result()


# ---------------------------------------------------------------------------
# events: syscalls + sched_switch with stacktrace

# frames that only say "we are in the tracer / the scheduler core"
_NOISE_FRAMES = ('trace_event_raw_event_', '__traceiter_', 'trace_call_bpf', 'perf_trace_',
                 '__bpf_trace_', 'event_triggers_call', '__trace_stack', 'stacktrace_trigger')
_NOISE_EXACT = frozenset(('__schedule', 'schedule', 'preempt_schedule_common', '__schedule_loop'))
_ENTRY_FRAMES = ('entry_SYSCALL', 'entry_INT80', 'ret_from_fork', 'ret_from_fork_asm',
                 'el0_svc', 'el0t_64_sync')


def clean_stack(frames):
    """Raw ``=>`` frames (innermost first) -> the frames that explain the sleep.

    Drops offsets (``+0x1a/0x80``), the tracing frames and ``schedule`` at the
    top, and the entry trampoline at the bottom.
    """
    out = []
    for frame in frames:
        name = frame.split('+', 1)[0].split(' ', 1)[0].strip()
        if name:
            out.append(name)
    start = 0
    while start < len(out) and (out[start] in _NOISE_EXACT or out[start].startswith(_NOISE_FRAMES)):
        start += 1
    end = len(out)
    while end > start and out[end - 1].startswith(_ENTRY_FRAMES):
        end -= 1
    return out[start:end]


def stack_text(stack):
    return ' <- '.join(stack)


class EventParser:
    """Streaming parser for the syscall and sched_switch event text.

    ``pids``: only these tasks count (None: all). ``syscalls``: only these
    syscall names (None: all seen).
    """

    def __init__(self, pids=None, syscalls=None, top=10, max_stacks=256):
        self.pids = set(int(p) for p in pids) if pids else None
        self.syscalls = set(syscalls) if syscalls else None
        self.top = top
        self.max_stacks = max_stacks
        self.lines = 0
        self.events = 0
        self.first_ts = None
        self.last_ts = None
        self._enter = {}       # pid -> (name, ts)
        self._sys = {}         # name -> LatencyStats
        self._out = {}         # pid -> [ts, state, stack or None]
        self._stack_pid = None
        self._stack_frames = None
        self._groups = {}      # stack tuple -> [count, total, max, set(pids), states{}]
        self.unpaired_exits = 0
        self.stacks_overflow = 0
        self._clean_cache = {}

    # -- line dispatch -------------------------------------------------------
    def feed(self, line):
        self.feed_lines((line,))

    def feed_lines(self, lines):
        """Feed an iterable of lines (the hot loop: str methods only, no regex, inlined)."""
        switch = self._switch
        enter = self._enter
        pids = self.pids
        count = 0
        frames = self._stack_frames
        first_ts = self.first_ts
        ts = self.last_ts
        for line in lines:
            count += 1
            if line[1:3] == '=>':
                # a stack frame of the "<stack trace>" above
                if frames is not None:
                    frames.append(line[line.find('=>') + 2:].strip())
                continue
            if frames is not None:
                self._stack_frames = frames
                self._end_stack()
                frames = None
            bracket = line.find('] ')
            if bracket < 0:
                continue
            colon = line.find(': ', bracket)
            if colon < 0:
                continue
            try:
                ts = float(line[line.rfind(' ', bracket, colon) + 1:colon])
            except ValueError:
                continue
            if first_ts is None:
                first_ts = ts
            head = line[colon + 2:colon + 6]
            if head == 'sys_':
                # comm-pid [cpu] ...: the pid; (comm-pid (tgid) [cpu] with record-tgid)
                open_b = line.rfind(' [', 0, bracket)
                task = line[:open_b].rstrip()
                if task[-1:] == ')':
                    task = task[:task.rfind('(')].rstrip()
                try:
                    pid = int(task[task.rfind('-') + 1:])
                except ValueError:
                    continue
                arrow = line.find(' -> ', colon)
                if arrow < 0:
                    paren = line.find('(', colon)
                    if paren > 0:
                        enter[pid] = (line[colon + 6:paren], ts)
                    continue
                name = line[colon + 6:arrow]
                entered = enter.pop(pid, None)
                if entered is None or entered[0] != name:
                    self.unpaired_exits += 1
                    continue
                if pids is not None and pid not in pids:
                    continue
                self._exit(pid, name, entered[1], ts)
            elif head == 'sche':
                body = line[colon + 2:]
                if body.startswith('sched_switch: '):
                    switch(ts, body)
            elif head == '<sta':
                pid = self._task_pid(line, bracket)
                if pid is not None:
                    self._stack_pid = pid
                    frames = self._stack_frames = []
        self._stack_frames = frames
        self.first_ts = first_ts
        self.last_ts = ts
        self.lines += count
        return self

    @staticmethod
    def _task_pid(line, bracket):
        """The pid of ``comm-pid [cpu]`` (also ``comm-pid (tgid) [cpu]``)."""
        open_b = line.rfind(' [', 0, bracket)
        if open_b < 0:
            return None
        head = line[:open_b].rstrip()
        if head.endswith(')'):  # record-tgid
            head = head[:head.rfind('(')].rstrip()
        dash = head.rfind('-')
        try:
            return int(head[dash + 1:])
        except ValueError:
            return None

    # -- syscalls ------------------------------------------------------------
    def _exit(self, pid, name, start_ts, ts):
        if self.syscalls is not None and name not in self.syscalls:
            return
        self.events += 1
        duration = (ts - start_ts) * 1e6
        stats = self._sys.get(name)
        if stats is None:
            stats = self._sys[name] = LatencyStats(top=self.top)
        stats.add(duration, (pid, start_ts, duration))

    # -- sched_switch --------------------------------------------------------
    def _switch(self, ts, body):
        # prev_comm=X prev_pid=N prev_prio=P prev_state=S ==> next_comm=Y next_pid=M next_prio=Q
        arrow = body.find(' ==> ')
        if arrow < 0:
            return
        prev = body[14:arrow]
        nxt = body[arrow + 5:]
        i = prev.rfind(' prev_pid=')
        j = prev.find(' ', i + 10)
        k = prev.rfind(' prev_state=')
        n = nxt.rfind(' next_pid=')
        m = nxt.find(' ', n + 10)
        try:
            prev_pid = int(prev[i + 10:j])
            next_pid = int(nxt[n + 10:m] if m > 0 else nxt[n + 10:])
        except ValueError:
            return
        state = prev[k + 12:] if k >= 0 else '?'
        pending = self._out.pop(next_pid, None)
        if pending is not None:
            self._account(next_pid, ts - pending[0], pending[1], pending[2])
        if prev_pid and (self.pids is None or prev_pid in self.pids):
            self._out[prev_pid] = [ts, state, None]

    def _end_stack(self):
        frames = self._stack_frames
        pid = self._stack_pid
        self._stack_frames = None
        self._stack_pid = None
        pending = self._out.get(pid)
        if pending is not None and pending[2] is None:
            raw = tuple(frames)
            stack = self._clean_cache.get(raw)
            if stack is None:
                stack = tuple(clean_stack(frames))
                if len(self._clean_cache) < 4096:
                    self._clean_cache[raw] = stack
            pending[2] = stack

    def _account(self, pid, seconds, state, stack):
        if stack is None:
            stack = ()
        self.events += 1
        group = self._groups.get(stack)
        if group is None:
            if len(self._groups) >= self.max_stacks:
                self.stacks_overflow += 1
                stack = ('[other stacks]',)
                group = self._groups.get(stack)
            if group is None:
                group = self._groups[stack] = [0, 0.0, 0.0, set(), {}]
        us = seconds * 1e6
        group[0] += 1
        group[1] += us
        if us > group[2]:
            group[2] = us
        if len(group[3]) < 64:
            group[3].add(pid)
        state = state.rstrip('+') or 'R'
        group[4][state] = group[4].get(state, 0) + 1

    # -- results -------------------------------------------------------------
    def flush(self):
        if self._stack_frames is not None:
            self._end_stack()
        return self

    def syscalls_result(self):
        """Per syscall stats; every name in ``syscalls`` appears (count 0 when unseen)."""
        out = {}
        for name in sorted(self.syscalls or ()):
            if name not in self._sys:
                out[name] = {'count': 0, 'p50_us': None, 'p99_us': None, 'max_us': None,
                             'total_us': 0.0, 'slowest': []}
        for name, stats in sorted(self._sys.items()):
            out[name] = {
                'count': stats.count,
                'p50_us': _round(stats.percentile(0.5)),
                'p99_us': _round(stats.percentile(0.99)),
                'max_us': _round(stats.max),
                'total_us': _round(stats.total),
                'slowest': [{'pid': pid, 'ts_s': round(ts, 6), 'duration_us': _round(dur)}
                            for pid, ts, dur in stats.slowest()],
            }
        return out

    def offcpu_result(self, with_stack_only=False):
        out = []
        for stack, (count, total, mx, pids, states) in self._groups.items():
            if with_stack_only and not stack:
                continue
            out.append({
                'stack': list(stack),
                'stack_text': stack_text(stack) if stack else '[no stack]',
                'count': count,
                'total_us': _round(total),
                'max_us': _round(mx),
                'pids': sorted(pids),
                'states': states,
            })
        out.sort(key=lambda g: (-g['total_us'], g['stack_text']))
        return out

    def result(self):
        self.flush()
        return {
            'syscalls': self.syscalls_result(),
            'offcpu': self.offcpu_result(),
            'lines': self.lines,
            'events': self.events,
            'window_s': (round(self.last_ts - self.first_ts, 6)
                         if self.first_ts is not None else 0.0),
            'unpaired_exits': self.unpaired_exits,
        }


def parse_events(lines, pids=None, syscalls=None, top=10):
    """Parse an iterable of event lines; see ``EventParser``."""
    return EventParser(pids=pids, syscalls=syscalls, top=top).feed_lines(lines).result()


def audit_wait_in(offcpu=None, slow_calls=None, marker='audit_log_start'):
    """True when an off-CPU stack or a slow chain passes through ``marker``."""
    for group in offcpu or ():
        if marker in group.get('stack', ()):
            return True
    for call in slow_calls or ():
        if marker in call.get('chain', ()):
            return True
    return False
