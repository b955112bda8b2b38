#!/usr/bin/env python3
"""The CPU limit the diagnosis suggests against the smallest limit that ends the stall, on the incident lab.

One lab (labkit.lab_present, as playbooks/lab.yml: auditd in a cgroup, the seed's accept4 rule,
a loopback accept load at a fixed ``--rate`` of connections per second):

0. the consumer first runs unthrottled under the load for ``--history-seconds`` (a consumer that kept up
   before the stall, as the incident's agent did until its peak; the lab's auditd is new, throttled from
   its start otherwise): the history the diagnosis measures its wake-up cost from (sizing.wakeup_cost;
   0: none, the threshold consumer_wakeup_cost_records is used);
1. at the lab's quota (1 ms per 250 ms) the host is diagnosed the way diagnose.yml gathers it
   (module_utils/diagnosegather: audit sample with record rates + the consumer's throttling over
   the same window) and the findings filter sizes the fix: ``agent_cpu_limit_cores`` and its formula;
2. the smallest quota that ends the stall at that load is bisected: a limit "ends the stall" when,
   over ``--seconds`` after a settling second, tasks slept on a full backlog less than the
   warning harm (``harm_warn_wait_ms_per_s``, 10 ms per second of wall) and nothing was lost;
   then the smallest that also leaves the consumer unthrottled (throttled in fewer than
   ``throttled_ratio_warn`` of the periods): what remediate.yml's re-sample checks. A throttled
   consumer reads the backlog in batches, cheaper per record, so the first can be well below the
   second (docs/findings.md "Fixes sized from measurement");
3. prints the suggested limit against both, and whether the consumer is throttled at the suggested
   limit: the goal is 1x to 2x of the smallest limit that ends the stall (issue 18) and the consumer
   unthrottled there. The sizing's headroom (``--headroom``, consumer_cpu_headroom; default the
   diagnosis's default) is printed with the result. Exits 1 when outside, 2 when it cannot run.

Takes the kernel-tests lock; the lab is removed at the end, also on SIGTERM.

    benchmarks/bench_sizing.py [--rate 1000] [--seconds 4] [--steps 7] [--diagnose-seconds 3] [--headroom 1.5]
                               [--history-seconds 5]
"""
import argparse
import os
import sys
import time

from benchlib import lab_present, run_lab_locked

from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as F
from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, cgroups, diagnosegather, labkit
from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod


def throttling(version, directory):
    """(nr_periods, nr_throttled) of the lab's group."""
    group = cgroups.parse_cpu_stat(open(os.path.join(directory, 'cpu.stat')).read(), version)
    return group['nr_periods'] or 0, group['nr_throttled'] or 0


def stalled(lab, version, period_us, cores, seconds, hz):
    """(stalled?, wait jiffies, lost, throttled ratio) with the consumer limited to ``cores`` for ``seconds``:
    stalled while tasks sleep on a full backlog for the warning harm or more (docs/findings.md: 10 ms per
    second of wall) or records are lost; a rare short wait on a busy shared host is no stall. The throttled
    ratio (periods throttled over the periods) is what the diagnosis after a fix reads: below
    ``throttled_ratio_warn`` the consumer is no longer throttled."""
    guard_mod.set_cgroup_limit(version, lab['cgroup_path'], max(1000, int(round(cores * period_us))), period_us)
    time.sleep(1.0)   # what queued under the previous limit drains first
    before, periods = auditnl.get_status(), throttling(version, lab['cgroup_path'])
    time.sleep(seconds)
    after, periods_after = auditnl.get_status(), throttling(version, lab['cgroup_path'])
    wait = after['backlog_wait_time_actual'] - before['backlog_wait_time_actual']
    lost = after['lost'] - before['lost']
    wait_ms_per_s = wait * 1000.0 / hz / seconds
    ratio = (periods_after[1] - periods[1]) / float(max(1, periods_after[0] - periods[0]))
    return wait_ms_per_s >= F.DEFAULT_THRESHOLDS['harm_warn_wait_ms_per_s'] or lost > 0, wait, lost, ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rate', type=int, default=1000, help='accepted connections per second (fixed load)')
    parser.add_argument('--seconds', type=float, default=4.0, help='seconds each limit is judged over')
    parser.add_argument('--steps', type=int, default=7, help='bisection steps')
    parser.add_argument('--diagnose-seconds', type=float, default=3.0)
    parser.add_argument('--high', type=float, default=1.0, help='upper end of the bisection (cores)')
    parser.add_argument('--headroom', type=float, default=F.DEFAULT_THRESHOLDS['consumer_cpu_headroom'],
                        help='consumer_cpu_headroom of the sizing (default: the diagnosis default)')
    parser.add_argument('--history-seconds', type=float, default=5.0,
                        help='seconds the consumer runs unthrottled under the load before the stall (0: none)')
    args = parser.parse_args()
    return run_lab_locked('bench_sizing', run, args)


def diagnose(seconds, headroom):
    facts = diagnosegather.fanout_main({'audit_sample_seconds': seconds, 'cgroup_sample_seconds': seconds})
    # the sizing alone, against the bisection: the floor consumer_min_cores lowered to the smallest limit
    findings, chain = F.evaluate(facts, 'lab', {'consumer_min_cores': 0.01, 'consumer_cpu_headroom': headroom})
    return facts, {f['id']: f for f in findings}, chain


def run(args):
    with lab_present('bench_sizing', {'backend': 'cgroup', 'rate_per_s': args.rate, 'rules': 'accept'}) as (p, lab, guard):
        version = labkit.cpu_cgroup()[0]  # the consumer's group is in that hierarchy
        period = p['period_us']
        lab_cores = p['quota_us'] / float(period)
        if args.history_seconds > 0:
            guard_mod.set_cgroup_limit(version, lab['cgroup_path'], -1, period)
            time.sleep(args.history_seconds)
            guard_mod.set_cgroup_limit(version, lab['cgroup_path'], p['quota_us'], period)
        time.sleep(2.0)
        facts, found, chain = diagnose(args.diagnose_seconds, args.headroom)
        hz = facts['audit_status']['hz']['value']
        throttled = found.get('audit_consumer_throttled')
        if throttled is None:
            print('bench_sizing: the lab did not diagnose as throttled: %s' % sorted(found), file=sys.stderr)
            return 1
        suggested = throttled['remediation']['vars']['agent_cpu_limit_cores']
        sizing = throttled['evidence']['sizing']
        rates = facts['audit_status']['sample'].get('record_rates') or {}
        warn = F.DEFAULT_THRESHOLDS['throttled_ratio_warn']
        judged = []

        def bisect(low, high, needs_more):
            """The smallest limit in (low, high] for which needs_more is false (geometric: the range
            spans two orders of magnitude); high must be judged fine already."""
            for _ in range(args.steps):
                mid = (low * high) ** 0.5
                result = stalled(lab, version, period, mid, args.seconds, hz)
                judged.append((mid,) + result)
                if needs_more(result):
                    low = mid
                else:
                    high = mid
            return low, high
        result = stalled(lab, version, period, args.high, args.seconds, hz)
        judged.append((args.high,) + result)
        if result[3] >= warn:
            print('bench_sizing: still throttled at %.2f cores: raise --high' % args.high, file=sys.stderr)
            return 1
        if result[0]:
            print('bench_sizing: tasks slept on a full backlog at %.2f cores, the consumer unthrottled: the host is '
                  'too busy to tell the stall the limit makes (load average %.1f)' % (args.high, os.getloadavg()[0]),
                  file=sys.stderr)
            return 2
        # the smallest limit that ends the stall (the consumer may still be throttled there, reading the
        # backlog in batches) ...
        low, high = bisect(lab_cores, args.high, lambda r: r[0])
        # ... and the smallest, at least that, that leaves it unthrottled: what remediate.yml's re-sample checks
        # (the finding audit_consumer_throttled gone: throttled in fewer than throttled_ratio_warn of periods;
        # a short sleep of an unthrottled consumer is a busy shared host's, not the limit's)
        held_low, held = bisect(low, args.high, lambda r: r[3] >= warn)
        check_stalled, check_wait, check_lost, check_ratio = stalled(lab, version, period, suggested, args.seconds, hz)
    print('load: %d connections/s (accept4 audited), lab limit %.3f cores' % (args.rate, lab_cores))
    print('diagnosed at the lab limit: %s records/s delivered, peak %s records/s, drain gap %s ms, burst %s'
          % (rates.get('records_per_s'), rates.get('peak_records_per_s'), rates.get('drain_gap_max_ms'),
             rates.get('burst_records')))
    print('chain: %s' % chain)
    print('sizing: %s' % sizing['formula'])
    inputs = sizing['inputs']
    print('headroom %s (consumer_cpu_headroom%s); wake-up cost k %s from %s (history before the window: %s s '
          'unthrottled under the load)' % (inputs.get('headroom'), '' if args.headroom == F.DEFAULT_THRESHOLDS[
              'consumer_cpu_headroom'] else ', not the default %s' % F.DEFAULT_THRESHOLDS['consumer_cpu_headroom'],
              inputs.get('wakeup_cost_records'), inputs.get('wakeup_cost_source'), args.history_seconds))
    print('CPU per record measured throttled %s s, x %s unbatched (%s records per wake-up throttled, %s per event, '
          '%s before the window; from the %s) = %s s unthrottled'
          % (inputs.get('cpu_seconds_per_record'), inputs.get('unbatched_factor'), inputs.get('records_per_wakeup'),
             inputs.get('records_per_event'), inputs.get('history_records_per_wakeup'), inputs.get('unbatched_from'),
             inputs.get('cpu_seconds_per_record_unbatched')))
    for cores, was, wait, lost, throttled_ratio in judged:
        print('  limit %.4f cores: %s (slept %d jiffies, lost %d, throttled in %d%% of periods)'
              % (cores, 'stalled' if was else 'no stall', wait, lost, round(100 * throttled_ratio)))
    print('smallest limit that ends the stall: %.4f cores (bisected between %.4f and %.4f)' % (high, low, high))
    print('smallest limit that ends the stall and leaves the consumer unthrottled (throttled in < %d%% of periods): '
          '%.4f cores (bisected between %.4f and %.4f)' % (round(100 * warn), held, held_low, held))
    print('suggested limit %.3f cores: %s there (slept %d jiffies, lost %d), throttled in %d%% of periods (%s)'
          % (suggested, 'stalled' if check_stalled else 'no stall', check_wait, check_lost, round(100 * check_ratio),
             'still throttled: at least throttled_ratio_warn' if check_ratio >= warn else 'no longer throttled'))
    ratio = suggested / high
    print('suggested / smallest that ends the stall: %.2fx (goal 1x-2x)' % ratio)
    print('suggested / smallest that ends the stall unthrottled: %.2fx' % (suggested / held))
    return 0 if 1.0 <= ratio <= 2.0 and check_ratio < warn and not guard.restore_errors else 1


if __name__ == '__main__':
    sys.exit(main())
