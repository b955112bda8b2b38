"""Why the audit consumer does not drain, diagnosed on the real kernel with a real auditd.

Each case builds the incident (tests/support/stall.py: auditd registered as the
audit consumer, the seed's accept4 rule, a loopback accept load), makes the
consumer stall for one reason, gathers the facts the way diagnose_gather does
(audit sample + consumer activity + cgroup throttling over the same seconds)
and checks that the findings name that reason with its own evidence and fix.
Kept short: while a case lasts, every audited accept4 on the host may wait.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts, cgroups
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosegather as G
from ansible_collections.auditgap.fleet.plugins.module_utils import procinfo
from ansible_collections.auditgap.fleet.plugins.module_utils.audit import consumer as audit_consumer

from tests.support.kernel import rmdir_cgroup
from tests.support.stall import audit_stall

pytestmark = [pytest.mark.kernel]

SECONDS = 2.0


def gather(seconds=SECONDS):
    """audit_status + cgroup_throttle of the consumer over the same window (diagnose_gather's code)."""
    def audit():
        return auditfacts.gather(source='netlink', sample_seconds=seconds, sample_interval_ms=100)

    def cgroup():
        return cgroups.collect(G.cgroup_options(seconds), root='/', audit_lookup=audit_consumer)

    return G.gather_both({'consumer_cgroup': True}, audit, cgroup)


def diagnose(stall, seconds=SECONDS):
    stall.wait_for(seconds=1, min_count=1, timeout_s=20)
    facts = gather(seconds)
    findings, chain = D.evaluate(facts, 'localhost')
    return facts, {f['id']: f for f in findings}, chain


def tasks(pid):
    return [int(t) for t in os.listdir('/proc/%d/task' % pid)]


@contextlib.contextmanager
def busy_cpu(cpu, hogs=2):
    """``hogs`` busy loops pinned to ``cpu`` (in the test's own cgroup, default weight)."""
    code = 'import os\nos.sched_setaffinity(0, {%d})\nwhile True: pass\n' % cpu
    procs = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(hogs)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def blkio_group(name):
    """A cgroup v1 blkio group (removed at the end, its tasks moved back to the root)."""
    root = '/sys/fs/cgroup/blkio'
    if not os.path.exists(os.path.join(root, 'blkio.throttle.write_iops_device')):
        pytest.skip('no cgroup v1 blkio throttling on this host')
    path = os.path.join(root, name)
    os.mkdir(path)
    try:
        yield path
    finally:
        with open(os.path.join(path, 'cgroup.procs')) as handle:
            pids = handle.read().split()
        for pid in pids:
            with contextlib.suppress(OSError), open(os.path.join(root, 'cgroup.procs'), 'w') as handle:
                handle.write(pid)
        rmdir_cgroup(path)


def whole_disk(path):
    """major:minor of the disk (not the partition) holding ``path``."""
    dev = os.stat(path).st_dev
    sysfs = os.path.realpath('/sys/dev/block/%d:%d' % (os.major(dev), os.minor(dev)))
    if os.path.exists(os.path.join(sysfs, 'partition')):
        sysfs = os.path.dirname(sysfs)
    with open(os.path.join(sysfs, 'dev')) as handle:
        return handle.read().strip()


def test_stopped_consumer_is_told_apart_and_named():
    with audit_stall(quota_us=None, key='auditgap-test-stopped') as stall:
        stall.wait_for(seconds=1, min_count=1, timeout_s=20)
        os.kill(stall.consumer_pid, signal.SIGSTOP)
        try:
            facts, found, chain = diagnose(stall)
        finally:
            os.kill(stall.consumer_pid, signal.SIGCONT)
        pid = stall.consumer_pid
    activity = facts['audit_status']['consumer_activity']
    assert activity['state_ratios']['T'] >= 0.9, activity
    assert 'audit_consumer_throttled' not in found
    stalled = found['audit_consumer_stalled']
    assert stalled['evidence']['cause'] == 'stopped'
    assert stalled['remediation'] is None
    assert 'consumer auditd pid %d stopped' % pid in chain
    assert '-> resume it (kill -CONT %d) or restart it' % pid in chain
    assert 'raise the audit backlog limit' not in chain
    # a bigger backlog in front of a consumer that does not read is not offered as the fix
    for fid in ('audit_backlog_saturated', 'audit_events_lost', 'audit_wait_time_accrued'):
        if fid in found:
            assert found[fid]['remediation'] is None, found[fid]


def test_throttled_through_a_parent_keeps_the_throttled_chain():
    with audit_stall(quota_us=None, parent_quota_us=1000, key='auditgap-test-parent') as stall:
        facts, found, chain = diagnose(stall)
        parent = stall.parent_path
    assert 'audit_consumer_stalled' not in found, found.get('audit_consumer_stalled')
    throttled = found['audit_consumer_throttled']
    assert parent.endswith(throttled['evidence']['limited_by']), throttled['evidence']
    assert '-> raise its CPU limit (role agent_cpu' in chain


def test_consumer_starved_on_a_busy_cpu_without_quota():
    with audit_stall(quota_us=None, key='auditgap-test-starved') as stall:
        # the consumer's group gets the smallest weight, and shares CPU 0 with two busy loops
        with open(os.path.join(stall.cgroup_path, 'cpu.shares' if stall.cgroup_version == 1 else 'cpu.weight'),
                  'w') as handle:
            handle.write('2' if stall.cgroup_version == 1 else '1')
        for tid in tasks(stall.consumer_pid):
            os.sched_setaffinity(tid, {0})
        with busy_cpu(0):
            time.sleep(1)
            facts, found, chain = diagnose(stall)
    activity = facts['audit_status']['consumer_activity']
    stalled = found.get('audit_consumer_stalled')
    assert stalled is not None, (activity, sorted(found), chain)
    assert stalled['evidence']['cause'] == 'cpu_contended', stalled['evidence']
    # it sleeps while the accept4 callers it stalled sleep: waiting is measured against its runnable time
    assert stalled['evidence']['cpu_wait_share'] >= 0.9, stalled['evidence']
    assert activity['run_delay_ms_per_s'] >= 50, activity
    assert 'audit_consumer_throttled' not in found
    assert 'waits for a CPU (run delay' in chain
    assert 'raise its CPU priority or weight, not a quota' in chain and 'cpu.shares' in chain


def test_a_wait_for_a_cpu_under_way_counts_before_the_kernel_books_it():
    # schedstat books a wait when it ends: an idle-class busy loop behind two busy loops waits
    # seconds between its turns, so most 1 s windows would book nothing (or more than the window)
    code = ('import os\nos.sched_setaffinity(0, {0})\n'
            'os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass\n')
    starved = subprocess.Popen([sys.executable, '-c', code])
    try:
        with busy_cpu(0):
            time.sleep(0.5)
            windows = []
            for _ in range(4):
                sampler = procinfo.ActivitySampler(starved.pid)
                for _ in range(10):
                    time.sleep(0.1)
                    sampler.tick()
                windows.append(sampler.summary())
    finally:
        starved.kill()
        starved.wait()
    for window in windows:
        assert window['state_ratios']['R'] == 1.0, window
        assert 900 <= window['run_delay_ms_per_s'] <= 1000, window


def test_consumer_blocked_on_slow_log_writes():
    with blkio_group('auditgap-test-slowlog-%d' % os.getpid()) as group, \
            audit_stall(quota_us=None, key='auditgap-test-slowlog', auditd_conf={'flush': 'SYNC'}) as stall:
        with open(os.path.join(group, 'blkio.throttle.write_iops_device'), 'w') as handle:
            handle.write('%s 4' % whole_disk(stall.workdir))
        with open(os.path.join(group, 'cgroup.procs'), 'w') as handle:
            handle.write(str(stall.consumer_pid))
        time.sleep(1)
        facts, found, chain = diagnose(stall)
    activity = facts['audit_status']['consumer_activity']
    stalled = found.get('audit_consumer_stalled')
    assert stalled is not None, (activity, sorted(found), chain)
    assert stalled['evidence']['cause'] == 'io_blocked', stalled['evidence']
    assert stalled['evidence']['auditd_config']['flush'] == 'SYNC'
    assert 'blocked on disk I/O' in chain
    assert 'set flush = incremental_async in ' in chain


def test_healthy_consumer_gives_no_stall_finding():
    # 20 calls/s: below hot_syscall_per_s (50), which the measured record rates now check
    with audit_stall(quota_us=None, key='auditgap-test-healthy', rate_per_s=20) as stall:
        facts, found, chain = diagnose(stall)
    assert facts['audit_status']['consumer_activity']['found'] is True
    assert 'audit_consumer_stalled' not in found
    assert [f for f in found.values() if f['severity'] != 'info'] == [], chain
