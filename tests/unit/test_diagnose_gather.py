"""diagnose_gather (module_utils/diagnosegather): both collectors at once, errors become supported: false."""
import os
import threading
import time

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
