#!/usr/bin/env python3
"""The CPU limit the diagnosis suggests against the smallest limit that ends the stall, on the incident lab.

One lab (labkit.lab_present, as playbooks/lab.yml: auditd in a cgroup, the seed's accept4 rule,
a loopback accept load at a fixed ``--rate`` of connections per second):

1. at the lab's quota (1 ms per 250 ms) the host is diagnosed the way diagnose.yml gathers it
   (module_utils/diagnosegather: audit sample with record rates + the consumer's throttling over
   the same window) and the findings filter sizes the fix: ``agent_cpu_limit_cores`` and its formula;
2. the smallest quota that ends the stall at that load is bisected: a limit "ends the stall" when,
   over ``--seconds`` after a settling second, tasks slept on a full backlog less than the
   warning harm (``harm_warn_wait_ms_per_s``, 10 ms per second of wall) and nothing was lost;
3. prints the suggested limit against the bisected one: the goal is 1x to 2x (at least what ends
   the stall, at most twice it). Exits 1 when outside, 2 when it cannot run.

Takes the kernel-tests lock; the lab is removed at the end, also on SIGTERM.

    benchmarks/bench_sizing.py [--rate 1000] [--seconds 3] [--steps 7] [--diagnose-seconds 3]
"""
import argparse
import sys
import time

from benchlib import lab_present, run_lab_locked

from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as F
from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, diagnosegather, labkit
from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod


def stalled(lab, version, period_us, cores, seconds, hz):
    """(stalled?, wait jiffies, lost) with the consumer limited to ``cores`` for ``seconds``: stalled
    while tasks sleep on a full backlog for the warning harm or more (docs/findings.md: 10 ms per
    second of wall) or records are lost; a rare short wait on a busy shared host is no stall."""
    guard_mod.set_cgroup_limit(version, lab['cgroup_path'], max(1000, int(round(cores * period_us))), period_us)
    time.sleep(1.0)   # what queued under the previous limit drains first
    before = auditnl.get_status()
    time.sleep(seconds)
    after = auditnl.get_status()
    wait = after['backlog_wait_time_actual'] - before['backlog_wait_time_actual']
    lost = after['lost'] - before['lost']
    wait_ms_per_s = wait * 1000.0 / hz / seconds
    return wait_ms_per_s >= F.DEFAULT_THRESHOLDS['harm_warn_wait_ms_per_s'] or lost > 0, wait, lost


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rate', type=int, default=1000, help='accepted connections per second (fixed load)')
    parser.add_argument('--seconds', type=float, default=3.0, help='seconds each limit is judged over')
    parser.add_argument('--steps', type=int, default=7, help='bisection steps')
    parser.add_argument('--diagnose-seconds', type=float, default=3.0)
    parser.add_argument('--high', type=float, default=1.0, help='upper end of the bisection (cores)')
    args = parser.parse_args()
    return run_lab_locked('bench_sizing', run, args)


def diagnose(seconds):
    facts = diagnosegather.fanout_main({'audit_sample_seconds': seconds, 'cgroup_sample_seconds': seconds})
    # the sizing alone, against the bisection: the default floor (consumer_min_cores 0.5) lowered
    findings, chain = F.evaluate(facts, 'lab', {'consumer_min_cores': 0.01})
    return facts, {f['id']: f for f in findings}, chain


def run(args):
    with lab_present('bench_sizing', {'backend': 'cgroup', 'rate_per_s': args.rate, 'rules': 'accept'}) as (p, lab, guard):
        version = labkit.cpu_cgroup()[0]  # the consumer's group is in that hierarchy
        period = p['period_us']
        lab_cores = p['quota_us'] / float(period)
        time.sleep(2.0)
        facts, found, chain = diagnose(args.diagnose_seconds)
        hz = facts['audit_status']['hz']['value']
        throttled = found.get('audit_consumer_throttled')
        if throttled is None:
            print('bench_sizing: the lab did not diagnose as throttled: %s' % sorted(found), file=sys.stderr)
            return 1
        suggested = throttled['remediation']['vars']['agent_cpu_limit_cores']
        sizing = throttled['evidence']['sizing']
        rates = facts['audit_status']['sample'].get('record_rates') or {}
        low, high = lab_cores, args.high
        judged = []
        is_stalled, wait, lost = stalled(lab, version, period, high, args.seconds, hz)
        judged.append((high, is_stalled, wait, lost))
        if is_stalled:
            print('bench_sizing: still stalled at %.2f cores: raise --high' % high, file=sys.stderr)
            return 1
        for _ in range(args.steps):
            mid = (low * high) ** 0.5   # geometric: the range spans two orders of magnitude
            is_stalled, wait, lost = stalled(lab, version, period, mid, args.seconds, hz)
            judged.append((mid, is_stalled, wait, lost))
            if is_stalled:
                low = mid
            else:
                high = mid
        check_stalled, check_wait, check_lost = stalled(lab, version, period, suggested, args.seconds, hz)
    print('load: %d connections/s (accept4 audited), lab limit %.3f cores' % (args.rate, lab_cores))
    print('diagnosed at the lab limit: %s records/s delivered, peak %s records/s, drain gap %s ms, burst %s'
          % (rates.get('records_per_s'), rates.get('peak_records_per_s'), rates.get('drain_gap_max_ms'),
             rates.get('burst_records')))
    print('chain: %s' % chain)
    print('sizing: %s' % sizing['formula'])
    for cores, was, wait, lost in judged:
        print('  limit %.4f cores: %s (slept %d jiffies, lost %d)' % (cores, 'stalled' if was else 'no stall', wait, lost))
    print('smallest limit that ends the stall: %.4f cores (bisected between %.4f and %.4f)' % (high, low, high))
    print('suggested limit %.2f cores: %s there (slept %d jiffies, lost %d)'
          % (suggested, 'stalled' if check_stalled else 'no stall', check_wait, check_lost))
    ratio = suggested / high
    print('suggested / smallest: %.2fx (goal 1x-2x)' % ratio)
    return 0 if 1.0 <= ratio <= 2.0 and not guard.restore_errors else 1


if __name__ == '__main__':
    sys.exit(main())
