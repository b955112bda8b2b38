"""diagnose_gather (module_utils/diagnosegather): both collectors at once, errors become supported: false."""
import os
import threading
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, auditnl
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosegather as G


def test_runs_both_at_the_same_time():
    barrier = threading.Barrier(2, timeout=5)

    def audit():
        barrier.wait()  # deadlocks (then times out) unless both run concurrently
        return {'supported': True, 'status': {}}

    def cgroup():
        barrier.wait()
        return {'supported': True, 'targets': []}

    start = time.monotonic()
    out = G.gather_both({'consumer_cgroup': True}, audit, cgroup)
    assert time.monotonic() - start < 4
    assert out == {'audit_status': {'supported': True, 'status': {}}, 'cgroup_throttle': {'supported': True, 'targets': []}}


def test_errors_are_unsupported_not_crashes():
    def boom():
        raise OSError('nope')

    out = G.gather_both({'consumer_cgroup': True}, boom, boom)
    assert out['audit_status']['supported'] is False and 'OSError: nope' in out['audit_status']['reason']
    assert out['cgroup_throttle']['supported'] is False and 'OSError: nope' in out['cgroup_throttle']['reason']


def test_consumer_cgroup_off():
    out = G.gather_both({'consumer_cgroup': False}, lambda: {'supported': True}, lambda: 1 / 0)
    assert out == {'audit_status': {'supported': True}}


def test_cgroup_options_are_the_consumer_only():
    opts = G.cgroup_options(3.0)
    assert opts['audit_consumer'] is True and opts['sample_seconds'] == 3.0
    assert all(opts[k] == [] for k in ('pids', 'process_names', 'systemd_units', 'containers', 'cgroup_paths'))


def test_docker_client_not_imported_at_start_up():
    """The module's start-up on each host leaves the Docker client (HTTP, tar) out (docs/scale.md)."""
    import subprocess
    import sys
    code = ('import sys; from ansible_collections.auditgap.fleet.plugins.modules import diagnose_gather; '
            'print(any(m.endswith(".dockerctl") or m in ("http.client", "tarfile") for m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == 'False', out


class NoNetlink:
    """Stands for a host where netlink audit is refused (a container, an old kernel): only auditctl works."""

    def __init__(self, *args, **kwargs):
        raise auditnl.AuditNetlinkError('audit is not available in this namespace', 111)


def test_consumer_found_through_auditctl_when_netlink_is_unavailable():
    """The consumer's cgroup is found as agent_cpu finds it (netlink, else auditctl -s), with
    one status read for both collectors. The fake auditctl names this test process."""
    calls = []

    def run(argv):
        calls.append(argv[1:])
        if argv[1:] == ['-s']:
            return 0, 'enabled 1\nfailure 1\npid %d\nrate_limit 0\nbacklog_limit 64\nlost 0\nbacklog 0\n' % os.getpid(), ''
        return 0, 'No rules\n', ''
    client = audit.Audit(run_command=run, auditctl='/sbin/auditctl', netlink=NoNetlink)
    params = {'consumer_cgroup': True, 'audit_sample_seconds': 0, 'sample_interval_ms': 100}
    params = dict(params, cgroup_sample_seconds=0)
    out = G.gather(params, client)
    target, = out['cgroup_throttle']['targets']
    assert target['kind'] == 'audit_consumer' and target['found'] is True
    assert target['name'] == str(os.getpid()) and target['pids'] == [os.getpid()]
    if os.geteuid() == 0:  # audit_status needs root; the consumer lookup above does not
        facts = out['audit_status']
        assert facts['source'] == 'auditctl' and facts['status']['pid'] == os.getpid()
        assert facts['consumer']['pid'] == os.getpid() and 'netlink' in facts['source_errors'][0]
        assert calls == [['-s'], ['-l']]  # the status read once, for both collectors
