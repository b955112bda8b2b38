"""The raw ring buffer reader on the running kernel: one live buffer read both ways.

tests/support/ringcapture.py records a short sample (loopback accept4 + getppid of a child,
its sched_switch with a stacktrace trigger) in a private instance, reads the instance's
``trace`` file (the kernel's text; reading it consumes nothing) and then every CPU's
``trace_pipe_raw`` pages. The decoded records must be the text's events one for one, and the
sample's result (per-syscall counts and latencies, off-CPU stacks) must be the text
parser's. The instance is removed afterwards.

The window's wait: RawReader.read_until asleep in the kernel (poll on trace_pipe_raw, woken when a
CPU's buffer reaches the instance's buffer_percent watermark) on a live instance.
"""
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import traceparse, tracefs
from ansible_collections.auditgap.fleet.plugins.module_utils import tracering as tr
from tests.support import ringcapture

pytestmark = pytest.mark.kernel


def test_raw_and_text_agree_on_one_live_buffer(tmp_path, tracefs_root):
    out = str(tmp_path / 'sample')
    info = ringcapture.capture(tracefs_root, out, seconds=1.0, buffer_kb=2048)
    syscalls = info['syscalls']
    plan = tr.plan_events(out, syscalls, True)
    datas = []
    for cpu in range(info['cpus']):
        with open(os.path.join(out, 'cpu%d.raw' % cpu), 'rb') as handle:
            datas.append(handle.read())
    walkers = [tr.Walker(plan.layout, plan.handlers) for _ in datas]
    records, _lasts = tr.merge_cpus(walkers, datas)
    with open(os.path.join(out, 'trace.txt')) as handle:
        text = handle.read()
    events = ringcapture.text_events(text)
    stats = tr.PageStats(*map(sum, zip(*(w.stats() for w in walkers))))
    print('records %d, %s' % (len(records), stats))
    assert len(records) == len(events) > 500 and stats.bad_pages == 0 and stats.other == 0
    symbols = tr.Symbols.at()
    for rec, (_cpu, ts_us, pid, body, frames) in zip(records, events):
        ts, tag, a, b, c = rec
        assert (ts + 500) // 1000 == ts_us, (rec, body)
        if tag == tr.SWITCH:
            assert ' prev_pid=%d ' % a in body and ' next_pid=%d ' % c in body, (rec, body)
            assert ' prev_state=%s ' % tr.state_text(b, *plan.states) in body, (rec, body)
        elif tag == tr.STACK:
            assert a == pid and [symbols.name(addr) for addr in b] == frames, (rec, body)
        else:
            assert a == pid and body.startswith('sys_%s' % plan.names[tag]), (rec, body)
    want = traceparse.EventParser(syscalls=syscalls).feed_text(text).result()
    # stamps rounded as the text prints them: the text parser's result
    got = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=syscalls,
                            resolution_ns=1000).feed_records(records).result()
    assert got['offcpu'] == want['offcpu'] and got['offcpu']
    for name in syscalls:
        g, w = dict(got['syscalls'][name]), dict(want['syscalls'][name])
        print(name, {k: v for k, v in g.items() if k != 'slowest'})
        assert [s['duration_us'] for s in g.pop('slowest')] == [s['duration_us'] for s in w.pop('slowest')]
        assert g == w and g['count'] > 100
    # nanosecond stamps (what the module reports): the same counts, latencies within the text's 1 us
    exact = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=syscalls).feed_records(records).result()
    for name in syscalls:
        g, w = exact['syscalls'][name], want['syscalls'][name]
        assert g['count'] == w['count'] and abs(g['max_us'] - w['max_us']) <= 1.0, (g, w)
        assert abs(g['total_us'] - w['total_us']) <= g['count'] * 1.0
    assert [(g['stack'], g['count']) for g in exact['offcpu']] == [(g['stack'], g['count']) for g in want['offcpu']]


# a child that makes getppid at about 50k calls a second once told to start, then says how many it made
PACED_GETPPID = """
import os, sys, time
sys.stdin.readline()
made, end = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(50):
        os.getppid()
    made += 50
    time.sleep(0.001)
print(made)
"""


def test_the_window_sleeps_in_the_kernel_until_a_buffer_reaches_the_watermark(tracefs_root):
    """A quiet window wakes the reader once a second (its check should a wake-up be missed), not
    every 250 ms; a busy one is read each time a CPU's buffer reaches buffer_percent (50: half of
    its 1 MiB), every call recorded and nothing lost; the instance is removed afterwards."""
    inst = os.path.join(tracefs_root, 'instances', 'auditgap-test-watermark-%d' % os.getpid())
    child = subprocess.Popen([sys.executable, '-c', PACED_GETPPID, '2.0'], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    os.mkdir(inst)
    reader = None
    try:
        tracefs.write_value(os.path.join(inst, 'tracing_on'), '0')
        tracefs.write_value(os.path.join(inst, 'buffer_size_kb'), '1024')
        for name in ('sys_enter_getppid', 'sys_exit_getppid'):
            event = os.path.join(inst, 'events', 'syscalls', name)
            tracefs.write_value(os.path.join(event, 'filter'), 'common_pid == %d' % child.pid)
            tracefs.write_value(os.path.join(event, 'enable'), '1')
        plan = tr.plan_events(inst, ['getppid'], False)
        reader = tr.RawReader(inst, plan)
        assert reader.watermark_percent() == 50
        parser = tr.RawEventParser(plan.names, plan.states, pids=[child.pid], syscalls=['getppid'])
        reads, checks = [], []
        spool = reader.spool

        def spied(on_records):
            reads.append(spool(on_records))
            return reads[-1]
        reader.spool = spied
        tracefs.write_value(os.path.join(inst, 'tracing_on'), '1')

        def window(seconds):
            del reads[:], checks[:]
            reader.read_until(time.monotonic() + seconds, parser.feed_records, drain_if=lambda: checks.append(1),
                              buffer_bytes=1024 * 1024)
            return list(reads), len(checks)
        # quiet: nothing traced; one check a second (3 in 2.5 s; the timed loop made 10)
        quiet, checks_quiet = window(2.5)
        assert quiet == [] and 3 <= checks_quiet <= 4, checks_quiet
        # busy: ~50k calls/s, 2 events of 24-32 bytes each: half a buffer every ~170 ms
        child.stdin.write('go\n')
        child.stdin.flush()
        busy, checks_busy = window(3.0)
        made = int(child.communicate(timeout=30)[0])
        tracefs.write_value(os.path.join(inst, 'tracing_on'), '0')
        print('reads in the window %s, checks %d, calls made %d' % (busy, checks_busy, made))
        # read at the watermark each time (half of a CPU's 1 MiB: the least a wake-up there reads is a
        # quarter), never from the timed loop (a kernel that woke below the watermark)
        assert len(busy) >= 3 and min(busy) >= 256 * 1024, busy
        assert checks_busy <= 3
        reader.drain(parser.feed_records)
        assert tracefs.events_lost(inst) == 0
        counted = parser.flush().result()['syscalls']['getppid']['count']
        assert made <= counted <= made + 5, (made, counted)
    finally:
        if reader is not None:
            reader.close()
        if child.poll() is None:
            child.kill()
            child.wait()
        tracefs.write_value(os.path.join(inst, 'tracing_on'), '0')
        os.rmdir(inst)
