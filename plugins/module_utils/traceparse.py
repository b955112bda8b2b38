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

Both are fed chunks of whole lines (``feed_text``) or lines (``feed_lines``) and keep memory bounded:
per syscall a log-bucket histogram and a top-N heap, per stack one
aggregate, per task one pending item. ``result()`` may be called at any time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import functools
import heapq
import itertools
import math
import operator
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

    def add_batch(self, values, pids, starts):
        """``add(value, (int(pid), start, value))`` for each value, pid text and start of the
        three lists, in order, with the same result: count, total, min, max and buckets in
        C-level bulk steps, the top heap only for values above its floor."""
        self.add_values(values)
        top = self.top
        if not top:
            return
        heap = self._heap
        seq = self._seq
        count = len(values)
        index = 0
        while index < count and len(heap) < top:
            value = values[index]
            index += 1
            heapq.heappush(heap, (value, seq + index, (int(pids[index - 1]), starts[index - 1], value)))
        if index < count:
            # the floor only rises: a value not above it now never gets in (found in C)
            for index in itertools.compress(range(index, count), map(heap[0][0].__lt__, values[index:])):
                value = values[index]
                if value > heap[0][0]:
                    heapq.heapreplace(heap, (value, seq + index + 1, (int(pids[index]), starts[index], value)))
        self._seq = seq + count

    def add_values(self, values):
        """``add(value)`` for each of ``values`` (no items), in order, with the same result."""
        if not values:
            return
        self.count += len(values)
        self.total = functools.reduce(operator.add, values, self.total)
        high = max(values)
        low = min(values)
        if self.max is None or high > self.max:
            self.max = high
        if self.min is None or low < self.min:
            self.min = low
        buckets = self.buckets
        log, base = math.log, self._LOG_BASE
        for value, count in collections.Counter(values).items():
            key = int(log(value) / base) if value > 0.01 else -1000
            buckets[key] = buckets.get(key, 0) + count

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
# timestamps (s) and durations (us) beyond this are no trace data (1e15 us is 31 years);
# the bound also rejects NaN and infinity, which would break the statistics
TS_LIMIT = 1e15
_US_PER_S = 1e6
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
        if not -TS_LIMIT < ts < TS_LIMIT:
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
        if not 0 <= duration < TS_LIMIT:
            return None  # NaN, infinity, negative or overflowing: not a duration
    column = parts[-1].rstrip()
    kind, function = _fg_text(column)[:2] if column.strip() else _NO_CALL[:2]
    if kind < 0:
        return None  # comments (trace_printk, "/* event */"), irq markers: not calls
    return (cpu, ts, proc, duration, _KINDS[kind], function, len(column) - len(column.lstrip(' ')))


# One function_graph call line: ``[abstime |] cpu) [proc |] [mark] [duration us] | text``.
# Groups: abstime, cpu (leading zeros left out), proc (``comm-pid``), duration, and the text
# column (its indent included, trailing blanks not). The ``\n`` before each line is the literal
# the engine scans for. Numbers have at most 15 integer digits: a longer one (an overflow, a
# corrupt line) is no trace data and would turn into infinity in the statistics; such a line
# does not match. No possessive quantifiers or atomic groups: Python before 3.11.5 (Debian 12
# has 3.11.2) matches them wrongly (CPython gh-106052) and before 3.11 not at all. Optional
# columns are alternatives with an empty branch (``(?:x|)``): the same matches as ``(?:x)?``,
# faster in the engine (see _EVENT_RE).
_FG_RE = re.compile(
    r'\n *(?:(\d{1,15}\.\d{1,9}) \| +|)0*(\d+)\) +(?:([^|\n]*-\d+) +\| +|)(?:[-+!#*@$] +|)'
    r'(?:(\d{1,15}\.\d{1,9}|\d{1,15}) us|) *\|( *[^\n]*[^\s])')

# The fast path for the lines ftrace_sample reads (funcgraph-proc on, no abstime), which are
# ``cpu) comm-pid | duration | text``: str methods over the whole chunk instead of the expression.
# ``text.split('|')`` gives [head 1, duration 1, text 1 + newline + head 2, duration 2, ...]: a
# tail (one line's text column, its newline and the next line's head) repeats as often as the
# same call of the same task does, so each distinct tail is checked and split once (cached); the
# durations are checked in bulk by their shapes (digits turned to 0: a handful of distinct ones)
# and their numbers cut out with one translate and split. A chunk that is not all such lines is
# cut into runs of lines with two '|' (the fast path again) and the others (the expression):
# every token is the one _FG_RE finds, to the letter (tests/unit/test_traceparse.py compares
# them on every fixture, odd lines and fuzzed ones). Each check below is what _FG_RE asks of that
# column when the line has exactly two '|': the head alone (no abstime: it has a ')'), the
# duration between the two '|' (at least one blank first, as the expression's ``\| +``), and a
# text column with something else than blanks (``[^\s]``: str.rstrip strips the same characters).
_FG_PROC_HEAD = re.compile(r' *0*(\d+)\) +([^|\n]*-\d+) +\Z')
_FG_DURATION_SHAPE = re.compile(r' +(?:[-+!#*@$] +|)(?:0{1,15}\.0{1,9} us|0{1,15} us|) *\Z')
_DIGITS_TO_0 = str.maketrans('123456789', '000000000')
_DURATION_TO_NUMBER = str.maketrans('+!#*@$-us', ' ' * 9)
_CACHE_SIZE = 16384
_ODD_SCAN = 64

_NO_CALL = (-1, None, 0, None, 0)
_KINDS = ('entry', 'leaf', 'exit')  # _fg_text's kind 0, 1, 2


def _fg_text(column):
    """The text column of a call line -> ``(kind, function, depth, item, class)``; ``_NO_CALL``
    for a line that is no call (comments such as trace_printk or ``/* event */``).

    kind 0: entry (``func() {``), 1: leaf (``func();``), 2: exit (``}``, the function from a
    ``/* name */`` comment or None). class: ``_classify`` of the function (0 when None). item:
    for an entry what its task's stack keeps, ``(depth, function, class)``; for a call with a
    function its chain alone, ``(function, None)`` (built once per distinct text); else None.
    """
    body = column.lstrip(' ')
    indent = len(column) - len(body)
    depth = (indent - 1) // 2 if indent > 1 else 0
    if body[0] == '}':
        function = None
        open_c = body.find('/*')
        if open_c > 0:
            close_c = body.find('*/', open_c)
            function = body[open_c + 2:close_c if close_c > 0 else None].strip() or None
        kind = 2
    else:
        last = body[-1]
        if last == '{':
            kind = 0
        elif last == ';':
            kind = 1
        else:
            return _NO_CALL
        function = body[:-1].rstrip()
        if function[-2:] == '()':
            function = function[:-2]
    cls = _classify(function) if function else 0
    if kind == 0:
        return (kind, function, depth, (depth, function, cls), cls)
    return (kind, function, depth, (function, None) if function else None, cls)


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)


def _classify(function):
    """1: a syscall function (SyS_x, __x64_sys_x, ...), 2: exit work, 3: dispatcher, 0: other."""
    if function in SYSCALL_DISPATCHERS:
        return 3
    if syscall_from_function(function):
        return 1
    if _EXIT_WORK_FN.search(function):
        return 2
    return 0


def _text_batches(lines, size=8192):
    """Chunks of whole lines as text (lines with or without their newline)."""
    if isinstance(lines, (list, tuple)):
        batches = (lines,)
    else:
        it = iter(lines)
        batches = iter(lambda: list(itertools.islice(it, size)), [])
    for batch in batches:
        if batch:
            if batch[-1][-1:] == '\n' and batch[0][-1:] == '\n':
                yield ''.join(batch)
            else:
                yield '\n'.join(line.rstrip('\n') for line in batch) + '\n'


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


def _chain_list(link):
    """A linked chain ``(function, (function, ... None))`` -> [function, ...], outermost first."""
    out = []
    while link is not None:
        out.append(link[0])
        link = link[1]
    return out


class _Top:
    """The ``size`` largest values with their items, as LatencyStats keeps its top (ties: the
    earlier one stays); callers build an item only when ``value > floor``."""
    __slots__ = ('size', 'heap', 'floor', 'seq')

    def __init__(self, size):
        self.size = size
        self.heap = []
        self.floor = -1.0 if size else float('inf')  # values are >= 0: anything gets in until full
        self.seq = 0

    def push(self, value, item):
        self.seq += 1
        heap = self.heap
        if len(heap) < self.size:
            heapq.heappush(heap, (value, self.seq, item))
        else:
            heapq.heapreplace(heap, (value, self.seq, item))
        if len(heap) >= self.size:
            self.floor = heap[0][0]

    def slowest(self):
        return [item for _value, _seq, item in sorted(self.heap, key=lambda e: (-e[0], e[1]))]


# The bottom of every open-entry stack and of every pending stack: depth -1 is below every
# call, so the loops that drop deeper items need no emptiness check.
_STACK_BOTTOM = (-1, None, 0)
# A pending level: [depth, best_dur, best_chain, syscall, exit_work], what a parent needs to know
# about its finished children at that depth: the slowest child's duration and chain (linked:
# (function, deeper link or None)), the last syscall-like child (function, duration) and the
# slowest exit-work child after it (function, duration).
_PENDING_BOTTOM = [-1, -1.0, None, None, None]


class FunctionGraphParser:
    """Streaming function_graph parser.

    Keeps, per CPU (per task with funcgraph-proc: a call may close on another CPU), the open
    entries and the pending levels (finished calls not yet claimed by their parent, one
    aggregate per depth, deepest last), so memory depends on the call depth, not on the trace
    length. Results: the ``top`` slowest top-level calls with their chain to the slowest leaf
    (outermost first), and for each top-level call with a syscall child and an exit-work child
    (the depth-2 recipe) the pair ``{syscall, syscall_us, exit_work, exit_work_us}`` (slowest
    ``top`` by exit work, plus per-syscall stats of the exit work).
    """

    def __init__(self, top=10, min_duration_us=0.0):
        self.top = top
        self.min_duration_us = min_duration_us
        self.lines = 0
        self.calls = 0
        # per task or CPU: ([(depth, function)] open entries, [pending level] by depth)
        self._states = {}
        self._slow = _Top(top)
        self._exits = _Top(top)
        self._exit_by_syscall = {}   # syscall -> LatencyStats of its exit work
        self._exit_values = {}       # syscall -> exit work us not yet added (a chunk's, in bulk)
        self._class_cache = {}
        self._name_cache = {}
        self._texts = {}             # text column -> _fg_text(column)
        self._last_root_syscall = {}
        self._heads = {}             # fast path: head column -> (cpu, proc, '') or None (not such a head)
        self._tails = {}             # fast path: text column + newline + next head -> (column, next head)
        self._shapes = set()         # fast path: duration shapes checked
        self._interned = {}          # the expression's heads: one tuple for equal ones
        self.fast = True             # False: every line through _FG_RE (what the fast path must equal)

    def feed(self, line):
        """Feed one line (``feed_text`` of it)."""
        return self.feed_text(line)

    def feed_lines(self, lines):
        """Feed an iterable of lines (with or without their newline); parsed in batches by ``feed_text``."""
        for text in _text_batches(lines):
            self.feed_text(text)
        return self

    def tokens(self, text):
        """The call lines of a chunk of whole lines (ending with a newline) in runs, each
        ``(heads, durations, columns)``: per line ``(cpu, proc, abstime)``, the duration's number
        and the text column, as _FG_RE finds them (``''`` where a column is absent); lines that
        are no call are left out. The fast path takes the lines ``cpu) comm-pid | duration |
        text`` at the start of the chunk, usually all of it; from where it stops, the other lines
        (up to the next such line, at most _ODD_SCAN) go through the expression and the fast path
        takes the rest; after a second stop, the expression takes the rest of the chunk."""
        runs = []
        if text[-1:] != '\n':
            text += '\n'
        if self.fast:
            for _attempt in range(2):
                run, end = self._fast_tokens(text)
                if end:
                    runs.append(run)
                    text = text[end:]
                if not text:
                    return runs
                end = self._odd_lines(text)
                runs.append(self._regex_tokens(text[:end]))
                text = text[end:]
                if not text:
                    return runs
        runs.append(self._regex_tokens(text))
        return runs

    def _regex_tokens(self, text):
        """``(heads, durations, columns)`` of the call lines of ``text`` as _FG_RE finds them; equal
        heads are one tuple (the loop compares them by identity)."""
        found = _FG_RE.findall('\n' + text)
        if not found:
            return (), (), ()
        abstimes, cpus, procs, durations, columns = zip(*found)
        heads = list(zip(cpus, procs, abstimes))
        interned = self._interned
        if len(interned) > _CACHE_SIZE:
            interned.clear()
        return list(map(interned.setdefault, heads, heads)), durations, columns

    def _odd_lines(self, text):
        """Where the lines at the start of ``text`` that the fast path does not take end: the first
        line, and each next one without two '|' or without a head ``cpu) comm-pid`` (at most
        _ODD_SCAN lines)."""
        end = text.index('\n') + 1
        for _line in range(_ODD_SCAN):
            if end == len(text):
                break
            newline = text.index('\n', end) + 1
            if text.count('|', end, newline) == 2 and self._head(text[end:text.index('|', end)]) is not None:
                break
            end = newline
        return end

    def _fast_tokens(self, text):
        """``((heads, durations, columns), end)`` of the longest run of lines ``cpu) comm-pid |
        duration | text`` (see _FG_PROC_HEAD) at the start of ``text``, a chunk of whole lines
        ending with a newline; ``end``: where that run ends in ``text`` (0: no such line first)."""
        first = text.find('|')
        head = self._head(text[:first]) if first > 0 and text.find('\n', 0, first) < 0 else None
        if head is None:
            return None, 0
        fields = text.split('|')
        if len(fields) < 3:
            return None, 0
        # tails[i]: line i + 1's text column, its newline and line i + 2's head; the last one ends
        # with the newline of the chunk, or holds lines without two '|': never a good tail
        tails = fields[2::2]
        pairs = list(map(self._tails.get, tails))
        good = 0
        while True:
            try:
                good = pairs.index(None, good)
            except ValueError:  # every tail good: the chunk's last line has no two '|'
                good = len(pairs)
                break
            pair = self._tail(tails[good])
            if pair is None:
                break
            pairs[good] = pair
        # the lines before the first bad tail are good, and the line of that tail when its column is
        column, newline, rest = tails[good].partition('\n') if good < len(tails) else ('', '', '')
        column = column.rstrip()
        whole = False
        if newline and column:
            pairs[good] = (column, None)
            good += 1
            whole = not rest and 2 * good == len(fields) - 1  # that line ends the chunk
        durations = '|'.join(fields[1:2 * good:2])
        shapes = self._shapes
        line_shapes = durations.translate(_DIGITS_TO_0).split('|')
        if not shapes.issuperset(line_shapes):
            for index, shape in enumerate(line_shapes):
                if shape not in shapes:
                    if not _FG_DURATION_SHAPE.match(shape):
                        good = index
                        whole = False
                        durations = '|'.join(fields[1:2 * good:2])
                        break
                    if len(shapes) < _CACHE_SIZE:
                        shapes.add(shape)
        if not good:
            return None, 0
        del pairs[good:]
        heads = [head]
        heads += map(_SECOND, pairs)
        heads.pop()
        end = len(text) if whole else sum(map(len, fields[:2 * good])) + 2 * good + tails[good - 1].index('\n') + 1
        return (heads, list(map(str.strip, durations.translate(_DURATION_TO_NUMBER).split('|'))),
                list(map(_FIRST, pairs))), end

    def _head(self, text):
        """``(cpu, proc, '')`` of a head column ``cpu) comm-pid``, or None."""
        try:
            return self._heads[text]
        except KeyError:
            match = _FG_PROC_HEAD.match(text)
            head = (match.group(1), match.group(2), '') if match else None
            if len(self._heads) < _CACHE_SIZE:
                self._heads[text] = head
            return head

    def _tail(self, tail):
        """``(column, next head)`` of ``text column + newline + next head``, or None."""
        column, newline, head = tail.partition('\n')
        column = column.rstrip()
        head = self._head(head) if newline and column and '\n' not in head else None
        if head is None:
            return None
        pair = (column, head)
        if len(self._tails) < _CACHE_SIZE:
            self._tails[tail] = pair
        return pair

    def feed_text(self, text):
        """Feed a chunk of whole lines (the last newline may be missing).

        The hot path: ``tokens`` splits every call line of the chunk into its columns (str
        methods over the whole chunk, C speed); the text column is parsed once per distinct
        text (cached); the loop keeps the call stacks and the aggregate of each level inline
        (no call per line), builds result items only for calls that get into a top list, and
        the exit-work statistics take the chunk's values in bulk. Lines that are no call
        (headers, CPU and context switch markers, irq markers, comments) give no token.
        """
        if not text:
            return self
        self.lines += text.count('\n') + (text[-1] != '\n')
        if text[-1] != '\n':
            text += '\n'
        states = self._states
        min_duration = self.min_duration_us
        slow = self._slow
        last_root_syscall = self._last_root_syscall
        calls = 0
        last_head = None
        key = cpu = proc = abstime = stack = pending = None
        for head, duration, info in itertools.chain.from_iterable(
                zip(heads, durations, self._infos(columns)) for heads, durations, columns in self.tokens(text)):
            kind, name, depth, entry, cls = info
            if head is not last_head:
                if kind < 0:
                    continue
                cpu, proc, abstime = head
                key = proc or cpu
                state = states.get(key)
                if state is None:
                    state = states[key] = ([_STACK_BOTTOM], [_PENDING_BOTTOM])
                stack, pending = state
                last_head = head
            if kind <= 0:
                if kind:
                    continue
                # an entry at depth d closes nothing, but drops stale deeper entries
                while stack[-1][0] >= depth:
                    stack.pop()
                stack.append(entry)
                continue
            if kind == 2:
                while stack[-1][0] > depth:
                    stack.pop()
                if name is None:
                    if stack[-1][0] == depth:
                        _depth, name, cls = stack.pop()
                    else:
                        name = '?'
                        cls = 0
                    entry = (name, None)
            if not duration:
                continue
            # a finished call: its children are the finished calls at the nearest deeper level
            calls += 1
            dur = float(duration)
            level = pending[-1]
            if level[0] > depth:
                child = pending.pop()
                while pending[-1][0] > depth:
                    child = pending.pop()
                level = pending[-1]
                chain = (name, child[2])
            else:
                child = None
                chain = entry  # (name, None)
            if depth == 0:
                if child is not None and child[3] and child[4]:
                    self._top_level(cpu, child[3], child[4])
                elif cls == 1 or cls == 3:
                    # roots that are the syscall and the exit work themselves (set_graph_function
                    # __x64_sys_accept4 syscall_exit_work): a syscall root pairs with the next
                    # exit-work root of the same task (or CPU)
                    last_root_syscall[key] = (
                        child[3][0] if cls == 3 and child is not None and child[3] else name, dur)
                elif cls == 2:
                    last = last_root_syscall.pop(key, None)
                    if last is not None:
                        self._top_level(cpu, last, (name, dur))
                if dur > slow.floor and dur >= min_duration:
                    item = {'cpu': int(cpu), 'duration_us': dur, 'chain': _chain_list(chain)}
                    if abstime:
                        item['ts_s'] = float(abstime)
                    if proc:
                        item['proc'] = proc
                    slow.push(dur, item)
                continue
            if level[0] == depth:
                if dur > level[1]:
                    level[1] = dur
                    level[2] = chain
            else:
                level = [depth, dur, chain, None, None]
                pending.append(level)
            if cls:
                if cls == 1:
                    level[3] = (name, dur)
                    level[4] = None
                elif cls == 3:
                    # the dispatcher stands for the syscall it called (seen one level deeper)
                    level[3] = (child[3][0] if child is not None and child[3] else name, dur)
                    level[4] = None
                elif level[3] is not None:
                    if level[4] is None or dur > level[4][1]:
                        level[4] = (name, dur)
        self.calls += calls
        self._add_exit_values()
        return self

    def _infos(self, columns):
        """``_fg_text`` of each text column (cached per distinct text)."""
        texts = self._texts
        infos = list(map(texts.get, columns))
        if None in infos:
            for index, info in enumerate(infos):
                if info is None:
                    column = columns[index]
                    info = infos[index] = _fg_text(column)
                    if len(texts) < _CACHE_SIZE:
                        texts[column] = info
        return infos

    def _top_level(self, cpu, syscall, exit_work):
        """A syscall (function, us) followed by its exit work (function, us) under one root."""
        sys_fn, sys_us = syscall
        exit_fn, exit_us = exit_work
        try:
            name = self._name_cache[sys_fn]
        except KeyError:
            name = syscall_from_function(sys_fn)  # None when only the dispatcher was seen
            if len(self._name_cache) < 8192:
                self._name_cache[sys_fn] = name
        if exit_us > self._exits.floor:
            self._exits.push(exit_us, {'cpu': int(cpu), 'syscall': name, 'syscall_function': sys_fn,
                                       'syscall_us': sys_us, 'exit_work': exit_fn, 'exit_work_us': exit_us})
        key = name or sys_fn
        values = self._exit_values.get(key)
        if values is None:
            values = self._exit_values[key] = []
        values.append(exit_us)

    def _add_exit_values(self):
        for key, values in self._exit_values.items():
            stats = self._exit_by_syscall.get(key)
            if stats is None:
                stats = self._exit_by_syscall[key] = LatencyStats(top=0)
            stats.add_values(values)
        self._exit_values = {}

    def flush(self):
        """End of input: calls still pending without a depth-0 parent become roots."""
        for key, (_stack, pending) in self._states.items():
            if len(pending) > 1:
                level = pending[1]  # the shallowest
                if level[1] > self._slow.floor:
                    item = {'cpu': None if '-' in key else int(key),
                            'duration_us': level[1], 'chain': _chain_list(level[2])}
                    if '-' in key:
                        item['proc'] = key
                    self._slow.push(level[1], item)
                del pending[1:]
        return self

    def result(self):
        self._add_exit_values()
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


# One event line, found from its ``-pid [cpu]`` (a literal the regex engine scans for
# fast), in the forms ``comm-pid [cpu] flags ts: body`` (flags absent without irq-info)
# and, with record-tgid, ``comm-pid (tgid) [cpu] ...``. Groups: task pid, ts, then either
# the syscall name and '(' (sys_enter) or ' -> ' (sys_exit); or sched_switch's prev_pid,
# prev_state and next_pid (a fast branch for the kernel's field order, prev_prio before
# prev_state and next_comm before next_pid, then the general one: the same matches); or,
# after ``<stack trace>``, the frame lines (each ``\n => frame``) that follow. The rest of a
# line is never looked at.
# Optional parts are alternatives with an empty branch (``(?:x|)``, not ``(?:x)?``): the
# same matches, but the engine takes a branch much faster than an optional group (it
# skips a branch whose first literal does not match without entering it).
_EVENT_RE = re.compile(
    r'-(\d+) +(?:\[|\([^)\n]*\) +\[)\d+\] +(?:[^\d\s]\S* +|)(\d{1,15}\.\d{1,9}|\d{1,15}): '
    r'(?:sys_(\w+)(\(| -> )'
    r'|sched_switch: prev_comm=.*? prev_pid=(\d+) (?:prev_prio=\S* prev_state=|.*? prev_state=)(\S+) '
    r'==> (?:next_comm=.*? next_pid=|.*? next_pid=)(\d+)'
    r'|<stack trace>((?:\n =>.*)*))')


def _line_ts(line):
    """The timestamp of one event line (``... [cpu] flags ts: ...``), or None."""
    bracket = line.find('] ')
    if bracket < 0:
        return None
    colon = line.find(': ', bracket)
    if colon < 0:
        return None
    try:
        ts = float(line[line.rfind(' ', bracket, colon) + 1:colon])
    except ValueError:
        return None
    return ts if -TS_LIMIT < ts < TS_LIMIT else None  # NaN, infinity, overflow: no stamp


# trace_pipe's line for events lost on a CPU (the ring buffer overwritten before it was read)
_LOST_MARK = ' EVENTS]'
_LOST_RE = re.compile(r'^CPU:\d+ \[LOST(?: \d+)? EVENTS\]$', re.M)


def _first_ts(text):
    start = 0
    while start < len(text):
        end = text.find('\n', start)
        if end < 0:
            end = len(text)
        ts = _line_ts(text[start:end])
        if ts is not None:
            return ts
        start = end + 1
    return None


def _last_ts(text):
    end = len(text)
    while end > 0:
        start = text.rfind('\n', 0, end - 1) + 1
        ts = _line_ts(text[start:end])
        if ts is not None:
            return ts
        end = start
    return None


def _trailing_stack(text):
    """Where a ``<stack trace>`` that reaches the end of ``text`` starts (None: none).

    ``text`` ends with a newline. Only frame lines may follow that header.
    """
    end = len(text) - 1
    while True:
        start = text.rfind('\n', 0, end) + 1
        line = text[start:end]
        if line[1:3] == '=>':
            if start == 0:
                return None
            end = start - 1
            continue
        if line.endswith('<stack trace>'):
            return start
        return None


class EventParser:
    """Streaming parser for the syscall and sched_switch event text.

    ``pids``: only these tasks count (None: all). ``syscalls``: only these
    syscall names (None: all seen).
    """

    def __init__(self, pids=None, syscalls=None, top=10, max_stacks=256):
        self.pids = set(int(p) for p in pids) if pids else None
        self._pid_keys = set(str(p) for p in self.pids) if self.pids else None  # pids as the text shows them
        self.syscalls = set(syscalls) if syscalls else None
        self.top = top
        self.max_stacks = max_stacks
        self.lines = 0
        self.events = 0
        self.first_ts = None
        self.last_ts = None
        self._enter = {}       # pid text -> (name, ts text)
        self._sys = {}         # name -> LatencyStats
        self._out = {}         # pid text -> [ts, state, stack or None]
        self._carry = ''       # a stack trace at the end of the last chunk (may go on)
        self._groups = {}      # stack tuple -> [count, total, max, set(pids), states{}]
        self.unpaired_exits = 0
        self.stacks_overflow = 0
        self._clean_cache = {}
        self.gaps = 0          # losses seen (trace_pipe's LOST lines, the raw reader's GAP records)

    # -- input ---------------------------------------------------------------
    def feed(self, line):
        self.feed_lines((line,))

    def feed_lines(self, lines):
        """Feed an iterable of lines (with or without their newline); parsed in batches by ``feed_text``."""
        for text in _text_batches(lines):
            self.feed_text(text)
        return self

    def feed_text(self, text):
        """Feed a chunk of whole lines (the last newline may be missing).

        The hot path: one regular expression finds every line that matters in
        the chunk (C speed); Python sees only the matched fields. A stack trace
        at the very end of a chunk may go on in the next one, so it is held back
        until then (or ``flush``).
        """
        if self._carry:
            text = self._carry + text
            self._carry = ''
        if not text:
            return self
        if text[-1] != '\n':
            text += '\n'
        tail = _trailing_stack(text)
        if tail is not None:
            self._carry = text[tail:]
            text = text[:tail]
            if not text:
                return self
        self._parse_text(text)
        return self

    def _parse_text(self, text):
        if _LOST_MARK in text:
            parts = _LOST_RE.split(text)
            for index, part in enumerate(parts):
                if index:
                    self._lost()
                self._parse_part(part)
            return
        self._parse_part(text)

    def _lost(self):
        """A ``CPU:N [LOST n EVENTS]`` line (trace_pipe prints it before the first event after
        the loss): what was pending is not paired with what comes after it (the task's own exit
        or switch-in may have been among the lost events)."""
        self._enter.clear()
        self._out.clear()
        self.gaps += 1

    def _parse_part(self, text):
        self.lines += text.count('\n')
        if self.first_ts is None:
            self.first_ts = _first_ts(text)
        last = _last_ts(text)
        if last is not None:
            self.last_ts = last
        # Per chunk, the hot loop only pairs events (dicts keyed by the pid text) and
        # collects what finished; the statistics take each batch in C-level bulk steps.
        enter = self._enter
        enter_pop = enter.pop
        pids = self._pid_keys
        wanted = self.syscalls
        out = self._out
        out_pop = out.pop
        exits = {}           # syscall -> [start ts, end ts, pid text, ...] (texts, flat)
        switch_ins = {}      # stack (None: none) -> [pid text, off-CPU us, state, ...] (flat)
        unpaired = 0
        for task, ts, name, kind, prev_pid, state, next_pid, frames in _EVENT_RE.findall(text):
            if name:
                if kind == '(':
                    enter[task] = (name, ts)
                    continue
                entered = enter_pop(task, None)
                if entered is None or entered[0] != name:
                    unpaired += 1
                    continue
                if pids is not None and task not in pids:
                    continue
                if wanted is not None and name not in wanted:
                    continue
                batch = exits.get(name)
                if batch is None:
                    batch = exits[name] = []
                batch += (entered[1], ts, task)
            elif prev_pid:
                ts = float(ts)
                pending = out_pop(next_pid, None)
                if pending is not None:
                    stack = pending[2] or ()
                    batch = switch_ins.get(stack)
                    if batch is None:
                        batch = switch_ins[stack] = []
                    batch += (next_pid, (ts - pending[0]) * 1e6, pending[1])
                if prev_pid != '0' and (pids is None or prev_pid in pids):
                    out[prev_pid] = [ts, state, None]
            else:
                # <stack trace> of the task that just switched out, with its frames
                pending = out.get(task)
                if pending is not None and pending[2] is None:
                    pending[2] = self._stack(frames)
        self.unpaired_exits += unpaired
        for name, batch in exits.items():
            stats = self._sys.get(name)
            if stats is None:
                stats = self._sys[name] = LatencyStats(top=self.top)
            # (end - start) * 1e6 for every pair, in C
            starts = list(map(float, batch[0::3]))
            stats.add_batch(list(map(_US_PER_S.__mul__, map(operator.sub, map(float, batch[1::3]), starts))),
                            batch[2::3], starts)
            self.events += len(starts)
        if switch_ins:
            self._account_batch(switch_ins)

    def _stack(self, frames):
        stack = self._clean_cache.get(frames)
        if stack is None:
            stack = tuple(clean_stack([f.strip() for f in frames.split('\n =>')[1:]]))
            if len(self._clean_cache) < 4096:
                self._clean_cache[frames] = stack
        return stack

    # -- sched_switch --------------------------------------------------------
    def _account_batch(self, switch_ins):
        """Add the switch-ins of one chunk (per stack, in order) to their stack groups."""
        for stack, batch in switch_ins.items():
            count = len(batch) // 3
            group = self._groups.get(stack)
            if group is None:
                if len(self._groups) >= self.max_stacks:
                    self.stacks_overflow += count
                    stack = ('[other stacks]',)
                    group = self._groups.get(stack)
                if group is None:
                    group = self._groups[stack] = [0, 0.0, 0.0, set(), {}]
            self.events += count
            durations = batch[1::3]
            group[0] += count
            group[1] = functools.reduce(operator.add, durations, group[1])
            longest = max(durations)
            if longest > group[2]:
                group[2] = longest
            pids = group[3]
            if len(pids) < 64:
                for pid in dict.fromkeys(batch[0::3]):
                    if len(pids) >= 64:
                        break
                    pids.add(int(pid))
            states = group[4]
            for state, count in collections.Counter(batch[2::3]).items():
                state = state.rstrip('+') or 'R'
                states[state] = states.get(state, 0) + count

    # -- results -------------------------------------------------------------
    def flush(self):
        """End of input (so far): a stack trace held back at the end of a chunk is parsed now."""
        if self._carry:
            text, self._carry = self._carry, ''
            self._parse_text(text)
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
