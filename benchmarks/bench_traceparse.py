"""Parser throughput on a generated 1 GB trace, memory flat.

Generates /tmp/auditgap-bench-<pid>.trace (default 1 GiB) by repeating the real
capture tests/fixtures/ftrace/offcpu-and-accept4-events.during-stall.trace
(sys_enter/sys_exit accept4, sched_switch, stack traces), then in the same run:

- the floor: plain line iteration over each file (what reading alone costs);
- EventParser over the whole file (the syscalls + offcpu parser), fed as ftrace_sample
  feeds it: tracefs.PipeReader reads the file and hands out text of whole lines, one
  chunk per read, to ``feed_text``;
- FunctionGraphParser, fed the same way, over a function_graph file built from the seed
  traces and the live captures of the ftrace VM (kernel 6.1, funcgraph-proc columns,
  tests/fixtures/ftrace/live-6.1-function-graph.*.trace), size --fg-mb, default 100 MB;
  --fg-rounds rounds (default 5), each the floor then the parser, judged on the median
  (one round moves by +-30% on a shared host).

Prints lines/s (CPU time) beside the floor's, their ratio and peak RSS (getrusage)
before and after each parse. Exit 1 when the event parser is below --goal lines/s
(default 1000000), the function_graph parser below --fg-goal (default 500000), or
RSS grew by more than --max-rss-growth-mb (default 64) while parsing. The generated
files are deleted afterwards.

    .venv/bin/python benchmarks/bench_traceparse.py [--size-mb 1024]
"""
import argparse
import os
import statistics
import sys

from benchlib import ROOT, feed_pipe, iterate_lines, rss_mb, timed

from ansible_collections.auditgap.fleet.plugins.module_utils import traceparse

FIX = os.path.join(ROOT, 'tests', 'fixtures', 'ftrace')
GRAPH_SOURCES = ['seed-function-graph.depth2.trace', 'seed-function-graph.slow-calls.trace',
                 'live-6.1-function-graph.slow-calls.bounded.trace',
                 'live-6.1-function-graph.syscall-exits.bounded.trace',
                 'live-6.1-function-graph.slow-calls.trace']


def generate(path, source_files, size_mb, skip_headers=True):
    chunk = []
    for name in source_files:
        with open(os.path.join(FIX, name)) as handle:
            for line in handle:
                if skip_headers and line.startswith('#'):
                    continue
                chunk.append(line)
    block = ''.join(chunk).encode()
    target = size_mb * 1024 * 1024
    written = 0
    with open(path, 'wb') as out:
        while written < target:
            out.write(block)
            written += len(block)
    return written


def parse_events(path):
    parser = feed_pipe(traceparse.EventParser(top=10), path)
    result = parser.result()
    assert result['syscalls']['accept4']['count'] > 0
    assert any('audit_log_start' in g['stack'] for g in result['offcpu'])
    return parser.lines


def parse_graph(path):
    parser = feed_pipe(traceparse.FunctionGraphParser(top=10), path)
    result = parser.flush().result()
    assert result['syscall_exits'][0]['syscall'] == 'accept4'
    return parser.lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size-mb', type=int, default=1024)
    ap.add_argument('--fg-mb', type=int, default=100)
    ap.add_argument('--goal', type=float, default=1000000.0)
    ap.add_argument('--fg-goal', type=float, default=500000.0)
    ap.add_argument('--fg-rounds', type=int, default=5,
                    help='function_graph rounds (floor, then parser, each round); the goal is judged on the median')
    ap.add_argument('--max-rss-growth-mb', type=float, default=64.0)
    args = ap.parse_args()
    events_path = '/tmp/auditgap-bench-%d.trace' % os.getpid()
    graph_path = '/tmp/auditgap-bench-%d.fg.trace' % os.getpid()
    ok = True
    try:
        size = generate(events_path, ['offcpu-and-accept4-events.during-stall.trace'], args.size_mb)
        generate(graph_path, GRAPH_SOURCES, args.fg_mb)
        print('generated %.0f MB events trace, %d MB function_graph trace' % (size / 1048576.0, args.fg_mb))
        base_lines, base_s, base_wall = timed(iterate_lines, events_path)
        base_rate = base_lines / base_s
        print('floor, events file (plain iteration): %d lines in %.1f s CPU (%.1f s wall) = %.0f lines/s'
              % (base_lines, base_s, base_wall, base_rate))
        rss0 = rss_mb()
        ev_lines, ev_s, ev_wall = timed(parse_events, events_path)
        rss1 = rss_mb()
        ev_rate = ev_lines / ev_s
        print('EventParser: %d lines in %.1f s CPU (%.1f s wall) = %.0f lines/s (goal %.0f; floor %.0f: %.1fx the '
              'floor time); peak RSS %.1f -> %.1f MB'
              % (ev_lines, ev_s, ev_wall, ev_rate, args.goal, base_rate, ev_s / base_s, rss0, rss1))
        # function_graph: --fg-rounds rounds, each the floor then the parser on the same file, so
        # the ratio of each round is measured under the same load; the goal is judged on the median
        fg_rates, fg_base_rates = [], []
        for rnd in range(args.fg_rounds):
            fg_base_lines, fg_base_s, _wall = timed(iterate_lines, graph_path)
            fg_base_rates.append(fg_base_lines / fg_base_s)
            fg_lines, fg_s, fg_wall = timed(parse_graph, graph_path)
            fg_rates.append(fg_lines / fg_s)
            print('round %d: floor, function_graph file (plain iteration): %.0f lines/s; FunctionGraphParser: %d '
                  'lines in %.1f s CPU (%.1f s wall) = %.0f lines/s (%.1fx the floor time)'
                  % (rnd + 1, fg_base_rates[-1], fg_lines, fg_s, fg_wall, fg_rates[-1], fg_s / fg_base_s))
        rss2 = rss_mb()
        fg_rate = statistics.median(fg_rates)
        fg_base_rate = statistics.median(fg_base_rates)
        print('FunctionGraphParser: median %.0f lines/s over %d rounds (min %.0f, max %.0f; goal %.0f); floor median '
              '%.0f lines/s: %.1fx the floor time; peak RSS %.1f MB'
              % (fg_rate, len(fg_rates), min(fg_rates), max(fg_rates), args.fg_goal, fg_base_rate,
                 statistics.median(b / r for b, r in zip(fg_base_rates, fg_rates)), rss2))
        if ev_rate < args.goal:
            print('GOAL MISSED: EventParser %.0f < %.0f lines/s' % (ev_rate, args.goal))
            ok = False
        if fg_rate < args.fg_goal:
            print('GOAL MISSED: FunctionGraphParser %.0f < %.0f lines/s' % (fg_rate, args.fg_goal))
            ok = False
        if rss2 - rss0 > args.max_rss_growth_mb:
            print('GOAL MISSED: RSS grew %.1f MB while parsing (limit %.0f)' % (rss2 - rss0, args.max_rss_growth_mb))
            ok = False
        print('OK' if ok else 'FAILED')
    finally:
        for path in (events_path, graph_path):
            if os.path.exists(path):
                os.unlink(path)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
