"""A real audit-backlog stall for integration tests (the incident, on this host).

    from tests.support.stall import audit_stall
    with audit_stall(backlog_limit=64, backlog_wait_time=250, quota_us=1000,
                     key='auditgap-test-stall') as stall:
        stall.consumer_pid   # the throttled auditd, registered as the audit consumer
        stall.cgroup_path    # its cgroup v1 cpu group (absolute dir; v2 group on v2-only hosts)
        stall.server_pid     # the accept-loop server making audited accept4 calls
        stall.latency()      # accept latency so far: {count, p50_ms, p99_ms, max_ms}

Same code as the incident lab (plugins/module_utils/labkit.py): every change's undo
step is written to the guard's journal (/run/auditgap/journal-audit_stall-<pid>.json)
*before* it is made and undone on exit, error, SIGTERM/SIGINT/SIGHUP (RestoreGuard)
and, after a SIGKILL, by the next audit_stall() or the next run of any auditgap
module (dead owners' journals are replayed). Rules are deleted exactly. Refuses
(StallRefused) when another audit consumer is registered.

Needs root, Debian's auditd and the kernel test lock (mark tests ``kernel``).
Keep the stalled window short: while it lasts every accept4 on the host waits.
"""
import contextlib
import json
import os
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import guard, labkit, labworkload

from tests.support.kernel import replay_dead_runs


class StallRefused(RuntimeError):
    """The host cannot host a stall (another consumer, immutable audit, no auditd)."""


class StallRestoreError(RuntimeError):
    pass


class Stall:
    def __init__(self, workdir, consumer, workload, key):
        self.workdir = workdir
        self.consumer_pid = consumer['pid']
        self.cgroup_path = consumer['cgroup_path']
        self.cgroup_version = consumer['cgroup_version']
        self.period_us = consumer['period_us']
        self.server_pid = workload['server_pid']
        self.client_pid = workload['client_pid']
        self.port = workload['port']
        self.key = key
        self.latency_path = os.path.join(workdir, 'latency.jsonl')
        self.summary_path = os.path.join(workdir, 'latency.summary.json')
        self.timeline_path = os.path.join(workdir, 'timeline.jsonl')
        self.started = time.time()
        self.restore_errors = []

    def latency(self):
        """Cumulative accept latency since the workload started (updated every second)."""
        try:
            with open(self.summary_path) as handle:
                data = json.load(handle)
        except (IOError, OSError, ValueError):
            return {'count': 0, 'p50_ms': None, 'p99_ms': None, 'max_ms': None}
        return dict((k, data.get(k)) for k in ('count', 'p50_ms', 'p99_ms', 'max_ms'))

    def per_second(self):
        """The per-second records (latency.jsonl): [{t, count, p50_ms, p99_ms, max_ms, errors}]."""
        return labworkload.read_jsonl(self.latency_path)

    def timeline(self):
        """Per-second {t, p99_ms, backlog, lost, throttled_ratio} points."""
        return labworkload.read_jsonl(self.timeline_path)

    def window(self, since=None, until=None):
        """Latency summary of the seconds in [since, until] (unix s)."""
        return labworkload.window_summary(self.per_second(), since, until)

    def wait_for(self, seconds=1, min_count=1, timeout_s=15.0):
        """Wait until at least ``seconds`` per-second records with ``min_count`` requests exist."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            records = [r for r in self.per_second() if r.get('count', 0) >= min_count]
            if len(records) >= seconds:
                return records
            time.sleep(0.2)
        return [r for r in self.per_second() if r.get('count', 0) >= min_count]

    def set_quota(self, quota_us, period_us=None):
        """Change the consumer's quota (None/-1: unthrottled). Undone by the stall's exit."""
        guard.set_cgroup_limit(self.cgroup_version, self.cgroup_path, quota_us, period_us or self.period_us)


def cleanup_stale():
    """Replay the journals of dead auditgap runs (an audit_stall killed with SIGKILL among
    them), holding the host lock as every auditgap module does. Returns their errors."""
    return [err for _journal, _undone, errors in replay_dead_runs() for err in errors]


@contextlib.contextmanager
def audit_stall(backlog_limit=64, backlog_wait_time=250, quota_us=1000, key='auditgap-test-stall',
                rate_per_s=0, rules=None, period_us=labkit.STALL_PERIOD_US, clients=1,
                parent_quota_us=None, auditd_conf=None):
    """Create the incident on this host for the duration of the block.

    ``rules``: base rules (without -k) to add with ``key``; default the seed's
    accept4 rule. ``rate_per_s``: workload connections per second (0: as fast
    as it goes). ``period_us``: the group's CFS period; with quota 1000 and
    the default 250000 the consumer runs 1 ms every 250 ms (0.4% of a CPU) and
    accept p99 lands at ~250 ms (with a 100 ms period it stays under ~100 ms
    on this machine kind). ``clients``: concurrent client connections.
    ``parent_quota_us``: put the consumer's group inside a parent group with this quota
    (the pod/slice shape; ``stall.parent_path``). ``auditd_conf``: auditd.conf overrides.
    """
    if os.geteuid() != 0:
        raise StallRefused('audit_stall needs root')
    if not key.startswith('auditgap-test'):
        raise ValueError('test audit keys start with auditgap-test (got %r)' % key)
    if not labkit.find_auditd():
        raise StallRefused('auditd is not installed (apt-get install auditd)')
    cleanup_stale()
    reason = labkit.consumer_check(labkit.get_status())
    if reason:
        raise StallRefused(reason)
    name = 'stall-%d' % os.getpid()
    workdir = os.path.join(labkit.LAB_DIR, name)
    stall = None
    g = guard.RestoreGuard(journal='audit_stall')
    failed = False
    try:
        with g:
            if not os.path.isdir(labkit.LAB_DIR):
                g.push_op('remove_files', 'remove %s' % labkit.LAB_DIR, directory=labkit.LAB_DIR, names=[])
            g.push_op('remove_files', 'remove %s' % workdir, directory=workdir, names=labkit.LAB_FILES)
            if not os.path.isdir(workdir):
                os.makedirs(workdir, 0o700)
            before = labkit.get_status()
            labkit.set_audit(g, before, backlog_limit=int(backlog_limit), backlog_wait_time=int(backlog_wait_time))
            cgroup, parent_path = None, None
            if parent_quota_us is not None:
                version, root = labkit.cpu_cgroup()
                if version is None:
                    raise StallRefused(root)
                labkit.enable_v2_cpu(g, version, root)
                parent_path = labkit.make_cgroup(g, version, root, 'auditgap-test-parent-%s' % name, period_us)
                guard.set_cgroup_limit(version, parent_path, parent_quota_us, period_us)
                if version == 2:
                    guard.write_value(os.path.join(parent_path, 'cgroup.subtree_control'), '+cpu')
                cgroup = (version, parent_path)
            consumer = labkit.start_cgroup_consumer(g, workdir, quota_us, name='auditgap-test-%s' % name,
                                                    period_us=period_us, cgroup=cgroup, auditd_conf=auditd_conf)
            labkit.add_rules(g, rules or [labkit.ACCEPT_RULE], key)
            if before.get('enabled') != 1:
                labkit.set_status(enabled=1)
            workload = labkit.start_workload(g, workdir, labworkload.__file__,
                                             rate_per_s=rate_per_s, clients=clients,
                                             cpu_stat_dir=consumer['cgroup_path'])
            stall = Stall(workdir, consumer, workload, key)
            stall.parent_path = parent_path
            try:
                yield stall
            except BaseException:
                failed = True
                raise
    finally:
        if stall is not None:
            stall.restore_errors = g.restore_errors
    if g.restore_errors and not failed:
        raise StallRestoreError('audit_stall restore failed: %s' % '; '.join(g.restore_errors))
