"""The raw ring buffer reader on the running kernel: one live buffer read both ways.

tests/support/ringcapture.py records a short sample (loopback accept4 + getppid of a child,
its sched_switch with a stacktrace trigger) in a private instance, reads the instance's
``trace`` file (the kernel's text; reading it consumes nothing) and then every CPU's
``trace_pipe_raw`` pages. The decoded records must be the text's events one for one, and the
sample's result (per-syscall counts and latencies, off-CPU stacks) must be the text
parser's. The instance is removed afterwards.
"""
import os

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import traceparse
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
