#!/usr/bin/env python3
"""Benchmark: the report step (diagnose_report) for a synthetic fleet of
10,000 host results (benchmarks/fleetgen.py), issue 17 item 4.

The step runs as diagnose_report's action does: findings per host
(``host_entry``), the fleet document, then every report file
(``write_reports``: <host>.json, fleet.md, fleet.html, fleet.prom,
fleet.json). Each size runs in a fresh child process, so its peak memory
(``ru_maxrss``) is its own; the results are generated in that process first
(they are in the controller's memory too: hostvars) and the report step is
timed alone. The baseline measured in the same run is the step for 100
hosts: the ratio shows how the cost grows (linear = hosts / 100).

Goals: 10,000 hosts in < 15 s and < 1 GB peak memory; fleet.html < 25 MB.
Exit status 1 when a goal is missed.

    benchmarks/bench_report.py [--hosts 10000] [--bad] [--keep DIR]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import benchlib  # noqa: F401  (the tree on sys.path)

GOAL_SECONDS = 15.0
GOAL_RSS_MB = 1024.0
GOAL_HTML_MB = 25.0
BASELINE_HOSTS = 100


def run_step(n, report_dir, bad=False):
    """In this process: generate n host results, time the report step. Returns a dict."""
    from ansible_collections.auditgap.fleet.plugins.action import diagnose_report as A
    from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import DEFAULT_THRESHOLDS
    from ansible_collections.auditgap.fleet.plugins.module_utils import report

    from benchmarks.fleetgen import fleet_results
    inputs = list(fleet_results(n, bad=bad))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    cpu0, t0 = time.process_time(), time.monotonic()
    entries = A.host_entries(inputs, dict(DEFAULT_THRESHOLDS))
    doc = report.fleet_document(entries, '2026-12-01T10:00:00Z', thresholds={}, report_dir=report_dir)
    A.write_reports(doc, report_dir, A.FORMATS)
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    sizes = {name: os.path.getsize(os.path.join(report_dir, name))
             for name in ('fleet.json', 'fleet.md', 'fleet.html', 'fleet.prom')}
    return {'hosts': len(inputs), 'wall_s': wall, 'cpu_s': cpu, 'rss_before_mb': rss_before,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            'sizes': sizes, 'files': len(os.listdir(report_dir))}


def measure(n, bad, keep=None):
    tmp = tempfile.mkdtemp(prefix='agbench-report-')
    try:
        report_dir = os.path.join(tmp, 'r')
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', str(n), report_dir]
                              + (['--bad'] if bad else []), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit('report step for %d hosts failed:\n%s' % (n, proc.stderr[-3000:]))
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(report_dir, keep)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--hosts', type=int, default=10000)
    parser.add_argument('--bad', action='store_true', help='add the bad-input hosts (fleetgen.bad_results)')
    parser.add_argument('--keep', help='copy the 10k report directory here')
    parser.add_argument('--child', nargs=2, metavar=('N', 'DIR'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_step(int(args.child[0]), args.child[1], bad=args.bad)))
        return 0
    base = measure(BASELINE_HOSTS, args.bad)
    big = measure(args.hosts, args.bad, keep=args.keep)
    print('report step (fresh process each; CPU shared with other work, numbers are noisy)')
    print('%8s %8s %8s %10s %10s %9s %9s %9s %9s' % ('hosts', 'wall_s', 'cpu_s', 'peak_MB', 'input_MB',
                                                     'json_MB', 'html_MB', 'md_MB', 'prom_MB'))
    for res in (base, big):
        s = res['sizes']
        print('%8d %8.2f %8.2f %10.0f %10.0f %9.1f %9.1f %9.1f %9.1f' % (
            res['hosts'], res['wall_s'], res['cpu_s'], res['peak_rss_mb'], res['rss_before_mb'],
            s['fleet.json'] / 1e6, s['fleet.html'] / 1e6, s['fleet.md'] / 1e6, s['fleet.prom'] / 1e6))
    growth = big['wall_s'] / max(base['wall_s'], 1e-6)
    print('growth %d -> %d hosts: wall x%.1f (linear would be x%.0f)' % (
        base['hosts'], big['hosts'], growth, big['hosts'] / float(base['hosts'])))
    html_mb = big['sizes']['fleet.html'] / 1e6
    ok = True
    for label, value, goal in (('wall s', big['wall_s'], GOAL_SECONDS), ('peak MB', big['peak_rss_mb'], GOAL_RSS_MB),
                               ('fleet.html MB', html_mb, GOAL_HTML_MB)):
        hit = value < goal
        ok = ok and hit
        print('goal %s < %g: %.1f %s' % (label, goal, value, 'ok' if hit else 'MISSED'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
