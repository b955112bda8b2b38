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
# "  1234.567890 |" (funcgraph-abstime), " 0)", "  bash-1234   |" (funcgraph-proc),
# "$ 2238253.1 us" (duration with its marker), "|", the indented function text.
_FG_LINE = re.compile(
    r'^\s*(?:(?P<ts>\d+\.\d+)\s*\|\s*)?'
    r'(?P<cpu>\d+)\)\s*'
    r'(?:(?P<proc>[^|]*?-\d+)\s*\|\s*)?'
    r'(?:(?P<mark>[-+!#*@$])\s*)?'
    r'(?:(?P<dur>\d+(?:\.\d+)?)\s*us\s*)?'
    r'\|(?P<indent> *)(?P<text>\S.*?)\s*$')
_FG_SWITCH = re.compile(r'^\s*(?:\d+\.\d+\s*\|\s*)?\d+\)\s*(?P<prev>\S.*?)\s+=>\s+(?P<next>\S.*?)\s*$')
_CLOSE_COMMENT = re.compile(r'^\}\s*(?:/\*\s*(?P<name>[^*]+?)\s*\*/)?')
_SYSCALL_FN = re.compile(r'^(?:SyS_|sys_|__x64_sys_|__ia32_sys_|__arm64_sys_|__se_sys_|__do_sys_|ksys_|__sys_)'
                         r'(?P<name>\w+)$')
_EXIT_WORK_FN = re.compile(r'(?:exit_work|exit_to_user_mode|syscall_exit)')


def syscall_from_function(function):
    """``SyS_accept4``/``__x64_sys_accept4``/... -> ``accept4``; else None."""
    match = _SYSCALL_FN.match(function or '')
    return match.group('name') if match else None


def parse_function_graph_line(line):
    """One function_graph line as a dict, or None for headers and noise.

    kinds: ``entry`` (``func() {``), ``leaf`` (``func();``), ``exit``
    (``}`` or ``} /* func */``), ``switch`` (``=>`` context switch marker).
    """
    if not line or line[0] == '#':
        return None
    stripped = line.strip()
    if not stripped or stripped.startswith('---') or stripped.startswith('#'):
        return None
    match = _FG_LINE.match(line)
    if match is None:
        sw = _FG_SWITCH.match(line)
        if sw and '|' not in line:
            return {'kind': 'switch', 'prev': sw.group('prev'), 'next': sw.group('next')}
        return None
    text = match.group('text')
    indent = len(match.group('indent'))
    event = {
        'cpu': int(match.group('cpu')),
        'depth': max(0, (indent - 1) // 2),
        'duration_us': float(match.group('dur')) if match.group('dur') is not None else None,
        'ts_s': float(match.group('ts')) if match.group('ts') else None,
        'proc': match.group('proc').strip() if match.group('proc') else None,
    }
    if text.startswith('}'):
        close = _CLOSE_COMMENT.match(text)
        event['kind'] = 'exit'
        event['function'] = close.group('name') if close and close.group('name') else None
    elif text.endswith('{'):
        event['kind'] = 'entry'
        event['function'] = text[:-1].strip().rstrip('()').strip()
    elif text.endswith(';'):
        event['kind'] = 'leaf'
        event['function'] = text[:-1].strip()
        if event['function'].endswith('()'):
            event['function'] = event['function'][:-2]
    else:
        # comments (trace_printk, "/* event */"), irq markers: not calls
        return None
    return event


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
        self.by_function = {}

    def _key(self, event):
        return (event['cpu'], event['proc']) if event.get('proc') else event['cpu']

    def feed(self, line):
        self.lines += 1
        event = parse_function_graph_line(line)
        if event is None or event['kind'] == 'switch':
            return None
        key = self._key(event)
        stack = self._open.setdefault(key, [])
        depth = event['depth']
        if event['kind'] == 'entry':
            # an entry at depth d closes nothing, but drops stale deeper entries
            while stack and stack[-1][0] >= depth:
                stack.pop()
            stack.append((depth, event['function'], event['ts_s']))
            return None
        function = event['function']
        if event['kind'] == 'exit':
            while stack and stack[-1][0] > depth:
                stack.pop()
            if stack and stack[-1][0] == depth:
                _d, opened, _ts = stack.pop()
                function = function or opened
        if event['duration_us'] is None:
            return None
        call = {'cpu': event['cpu'], 'duration_us': event['duration_us'], 'depth': depth,
                'function': function or '?', 'ts_s': event['ts_s'], 'proc': event['proc']}
        self._finish(key, call)
        return call

    def feed_lines(self, lines):
        for line in lines:
            self.feed(line)
        return self

    def _finish(self, key, call):
        self.calls += 1
        depth = call['depth']
        name = call['function']
        stats = self.by_function.get(name)
        if stats is None:
            if len(self.by_function) < 4096:
                stats = self.by_function[name] = [0, 0.0, 0.0]
        if stats is not None:
            stats[0] += 1
            stats[1] += call['duration_us']
            stats[2] = max(stats[2], call['duration_us'])
        pending = self._pending.setdefault(key, {})
        # children: the finished calls at the nearest deeper level
        child = None
        for child_depth in sorted(d for d in pending if d > depth):
            agg = pending.pop(child_depth)
            if child is None:
                child = agg
        chain = [name] + (child.best_chain if child is not None and child.best_chain else [])
        if depth == 0 or (child is not None and child.syscall and child.exit_work):
            self._top_level(call, chain, child)
        if depth == 0:
            self._record_root(call, chain)
            return
        agg = pending.get(depth)
        if agg is None:
            agg = pending[depth] = _Agg()
        if call['duration_us'] > agg.best_dur:
            agg.best_dur = call['duration_us']
            agg.best_chain = chain
        if syscall_from_function(name):
            agg.syscall = (name, call['duration_us'])
            agg.exit_work = None
        elif _EXIT_WORK_FN.search(name) and agg.syscall is not None:
            if agg.exit_work is None or call['duration_us'] > agg.exit_work[1]:
                agg.exit_work = (name, call['duration_us'])

    def _record_root(self, call, chain):
        if call['duration_us'] >= self.min_duration_us:
            item = {'cpu': call['cpu'], 'duration_us': call['duration_us'], 'chain': chain}
            if call['ts_s'] is not None:
                item['ts_s'] = call['ts_s']
            if call['proc']:
                item['proc'] = call['proc']
            self._slow.add(call['duration_us'], item)

    def _top_level(self, call, chain, child):
        if child is None or not child.syscall or not child.exit_work:
            return
        sys_fn, sys_us = child.syscall
        exit_fn, exit_us = child.exit_work
        name = syscall_from_function(sys_fn)
        item = {'cpu': call['cpu'], 'syscall': name, 'syscall_function': sys_fn,
                'syscall_us': sys_us, 'exit_work': exit_fn, 'exit_work_us': exit_us}
        self._exits.add(exit_us, item)
        stats = self._exit_by_syscall.get(name)
        if stats is None:
            stats = self._exit_by_syscall[name] = LatencyStats(top=0)
        stats.add(exit_us)

    def flush(self):
        """End of input: calls still pending without a depth-0 parent become roots."""
        for key, pending in list(self._pending.items()):
            if pending:
                first = min(pending)
                agg = pending[first]
                if agg.best_chain:
                    self._slow.add(agg.best_dur, {'cpu': key[0] if isinstance(key, tuple) else key,
                                                  'duration_us': agg.best_dur, 'chain': agg.best_chain})
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

    # -- line dispatch -------------------------------------------------------
    def feed(self, line):
        self.lines += 1
        if not line:
            return
        # stack frames " => func" follow a "<stack trace>" line
        first = line.lstrip()
        if first.startswith('=>'):
            if self._stack_frames is not None:
                self._stack_frames.append(first[2:].strip())
            return
        if self._stack_frames is not None:
            self._end_stack()
        if first[:1] == '#' or not first:
            return
        bracket = line.find('] ')
        if bracket < 0:
            return
        open_b = line.rfind(' [', 0, bracket)
        if open_b < 0:
            return
        head = line[:open_b].rstrip()
        if head.endswith(')'):  # record-tgid: "comm-pid (tgid)"
            head = head[:head.rfind('(')].rstrip()
        dash = head.rfind('-')
        if dash < 0:
            return
        try:
            pid = int(head[dash + 1:])
        except ValueError:
            return
        rest = line[bracket + 2:]
        colon = rest.find(': ')
        if colon < 0:
            return
        try:
            ts = float(rest[:colon].rsplit(None, 1)[-1])
        except (ValueError, IndexError):
            return
        body = rest[colon + 2:]
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        if body.startswith('sys_'):
            self._syscall(pid, ts, body)
        elif body.startswith('sched_switch: '):
            self._switch(ts, body)
        elif body.startswith('<stack trace>'):
            self._stack_pid = pid
            self._stack_frames = []

    def feed_lines(self, lines):
        feed = self.feed
        for line in lines:
            feed(line)
        return self

    # -- syscalls ------------------------------------------------------------
    def _syscall(self, pid, ts, body):
        arrow = body.find(' -> ')
        if arrow > 0:
            name = body[4:arrow]
            entered = self._enter.pop(pid, None)
            if entered is None or entered[0] != name:
                self.unpaired_exits += 1
                return
            if self.pids is not None and pid not in self.pids:
                return
            if self.syscalls is not None and name not in self.syscalls:
                return
            self.events += 1
            duration = (ts - entered[1]) * 1e6
            stats = self._sys.get(name)
            if stats is None:
                stats = self._sys[name] = LatencyStats(top=self.top)
            stats.add(duration, (pid, entered[1], duration))
            return
        paren = body.find('(')
        if paren > 4:
            self._enter[pid] = (body[4:paren], ts)

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
            pending[2] = tuple(clean_stack(frames))

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
        out = {}
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
