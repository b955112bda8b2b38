#!/usr/bin/env python3
"""The incident lab's effect: accept p99 throttled against unthrottled, same run.

One lab (labkit.lab_present, the same code as playbooks/lab.yml) and one
workload; only the consumer's CPU quota changes between the phases:

    unthrottled (quota lifted)  ->  throttled (the lab's quota)  ->  lifted again

Prints the accept latency of each phase (p50/p99/max, per-second records
merged), the ratio throttled p99 / unthrottled p99 (the worse of the two
unthrottled phases), and draws the timeline picture (accept p99, audit
backlog, consumer throttled ratio per second, with the phase changes marked)
to reports/lab/timeline.svg. Exits 1 when the ratio is under the goal (100x),
2 when it cannot run (no root, no auditd, another consumer registered).
Takes the kernel-tests lock; the lab is removed at the end, also on SIGTERM.

    benchmarks/bench_lab.py [--seconds N] [--goal X] [--backend cgroup|docker] [--svg PATH]
"""
import argparse
import os
import sys
import time

from benchlib import ROOT, lab_present, run_lab_locked

from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
from ansible_collections.auditgap.fleet.plugins.module_utils import labkit, labworkload


def phase(latency_path, seconds):
    """Wait ``seconds`` full seconds; the merged records of that window (first second skipped)."""
    start = int(time.time()) + 1
    time.sleep(seconds + 1.2)
    return labworkload.window_summary(labworkload.read_jsonl(latency_path), since=start + 1, until=start + seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=int, default=5, help='seconds per phase')
    parser.add_argument('--goal', type=float, default=100.0)
    parser.add_argument('--backend', choices=['cgroup', 'docker'], default='cgroup')
    parser.add_argument('--svg', default=os.path.join(ROOT, 'reports', 'lab', 'timeline.svg'))
    args = parser.parse_args()
    return run_lab_locked('bench_lab', run, args)


def run(args):
    markers = []
    with lab_present('bench_lab', {'backend': args.backend}) as (p, lab, guard):
        version = labkit.cpu_cgroup()[0]  # the consumer's group (or container's) is in that hierarchy
        set_quota = guard_mod.set_cgroup_limit
        set_quota(version, lab['cgroup_path'], None, p['period_us'])
        markers.append({'t': time.time(), 'label': 'unthrottled'})
        before = phase(lab['latency_path'], args.seconds)
        set_quota(version, lab['cgroup_path'], p['quota_us'], p['period_us'])
        markers.append({'t': time.time(), 'label': 'quota %d us / %d us' % (p['quota_us'], p['period_us'])})
        throttled = phase(lab['latency_path'], args.seconds)
        set_quota(version, lab['cgroup_path'], None, p['period_us'])
        markers.append({'t': time.time(), 'label': 'quota lifted'})
        after = phase(lab['latency_path'], args.seconds)
        points = labworkload.read_jsonl(lab['timeline_path'])
    try:
        from ansible_collections.auditgap.fleet.plugins.module_utils import labchart
        labchart.write_timeline(args.svg, points, markers, title='incident lab (%s backend)' % args.backend)
        print('timeline: %s' % args.svg)
    except ImportError as err:
        print('bench_lab: no picture (%s)' % err, file=sys.stderr)
    for name, window in (('unthrottled', before), ('throttled', throttled), ('lifted again', after)):
        print('%-13s accept: count %6d  p50 %8.3f ms  p99 %8.3f ms  max %8.3f ms' % (
            name, window['count'], window['p50_ms'] or 0, window['p99_ms'] or 0, window['max_ms'] or 0))
    base = max(before['p99_ms'] or 0, after['p99_ms'] or 0)
    if not throttled['count'] or not base:
        print('bench_lab: no measurement', file=sys.stderr)
        return 1
    ratio = throttled['p99_ms'] / base
    print('ratio throttled p99 / unthrottled p99: %.0fx (goal >= %.0fx)' % (ratio, args.goal))
    return 0 if ratio >= args.goal and not guard.restore_errors else 1


if __name__ == '__main__':
    sys.exit(main())
