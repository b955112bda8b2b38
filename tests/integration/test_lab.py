"""The incident lab end to end on the real kernel (root; marked kernel).

Per backend: host snapshot -> playbooks/lab.yml present -> accept p99 in the
stall range (a request waiting hundreds of ms in most seconds) -> timeline picture under reports/lab/ ->
playbooks/lab.yml absent -> the host equals the snapshot (audit settings,
rule list, tracefs instances, cgroups, containers, lab processes) -> a second
absent changes nothing. Plus: a failure half-way is undone by the guard at
once; an existing consumer is refused, or throttled and restored on request.

Each stalled phase is kept to a few seconds: while the lab is present every
audited syscall on the host (accept4, and clone/execve with the seed rules)
waits up to the CFS period.
"""
import os
import subprocess
import time

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import labkit, labworkload
from tests.support.labsnapshot import host_snapshot, list_lab_containers, list_rules, snapshot_diff

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT_DIR = os.path.join(ROOT, 'reports', 'lab')
STATE = labkit.STATE_FILE
# A stalled second: some accept4 in it waited >= this long (measured 240-1100 ms: up to
# backlog_wait_time, 250 jiffies). Judged on each second's max, not on a p99 estimate: how
# many fast accepts run between two stalls varies with the load, and a p99 of ~500 accepts
# a second sits right at the edge (one CI run: window p99 99.56 ms with max 1111 ms).
STALL_MIN_MS = 100.0


def snapshot(with_containers=False):
    # dockerd/containerd only for the docker backend: other engineers' docker
    # fixtures start and stop them outside the kernel-test lock.
    if with_containers:
        return host_snapshot(docker=list_lab_containers())
    return host_snapshot(daemons=('auditd',))


def playbook(*extra, check=True):
    cmd = [os.path.join(ROOT, '.venv', 'bin', 'ansible-playbook'), '-i', 'inventory.example',
           'playbooks/lab.yml'] + list(extra)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=240)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


def changed_count(output):
    for line in output.splitlines():
        if line.startswith('localhost') and 'changed=' in line:
            return int(line.split('changed=')[1].split()[0])
    return None


def wait_records(path, seconds, timeout_s=30.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        records = [r for r in labworkload.read_jsonl(path) if r.get('count')]
        if len(records) >= seconds:
            return records
        time.sleep(0.5)
    return [r for r in labworkload.read_jsonl(path) if r.get('count')]


def write_timeline(name, points, markers=None):
    from ansible_collections.auditgap.fleet.plugins.module_utils import labchart
    return labchart.write_timeline(os.path.join(REPORT_DIR, name), points, markers,
                                   title='incident lab (%s)' % name)


@pytest.fixture
def clean_lab():
    """No lab left from an earlier run; and none left behind by this test."""
    labkit.lab_absent(STATE)
    yield
    _, result = labkit.lab_absent(STATE)
    assert not result['errors'], result['errors']


def _end_to_end(backend):
    docker = backend == 'docker'
    before = snapshot(with_containers=docker)
    assert not before['audit_status']['pid'], 'another audit consumer is registered; the lab refuses'
    out = playbook('-e', 'lab_state=present', '-e', 'lab_backend=%s' % backend).stdout
    assert changed_count(out) == 1, out[-3000:]
    status = labkit.get_status()
    info = labkit.lab_info(STATE)
    assert info['backend'] == backend and info['alive']
    assert status['pid'] == info['consumer_pid']
    assert status['backlog_limit'] == 64 and status['backlog_wait_time'] == 250
    assert any('key=auditgap-lab' in rule for rule in list_rules())
    stat = labworkload.read_cpu_stat(info['cgroup_path'])
    assert 'nr_throttled' in stat
    records = wait_records(info['latency_path'], 5)
    window = labworkload.window_summary(records[1:])
    points = labworkload.read_jsonl(info['timeline_path'])
    svg = write_timeline('timeline-%s.svg' % backend, points)
    assert window['count'] > 0
    assert window['max_ms'] >= 2 * STALL_MIN_MS, (window, records)
    stalled_seconds = [r for r in records[1:] if r['max_ms'] >= STALL_MIN_MS]
    assert len(stalled_seconds) >= len(records[1:]) / 2.0, (window, records)
    assert any((p.get('throttled_ratio') or 0) > 0.5 for p in points), points
    # the backlog sampler is not audited: it reads the full backlog while accept4 stalls
    stalled = [p for p in points if (p.get('max_ms') or 0) >= STALL_MIN_MS]
    assert stalled and max(p.get('backlog_peak') or 0 for p in stalled) >= 0.8 * status['backlog_limit'], points
    assert sum(1 for p in stalled if p.get('backlog_samples')) >= len(stalled) / 2.0, points
    assert os.path.getsize(svg) > 1000
    # present again: nothing changes
    assert changed_count(playbook('-e', 'lab_state=present', '-e', 'lab_backend=%s' % backend).stdout) == 0
    out = playbook('-e', 'lab_state=absent').stdout
    assert changed_count(out) == 1
    after = snapshot(with_containers=docker)
    assert snapshot_diff(before, after) == []
    assert not os.path.exists(STATE)
    assert changed_count(playbook('-e', 'lab_state=absent').stdout) == 0


@pytest.mark.kernel
def test_lab_cgroup_backend_end_to_end(clean_lab):
    _end_to_end('cgroup')


@pytest.mark.kernel
@pytest.mark.docker
def test_lab_docker_backend_end_to_end(clean_lab):
    if not os.path.exists('/usr/sbin/dockerd') and not os.path.exists('/usr/bin/dockerd'):
        pytest.skip('docker.io is not installed')
    _end_to_end('docker')


@pytest.mark.kernel
def test_lab_failure_half_way_is_undone(clean_lab, monkeypatch):
    """present fails after the consumer and rules are in place: the guard undoes all of it."""
    before = snapshot()

    def crash(*args, **kwargs):
        assert labkit.get_status()['pid'] and any('auditgap-lab' in r for r in list_rules())
        raise RuntimeError('simulated crash')

    monkeypatch.setattr(labkit, 'start_workload', crash)
    with pytest.raises(labkit.LabFailed, match='simulated crash.*everything it changed is undone') as err:
        labkit.lab_present({'rules': 'accept', 'period_us': 100000})
    assert err.value.restored and err.value.restore_errors == []
    assert not os.path.exists(STATE)
    assert snapshot_diff(before, snapshot()) == []
    changed, result = labkit.lab_absent(STATE)
    assert not changed


@pytest.mark.kernel
def test_lab_refuses_existing_consumer_and_can_throttle_it(clean_lab):
    from tests.support.stall import audit_stall
    with audit_stall(quota_us=None, key='auditgap-test-lab-existing', period_us=100000) as stall:
        inside = snapshot()
        with pytest.raises(labkit.LabRefused, match='already registered'):
            labkit.lab_present({'rules': 'accept', 'workload': False})
        assert not os.path.exists(STATE)
        changed, result = labkit.lab_present({'rules': 'accept', 'workload': False,
                                              'allow_existing_consumer': True, 'period_us': 100000})
        assert changed and result['existing_consumer'] and result['consumer_pid'] == stall.consumer_pid
        assert labkit.cgroup_of_pid(stall.consumer_pid) == result['cgroup_path']
        changed, result = labkit.lab_absent(STATE)
        assert not result['errors']
        assert labkit.cgroup_of_pid(stall.consumer_pid) == stall.cgroup_path
        assert snapshot_diff(inside, snapshot()) == []


@pytest.mark.kernel
def test_lab_check_mode_changes_nothing(clean_lab):
    before = snapshot()
    out = playbook('--check', '-e', 'lab_state=present').stdout
    assert changed_count(out) == 1, out[-3000:]
    assert not os.path.exists(STATE)
    assert snapshot_diff(before, snapshot()) == []


STALL_CHILD = r'''
import sys, time
sys.path.insert(0, %(root)r + '/collections'); sys.path.insert(0, %(root)r)
from tests.support.stall import audit_stall
with audit_stall(key='auditgap-test-lab-signal', period_us=100000) as stall:
    print('ready', stall.consumer_pid, stall.cgroup_path, flush=True)
    time.sleep(60)
'''


def _stall_child():
    proc = subprocess.Popen([os.path.join(ROOT, '.venv', 'bin', 'python'), '-c', STALL_CHILD % {'root': ROOT}],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == 'ready', proc.stderr.read() if proc.poll() is not None else line
    return proc, int(line[1]), line[2]


@pytest.mark.kernel
@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGKILL'])
def test_audit_stall_restores_after_signal(signame):
    """SIGTERM: the guard restores at once; SIGKILL: the next audit_stall user (cleanup_stale) does."""
    import signal as signal_mod

    from tests.support import stall as stall_support
    before = snapshot()
    proc, consumer_pid, cgroup_path = _stall_child()
    assert labkit.get_status()['pid'] == consumer_pid and os.path.isdir(cgroup_path)
    proc.send_signal(getattr(signal_mod, signame))
    proc.wait(timeout=60)
    if signame == 'SIGKILL':
        assert os.path.isdir(cgroup_path)  # nobody restored yet (the journal's owner died)
        assert stall_support.cleanup_stale() == []
    assert not os.path.isdir(cgroup_path)
    assert snapshot_diff(before, snapshot()) == []
