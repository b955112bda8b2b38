#!/usr/bin/env python3
"""What reading the audit multicast group costs: host CPU and the consumer's records at 10k records/s.

A real auditd (the incident lab's code, tests/support/stall.py, unthrottled, its own log) is
the consumer; a load process under a uid nobody else uses makes audited ``getppid`` calls
paced to ``--rate`` records per second (3 records per call: SYSCALL, PROCTITLE, EOE). The
run alternates phases of ``--seconds`` without and with the reader (a process running
``auditreadlog.ReadlogSocket.read_for``, what audit_status runs during its sample window),
``--rounds`` times each, and prints per phase kind:

- the host's CPU use (/proc/stat, all CPUs, in % of the host) and the difference the reader
  makes (goal: at most ``--max-cpu-pct`` = 5 points of the host), with the ratio against the
  phases without the reader (the baseline measured in the same run);
- the reader's own CPU and the records it counted per second;
- the consumer's records: the load's calls against the events auditd wrote to its log and the
  kernel's ``lost`` counter (goal: nothing lost, every call logged, with or without the reader).

Exits 1 when a goal is missed, 2 when it cannot run (no root, no auditd, another consumer).
Takes the kernel-tests lock.

    benchmarks/bench_readlog.py [--rate 10000] [--seconds 4] [--rounds 3] [--max-cpu-pct 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchlib import COLLECTIONS, run_lab_locked

from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl
from tests.support.stall import StallRefused, audit_stall

UID = 64918
KEY = 'auditgap-test-bench-readlog'
RECORDS_PER_CALL = 3
LOAD = r'''
import os, sys, time
os.setgid(%(uid)d)
os.setuid(%(uid)d)
calls_per_s = %(calls)f
step = 0.005
per_step = calls_per_s * step
sys.stdout.write('ready\n'); sys.stdout.flush()
while True:
    line = sys.stdin.readline().strip()
    if line == 'quit':
        break
    seconds = float(line)
    start = time.monotonic()
    n = 0
    while True:
        now = time.monotonic() - start
        if now >= seconds:
            break
        due = min(seconds, now + step) * calls_per_s
        while n < due:
            os.getppid()
            n += 1
        time.sleep(max(0.0, step - (time.monotonic() - start - now)))
    sys.stdout.write('%%d\n' %% n); sys.stdout.flush()
'''
READER = r'''
import json, os, sys, time
sys.path.insert(0, %(collections)r)
from ansible_collections.auditgap.fleet.plugins.module_utils import auditreadlog
seconds = float(sys.argv[1])
with auditreadlog.ReadlogSocket() as reader:
    sys.stdout.write('ready\n'); sys.stdout.flush()
    sys.stdin.readline()
    t0 = time.monotonic()
    reader.read_for(seconds)
    rates = reader.counter.summary(time.monotonic() - t0)
    times = os.times()
    print(json.dumps({'records_per_s': rates['records_per_s'], 'records': rates['records'],
                      'overruns': reader.overruns, 'cpu_s': times.user + times.system}))
'''


def host_cpu():
    """(busy jiffies, total jiffies) of all CPUs (/proc/stat)."""
    with open('/proc/stat') as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def kauditd_pid():
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/comm' % pid) as handle:
                    if handle.read().strip() == 'kauditd':
                        return int(pid)
            except OSError:
                continue
    return None


def run_ns(pid):
    """CPU time of all of a process's tasks so far (schedstat, ns)."""
    total = 0
    try:
        for tid in os.listdir('/proc/%d/task' % pid):
            with open('/proc/%d/task/%s/schedstat' % (pid, tid)) as handle:
                total += int(handle.read().split()[0])
    except OSError:
        pass
    return total


def logged_events(path):
    count = 0
    for name in (path + '.1', path):
        try:
            with open(name, errors='replace') as handle:
                count += sum(1 for line in handle if 'type=SYSCALL' in line and 'key="%s"' % KEY in line)
        except OSError:
            continue
    return count


def wait_logged(path, expected, timeout_s=20.0):
    deadline = time.time() + timeout_s
    count = logged_events(path)
    while count < expected and time.time() < deadline:
        time.sleep(0.3)
        count = logged_events(path)
    return count


def phase(load, seconds, with_reader, watched):
    reader = None
    if with_reader:
        reader = subprocess.Popen([sys.executable, '-c', READER % {'collections': COLLECTIONS},
                                   str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == 'ready'
    lost0 = auditnl.get_status()['lost']
    cpu0 = dict((name, run_ns(pid)) for name, pid in watched.items())
    busy0, total0 = host_cpu()
    if reader:
        reader.stdin.write('go\n')
        reader.stdin.flush()
    load.stdin.write('%f\n' % seconds)
    load.stdin.flush()
    calls = int(load.stdout.readline())
    busy1, total1 = host_cpu()
    out = {'calls': calls, 'host_cpu_pct': 100.0 * (busy1 - busy0) / max(1, total1 - total0),
           'lost': auditnl.get_status()['lost'] - lost0}
    for name, pid in watched.items():
        out[name + '_pct'] = 100.0 * (run_ns(pid) - cpu0[name]) / 1e9 / seconds / os.cpu_count()
    if reader:
        out['reader'] = json.loads(reader.stdout.read())
        reader.wait()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rate', type=float, default=10000.0, help='records per second')
    parser.add_argument('--seconds', type=float, default=4.0)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--max-cpu-pct', type=float, default=5.0)
    return run_lab_locked('bench_readlog', with_consumer, parser.parse_args())


def with_consumer(args):
    rule = ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'getppid', '-F', 'uid=%d' % UID]
    try:
        with audit_stall(quota_us=None, backlog_limit=8192, rules=[rule], key=KEY, rate_per_s=1,
                         auditd_conf={'max_log_file': 256}) as stall:
            watched = {'kauditd': kauditd_pid(), 'auditd': stall.consumer_pid}
            return run(args, os.path.join(stall.workdir, 'audit.log'), watched)
    except StallRefused as err:
        print('bench_readlog: %s' % err, file=sys.stderr)
        return 2


def run(args, log, watched):
    load = subprocess.Popen([sys.executable, '-c', LOAD % {'uid': UID, 'calls': args.rate / RECORDS_PER_CALL}],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert load.stdout.readline().strip() == 'ready'
        watched = dict(watched, load=load.pid)
        warm = phase(load, 1.0, False, watched)['calls']   # warm-up (logged too, not measured)
        results = {False: [], True: []}
        calls_total = 0
        for _ in range(args.rounds):
            for with_reader in (False, True):
                result = phase(load, args.seconds, with_reader, watched)
                results[with_reader].append(result)
                calls_total += result['calls']
        load.stdin.write('quit\n')
        load.stdin.flush()
        load.wait(timeout=10)
    finally:
        if load.poll() is None:
            load.kill()
    logged = wait_logged(log, calls_total + warm)
    base = statistics.median(r['host_cpu_pct'] for r in results[False])
    read = statistics.median(r['host_cpu_pct'] for r in results[True])
    readers = [r['reader'] for r in results[True]]
    reader_cpu_pct = statistics.median(100.0 * r['cpu_s'] / args.seconds / os.cpu_count() for r in readers)
    rate = statistics.median(r['records_per_s'] for r in readers)
    lost = sum(r['lost'] for rs in results.values() for r in rs)
    overruns = sum(r['overruns'] for r in readers)
    # what the reader adds: its own CPU and what the kernel's copies cost kauditd, plus any change
    # in auditd and the load (on a busy shared host the whole-host figure saturates; this does not)
    added = {'reader': reader_cpu_pct}
    for name in ('kauditd', 'auditd', 'load'):
        added[name] = (statistics.median(r[name + '_pct'] for r in results[True])
                       - statistics.median(r[name + '_pct'] for r in results[False]))
    delta = sum(added.values())
    print('load: %.0f records/s asked, %.0f counted by the reader (%d calls in the measured phases)'
          % (args.rate, rate, calls_total))
    for name, rs in (('without reader', results[False]), ('with reader', results[True])):
        print('%-15s host CPU %s %%  (median %.1f %%)' % (
            name, ' '.join('%.1f' % r['host_cpu_pct'] for r in rs),
            statistics.median(r['host_cpu_pct'] for r in rs)))
    print('reader process: %.2f %% of the host (%d CPUs); overruns %d' % (reader_cpu_pct, os.cpu_count(), overruns))
    for name in ('kauditd', 'auditd', 'load'):
        print('%-8s %% of the host without / with the reader: %.2f / %.2f' % (
            name, statistics.median(r[name + '_pct'] for r in results[False]),
            statistics.median(r[name + '_pct'] for r in results[True])))
    print('whole host with / without the reader: %.2fx (%.1f %% / %.1f %%; saturated by other work when near 100)'
          % (read / base if base else float('inf'), read, base))
    print('added by the reader: %.2f %% of the host (reader %.2f, kauditd %+.2f, auditd %+.2f, load %+.2f); goal <= %.1f'
          % (delta, added['reader'], added['kauditd'], added['auditd'], added['load'], args.max_cpu_pct))
    print('consumer: lost %d; auditd logged %d events of the load\'s %d calls (warm-up included)'
          % (lost, logged, calls_total + warm))
    ok = delta <= args.max_cpu_pct and lost == 0 and logged == calls_total + warm
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
