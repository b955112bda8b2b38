# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The binary ring buffer of a tracefs instance, decoded without text (stdlib only).

``per_cpu/cpuN/trace_pipe_raw`` hands out the ring buffer's sub-buffers ("pages") as
the kernel wrote them. What a page and an event look like is described by tracefs
itself, and everything here is driven by those files, not by assumptions:

- ``events/header_page``: the page header (``timestamp``, ``commit``) and where the data
  starts; ``commit`` holds the data length and, in bits 31 and 30, the flags "events
  were lost before this page" and "their count is stored after the data".
- ``events/header_event``: the compressed event header, one 32-bit word of ``type_len``
  (5 bits) and ``time_delta`` (27 bits). ``type_len`` 1..28 is a data record of
  ``type_len * 4`` bytes, 0 a data record whose length is the next word; 29 padding
  (``time_delta`` 0: the rest of the page; else a discarded record of the next word's
  length), 30 a time extend (the next word holds bits 27..58 of a delta), 31 an absolute
  time stamp (bits 0..58; the top bits come from the running stamp).
- ``events/<system>/<event>/format``: each event's id and the offset, size and
  signedness of its fields (``common_type``, ``common_pid``, ..., then its own).

Time stamps are kept as the kernel's own reader keeps them (``rb_update_read_stamp``):
the page stamp, plus every data record's and time extend's delta; padding adds nothing.
So ``ts_ns`` of each event equals the stamp the ``trace`` file prints for it.

Pure parts (format text in, layouts out; bytes in, records out) are unit-tested on
pages recorded from a real kernel (tests/fixtures/ftrace/ring/). ``RawEventParser``
turns decoded records into the same result as ``traceparse.EventParser`` gives for the
text of the same buffer, and ``RawReader`` reads an instance's per-CPU files.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import bisect
import collections
import ctypes
import errno
import fcntl
import itertools
import operator
import os
import re
import select
import struct
import sys
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import traceparse, tracefs

# The compressed event header this decoder understands (events/header_event must say so).
TYPE_LEN_BITS = 5
TIME_DELTA_BITS = 27
PADDING = 29
TIME_EXTEND = 30
TIME_STAMP = 31
DATA_MAX = 28
# commit word flags (ring_buffer.c RB_MISSED_EVENTS / RB_MISSED_STORED)
MISSED_EVENTS = 1 << 31
MISSED_STORED = 1 << 30
COMMIT_MASK = MISSED_STORED - 1
# an absolute stamp holds 59 bits; the 5 above come from the running stamp
TS_MSB = 0xf8 << 56
# the clocks whose stamps are nanoseconds (trace_clock); counter, uptime, x86-tsc are not
NS_CLOCKS = frozenset(('local', 'global', 'perf', 'mono', 'mono_raw', 'boot', 'tai'))
ULONG_MAX = (1 << 64) - 1

# tags of the records RawEventParser reads
SWITCH, GAP, STACK = 0, 1, 2
SYSCALL_TAGS = 4  # syscall tags from here: enter 4 + 2 * index, its exit one above

_NATIVE = '<' if sys.byteorder == 'little' else '>'
_INT_CODES = {1: 'b', 2: 'h', 4: 'i', 8: 'q'}


class FormatError(Exception):
    """A format file this decoder cannot use (the text reader is used instead)."""


Field = collections.namedtuple('Field', 'name type offset size signed')
EventFormat = collections.namedtuple('EventFormat', 'name id fields print_fmt')
PageLayout = collections.namedtuple('PageLayout', 'header data_offset page_size commit_size')


# ---------------------------------------------------------------------------
# format files (text in, layouts out)

_FIELD_RE = re.compile(r'^\s*field:\s*(?P<decl>[^;]+);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);'
                       r'(?:\s*signed:\s*(?P<signed>\d+);)?', re.M)


def _field(match):
    decl = match.group('decl').strip()
    name = decl.split()[-1]
    array = name.find('[')
    if array >= 0:
        name = name[:array]
    name = name.lstrip('*')
    return Field(name, decl, int(match.group('offset')), int(match.group('size')),
                 match.group('signed') == '1')


def parse_format(text):
    """An event's ``format`` file -> EventFormat (fields by name); FormatError when it
    lacks a name, an id or the common fields."""
    name = re.search(r'^name:\s*(\S+)', text, re.M)
    ident = re.search(r'^ID:\s*(\d+)', text, re.M)
    if not name or not ident:
        raise FormatError('format without name or ID')
    fields = dict((f.name, f) for f in map(_field, _FIELD_RE.finditer(text)))
    for common in ('common_type', 'common_pid'):
        if common not in fields:
            raise FormatError('%s: no %s field' % (name.group(1), common))
    if fields['common_type'].offset != 0 or fields['common_type'].size != 2:
        raise FormatError('%s: common_type is not the first 2 bytes' % name.group(1))
    fmt = re.search(r'^print fmt:\s*(.*)$', text, re.M)
    return EventFormat(name.group(1), int(ident.group(1)), fields, fmt.group(1) if fmt else '')


def parse_header_page(text):
    """``events/header_page`` -> PageLayout (header Struct of stamp and commit, where the
    data starts, the page size)."""
    fields = dict((f.name, f) for f in map(_field, _FIELD_RE.finditer(text)))
    try:
        stamp, commit, data = fields['timestamp'], fields['commit'], fields['data']
    except KeyError as err:
        raise FormatError('header_page without %s' % err) from None
    if stamp.offset != 0 or stamp.size != 8 or commit.offset != 8 or commit.size not in (4, 8):
        raise FormatError('header_page: unexpected timestamp/commit layout')
    if data.offset < 8 + commit.size or data.size <= 0:
        raise FormatError('header_page: unexpected data layout')
    header = struct.Struct(_NATIVE + 'Q' + _INT_CODES[commit.size].upper())
    return PageLayout(header, data.offset, data.offset + data.size, commit.size)


def check_header_event(text):
    """FormatError unless ``events/header_event`` describes the header decoded here."""
    want = {'type_len': '%d bits' % TYPE_LEN_BITS, 'time_delta': '%d bits' % TIME_DELTA_BITS,
            'padding': 'type == %d' % PADDING, 'time_extend': 'type == %d' % TIME_EXTEND,
            'time_stamp': 'type == %d' % TIME_STAMP, 'data max type_len': '== %d' % DATA_MAX}
    seen = {}
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep:
            seen[key.strip()] = ' '.join(value.split())
    for key, value in want.items():
        if seen.get(key) != value:
            # 'data max type_len  == 28' has no colon: look for it whole
            if key == 'data max type_len' and re.search(r'data max type_len\s*==\s*%d\b' % DATA_MAX, text):
                continue
            raise FormatError('header_event: %s is %r, not %r' % (key, seen.get(key), value))


def _int_expr(text):
    """Value of an integer expression of literals with | + - << >> & and parentheses."""
    ops = {ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.Add: operator.add,
           ast.Sub: operator.sub, ast.LShift: operator.lshift, ast.RShift: operator.rshift}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise FormatError('not an integer expression: %r' % text)
    try:
        tree = ast.parse(text.strip(), mode='eval')
    except SyntaxError:
        raise FormatError('not an integer expression: %r' % text) from None
    return value(tree.body)


_FLAG_RE = re.compile(r'\{\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*"([^"]*)"\s*\}')


def parse_state_flags(print_fmt, field='prev_state'):
    """sched_switch's ``print fmt`` -> (mask, [(bit, letter)], preempt bit): how the text
    prints ``prev_state`` (``__print_flags`` of the masked bits, ``R`` when none, ``+``
    for the preempted bit)."""
    ref = 'REC->%s & ' % field
    start = print_fmt.find('__print_flags(' + ref)
    if start < 0:
        raise FormatError('no __print_flags(%s...) in print fmt' % ref)
    expr_start = start + len('__print_flags(' + ref)
    expr_end = print_fmt.find(', "', expr_start)
    flags_end = print_fmt.find(')', print_fmt.find('}', expr_end) if expr_end > 0 else -1)
    plus = print_fmt.find('? "+"', flags_end)
    if expr_end < 0 or plus < 0:
        raise FormatError('unexpected %s print format' % field)
    mask = _int_expr(print_fmt[expr_start:expr_end])
    flags = [(int(bit, 0), letter) for bit, letter in _FLAG_RE.findall(print_fmt[expr_end:flags_end + 1])]
    plus_ref = print_fmt.rfind(ref, flags_end, plus)
    if not flags or plus_ref < 0:
        raise FormatError('unexpected %s print format' % field)
    return mask, flags, _int_expr(print_fmt[plus_ref + len(ref):plus])


def state_text(value, mask, flags, preempt):
    """``prev_state`` as the text prints it (``S``, ``D``, ``R+``, ``D|W``, ...)."""
    masked = value & mask
    if masked:
        names = []
        for bit, letter in flags:
            if masked & bit:
                names.append(letter)
                masked &= ~bit
        if masked:
            names.append('0x%x' % masked)
        text = '|'.join(names)
    else:
        text = 'R'
    return text + ('+' if value & preempt else '')


def field_struct(fmt, names):
    """A precompiled Struct that unpacks the integer fields ``names`` of ``fmt`` (in offset
    order) from the start of an event's data."""
    fields = []
    for name in names:
        field = fmt.fields.get(name)
        if field is None or field.size not in _INT_CODES:
            raise FormatError('%s: no integer field %s' % (fmt.name, name))
        fields.append(field)
    layout, pos = [_NATIVE], 0
    for field in fields:
        if field.offset < pos:
            raise FormatError('%s: fields overlap or are not in offset order' % fmt.name)
        if field.offset > pos:
            layout.append('%dx' % (field.offset - pos))
        code = _INT_CODES[field.size]
        layout.append(code if field.signed else code.upper())
        pos = field.offset + field.size
    return struct.Struct(''.join(layout))


# ---------------------------------------------------------------------------
# pages (bytes in, records out)


PageStats = collections.namedtuple('PageStats', 'pages missed_pages missed_events paddings extends stamps bad_pages '
                                   'records other')
# handler kinds: how many 32-bit words a record hands out, or one of these
PAYLOAD = -1   # (ts_ns, tag, payload byte offset, payload length): for decode_fields
KSTACK = -2    # (ts_ns, tag, pid, (caller address, ...)): a kernel_stack record


def word_index(fmt, name):
    """The 32-bit word (from the start of the event's data) that holds field ``name``'s value:
    a 4-byte field on a 4-byte boundary, or the low half of an 8-byte one (flags and states
    whose bits fit in 32). FormatError otherwise (the text reader is used)."""
    field = fmt.fields.get(name)
    if field is None:
        raise FormatError('%s: no field %s' % (fmt.name, name))
    if field.offset % 4 or field.size not in (4, 8):
        raise FormatError('%s: %s is not a 32-bit aligned word' % (fmt.name, name))
    word = field.offset // 4
    if field.size == 8 and _NATIVE == '>':
        word += 1
    return word


class Walker:
    """Decodes the pages of one CPU's ``trace_pipe_raw`` bytes into records.

    ``handlers``: {event id: (tag, kind, a, b, c)}. kind 1 makes ``(ts_ns, tag, w[a], 0, 0)``,
    kind 3 ``(ts_ns, tag, w[a], w[b], w[c])`` (w: the record's data as unsigned 32-bit words,
    a/b/c word indexes from word_index), PAYLOAD ``(ts_ns, tag, byte offset, length, 0)``,
    KSTACK ``(ts_ns, tag, pid, callers, key)`` (a: the pid's word, b: the size's word, c: the
    callers' word; key: the record's bytes from its size word, the same for the same stack). Records of other ids are counted in ``other``. ``stats()``: pages,
    pages flagged with lost events before them, the lost events they stored, paddings,
    time extends, absolute stamps, pages cut short (a record running past the commit),
    data records, records of other ids.
    """

    def __init__(self, layout, handlers, gaps=False, pairs=False):
        self.layout = layout
        self.handlers = handlers
        self.gaps = gaps
        self.pairs = pairs
        self.pages = self.missed_pages = self.missed_events = 0
        self.paddings = self.extends = self.stamps = self.bad_pages = 0
        self.records = self.other = self._other_run = 0
        # the word of common_pid in syscall records (kind 1 handlers on it take the hot path)
        self.fast_word = 1
        self._long = struct.Struct(_NATIVE + ('Q' if layout.commit_size == 8 else 'I'))
        self._callers = {}
        self._fast_tags = None
        self._stacks = {}   # a kernel_stack record's bytes from its size word -> its callers

    def stats(self):
        return PageStats(self.pages, self.missed_pages, self.missed_events, self.paddings, self.extends,
                         self.stamps, self.bad_pages, self.records, self.other)

    def walk(self, data, out):
        """Append the handled records of every whole page of ``data`` to ``out`` (time
        order: one CPU's pages come in order). Returns the bytes used (whole pages).

        With ``gaps``, a page flagged with lost events before it is preceded by ``(ts_ns,
        GAP, 0, 0, 0)``, ``ts_ns`` the page's stamp. With ``pairs``, a syscall's enter followed
        by its exit (the next record handled here, same task, on the same page) is one record
        ``(exit ts_ns, -exit tag, pid, enter ts_ns, 0)``; never the first record of a walk (so
        the first stamp handed out is a record's own)."""
        layout = self.layout
        size = layout.page_size
        used = len(data) - len(data) % size
        if not used:
            return 0
        words = memoryview(data)[:used].cast('I')
        header = layout.header.unpack_from
        first = layout.data_offset // 4
        # the hot path: handlers of kind 1 on the same word (every syscall event's common_pid),
        # and the one kind-3 handler (sched_switch)
        fast_tags = self._fast_tags
        if fast_tags is None:  # event id -> tag (a list: indexing it costs less than dict.get)
            fast_tags = self._fast_tags = [None] * 65536
            for ident, h in self.handlers.items():
                if h[1] == 1 and h[2] == self.fast_word and 0 <= ident < 65536:
                    fast_tags[ident] = h[0]
        pid_word = self.fast_word
        three = [(ident, h) for ident, h in self.handlers.items() if h[1] == 3]
        three_id, (three_tag, _count, wa, wb, wc) = three[0] if len(three) == 1 else (-1, (0, 0, 0, 0, 0))
        stack = [(ident, h) for ident, h in self.handlers.items() if h[1] == KSTACK]
        stack_id, (stack_tag, _kind, sa, sb, sc) = stack[0] if len(stack) == 1 else (-1, (0, 0, 0, 0, 0))
        stacks = self._stacks
        stacks_get = stacks.get
        append = out.append
        before = len(out)
        fold = self.pairs
        pairs = markers = 0
        data_max = DATA_MAX
        held_ts = held_pid = 0
        for base in range(0, used, size):
            ts, commit = header(data, base)
            length = commit & COMMIT_MASK
            self.pages += 1
            if commit & MISSED_EVENTS:
                self.missed_pages += 1
                if commit & MISSED_STORED and layout.data_offset + length + self._long.size <= size:
                    self.missed_events += self._long.unpack_from(data, base + layout.data_offset + length)[0]
                if self.gaps:
                    append((ts, GAP, 0, 0, 0))
                    markers += 1
            # an enter not yet appended (pairs): appended before any other record, or made one
            # pair record with its exit; never held across a page
            held_tag = -1
            i = base // 4 + first
            end = i + min(length, size - layout.data_offset) // 4
            while i < end:
                head = words[i]
                kind = head & 31
                if 0 < kind <= data_max:
                    j = i + 1
                    i = j + kind
                    if i > end:
                        self.bad_pages += 1
                        break
                    ts += head >> 5
                    ident = words[j] & 0xffff
                    tag = fast_tags[ident]
                    if tag is not None:
                        pid = words[j + pid_word]
                        if tag & 1:
                            if held_tag == tag - 1 and held_pid == pid:
                                append((ts, -tag, pid, held_ts, 0))
                                pairs += 1
                                held_tag = -1
                                continue
                            if held_tag >= 0:
                                append((held_ts, held_tag, held_pid, 0, 0))
                                held_tag = -1
                            append((ts, tag, pid, 0, 0))
                        else:
                            if held_tag >= 0:
                                append((held_ts, held_tag, held_pid, 0, 0))
                                held_tag = -1
                            if fold:
                                held_ts, held_tag, held_pid = ts, tag, pid
                            else:
                                append((ts, tag, pid, 0, 0))
                        continue
                    if held_tag >= 0:
                        append((held_ts, held_tag, held_pid, 0, 0))
                        held_tag = -1
                    if ident == three_id:
                        append((ts, three_tag, words[j + wa], words[j + wb], words[j + wc]))
                    elif ident == stack_id:
                        key = data[(j + sb) * 4:i * 4]
                        callers = stacks_get(key)
                        if callers is None:
                            callers = self._stack(data, j, i, words[j + sb], sc)
                            if len(stacks) < 4096:
                                stacks[key] = callers
                        append((ts, stack_tag, words[j + sa], callers, key))
                    else:
                        self._record(words, data, j, i, ts, append)
                elif not kind:  # a data record longer than 112 bytes: its length is the next word
                    j = i + 2
                    i += 1 + (words[i + 1] + 3) // 4
                    if i > end or i < j:
                        self.bad_pages += 1
                        break
                    ts += head >> 5
                    if held_tag >= 0:
                        append((held_ts, held_tag, held_pid, 0, 0))
                        held_tag = -1
                    self._record(words, data, j, i, ts, append)
                elif kind == PADDING:
                    self.paddings += 1
                    if not head >> 5:
                        break  # the rest of the page is padding
                    # a discarded record or the page's unused tail: its delta is not counted
                    # (as rb_update_read_stamp does)
                    i += 1 + (words[i + 1] + 3) // 4
                elif kind == TIME_EXTEND:
                    self.extends += 1
                    ts += (words[i + 1] << TIME_DELTA_BITS) + (head >> 5)
                    i += 2
                else:  # TIME_STAMP: absolute, 59 bits
                    self.stamps += 1
                    stamp = (words[i + 1] << TIME_DELTA_BITS) + (head >> 5)
                    if ts & TS_MSB:
                        stamp |= ts & TS_MSB
                        if stamp < ts:
                            stamp += 1 << 59
                    ts = stamp
                    i += 2
            if held_tag >= 0:
                append((held_ts, held_tag, held_pid, 0, 0))
        words.release()
        if pairs and len(out) > before and out[before][1] < 0:  # the first record: enter and exit
            ts, tag, pid, start, _zero = out[before]
            out[before:before + 1] = [(start, -tag - 1, pid, 0, 0), (ts, -tag, pid, 0, 0)]
            pairs -= 1
        self.records += len(out) - before - markers + pairs + self._other_run
        self.other += self._other_run
        self._other_run = 0
        return used

    def _record(self, words, data, j, i, ts, append):
        """A record off the hot path (words j..i)."""
        handler = self.handlers.get(words[j] & 0xffff)
        if handler is None:
            self._other_run += 1
            return
        tag, count, a, b, c = handler
        if count == 1:
            append((ts, tag, words[j + a], 0, 0))
        elif count == 3:
            append((ts, tag, words[j + a], words[j + b], words[j + c]))
        elif count == KSTACK:
            append((ts, tag, words[j + a], self._stack(data, j, i, words[j + b], c), data[(j + b) * 4:i * 4]))
        else:
            append((ts, tag, j * 4, (i - j) * 4, 0))

    def _stack(self, data, start, end, size, caller_word):
        """The caller addresses of a kernel_stack record (words start..end): ``size``
        entries at most, up to the first ULONG_MAX."""
        count = (end - start - caller_word) // 2
        if 0 < size < count:
            count = size
        unpack = self._callers.get(count)
        if unpack is None:
            unpack = self._callers[count] = struct.Struct(_NATIVE + '%dQ' % max(count, 0)).unpack_from
        callers = unpack(data, (start + caller_word) * 4)
        if ULONG_MAX in callers:
            callers = callers[:callers.index(ULONG_MAX)]
        return callers


def scalar_fields(fmt):
    """The names of ``fmt``'s integer fields (not arrays), in offset order."""
    return [f.name for f in sorted(fmt.fields.values(), key=operator.attrgetter('offset'))
            if f.size in _INT_CODES and '[' not in f.type]


def decode_fields(fmt, data, offset, unpack=None):
    """The integer fields of one record (``fmt``'s, its data at ``offset``) as {name: int},
    signed as the format says, and its char arrays as text. ``unpack``: field_struct of
    scalar_fields(fmt), when the caller keeps one."""
    names = scalar_fields(fmt)
    if unpack is None:
        unpack = field_struct(fmt, names)
    out = dict(zip(names, unpack.unpack_from(data, offset)))
    for field in fmt.fields.values():
        if field.type.startswith('char') and '[' in field.type:
            raw = bytes(data[offset + field.offset:offset + field.offset + field.size])
            out[field.name] = raw.split(b'\0', 1)[0].decode('utf-8', 'replace')
    return out


def records(pages, layout, formats):
    """Every data record of ``pages`` (one CPU's bytes) whose id is in ``formats``
    ({id: EventFormat}) as (ts_ns, EventFormat, fields dict); with the Walker's stats."""
    walker = Walker(layout, dict((ident, (fmt, PAYLOAD, 0, 0, 0)) for ident, fmt in formats.items()))
    out = []
    walker.walk(pages, out)
    structs = dict((fmt.id, field_struct(fmt, scalar_fields(fmt))) for fmt in formats.values())
    return [(ts, fmt, decode_fields(fmt, pages, offset, structs[fmt.id]))
            for ts, fmt, offset, _length, _zero in out], walker.stats()


# ---------------------------------------------------------------------------
# kernel symbols (kernel_stack records hold addresses)

def parse_kallsyms(lines):
    """/proc/kallsyms lines -> (sorted addresses, names) of the text symbols."""
    pairs = []
    for line in lines:
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] in 'tTwW':
            try:
                pairs.append((int(parts[0], 16), parts[2]))
            except ValueError:
                continue
    pairs.sort()
    return [a for a, _n in pairs], [n for _a, n in pairs]


class Symbols:
    """Address -> the function holding it, as the trace's ``=> name`` lines print it.
    ``Symbols.at(path)`` reads /proc/kallsyms only when the first address is looked up."""

    def __init__(self, addresses=None, names=None, path=None):
        self.addresses = addresses
        self.names = names
        self.path = path

    @classmethod
    def at(cls, path='/proc/kallsyms'):
        return cls(path=path)

    def _load(self):
        with open(self.path, 'r') as handle:
            self.addresses, self.names = parse_kallsyms(handle)

    def usable(self):
        """False when addresses are hidden (kptr_restrict: every one reads 0) or unreadable."""
        if self.addresses is None:
            try:
                with open(self.path, 'r') as handle:
                    first = handle.readline().split()
            except (IOError, OSError):
                return False
            return bool(first) and first[0].strip('0') != ''
        return bool(self.addresses) and self.addresses[-1] != 0

    def name(self, address):
        if self.addresses is None:
            self._load()
        index = bisect.bisect_right(self.addresses, address) - 1
        if index < 0:
            return '0x%x' % address
        return self.names[index]


# ---------------------------------------------------------------------------
# the events sample from records (the same result as EventParser on the text)

class RawEventParser(traceparse.EventParser):
    """``traceparse.EventParser``'s pairing and statistics, fed decoded records instead of
    text: syscall enter/exit per task, sched_switch out/in per task, and the kernel stack
    recorded at the switch-out (symbolised with ``symbols``).

    ``names``: {syscall tag: name} (enter tags even, the exit tag one above).
    ``states``: (mask, flags, preempt) of sched_switch's prev_state (parse_state_flags).
    ``resolution_ns``: stamps are rounded to this before use (1000: microseconds, as the
    text prints them; then the result equals EventParser's on the text of the buffer).
    ``lines`` counts the records fed.
    """

    def __init__(self, names, states=None, symbols=None, pids=None, syscalls=None, top=10, max_stacks=256,
                 resolution_ns=1):
        super(RawEventParser, self).__init__(pids=pids, syscalls=syscalls, top=top, max_stacks=max_stacks)
        self.names = dict(names)
        if self.syscalls is not None:  # only the syscalls asked for are paired
            self.names = dict((tag, name) for tag, name in self.names.items() if name in self.syscalls)
        self.states = states
        self.symbols = symbols
        self.resolution_ns = int(resolution_ns)
        self._state_text = {}
        self._stack_of = {}
        self._gap = -1       # the stamp of the last lost-events gap (GAP record) fed

    def feed_text(self, text):
        raise TypeError('RawEventParser takes records (feed_records), not text')

    def _ns(self, values):
        step = self.resolution_ns
        if step <= 1:
            return values
        half = step // 2
        return [(v + half) // step * step for v in values]

    def feed_records(self, records):
        """Records in time order (all CPUs merged): (ts_ns, tag, ...) as Walker makes them
        (with or without its pairs and GAP markers: the same result).

        A GAP (events lost on a CPU before the stamp) ends every pending enter and switch-out
        made before it: the task's exit or switch-in may have been among the lost events, and
        a later one would be paired with it across the loss (a getppid of 250 ms, a 1 ms sleep
        of 70 ms). Such exits count as unpaired; such switch-ins are not counted."""
        if not records:
            return self
        first, last = self._ns([records[0][0], records[-1][0]])
        if self.first_ts is None:
            self.first_ts = first / 1e9
        self.last_ts = last / 1e9
        enter = self._enter
        enter_pop = enter.pop
        pids = self.pids
        out = self._out
        out_pop = out.pop
        state_text = self._state_text
        stack_of = self._stack_of.get
        exits = dict((tag, []) for tag in self.names if tag & 1)
        switch_ins = {}
        unpaired = pairs = markers = 0
        round_ts = self.resolution_ns > 1
        gap = self._gap
        for ts, tag, a, b, c in records:
            if tag < 0:  # an enter and its exit (Walker pairs): a pid, b the enter's stamp
                enter_pop(a, None)
                pairs += 1
                if b < gap:
                    unpaired += 1
                elif pids is None or a in pids:
                    exits[-tag] += (b, ts, a)
            elif tag & 1:  # a syscall's exit (a: pid), or a GAP
                if tag == GAP:
                    gap = self._ns((ts,))[0] if round_ts else ts
                    markers += 1
                    continue
                entered = enter_pop(a, None)
                if entered is None or entered[0] != tag or entered[1] < gap:
                    unpaired += 1
                elif pids is None or a in pids:
                    exits[tag] += (entered[1], ts, a)
            elif tag >= SYSCALL_TAGS:  # its enter: wait for the exit tag
                enter[a] = (tag + 1, ts)
            elif tag == SWITCH:  # a: prev_pid, b: prev_state, c: next_pid
                if round_ts:
                    ts = self._ns((ts,))[0]
                pending = out_pop(c, None)
                if pending is not None and pending[0] >= gap:
                    stack = pending[2] or ()
                    batch = switch_ins.get(stack)
                    if batch is None:
                        batch = switch_ins[stack] = []
                    batch += (c, (ts - pending[0]) / 1000.0, pending[1])
                if a and (pids is None or a in pids):
                    text = state_text.get(b)
                    if text is None:
                        text = state_text[b] = state_text_of(b, self.states) if self.states else 'R'
                    out[a] = [ts, text, None]
            else:  # STACK: a: pid, b: callers, c: their bytes (the cache's key)
                pending = out.get(a)
                if pending is not None and pending[2] is None:
                    stack = stack_of(c)
                    if stack is None:
                        stack = self._named_stack(b, c)
                    pending[2] = stack
        self._gap = gap
        self.lines += len(records) + pairs - markers
        self.unpaired_exits += unpaired
        self.gaps += markers
        for tag, batch in exits.items():
            if not batch:
                continue
            name = self.names[tag]
            stats = self._sys.get(name)
            if stats is None:
                stats = self._sys[name] = traceparse.LatencyStats(top=self.top)
            starts = self._ns(batch[0::3])
            ends = self._ns(batch[1::3])
            stats.add_batch(list(map(operator.truediv, map(operator.sub, ends, starts), itertools.repeat(1000.0))),
                            batch[2::3], list(map(operator.truediv, starts, itertools.repeat(1e9))))
            self.events += len(starts)
        if switch_ins:
            self._account_batch(switch_ins)
        return self

    def _named_stack(self, callers, key):
        names = [self.symbols.name(a) for a in callers] if self.symbols else ['0x%x' % a for a in callers]
        stack = tuple(traceparse.clean_stack(names))
        if len(self._stack_of) < 4096:
            self._stack_of[key] = stack
        return stack

    def flush(self):
        return self


def state_text_of(value, states):
    mask, flags, preempt = states
    return state_text(value, mask, flags, preempt)


# ---------------------------------------------------------------------------
# an instance's raw files (host access)

def _read(path):
    with open(path, 'r') as handle:
        return handle.read()


def selected_clock(text):
    """trace_clock text -> the clock in brackets (``[local] global ...`` -> local)."""
    match = re.search(r'\[(\S+)\]', text)
    return match.group(1) if match else None


def cpu_dirs(base):
    """[(cpu number, per_cpu/cpuN path)] of a tracefs root or instance, by number."""
    per_cpu = os.path.join(base, 'per_cpu')
    out = []
    for name in os.listdir(per_cpu):
        if name.startswith('cpu') and name[3:].isdigit():
            out.append((int(name[3:]), os.path.join(per_cpu, name)))
    return sorted(out)


class EventsPlan(collections.namedtuple('EventsPlan', 'layout handlers names states stack_id')):
    """What an events sample's decoding needs, from the instance's format files."""


def _event_format(events, *parts):
    """parse_format of events/<parts>/format; its errors name the file."""
    try:
        return parse_format(_read(os.path.join(events, *parts + ('format',))))
    except FormatError as err:
        raise FormatError('events/%s/format: %s' % ('/'.join(parts), err)) from None


def plan_events(base, syscalls, offcpu):
    """Read the format files of an instance (``base``) for a syscalls (``syscalls``: names)
    and/or offcpu sample -> EventsPlan. FormatError (with the reason) when anything the
    decoder needs is missing or laid out otherwise: the caller reads text instead."""
    if _NATIVE != '<':
        raise FormatError('big-endian host: the raw reader decodes little-endian records only')
    events = os.path.join(base, 'events')
    try:
        clock = selected_clock(_read(os.path.join(base, 'trace_clock')))
        if clock not in NS_CLOCKS:
            raise FormatError('trace_clock %s does not count nanoseconds' % clock)
        layout = parse_header_page(_read(os.path.join(events, 'header_page')))
        check_header_event(_read(os.path.join(events, 'header_event')))
        handlers, names = {}, {}
        for index, name in enumerate(syscalls or ()):
            for kind, prefix in enumerate(('sys_enter_', 'sys_exit_')):
                fmt = _event_format(events, 'syscalls', prefix + name)
                tag = SYSCALL_TAGS + 2 * index + kind
                handlers[fmt.id] = (tag, 1, word_index(fmt, 'common_pid'), 0, 0)
                names[tag] = name
        states, stack_id = None, None
        if offcpu:
            fmt = _event_format(events, 'sched', 'sched_switch')
            handlers[fmt.id] = (SWITCH, 3, word_index(fmt, 'prev_pid'), word_index(fmt, 'prev_state'),
                                word_index(fmt, 'next_pid'))
            states = parse_state_flags(fmt.print_fmt)
            stack = _event_format(events, 'ftrace', 'kernel_stack')
            caller = stack.fields.get('caller')
            if caller is None or caller.offset % 8:
                raise FormatError('kernel_stack: no 8-byte aligned caller array')
            handlers[stack.id] = (STACK, KSTACK, word_index(stack, 'common_pid'), word_index(stack, 'size'),
                                  caller.offset // 4)
            stack_id = stack.id
    except (IOError, OSError) as err:
        raise FormatError('cannot read %s (%s)' % (getattr(err, 'filename', '') or 'a format file',
                                                   err.strerror or err)) from None
    if len(handlers) != 2 * len(syscalls or ()) + (2 if offcpu else 0):
        raise FormatError('two events share an id')
    return EventsPlan(layout, handlers, names, states, stack_id)


def merge_cpus(walkers, datas, held=()):
    """Decode each CPU's bytes with its Walker and merge the records (and ``held``, records
    of an earlier read) in time order; on equal stamps the lower CPU first, as the text
    (a stable sort of the CPUs' runs). Returns (records, [last stamp of each CPU that had
    data])."""
    merged = list(held)
    runs = 1 if merged else 0
    lasts = []
    for walker, data in zip(walkers, datas):
        out = []
        walker.walk(data, out)
        if out:
            lasts.append(out[-1][0])
            merged += out
            runs += 1
    if runs > 1:
        merged.sort(key=operator.itemgetter(0))
    return merged, lasts


def hold_back(records, mark):
    """(records after ``mark``, records up to it): a CPU read before another may still hand
    out records older than the other's newest."""
    cut = len(records)
    while cut and records[cut - 1][0] > mark:
        cut -= 1
    return records[cut:], records[:cut]


SPLICE_F_MOVE = 1
SPLICE_F_NONBLOCK = 2
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)  # Linux; named by Python 3.10+
F_GETPIPE_SZ = getattr(fcntl, 'F_GETPIPE_SZ', 1032)
_LIBC_SPLICE = []


def _libc_splice():
    """splice(2) from the C library, for a Python without os.splice (before 3.10), or None."""
    if not _LIBC_SPLICE:
        try:
            func = ctypes.CDLL(None, use_errno=True).splice
            func.restype = ctypes.c_ssize_t
            func.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.c_uint]
        except (AttributeError, OSError):
            func = None
        _LIBC_SPLICE.append(func)
    return _LIBC_SPLICE[0]


def splice_pages(fd_in, fd_out, count):
    """Move up to ``count`` bytes of whole pages from a ``trace_pipe_raw`` into a pipe without
    copying them (the kernel hands the pages over). -> the bytes moved; 0 when the CPU has no
    whole page to give (the writer is still on it: EAGAIN) or the pipe is full; None when this
    kernel or Python cannot splice (the caller copies with read() instead)."""
    flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
    try:
        if hasattr(os, 'splice'):
            return os.splice(fd_in, fd_out, count, flags=flags)
        func = _libc_splice()
        if func is None:
            return None
        moved = func(fd_in, None, fd_out, None, count, flags)
        if moved < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return moved
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            return 0
        if err.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            return None
        raise


def read_available(fd, size):
    """Everything a non-blocking descriptor has now (read in ``size`` pieces until EAGAIN or end)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, size)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                break
            raise
        if not data:
            break
        chunks.append(data)
    return b''.join(chunks)


def pipe_max_size(path='/proc/sys/fs/pipe-max-size'):
    """The largest pipe an unprivileged process may ask for (1 MiB by default), or 1 MiB."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1 << 20


class PagePipe:
    """Whole pages of one CPU spliced out of the ring buffer during a sample's window, held in a
    pipe (kernel memory, not copied) until they are decoded after tracing stops."""

    def __init__(self, capacity):
        self.read_fd, self.write_fd = os.pipe()
        self.size = 0
        for fd in (self.read_fd, self.write_fd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self.write_fd, F_SETPIPE_SZ, capacity)
        except OSError:
            pass  # the default size (64 KiB): more pipes, the same pages
        self.capacity = fcntl.fcntl(self.write_fd, F_GETPIPE_SZ)

    def room(self, page_size):
        """Bytes of whole pages the pipe still takes."""
        return (self.capacity - self.size) // page_size * page_size

    def take(self):
        """Everything held, then the pipe is closed."""
        data = read_available(self.read_fd, max(self.capacity, 1 << 16))
        self.close()
        return data

    def __len__(self):
        return self.size

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = -1


class RawReader:
    """Reads an instance's ``per_cpu/cpuN/trace_pipe_raw`` files (non-blocking, whole pages)
    and hands the decoded records of all CPUs, merged in time order, to ``on_records``.

    Between reads, records newer than the oldest "last record" of the CPUs that had data
    are held back until the next read (another CPU may still hand out older ones); ``drain``
    (after tracing stopped) hands out everything.

    During the window (``read_until``) the whole pages are spliced out of the ring buffer into
    pipes (``PagePipe``: the kernel hands the pages over, nothing is copied while the traced
    tasks run; copying them with read() cost a busy traced loop on the other CPU up to 2.5 points,
    docs/ftrace_sample.md), up to ``spool_bytes`` (all CPUs) and ``MAX_PIPES``, and decoded by
    ``drain`` after tracing stops. Where splice is not there (or the pipes are used up) the
    pages are read and kept as they are. Above ``spool_bytes`` they are decoded at once, so
    memory stays bounded whatever the sample's length.
    """

    SPOOL_BYTES = 16 << 20
    READ_BYTES = 4 << 20  # of each CPU, one read
    MAX_PIPES = 64  # held at once: two descriptors each

    def __init__(self, base, plan, spool_bytes=SPOOL_BYTES):
        self.base = base
        self.plan = plan
        self._poller = None
        self.walkers = []
        self.fds = []
        self.bytes = 0
        self._held = []
        self.spool_bytes = spool_bytes
        self._spooled = []  # per CPU: the pages read (bytes) or spliced (PagePipe) during the window, not decoded yet
        self._spooled_bytes = 0
        self.splicing = True  # until splice_pages says this kernel or Python cannot
        self.pipes = 0
        self.pipe_capacity = pipe_max_size()
        try:
            for cpu, path in cpu_dirs(base):
                self.fds.append(os.open(os.path.join(path, 'trace_pipe_raw'), os.O_RDONLY | os.O_NONBLOCK))
                self.walkers.append(Walker(plan.layout, plan.handlers, gaps=True, pairs=True))
                self._spooled.append([])
        except OSError:
            self.close()
            raise

    def stats(self):
        """PageStats summed over the CPUs."""
        return PageStats(*map(sum, zip(*(w.stats() for w in self.walkers)))) if self.walkers else None

    def read_until(self, deadline, on_records, interval_s=0.25, drain_if=None, buffer_bytes=None):
        """As tracefs.PipeReader.read_until, but asleep in the kernel until some CPU's buffer
        (``buffer_bytes`` each) reaches the instance's ``buffer_percent`` watermark, where the
        kernel has one (``watermark_percent``); read then or when ``drain_if()`` says the
        buffer is filling (the rest after tracing stops), and keep the pages undecoded up to
        ``spool_bytes``. A quiet window wakes the sampler once every
        tracefs.WATERMARK_WAIT_MAX_S instead of every ``interval_s``, and a filling buffer is
        read when it reaches the watermark, not at the next timed check."""
        percent = self.watermark_percent() if buffer_bytes else None
        wait = self.wait if percent else None
        # a wake-up at the watermark reads at least half of it (or of one read's cap): less is a kernel
        # that wakes its pollers on any data
        least = min(buffer_bytes * percent // 200, self.READ_BYTES // 2) if percent else 0
        tracefs.read_until(deadline, lambda: self.spool(on_records), interval_s, drain_if,
                           wait=wait, woken_least=least)

    def watermark_percent(self):
        """The instance's ``buffer_percent`` (how full a CPU's buffer gets before the kernel wakes a
        poller of its trace_pipe_raw) when it is one a reader can wait for (1-99), else None (0: any
        data wakes it; no such file before Linux 5.0)."""
        try:
            percent = int(tracefs.read(os.path.join(self.base, 'buffer_percent')))
        except (OSError, ValueError):
            return None
        return percent if 0 < percent < 100 else None

    def wait(self, timeout_s):
        """Sleep until some CPU's trace_pipe_raw is readable (its buffer at the watermark) or
        ``timeout_s``; True when woken by the kernel."""
        if self._poller is None:
            self._poller = select.poll()
            for fd in self.fds:
                self._poller.register(fd, select.POLLIN)
        return bool(self._poller.poll(max(0.0, timeout_s) * 1000.0))

    def spool(self, on_records, max_bytes=READ_BYTES):
        """Splice (or read) up to ``max_bytes`` of each CPU and keep the pages; decode what is
        kept once it is over ``spool_bytes``. Returns the bytes taken."""
        got = 0
        for pages, fd in zip(self._spooled, self.fds):
            moved = self._splice_cpu(pages, fd, max_bytes) or 0
            # then read what splice leaves (the page the writer is on; everything without splice or
            # pipes): a round takes all of every CPU up to the cap, so a quiet CPU's unfilled page is
            # not handed out after a busy CPU's newer records (_decode_spooled's hold-back needs it)
            data = self._read_cpu(fd, max_bytes - moved)
            if data:
                pages.append(data)
            got += moved + len(data)
        self._spooled_bytes += got
        if self._spooled_bytes > self.spool_bytes:
            self._decode_spooled(on_records)
        return got

    def _splice_cpu(self, pages, fd, max_bytes):
        """Splice up to ``max_bytes`` of whole pages of one CPU into its last pipe (a new one when
        it is full) -> bytes moved, or None when the caller must read instead (no splice on this
        kernel or Python, no pipe left, or the spool's budget used)."""
        if not self.splicing:
            return None
        size = self.plan.layout.page_size
        got = 0
        while got < max_bytes:
            pipe = pages[-1] if pages and isinstance(pages[-1], PagePipe) else None
            if pipe is None or pipe.room(size) < size:
                if self.pipes >= self.MAX_PIPES or self._spooled_bytes + got >= self.spool_bytes:
                    return got or None
                pipe = PagePipe(self.pipe_capacity)
                self.pipes += 1
                pages.append(pipe)
            moved = splice_pages(fd, pipe.write_fd, min(pipe.room(size), (max_bytes - got) // size * size or size))
            if not moved and not pipe.size:  # a new pipe for nothing: not kept
                pages.pop()
                pipe.close()
                self.pipes -= 1
            if moved is None:
                self.splicing = False
                return got or None
            if not moved:
                break
            pipe.size += moved
            self.bytes += moved
            got += moved
        return got

    def _decode_spooled(self, on_records):
        """The kept pages, in the rounds they were taken in (one read or pipe of each CPU a round)."""
        while self._spooled_bytes:
            datas = [pages.pop(0) if pages else b'' for pages in self._spooled]
            self._spooled_bytes -= sum(len(data) for data in datas)
            taken = []
            for data in datas:
                if isinstance(data, PagePipe):
                    data = data.take()
                    self.pipes -= 1  # open pipes: the budget is for the pipes held at once
                taken.append(data)
            self._decode(taken, on_records)

    def _read_cpu(self, fd, max_bytes):
        size = self.plan.layout.page_size
        chunks = []
        got = 0
        while got < max_bytes:
            try:
                data = os.read(fd, size)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    break
                raise
            if not data:
                break
            if len(data) < size:  # never split a page: pad a short read (commit says what is data)
                data += bytes(size - len(data))
            chunks.append(data)
            got += len(data)
        self.bytes += got
        return b''.join(chunks)

    def read_available(self, on_records, max_bytes=READ_BYTES, final=False):
        """Read up to ``max_bytes`` of each CPU; hand out the records (held back ones of the
        last read first). Returns the bytes read."""
        before = self.bytes
        self._decode([self._read_cpu(fd, max_bytes) for fd in self.fds], on_records, final)
        return self.bytes - before

    def _decode(self, datas, on_records, final=False):
        records, lasts = merge_cpus(self.walkers, datas, self._held)
        self._held = []
        if not final and lasts:
            self._held, records = hold_back(records, min(lasts))
        if records:
            on_records(records)

    def drain(self, on_records, max_s=5.0):
        """The pages kept during the window, then what is left (after tracing_on=0), in rounds
        of at most 4 MiB a CPU (memory stays bounded whatever the buffer size), for at most
        ``max_s``; then the held-back records."""
        self._decode_spooled(on_records)
        end = time.monotonic() + max_s
        while time.monotonic() < end and self.read_available(on_records):
            pass
        self.read_available(on_records, max_bytes=0, final=True)

    def close(self):
        self._poller = None
        for pages in self._spooled:
            for data in pages:
                if isinstance(data, PagePipe):
                    data.close()
        self._spooled = [[] for _pages in self._spooled]
        self._spooled_bytes = 0
        self.pipes = 0
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
