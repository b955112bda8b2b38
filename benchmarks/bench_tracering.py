"""Events decoded per second: the raw ring buffer reader against the text EventParser, same sample.

The sample is one real buffer recorded on this project's kernel in both forms
(tests/fixtures/ftrace/ring/accept4-offcpu/: each CPU's trace_pipe_raw pages and the
kernel's text of the same buffer; accept4 + getppid enter/exit, sched_switch, kernel stacks),
repeated --copies times (the raw pages with their stamps moved on by one window per copy, so
the merged stream stays in order). In one run, CPU time (the hosts are shared):

- raw floor: a walk over every record of every page (header word, length, next), no decoding:
  what any reader of the pages pays;
- raw reader: tracering.RawReader over files laid out as per_cpu/cpuN/trace_pipe_raw (4 MiB
  a CPU per read, as the module's drain), records decoded, merged and fed to RawEventParser;
- text floor: plain line iteration over the text (as bench_traceparse's floor);
- text reader: EventParser fed through tracefs.PipeReader, as the module feeds it.

Prints events/s of each (events: the buffer's records; a stack trace is one event), the
ratios, and peak RSS. Exit 1 when the raw reader is below --goal events/s (default 1000000).

--live (root; the kernel-tests lock held) also records a fresh sample on the running kernel
(tests/support/ringcapture.py, --live-seconds, 8 MiB a CPU) and compares what reading it
costs end to end, user + system CPU: the text (``trace``: the kernel prints every event in
the reading process) plus EventParser, against the pages (``trace_pipe_raw``) plus the raw
reader.

    .venv/bin/python benchmarks/bench_tracering.py [--copies 200] [--live]
"""
import argparse
import os
import shutil
import struct
import sys
import tempfile
import time

from benchlib import ROOT, feed_pipe, iterate_lines, rss_mb, timed

from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs, traceparse
from ansible_collections.auditgap.fleet.plugins.module_utils import tracering as tr

FIX = os.path.join(ROOT, 'tests', 'fixtures', 'ftrace', 'ring', 'accept4-offcpu')
SYSCALLS = ['accept4', 'getppid']


def cpu_files():
    out = []
    cpu = 0
    while os.path.exists(os.path.join(FIX, 'cpu%d.raw' % cpu)):
        with open(os.path.join(FIX, 'cpu%d.raw' % cpu), 'rb') as handle:
            out.append(handle.read())
        cpu += 1
    return out


def repeat_pages(data, layout, copies, shift_ns):
    """``data`` (pages) ``copies`` times, each copy's page stamps ``shift_ns`` later."""
    out = bytearray()
    size = layout.page_size
    for copy in range(copies):
        block = bytearray(data)
        for base in range(0, len(block) - len(block) % size, size):
            stamp = struct.unpack_from('<Q', block, base)[0]
            struct.pack_into('<Q', block, base, stamp + copy * shift_ns)
        out += block
    return bytes(out)


def raw_floor(paths, layout):
    """Every record of every page visited: header word, length, next; nothing decoded."""
    word = struct.Struct('<I').unpack_from
    count = 0
    size = layout.page_size
    for path in paths:
        with open(path, 'rb') as handle:
            data = handle.read()
        for base in range(0, len(data), size):
            commit = layout.header.unpack_from(data, base)[1] & tr.COMMIT_MASK
            pos = base + layout.data_offset
            end = pos + commit
            while pos < end:
                head = word(data, pos)[0]
                kind = head & 31
                if kind and kind <= tr.DATA_MAX:
                    pos += 4 + (kind << 2)
                    count += 1
                elif not kind:
                    pos += 4 + word(data, pos + 4)[0]
                    count += 1
                elif kind == tr.PADDING:
                    if not head >> 5:
                        break
                    pos += 4 + word(data, pos + 4)[0]
                else:
                    pos += 8
    return count


def raw_reader(base, plan, symbols):
    parser = tr.RawEventParser(plan.names, plan.states, symbols, syscalls=SYSCALLS, top=10)
    reader = tr.RawReader(base, plan)
    try:
        while reader.read_available(parser.feed_records):
            pass
        reader.drain(parser.feed_records)
    finally:
        reader.close()
    result = parser.result()
    assert result['syscalls']['accept4']['count'] > 0
    assert any('audit_log_start' in g['stack'] for g in result['offcpu'])
    return reader.stats().records


def text_reader(path):
    parser = feed_pipe(traceparse.EventParser(syscalls=SYSCALLS, top=10), path)
    result = parser.result()
    assert result['syscalls']['accept4']['count'] > 0
    assert any('audit_log_start' in g['stack'] for g in result['offcpu'])
    return parser.lines


def live(seconds):
    """A fresh sample read both ways: (events, text read + parse CPU s, raw read + decode CPU s)."""
    from tests.support import ringcapture
    from tests.support.kernel import kernel_lock
    work = tempfile.mkdtemp(prefix='auditgap-bench-ring-live-')
    try:
        with kernel_lock():
            info = ringcapture.capture(tracefs.locate() or '/sys/kernel/tracing', work, seconds=seconds,
                                       buffer_kb=8192)
        plan = tr.plan_events(work, info['syscalls'], True)
        parser = tr.RawEventParser(plan.names, plan.states, tr.Symbols.at(), syscalls=info['syscalls'])
        start = time.process_time()
        datas = []
        for cpu in range(info['cpus']):
            with open(os.path.join(work, 'cpu%d.raw' % cpu), 'rb') as handle:
                datas.append(handle.read())
        records, _lasts = tr.merge_cpus([tr.Walker(plan.layout, plan.handlers) for _ in datas], datas)
        parser.feed_records(records).result()
        decode_s = time.process_time() - start
        start = time.process_time()
        text = traceparse.EventParser(syscalls=info['syscalls'])
        with open(os.path.join(work, 'trace.txt')) as handle:
            text.feed_lines(handle).result()
        parse_s = time.process_time() - start
        return len(records), info['read_cpu_s']['text'] + parse_s, info['read_cpu_s']['raw'] + decode_s, info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--copies', type=int, default=200)
    ap.add_argument('--goal', type=float, default=1000000.0)
    ap.add_argument('--live', action='store_true')
    ap.add_argument('--live-seconds', type=float, default=2.0)
    args = ap.parse_args()
    plan = tr.plan_events(FIX, SYSCALLS, True)
    with open(os.path.join(FIX, 'kallsyms')) as handle:
        symbols = tr.Symbols(*tr.parse_kallsyms(handle))
    work = tempfile.mkdtemp(prefix='auditgap-bench-ring-')
    try:
        paths = []
        for cpu, data in enumerate(cpu_files()):
            path = os.path.join(work, 'per_cpu', 'cpu%d' % cpu)
            os.makedirs(path)
            paths.append(os.path.join(path, 'trace_pipe_raw'))
            with open(paths[-1], 'wb') as handle:
                handle.write(repeat_pages(data, plan.layout, args.copies, 10 ** 9))
        with open(os.path.join(FIX, 'trace.txt')) as handle:
            body = ''.join(line for line in handle if not line.startswith('#'))
        text_path = os.path.join(work, 'trace.txt')
        with open(text_path, 'w') as handle:
            for _copy in range(args.copies):
                handle.write(body)
        raw_mb = sum(os.path.getsize(p) for p in paths) / 1048576.0
        print('sample: %d copies of the recorded buffer: %.0f MB of pages on %d CPUs, %.0f MB of text'
              % (args.copies, raw_mb, len(paths), os.path.getsize(text_path) / 1048576.0))
        floor_events, floor_s, _w = timed(raw_floor, paths, plan.layout)
        rss0 = rss_mb()
        events, raw_s, raw_wall = timed(raw_reader, work, plan, symbols)
        rss1 = rss_mb()
        assert events == floor_events, (events, floor_events)
        lines, tfloor_s, _w = timed(iterate_lines, text_path)
        text_lines, text_s, text_wall = timed(text_reader, text_path)
        rss2 = rss_mb()
        rate = events / raw_s
        text_rate = events / text_s
        print('raw floor (walk every record, decode nothing): %d events in %.2f s CPU = %.0f events/s'
              % (floor_events, floor_s, floor_events / floor_s))
        print('raw reader (RawReader + RawEventParser): %.2f s CPU (%.2f s wall) = %.0f events/s, %.1fx the '
              'raw floor time; peak RSS %.1f -> %.1f MB' % (raw_s, raw_wall, rate, raw_s / floor_s, rss0, rss1))
        print('text floor (plain line iteration): %d lines in %.2f s CPU = %.0f lines/s'
              % (lines, tfloor_s, lines / tfloor_s))
        print('text reader (PipeReader + EventParser): %d lines, %.2f s CPU (%.2f s wall) = %.0f events/s '
              '(%.0f lines/s), %.1fx the text floor time; peak RSS %.1f MB'
              % (text_lines, text_s, text_wall, text_rate, text_lines / text_s, text_s / tfloor_s, rss2))
        print('raw reader / text reader: %.2fx the events per CPU second' % (rate / text_rate))
        if args.live:
            count, text_total, raw_total, info = live(args.live_seconds)
            print('live sample (%d events, %.1f s): text read + parse %.3f s CPU (read %.3f s) = %.0f events/s; '
                  'raw read + decode %.3f s CPU (read %.3f s) = %.0f events/s; %.2fx'
                  % (count, args.live_seconds, text_total, info['read_cpu_s']['text'], count / text_total,
                     raw_total, info['read_cpu_s']['raw'], count / raw_total, text_total / raw_total))
        if rate < args.goal:
            print('GOAL MISSED: raw reader %.0f < %.0f events/s' % (rate, args.goal))
            return 1
        print('OK')
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
