"""The binary ring buffer decoder on pages recorded from this project's kernel (6.18).

tests/fixtures/ftrace/ring/accept4-offcpu/ holds one real buffer of a private instance in
both forms (recorded with tests/support/ringcapture.py, the workload's accept4 audited by
a stalled audit consumer): ``trace.txt`` (the ``trace`` file, the kernel's own text of the
buffer) and ``cpuN.raw`` (each CPU's ``trace_pipe_raw`` pages read right after), with the
format files and the kallsyms lines its stacks need. The pages have the lost-events flag
with stored counts, a time extend, records of both CPUs, syscalls whose enter and exit sit
on different pages, and kernel stacks. Absolute stamps, padding records and records longer
than 112 bytes (type_len 0: stacks deeper than these) do not occur in it, so those pages are
built here, byte by byte, from the same header layout.
"""
import os
import shutil
import struct

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import traceparse
from ansible_collections.auditgap.fleet.plugins.module_utils import tracering as tr
from ansible_collections.auditgap.fleet.plugins.modules import ftrace_sample
from tests.support import ringcapture

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'ftrace', 'ring',
                   'accept4-offcpu')
SYSCALLS = ['accept4', 'getppid']


def _read(rel, mode='r'):
    with open(os.path.join(FIX, rel), mode) as handle:
        return handle.read()


def _fmt(rel):
    return tr.parse_format(_read('events/%s/format' % rel))


@pytest.fixture(scope='module')
def plan():
    return tr.plan_events(FIX, SYSCALLS, True)


@pytest.fixture(scope='module')
def symbols():
    with open(os.path.join(FIX, 'kallsyms')) as handle:
        return tr.Symbols(*tr.parse_kallsyms(handle))


@pytest.fixture(scope='module')
def cpus():
    return [_read('cpu%d.raw' % cpu, 'rb') for cpu in (0, 1)]


@pytest.fixture(scope='module')
def merged(plan, cpus):
    walkers = [tr.Walker(plan.layout, plan.handlers) for _ in cpus]
    records, lasts = tr.merge_cpus(walkers, cpus)
    return records, walkers, lasts


def _text_events():
    return ringcapture.text_events(_read('trace.txt'))


def _us(ts_ns):
    return (ts_ns + 500) // 1000  # as the text prints a stamp (ns2usecs)


# ---------------------------------------------------------------------------
# format files

def test_formats_from_this_kernel():
    enter = _fmt('syscalls/sys_enter_accept4')
    assert enter.name == 'sys_enter_accept4' and enter.id > 0
    assert enter.fields['common_pid'] == tr.Field('common_pid', 'int common_pid', 4, 4, True)
    assert enter.fields['__syscall_nr'].offset == 8
    exit_ = _fmt('syscalls/sys_exit_accept4')
    assert (exit_.fields['ret'].offset, exit_.fields['ret'].size, exit_.fields['ret'].signed) == (16, 8, True)
    switch = _fmt('sched/sched_switch')
    assert [switch.fields[n].offset for n in ('prev_comm', 'prev_pid', 'prev_state', 'next_pid')] == [8, 24, 32, 56]
    assert switch.fields['prev_comm'].size == 16
    stack = _fmt('ftrace/kernel_stack')
    assert (stack.fields['size'].offset, stack.fields['caller'].offset) == (8, 16)
    layout = tr.parse_header_page(_read('events/header_page'))
    assert (layout.data_offset, layout.page_size, layout.commit_size) == (16, 4096, 8)
    tr.check_header_event(_read('events/header_event'))


@pytest.mark.parametrize('text, needle', [
    ('name: x\nformat:\n', 'without name or ID'),
    ('name: x\nID: 5\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n', 'common_type'),
])
def test_bad_format_is_a_format_error(text, needle):
    with pytest.raises(tr.FormatError, match=needle):
        tr.parse_format(text)


def test_unknown_event_header_is_refused():
    text = _read('events/header_event').replace('type == 30', 'type == 29')
    with pytest.raises(tr.FormatError, match='time_extend'):
        tr.check_header_event(text)
    with pytest.raises(tr.FormatError, match='header_page'):
        tr.parse_header_page('\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n')


def test_prev_state_printed_as_the_text_prints_it():
    mask, flags, preempt = tr.parse_state_flags(_fmt('sched/sched_switch').print_fmt)
    assert (mask, preempt) == (255, 256) and flags[:3] == [(1, 'S'), (2, 'D'), (4, 'T')]
    text = [tr.state_text(v, mask, flags, preempt) for v in (0, 1, 2, 256, 257, 0x82, 512)]
    assert text == ['R', 'S', 'D', 'R+', 'S+', 'D|I', 'R']
    # the 4.x form: TASK_REPORT_MAX written as a number
    old = ('"prev_state=%s%s", REC->prev_state & (2048-1) ? __print_flags(REC->prev_state & (2048-1), "|", '
           '{ 1, "S"} , { 2, "D" }, { 4, "T" }) : "R", REC->prev_state & 2048 ? "+" : ""')
    assert tr.parse_state_flags(old) == (2047, [(1, 'S'), (2, 'D'), (4, 'T')], 2048)
    with pytest.raises(tr.FormatError):
        tr.parse_state_flags('"prev_state=%ld", REC->prev_state')


def test_field_struct_and_word_index():
    exit_ = _fmt('syscalls/sys_exit_accept4')
    assert tr.field_struct(exit_, ['common_pid', '__syscall_nr', 'ret']).format == '<4xii4xq'
    assert tr.scalar_fields(exit_) == ['common_type', 'common_flags', 'common_preempt_count', 'common_pid',
                                      '__syscall_nr', 'ret']
    switch = _fmt('sched/sched_switch')
    assert [tr.word_index(switch, n) for n in ('prev_pid', 'prev_state', 'next_pid')] == [6, 8, 14]
    with pytest.raises(tr.FormatError, match='aligned'):
        tr.word_index(switch, 'prev_comm')


# ---------------------------------------------------------------------------
# the recorded pages against the kernel's own text of the same buffer

def test_pages_stats(merged):
    records, walkers, _lasts = merged
    stats = [w.stats() for w in walkers]
    assert all(s.pages > 0 and s.bad_pages == 0 and s.other == 0 for s in stats)
    assert sum(s.missed_pages for s in stats) >= 1 and sum(s.missed_events for s in stats) > 0
    assert sum(s.extends for s in stats) >= 1
    assert sum(s.records for s in stats) == len(records) == len(_text_events())


def test_every_record_is_the_text_line(merged, plan, symbols):
    """Record by record, in merged order: stamp (as the text rounds it), pid, event and fields."""
    records, _walkers, _lasts = merged
    text = _text_events()
    names = plan.names
    stacks = 0
    for rec, (_cpu, ts_us, pid, body, frames) in zip(records, text):
        ts, tag, a, b, c = rec
        assert _us(ts) == ts_us, (rec, body)
        if tag >= tr.SYSCALL_TAGS:
            want = ('sys_%s -> ' if tag & 1 else 'sys_%s(') % names[tag]
            assert a == pid and body.startswith(want), (rec, body)
        elif tag == tr.SWITCH:
            state = tr.state_text(b, *plan.states)
            assert body.startswith('sched_switch:') and ' prev_pid=%d ' % a in body, (rec, body)
            assert ' prev_state=%s ' % state in body and ' next_pid=%d ' % c in body, (rec, body)
        else:
            assert body == '<stack trace>' and a == pid
            assert [symbols.name(addr) for addr in b] == frames
            stacks += 1
    assert stacks > 10


def test_syscall_fields_decoded_generically(cpus, plan):
    formats = dict((f.id, f) for f in (_fmt('syscalls/sys_exit_getppid'), _fmt('syscalls/sys_enter_accept4')))
    out, stats = tr.records(cpus[1], plan.layout, formats)
    assert out and stats.records > len(out)
    for _ts, fmt, fields in out:
        if fmt.name == 'sys_exit_getppid':
            assert fields['__syscall_nr'] == 110 and fields['ret'] > 1  # x86_64 getppid: the parent's pid
        else:
            assert fields['__syscall_nr'] == 288 and fields['fd'] == 3 and fields['flags'] == 0x80000


def test_a_syscall_across_a_page_boundary(plan, cpus):
    """An enter that is the last record of a page paired with the exit on the next page."""
    layout = plan.layout
    for data in cpus:
        for base in range(layout.page_size, len(data), layout.page_size):
            before, after = [], []
            tr.Walker(layout, plan.handlers).walk(data[base - layout.page_size:base], before)
            tr.Walker(layout, plan.handlers).walk(data[base:base + layout.page_size], after)
            if before and after and before[-1][1] >= tr.SYSCALL_TAGS and not before[-1][1] & 1 \
                    and after[0][1] == before[-1][1] + 1 and after[0][2] == before[-1][2]:
                parser = tr.RawEventParser(plan.names, pids=None, syscalls=SYSCALLS)
                parser.feed_records(before[-1:] + after[:1])
                assert parser.events == 1 and parser.unpaired_exits == 0
                return
    pytest.fail('the fixture has no syscall split across two pages')


def test_result_equals_event_parser_on_the_text(merged, plan, symbols):
    """With stamps rounded to microseconds as the text prints them, the result is the text
    parser's: counts, percentiles, max, totals, off-CPU groups. (Ties among the slowest
    calls may keep different calls: the text's float stamps make 1.0 us ties inexact.)"""
    records, _walkers, _lasts = merged
    raw = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=SYSCALLS, resolution_ns=1000)
    raw.feed_records(records)
    got = raw.result()
    want = traceparse.EventParser(syscalls=SYSCALLS).feed_text(_read('trace.txt')).result()
    assert got['offcpu'] == want['offcpu']
    assert any('audit_log_start' in g['stack'] for g in got['offcpu'])
    for name in SYSCALLS:
        g, w = dict(got['syscalls'][name]), dict(want['syscalls'][name])
        assert [s['duration_us'] for s in g.pop('slowest')] == [s['duration_us'] for s in w.pop('slowest')]
        assert g == w and g['count'] > 100
    for key in ('events', 'window_s', 'unpaired_exits'):
        assert got[key] == want[key]
    # nanosecond stamps (the default): the same counts, latencies within the text's 1 us
    exact = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=SYSCALLS).feed_records(records).result()
    for name in SYSCALLS:
        g, w = exact['syscalls'][name], want['syscalls'][name]
        assert g['count'] == w['count'] and abs(g['max_us'] - w['max_us']) <= 1.0
        assert abs(g['p99_us'] - w['p99_us']) <= 1.0 + 0.01 * w['p99_us']


def _unfold(records):
    """Pair records back into their enter and exit."""
    out = []
    for rec in records:
        if rec[1] < 0:
            out += [(rec[3], -rec[1] - 1, rec[2], 0, 0), (rec[0], -rec[1], rec[2], 0, 0)]
        else:
            out.append(rec)
    return out


def _write_pipe_raw(base, cpus):
    """An instance's per_cpu/cpuN/trace_pipe_raw as files holding the recorded pages."""
    for cpu, data in enumerate(cpus):
        path = base / 'per_cpu' / ('cpu%d' % cpu)
        path.mkdir(parents=True)
        (path / 'trace_pipe_raw').write_bytes(data)


def _result(plan, symbols, records):
    return tr.RawEventParser(plan.names, plan.states, symbols, syscalls=SYSCALLS).feed_records(records).result()


def test_pairs_and_gaps_records_give_the_record_by_record_result(plan, symbols, cpus, merged):
    """Walker's pair records (an enter and its exit, next to each other on a CPU: one record) give
    the result of the records one by one, with and without lost-events gaps; the first record
    of a walk stays a record of its own (its stamp starts the window)."""
    records = merged[0]
    plain = _result(plan, symbols, records)
    for gaps in (False, True):
        walkers = [tr.Walker(plan.layout, plan.handlers, gaps=gaps, pairs=True) for _ in cpus]
        folded, _lasts = tr.merge_cpus(walkers, cpus)
        singles, _lasts = tr.merge_cpus([tr.Walker(plan.layout, plan.handlers, gaps=gaps) for _ in cpus], cpus)
        assert sum(1 for r in folded if r[1] < 0) > 1000 and len(folded) < 0.7 * len(records)
        assert sum(w.stats().records for w in walkers) == len(records)
        want = _result(plan, symbols, singles)
        assert _result(plan, symbols, folded) == want
        for data in cpus:
            out = []
            tr.Walker(plan.layout, plan.handlers, gaps=gaps, pairs=True).walk(data, out)
            assert out[0][1] >= 0
    # the fixture's lost events sit before each CPU's first page: a gap ends what was pending on
    # the other CPU then (one sleep here), nothing else changes
    gapped = tr.merge_cpus([tr.Walker(plan.layout, plan.handlers, gaps=True) for _ in cpus], cpus)[0]
    assert sum(1 for r in gapped if r[1] == tr.GAP) == 2
    got = _result(plan, symbols, gapped)
    assert got['syscalls'] == plain['syscalls'] and got['events'] == plain['events'] - 1
    assert got['lines'] == plain['lines'] == len(records)


def test_merge_order_and_hold_back(plan):
    """Equal stamps: the lower CPU first, as the text; records newer than the mark wait."""
    recs, _ = tr.merge_cpus([], [], held=[(5, tr.SWITCH, 1, 0, 2)])
    assert recs == [(5, tr.SWITCH, 1, 0, 2)]
    merged = [(1, 4, 7, 0, 0), (2, 5, 7, 0, 0), (3, 4, 8, 0, 0), (4, 5, 8, 0, 0)]
    held, ready = tr.hold_back(merged, 2)
    assert ready == merged[:2] and held == merged[2:]
    held, ready = tr.hold_back(merged, 10)
    assert ready == merged and held == []


# ---------------------------------------------------------------------------
# pages built by hand: what a recorded events sample does not contain

LAYOUT = tr.parse_header_page(_read('events/header_page'))


def _head(kind, delta):
    return struct.pack('<I', kind | delta << 5)


def _syscall(event_id, pid, delta):
    """A 16-byte sys_enter_getppid-like record: common fields + __syscall_nr + padding."""
    return _head(4, delta) + struct.pack('<HBBiii', event_id, 0, 0, pid, 110, 0)


def _page(ts, body, commit_flags=0, missed=None):
    data = body + (struct.pack('<Q', missed) if missed is not None else b'')
    page = struct.pack('<QQ', ts, len(body) | commit_flags) + data
    return page + bytes(LAYOUT.page_size - len(page))


def test_built_pages_padding_extend_stamp_long_record():
    enter_id, exit_id = 101, 102
    handlers = {enter_id: (4, 1, 1, 0, 0), exit_id: (5, 1, 1, 0, 0), 103: (tr.SWITCH, tr.PAYLOAD, 0, 0, 0)}
    long_payload = struct.pack('<HBBi', 103, 0, 0, 9) + bytes(112)          # 120 bytes: type_len 0
    body = (_syscall(enter_id, 42, 10)
            + _head(tr.PADDING, 1) + struct.pack('<I', 16) + bytes(12)     # a discarded record: no time
            + _head(tr.TIME_EXTEND, 5) + struct.pack('<I', 1)              # + (1 << 27) + 5
            + _syscall(exit_id, 42, 7)
            + _head(0, 3) + struct.pack('<I', 4 + len(long_payload)) + long_payload
            + _head(tr.TIME_STAMP, 123) + struct.pack('<I', 2)             # absolute (2 << 27) + 123
            + _syscall(enter_id, 43, 0)
            + _head(tr.PADDING, 0))                                        # the rest of the page
    start = (0x08 << 56) + 1000   # a clock with a top bit set: the absolute stamp takes it back
    out = []
    walker = tr.Walker(LAYOUT, handlers)
    walker.walk(_page(start, body, tr.MISSED_EVENTS | tr.MISSED_STORED, missed=77), out)
    enter_ts = start + 10
    exit_ts = enter_ts + (1 << 27) + 5 + 7
    assert out[0] == (enter_ts, 4, 42, 0, 0) and out[1] == (exit_ts, 5, 42, 0, 0)
    assert out[2][:2] == (exit_ts + 3, tr.SWITCH) and out[2][3] == len(long_payload)
    assert out[3] == ((0x08 << 56) + (2 << 27) + 123, 4, 43, 0, 0)
    stats = walker.stats()
    assert (stats.missed_pages, stats.missed_events, stats.paddings, stats.extends, stats.stamps) == (1, 77, 2, 1, 1)
    assert stats.records == 4 and stats.bad_pages == 0


def _switch(prev_pid, state, next_pid, delta):
    """A 20-byte sched_switch-like record: common fields, prev_pid, prev_state, next_pid."""
    return _head(5, delta) + struct.pack('<HBBiiIi', 103, 0, 0, prev_pid, prev_pid, state, next_pid)


LOST_HANDLERS = {101: (4, 1, 1, 0, 0), 102: (5, 1, 1, 0, 0), 103: (tr.SWITCH, 3, 2, 3, 4)}


def _lost_sample(cpu1_lost):
    """CPU 0: an enter of task 42 and a switch-out of task 43 pending at the end of a page; then
    (after lost events on CPU 0, or on CPU 1 when ``cpu1_lost``) the exit and the switch-in they
    would be paired with across the loss, and a syscall and a sleep wholly after it."""
    us = 1000
    page_a = _page(1000 * us, _syscall(101, 42, 10 * us) + _syscall(102, 42, 2 * us)  # 1010-1012 us: a call
                   + _syscall(101, 42, 8 * us) + _switch(43, 1, 0, 10 * us))         # 1020, 1030: pending
    body_b = (_syscall(102, 42, 5 * us) + _switch(0, 0, 43, 5 * us)                  # 5005, 5010: across
              + _syscall(101, 42, 10 * us) + _syscall(102, 42, 3 * us)               # 5020-5023: a call
              + _switch(43, 1, 0, 7 * us) + _switch(0, 0, 43, 70 * us))              # 5030-5100: a sleep
    cpus = [page_a + _page(5000 * us, body_b, 0 if cpu1_lost else tr.MISSED_EVENTS)]
    if cpu1_lost:
        cpus.append(_page(3000 * us, _syscall(101, 77, us) + _syscall(102, 77, us), tr.MISSED_EVENTS))
    return cpus


@pytest.mark.parametrize('cpu1_lost', [False, True])
@pytest.mark.parametrize('pairs', [False, True])
def test_lost_events_end_what_was_pending(cpu1_lost, pairs):
    """An enter or a switch-out before events were lost (on any CPU) is not paired with an exit
    or switch-in after the loss: the task's own exit or switch-in may have been lost (under
    heavy loss such pairs made getppid calls of 250 ms and 1 ms sleeps of 70 ms). Without the
    gaps, the pairs across the loss are made."""
    cpus = _lost_sample(cpu1_lost)
    results = {}
    for gaps in (False, True):
        records, _lasts = tr.merge_cpus([tr.Walker(LAYOUT, LOST_HANDLERS, gaps=gaps, pairs=pairs) for _ in cpus],
                                        cpus)
        parser = tr.RawEventParser({4: 'getppid', 5: 'getppid'}, syscalls=['getppid'])
        results[gaps] = (parser.feed_records(records).result(), parser.gaps)
    (across, no_gaps), (got, gaps) = results[False], results[True]
    assert no_gaps == 0 and gaps == 1
    assert across['syscalls']['getppid']['max_us'] == 3985.0 and across['unpaired_exits'] == 0
    assert [(g['count'], g['max_us']) for g in across['offcpu']] == [(2, 3980.0)]
    calls = got['syscalls']['getppid']
    assert calls['count'] == 2 + (1 if cpu1_lost else 0) and calls['max_us'] == 3.0
    assert got['unpaired_exits'] == 1
    assert [(g['count'], g['max_us'], g['pids']) for g in got['offcpu']] == [(1, 70.0, [43])]
    assert got['lines'] == across['lines'] == 10 + (2 if cpu1_lost else 0)


LOST_TEXT = '''\
 python3-42 [000] ..... 0.001010: sys_getppid()
 python3-42 [000] ..... 0.001012: sys_getppid -> 0x1
 python3-42 [000] ..... 0.001020: sys_getppid()
 python3-43 [000] d..2. 0.001030: sched_switch: prev_comm=python3 prev_pid=43 prev_prio=120 prev_state=S ==> \
next_comm=swapper/0 next_pid=0 next_prio=120
CPU:0 [LOST 1000 EVENTS]
 python3-42 [000] ..... 0.005005: sys_getppid -> 0x1
 <idle>-0 [000] d..2. 0.005010: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> \
next_comm=python3 next_pid=43 next_prio=120
 python3-42 [000] ..... 0.005020: sys_getppid()
 python3-42 [000] ..... 0.005023: sys_getppid -> 0x1
 python3-43 [000] d..2. 0.005030: sched_switch: prev_comm=python3 prev_pid=43 prev_prio=120 prev_state=S ==> \
next_comm=swapper/0 next_pid=0 next_prio=120
 <idle>-0 [000] d..2. 0.005100: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> \
next_comm=python3 next_pid=43 next_prio=120
'''


def test_lost_events_in_the_text_end_what_was_pending_too(plan):
    """trace_pipe's ``CPU:N [LOST n EVENTS]`` line does for the text parser what a GAP record
    does for the raw one: the same sample read both ways gives the same result."""
    want = traceparse.EventParser(syscalls=['getppid'])
    want = want.feed_text(LOST_TEXT).result()
    assert want['unpaired_exits'] == 1 and want['syscalls']['getppid']['count'] == 2
    records, _lasts = tr.merge_cpus([tr.Walker(LAYOUT, LOST_HANDLERS, gaps=True, pairs=True)], _lost_sample(False))
    got = tr.RawEventParser({4: 'getppid', 5: 'getppid'}, plan.states, syscalls=['getppid'],
                            resolution_ns=1000).feed_records(records).result()
    assert got['lines'] == want['lines'] - 1  # the LOST line
    got['lines'] = want['lines']
    assert got == want
    without = traceparse.EventParser(syscalls=['getppid']).feed_text(LOST_TEXT.replace('CPU:0 [LOST', 'x [')).result()
    assert without['syscalls']['getppid']['max_us'] == 3985.0


def test_built_page_running_past_its_commit_is_cut():
    body = _syscall(101, 1, 1) + _head(8, 1) + bytes(8)   # says 32 bytes, 8 are there
    out = []
    walker = tr.Walker(LAYOUT, {101: (4, 1, 1, 0, 0)})
    assert walker.walk(_page(0, body) + b'\0' * 100, out) == LAYOUT.page_size  # a partial page is left
    assert len(out) == 1 and walker.stats().bad_pages == 1


# ---------------------------------------------------------------------------
# planning: what makes the module read text instead

def test_plan_refuses_what_it_cannot_decode(tmp_path):
    base = tmp_path / 'inst'
    shutil.copytree(FIX, str(base))
    tr.plan_events(str(base), SYSCALLS, True)
    with pytest.raises(tr.FormatError, match='sys_enter_read'):
        tr.plan_events(str(base), ['read'], False)
    (base / 'trace_clock').write_text('local global [counter] uptime\n')
    with pytest.raises(tr.FormatError, match='counter'):
        tr.plan_events(str(base), SYSCALLS, False)
    (base / 'trace_clock').write_text('[local] global\n')
    (base / 'events' / 'header_event').write_text('# something else\n')
    with pytest.raises(tr.FormatError, match='header_event'):
        tr.plan_events(str(base), SYSCALLS, False)


def test_symbols():
    symbols = tr.Symbols(*tr.parse_kallsyms(['ffffffff81000000 T _stext', 'ffffffff81000100 t helper [mod]',
                                             'ffffffff82000000 D some_data', 'garbage']))
    assert symbols.usable()
    assert symbols.name(0xffffffff81000104) == 'helper' and symbols.name(0xffffffff810000ff) == '_stext'
    assert symbols.name(0x10) == '0x10'
    assert not tr.Symbols(*tr.parse_kallsyms(['0000000000000000 T _stext'])).usable()


def test_symbols_read_lazily(tmp_path):
    path = tmp_path / 'kallsyms'
    path.write_text('ffffffff81000000 T _stext\nffffffff81000100 t helper\n')
    symbols = tr.Symbols.at(str(path))
    assert symbols.usable() and symbols.addresses is None       # only the first line read
    assert symbols.name(0xffffffff81000200) == 'helper'
    path.write_text('0000000000000000 T _stext\n')
    assert not tr.Symbols.at(str(path)).usable()
    assert not tr.Symbols.at(str(tmp_path / 'missing')).usable()


def test_module_falls_back_to_text_and_says_why(tmp_path):
    """ftrace_sample's events reader: raw where the plan holds, else text with the reason."""
    base = tmp_path / 'inst'
    shutil.copytree(FIX, str(base))
    for cpu in (0, 1):
        (base / 'per_cpu' / ('cpu%d' % cpu)).mkdir(parents=True)
        (base / 'per_cpu' / ('cpu%d' % cpu) / 'trace_pipe_raw').write_bytes(b'')
    (base / 'trace_pipe').write_text('')
    kallsyms = os.path.join(FIX, 'kallsyms')
    parser, reader, feed, how, why = ftrace_sample.events_reader(str(base), ['syscalls', 'offcpu'], [], SYSCALLS, 10,
                                                                 kallsyms=kallsyms)
    reader.close()
    assert (how, why) == ('raw', None) and feed == parser.feed_records
    hidden = tmp_path / 'kallsyms'
    hidden.write_text('0000000000000000 T _stext\n')
    parser, reader, feed, how, why = ftrace_sample.events_reader(str(base), ['syscalls', 'offcpu'], [], SYSCALLS, 10,
                                                                 kallsyms=str(hidden))
    reader.close()
    assert how == 'text' and 'kptr_restrict' in why and feed == parser.feed_text
    # a syscalls sample needs no stacks
    assert ftrace_sample.events_reader(str(base), ['syscalls'], [], SYSCALLS, 10, kallsyms=str(hidden))[3] == 'raw'
    (base / 'events' / 'syscalls' / 'sys_exit_getppid' / 'format').write_text('name: sys_exit_getppid\n')
    parser, reader, feed, how, why = ftrace_sample.events_reader(str(base), ['syscalls'], [], SYSCALLS, 10)
    reader.close()
    assert how == 'text' and 'sys_exit_getppid' in why


def test_reader_in_small_reads_hands_out_the_same_records(tmp_path, plan, cpus, merged, symbols):
    """RawReader over per_cpu/cpuN/trace_pipe_raw (here files holding the recorded pages), three
    pages a CPU per read: records held back across reads, then the drain: the records of one
    merge of everything (a syscall's enter and exit next to each other on a page as one pair
    record, but for the first record of each read), and the result of the records one by one."""
    _write_pipe_raw(tmp_path, cpus)
    reader = tr.RawReader(str(tmp_path), plan)
    got, batches = [], []
    parser = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=SYSCALLS)

    def take(records):
        got.extend(records)
        batches.append(len(records))
        parser.feed_records(records)
    try:
        while reader.read_available(take, max_bytes=3 * plan.layout.page_size):
            pass
        reader.drain(take)
    finally:
        reader.close()
    want, _lasts = tr.merge_cpus([tr.Walker(plan.layout, plan.handlers, gaps=True) for _ in cpus], cpus)
    assert _unfold(got) == want and len(batches) > 3 and len(got) < 0.7 * len(want)
    assert reader.stats().records == len(merged[0]) and reader.bytes == sum(len(d) for d in cpus)
    assert parser.result() == _result(plan, symbols, want)


def _splice_leaving_the_last_page(page):
    """splice_pages as trace_pipe_raw does it while the writer is on a CPU's last page: whole pages
    only, never the one being written (here: a file's last page)."""
    real = tr.splice_pages

    def splice(fd_in, fd_out, count):
        left = os.fstat(fd_in).st_size - os.lseek(fd_in, 0, os.SEEK_CUR) - page
        return real(fd_in, fd_out, min(count, left)) if left >= page else 0
    return splice


@pytest.mark.parametrize('splicing', ['all', 'not the writer page', False])
@pytest.mark.parametrize('spool_pages', [0, 4, 10 ** 6])
def test_pages_spooled_in_the_window_are_decoded_the_same(tmp_path, plan, cpus, merged, symbols, spool_pages, splicing,
                                                          monkeypatch):
    """read_until keeps the pages it takes undecoded up to spool_bytes and drain decodes them
    after tracing stops (everything under the cap: nothing handed out in the window; a small cap:
    decoded as it comes; none: every read decoded): the same records in the same order and result
    each way, whether the pages were spliced into pipes (files splice as trace_pipe_raw does; the
    kernel keeps back the page its writer is on, which is then read) or read (no splice)."""
    _write_pipe_raw(tmp_path, cpus)
    page = plan.layout.page_size
    if splicing == 'not the writer page':
        monkeypatch.setattr(tr, 'splice_pages', _splice_leaving_the_last_page(page))
    reader = tr.RawReader(str(tmp_path), plan, spool_bytes=spool_pages * page)
    reader.splicing = bool(splicing)
    got, in_window, made = [], [], []
    splice_cpu = reader._splice_cpu

    def counted(*args):
        moved = splice_cpu(*args)
        if reader.pipes:
            made.append(reader.pipes)
        return moved
    reader._splice_cpu = counted
    parser = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=SYSCALLS)

    def take(records):
        got.extend(records)
        parser.feed_records(records)
    try:
        while reader.spool(take, max_bytes=3 * page):
            in_window.append(len(got))
        reader.drain(take)
        held_after_drain = reader.pipes
    finally:
        reader.close()
    want, _lasts = tr.merge_cpus([tr.Walker(plan.layout, plan.handlers, gaps=True) for _ in cpus], cpus)
    assert _unfold(got) == want and reader.bytes == sum(len(d) for d in cpus)
    assert parser.result() == _result(plan, symbols, want)
    if spool_pages > len(cpus) * max(len(d) for d in cpus) // page:
        assert in_window[-1] == 0          # all kept for the drain
    else:
        assert 0 < in_window[-1] < len(got)  # decoded as the spool filled
    # pipes only when splicing and the budget lets any page be kept; none left open after the drain
    assert bool(made) == (splicing and spool_pages > 0) and max(made or [0]) <= tr.RawReader.MAX_PIPES
    assert held_after_drain == 0


def test_a_quiet_cpus_unfilled_page_is_taken_with_the_busy_cpus_pages(tmp_path, plan, cpus, symbols, monkeypatch):
    """A quiet CPU (one page, never full: splice keeps it back while the writer is on it) beside a
    busy one: each round reads what splice leaves, so the quiet CPU's old records are merged in time
    order with the busy CPU's pages, not handed out after them at the drain."""
    page = plan.layout.page_size
    quiet = [cpus[0], cpus[1][:page]]
    _write_pipe_raw(tmp_path, quiet)
    monkeypatch.setattr(tr, 'splice_pages', _splice_leaving_the_last_page(page))
    reader = tr.RawReader(str(tmp_path), plan, spool_bytes=4 * page)  # decoded during the window too
    got = []
    try:
        while reader.spool(got.extend, max_bytes=3 * page):
            pass
        reader.drain(got.extend)
    finally:
        reader.close()
    want, _lasts = tr.merge_cpus([tr.Walker(plan.layout, plan.handlers, gaps=True) for _ in quiet], quiet)
    stamps = [record[0] for record in _unfold(got)]
    assert stamps == sorted(stamps) and _unfold(got) == want
    assert _result(plan, symbols, _unfold(got)) == _result(plan, symbols, want)


def test_spliced_pages_stay_whole_and_in_order(tmp_path):
    """A PagePipe takes whole pages only (its room rounds down), hands back what it took in
    order, and closes; splice_pages says 0 at the end of the data and None where there is no
    splice (a pipe's read end spliced into a directory's descriptor: the kernel refuses)."""
    data = bytes(range(256)) * 64  # 4 pages of 4 KiB
    path = tmp_path / 'cpu0'
    path.write_bytes(data)
    pipe = tr.PagePipe(1 << 20)
    assert pipe.capacity >= 4096 and pipe.room(4096) % 4096 == 0
    fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK)
    try:
        moved = 0
        while True:
            step = tr.splice_pages(fd, pipe.write_fd, 4096)
            if not step:
                break
            moved += step
        assert moved == len(data) and tr.splice_pages(fd, pipe.write_fd, 4096) == 0
    finally:
        os.close(fd)
    pipe.size = moved
    assert len(pipe) == len(data) and pipe.take() == data and pipe.read_fd == -1
    other = tr.PagePipe(1 << 16)
    folder = os.open(str(tmp_path), os.O_RDONLY)
    try:
        assert tr.splice_pages(other.read_fd, folder, 4096) is None
    finally:
        os.close(folder)
        other.close()


def test_small_offcpu_samples_are_read_as_text():
    decide = ftrace_sample.text_for_small_sample
    least = ftrace_sample.RAW_MIN_EVENTS_WITH_STACKS
    assert 'fewer than %d' % least in decide('raw', ['syscalls', 'offcpu'], 0, least - 1)
    assert decide('raw', ['syscalls', 'offcpu'], 0, least) is None            # big enough
    assert decide('raw', ['syscalls', 'offcpu'], 4096, 10) is None            # pages already read
    assert decide('raw', ['syscalls'], 0, 10) is None                         # no stacks to name
    assert decide('text', ['offcpu'], 0, 10) is None                          # text already
