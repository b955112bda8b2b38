#!/usr/bin/env python3
"""The audit consumer's CPU per record against how it drains, on the incident lab.

Why (docs/findings.md "Fixes sized from measurement"): a throttled consumer reads the backlog in
batches, many records per wake-up; unthrottled it wakes once per event. Each wake-up (sleeping and
being woken) costs CPU of its own, so the CPU per record measured in a stall is lower than what the
consumer needs once its limit is raised. The sizing models it as CPU = a x records + k x a x wake-ups
(``consumer_wakeup_cost_records`` = k); this benchmark measures both sides on the lab:

1. the lab (labkit.lab_present, as playbooks/lab.yml: auditd in a cgroup, the accept4 rule, a
   loopback accept load at ``--rate`` connections per second);
2. for each CPU limit in ``--limits`` (cores; -1: none), after a settling second, over ``--seconds``:
   records and events delivered to the consumer (the audit multicast group, as record_rates reads
   them), the consumer's CPU (schedstat run time of its tasks, as consumer_activity.cpu_seconds) and
   its wake-ups (voluntary context switches of its tasks, as consumer_activity.wakeups_per_s), the
   share of CFS periods throttled;
3. prints CPU per record and records per wake-up per limit, the CPU per record unthrottled over the
   most throttled one (same run), and the fit CPU per record = a + w / (records per wake-up) over all
   limits: k = w / a, the wake-up cost in records' worth on this host.

Takes the kernel-tests lock; the lab is removed at the end, also on SIGTERM.

    benchmarks/bench_consumer_cost.py [--rate 1000] [--seconds 3] [--limits 0.004,0.01,...,-1]
"""
import argparse
import os
import sys
import time

from benchlib import lab_present, run_lab_locked

from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, auditreadlog, cgroups, labkit, procinfo
from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod


def consumer_counters(pid):
    """(CPU ns, wake-ups) summed over the consumer's tasks (schedstat run time, voluntary switches)."""
    run_ns = wakeups = 0
    base = '/proc/%d/task' % pid
    for tid in os.listdir(base):
        sched = procinfo.parse_schedstat(procinfo.read_text(os.path.join(base, tid, 'schedstat')) or '')
        switches = procinfo.parse_voluntary_switches(procinfo.read_text(os.path.join(base, tid, 'status')) or '')
        run_ns += sched['run_ns'] if sched else 0
        wakeups += switches or 0
    return run_ns, wakeups


def throttling(version, directory):
    group = cgroups.parse_cpu_stat(open(os.path.join(directory, 'cpu.stat')).read(), version)
    return group['nr_periods'] or 0, group['nr_throttled'] or 0


def measure(lab, version, pid, seconds):
    reader = auditreadlog.ReadlogSocket()
    try:
        status0, periods0, (run0, wake0) = auditnl.get_status(), throttling(version, lab['cgroup_path']), \
            consumer_counters(pid)
        start = time.monotonic()
        reader.read_for(seconds)
        wall = time.monotonic() - start
        status1, periods1, (run1, wake1) = auditnl.get_status(), throttling(version, lab['cgroup_path']), \
            consumer_counters(pid)
    finally:
        reader.close()
    records, events = reader.counter.records, reader.counter.events
    return {'records_per_s': records / wall, 'records_per_event': records / float(events) if events else None,
            'cpu_cores': (run1 - run0) / 1e9 / wall, 'wakeups_per_s': (wake1 - wake0) / wall,
            'throttled_ratio': (periods1[1] - periods0[1]) / float(max(1, periods1[0] - periods0[0])),
            'slept_jiffies': status1['backlog_wait_time_actual'] - status0['backlog_wait_time_actual'],
            'lost': status1['lost'] - status0['lost'], 'overruns': reader.overruns}


def fit(rows):
    """Least squares of CPU per record = a + w x (wake-ups per record): (a, w) or None."""
    points = [(r['wakeups_per_s'] / r['records_per_s'], r['cpu_cores'] / r['records_per_s'])
              for r in rows if r['records_per_s'] > 0]
    if len(points) < 2:
        return None
    n = float(len(points))
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    w = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - w * mx, w


def run(args):
    limits = [float(v) for v in args.limits.split(',')]
    rows = []
    with lab_present('bench_consumer_cost', {'backend': 'cgroup', 'rate_per_s': args.rate, 'rules': 'accept'}) as (
            p, lab, guard):
        version = labkit.cpu_cgroup()[0]
        period = p['period_us']
        time.sleep(2.0)
        for cores in limits:
            quota = -1 if cores < 0 else max(1000, int(round(cores * period)))
            guard_mod.set_cgroup_limit(version, lab['cgroup_path'], quota, period)
            time.sleep(1.0)   # what queued under the previous limit drains first
            rows.append(dict(measure(lab, version, lab['consumer_pid'], args.seconds), limit=cores))
    print('load: %d connections/s (accept4 audited), CFS period %d us' % (args.rate, period))
    print('%8s %9s %10s %12s %9s %9s %10s %9s %6s' % ('limit', 'records/s', 'CPU cores', 'CPU s/record',
                                                     'wakeups/s', 'rec/wake', 'rec/event', 'throttled', 'slept'))
    for r in rows:
        print('%8s %9.0f %10.4f %12.3e %9.0f %9.2f %10s %8d%% %6d' % (
            'none' if r['limit'] < 0 else '%.3f' % r['limit'], r['records_per_s'], r['cpu_cores'],
            r['cpu_cores'] / r['records_per_s'] if r['records_per_s'] else float('nan'), r['wakeups_per_s'],
            r['records_per_s'] / r['wakeups_per_s'] if r['wakeups_per_s'] else float('inf'),
            '%.2f' % r['records_per_event'] if r['records_per_event'] else '-', round(100 * r['throttled_ratio']),
            r['slept_jiffies']))
    throttled = [r for r in rows if r['throttled_ratio'] >= 0.5 and r['records_per_s'] > 0]
    free = [r for r in rows if r['throttled_ratio'] < 0.2 and r['records_per_s'] > 0]
    if throttled and free:
        low = min(throttled, key=lambda r: r['limit'] if r['limit'] >= 0 else float('inf'))
        per_low = low['cpu_cores'] / low['records_per_s']
        per_free = sum(r['cpu_cores'] for r in free) / sum(r['records_per_s'] for r in free)
        print('CPU per record unthrottled / throttled at %.3f cores: %.2fx' % (low['limit'], per_free / per_low))
    fitted = fit(rows)
    if fitted and fitted[0] > 0:
        a, w = fitted
        print('fit: CPU per record = %.3e s + %.3e s per wake-up / records per wake-up: a wake-up costs %.2f records'
              % (a, w, w / a))
    else:
        print('fit: no wake-up cost could be fitted (%s)' % (fitted,))
    return 1 if guard.restore_errors else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rate', type=int, default=1000, help='accepted connections per second (fixed load)')
    parser.add_argument('--seconds', type=float, default=3.0, help='seconds each limit is measured over')
    parser.add_argument('--limits', default='0.004,0.01,0.02,0.03,0.05,0.1,-1',
                        help='CPU limits in cores, comma-separated (-1: none)')
    return run_lab_locked('bench_consumer_cost', run, parser.parse_args())


if __name__ == '__main__':
    sys.exit(main())
