"""cgroup_throttle on the real kernel: a v1 cpu group with a tiny quota, and a Docker container.

Everything a test makes (cgroups, busy processes, containers, the image, a dockerd it
started) is removed, through RestoreGuard for the cgroup limits.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import cgroups
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import RestoreGuard
from tests.support.kernel import rmdir_cgroup


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUSY = ['sh', '-c', 'while :; do :; done']


def run_module(args, tmp_dir):
    """Run the module through ansible-playbook; returns its cgroup_throttle fact."""
    out = os.path.join(str(tmp_dir), 'cgroup_throttle.json')
    playbook = os.path.join(str(tmp_dir), 'play.yml')
    with open(playbook, 'w') as handle:
        json.dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': [
            {'name': 'Measure', 'auditgap.fleet.cgroup_throttle': args, 'register': 'measured'},
            {'name': 'Save', 'ansible.builtin.copy': {
                'content': '{{ measured.cgroup_throttle | to_json }}', 'dest': out, 'mode': '0600'}},
        ]}], handle)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    proc = subprocess.run([os.path.join(ROOT, '.venv/bin/ansible-playbook'), '-l', 'localhost', playbook],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as handle:
        return json.load(handle)


def _v1_cpu_mount():
    with open('/proc/self/mountinfo') as handle:
        hier = cgroups.discover_hierarchies(handle.read())
    if hier['version'] != 1:
        pytest.skip('this test drives a cgroup v1 cpu hierarchy; the host has {}'.format(hier['version']))
    return hier['cpu']['mount_point']


def _kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _by(result, kind, name=None):
    return [t for t in result['targets'] if t['kind'] == kind and (name is None or t['name'] == name)]


@pytest.mark.kernel
def test_v1_quota_throttles_then_lifted(tmp_path):
    mount = _v1_cpu_mount()
    rel = f'/auditgap-test-{os.getpid()}-{uuid.uuid4().hex[:6]}'
    parent = mount + rel
    leaf = parent + '/leaf'
    with RestoreGuard(timeout_s=120) as guard:
        os.mkdir(parent)
        guard.push(rmdir_cgroup, parent, description='remove ' + parent)
        os.mkdir(leaf)
        guard.push(rmdir_cgroup, leaf, description='remove ' + leaf)
        # the limit sits on the parent (like a pod or slice); the process in the leaf
        guard.write_file(parent + '/cpu.cfs_quota_us', '1000', restore_value='-1')
        busy = subprocess.Popen(BUSY)
        guard.push(_kill, busy, description='kill busy loop')
        with open(leaf + '/cgroup.procs', 'w') as handle:
            handle.write(str(busy.pid))

        facts = run_module({'pids': [busy.pid, 99999999], 'cgroup_paths': [rel],
                            'sample_seconds': 2}, tmp_path)
        assert facts['supported'] is True
        consumer = _by(facts, 'audit_consumer')
        assert len(consumer) == 1 and (consumer[0]['found'] or consumer[0]['reason'])
        target, = _by(facts, 'pid', str(busy.pid))
        assert target['found'] is True
        assert target['cgroup_version'] == 1
        assert target['cgroup_path'] == rel + '/leaf'
        assert target['limit_cores'] == 0.01
        assert target['limited_by'] == rel
        assert [g['path'] for g in target['cgroups']] == [rel + '/leaf', rel]
        sample = target['sample']
        assert sample['path'] == rel
        assert sample['nr_periods_delta'] >= 5
        assert sample['throttled_ratio'] >= 0.8, sample
        assert sample['throttled_seconds_per_s'] > 0.5
        assert sample['cpu_usage_cores'] < 0.05
        missing, = _by(facts, 'pid', str(99999999))
        assert missing['found'] is False and 'no process' in missing['reason']
        group, = _by(facts, 'cgroup_path')
        assert group['found'] and group['pids'] == [] and group['limited_by'] == rel

        # lift the quota: no more throttling, the loop gets real CPU
        with open(parent + '/cpu.cfs_quota_us', 'w') as handle:
            handle.write('-1')
        facts = cgroups.collect({'audit_consumer': False, 'pids': [busy.pid], 'sample_seconds': 2})
        target, = facts['targets']
        assert target['limit_cores'] is None and target['limited_by'] is None
        assert target['sample']['throttled_ratio'] <= 0.1
        assert target['sample']['cpu_usage_cores'] > 0.2
        # a generous quota (3 cores on this 2-core host): periods run, none throttled
        with open(parent + '/cpu.cfs_quota_us', 'w') as handle:
            handle.write('300000')
        facts = cgroups.collect({'audit_consumer': False, 'pids': [busy.pid], 'sample_seconds': 2})
        sample = facts['targets'][0]['sample']
        assert sample['nr_periods_delta'] >= 5
        assert sample['throttled_ratio'] <= 0.1, sample
    assert guard.restore_errors == []
    assert not os.path.exists(parent)
    assert busy.poll() is not None


@pytest.mark.kernel
def test_docker_container_by_name_and_id(docker_engine, tmp_path):
    name = f'auditgap-test-busy-{uuid.uuid4().hex[:8]}'
    cid = docker_engine.run(BUSY, name=name, cpus=0.05)
    try:
        time.sleep(0.5)
        facts = run_module({'audit_consumer': False, 'containers': [name, cid[:12], 'auditgap-no-such-ctr'],
                            'sample_seconds': 2}, tmp_path)
        by_name, by_id, missing = _by(facts, 'container')
        for target in (by_name, by_id):
            assert target['found'] is True, target
            assert target['container']['id'] == cid
            assert target['container']['name'] == name
            assert target['container']['runtime'] == 'docker'
            assert target['limit_cores'] == 0.05
            assert target['limited_by'] == target['cgroup_path']
            assert cid in target['cgroup_path']
            assert len(target['pids']) >= 1
            assert target['sample']['throttled_ratio'] >= 0.8, target['sample']
        assert by_name['name'] == name and by_id['name'] == cid[:12]
        assert missing['found'] is False and 'auditgap-no-such-ctr' in missing['reason']
    finally:
        docker_engine.remove(cid)


def _stop_consumer(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.kernel
def test_audit_consumer_in_throttled_group():
    """The seed: the registered audit consumer sits in a CPU-starved group."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl
    from ansible_collections.auditgap.fleet.plugins.module_utils.audit import consumer as audit_consumer_pid

    existing = auditnl.get_status().get('pid')
    if existing:
        # someone else's consumer (a real auditd): the module must find that one
        pid, reason = audit_consumer_pid()
        assert pid == existing and reason is None
        facts = cgroups.collect({'sample_seconds': 0}, audit_lookup=audit_consumer_pid)
        assert facts['targets'][0]['kind'] == 'audit_consumer' and facts['targets'][0]['found']
        return
    assert audit_consumer_pid() == (None, 'no audit consumer registered')

    mount = _v1_cpu_mount()
    rel = f'/auditgap-test-{os.getpid()}-{uuid.uuid4().hex[:6]}'
    group = mount + rel
    with RestoreGuard(timeout_s=90) as guard:
        os.mkdir(group)
        guard.push(rmdir_cgroup, group, description='remove ' + group)
        guard.write_file(group + '/cpu.cfs_quota_us', '1000', restore_value='-1')
        consumer = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests/support/audit_consumer.py')],
                                    stdout=subprocess.PIPE, text=True)
        guard.push(_stop_consumer, consumer, description='stop the test audit consumer')
        line = consumer.stdout.readline().split()
        assert line[:1] == ['ready'], line
        busy = subprocess.Popen(BUSY)
        guard.push(_kill, busy, description='kill busy loop')
        for pid in (consumer.pid, busy.pid):
            with open(group + '/cgroup.procs', 'w') as handle:
                handle.write(str(pid))

        facts = cgroups.collect({'sample_seconds': 2}, audit_lookup=audit_consumer_pid)
        target, = facts['targets']
        assert target['kind'] == 'audit_consumer' and target['found'] is True
        assert target['name'] == str(consumer.pid) and target['pids'] == [consumer.pid]
        assert target['cgroup_path'] == rel and target['limited_by'] == rel
        assert target['limit_cores'] == 0.01
        assert target['sample']['throttled_ratio'] >= 0.8, target['sample']
    assert guard.restore_errors == []
    assert not os.path.exists(group)
    assert auditnl.get_status().get('pid') in (0, None)
