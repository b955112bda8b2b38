"""audit_status facts: contract shape, sampling summary, consumer identity, unsupported hosts."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import (
    audit,
    auditfacts,
    auditnl,
)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'audit')
DOCKER_ID = 'a' * 64
CRIO_ID = 'b' * 64
CONTAINERD_ID = 'c' * 64
PODMAN_ID = 'd' * 64


def text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


# -- options ------------------------------------------------------------------

@pytest.mark.parametrize('args,message', [
    (('bogus', 0, 100), 'source must be one of'),
    (('auto', -1, 100), 'between 0 and 300'),
    (('auto', 300.5, 100), 'between 0 and 300'),
    (('auto', 1e9, 100), 'between 0 and 300'),
    (('auto', float('nan'), 100), 'between 0 and 300'),
    (('auto', 'x', 100), 'must be a number'),
    (('auto', 1, 5), 'sample_interval_ms must be between'),
    (('auto', 1, 10 ** 6), 'sample_interval_ms must be between'),
])
def test_validate_params_errors(args, message):
    assert message in auditfacts.validate_params(*args)


def test_validate_params_ok():
    assert auditfacts.validate_params('auto', 0, 100) is None
    assert auditfacts.validate_params('netlink', 300, 10) is None
    assert auditfacts.validate_params('auditctl', 2.5, 60000) is None


# -- status shape ---------------------------------------------------------------

def test_build_status_from_auditctl_capture():
    status = auditfacts.build_status(audit.parse_status(text('auditctl-s.during-stall.txt')), 250)
    assert status['backlog_wait_time_jiffies'] == 250
    assert status['backlog_wait_time_ms'] == 1000.0
    assert status['backlog_wait_time_actual_jiffies'] == 12828
    assert status['backlog_wait_time_actual_ms'] == 51312.0
    assert status['immutable'] is False and status['pid'] == 6398
    assert status['features'] == []


def test_build_status_old_kernel_has_nulls():
    status = auditfacts.build_status(audit.parse_status(text('auditctl-s.old-one-line.txt')), 100)
    assert status['backlog_wait_time_jiffies'] is None and status['backlog_wait_time_ms'] is None
    assert status['backlog_wait_time_actual_jiffies'] is None
    assert status['backlog_wait_time_actual_ms'] is None


def test_build_status_immutable_and_features():
    raw = audit.parse_status(text('auditctl-s.immutable.txt'))
    raw['feature_bitmap'] = 0x7f
    status = auditfacts.build_status(raw, 1000)
    assert status['immutable'] is True and status['enabled'] == 2
    assert 'lost_reset' in status['features']
    assert status['backlog_wait_time_ms'] == 60000.0


# -- sampling -------------------------------------------------------------------

def entry(t, backlog, lost, actual):
    return {'t_s': t, 'backlog': backlog, 'lost': lost, 'backlog_wait_time_actual_jiffies': actual}


def test_summarize_sample():
    timeline = [entry(0.0, 0, 4, 100), entry(0.5, 64, 4, 100), entry(1.0, 60, 9, 350),
                entry(2.0, 3, 14, 600)]
    sample = auditfacts.summarize_sample(timeline, 250, 64, 100)
    assert sample['seconds'] == 2.0 and sample['samples'] == 4 and sample['interval_ms'] == 100
    assert sample['backlog_peak'] == 64 and sample['backlog_peak_ratio'] == 1.0
    assert sample['lost_delta'] == 10 and sample['lost_per_s'] == 5.0
    assert sample['backlog_wait_time_actual_delta_jiffies'] == 500
    assert sample['backlog_wait_time_actual_delta_ms'] == 2000.0
    assert sample['timeline'] == timeline


def test_summarize_sample_counter_reset_and_old_kernel():
    timeline = [entry(0.0, 0, 50, None), entry(1.0, 1, 2, None)]
    sample = auditfacts.summarize_sample(timeline, 250, 0, 100)
    assert sample['lost_delta'] == 2          # the consumer reset lost: count from 0
    assert sample['backlog_peak_ratio'] is None   # backlog_limit 0 = unlimited
    assert sample['backlog_wait_time_actual_delta_jiffies'] is None
    assert sample['backlog_wait_time_actual_delta_ms'] is None


class FakeReader:
    source = 'netlink'

    def __init__(self, statuses):
        self.statuses = list(statuses)

    def status(self):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def close(self):
        pass


def test_run_sample_polls_for_the_window():
    now = [0.0]

    def clock():
        return now[0]

    def sleep(seconds):
        now[0] += seconds

    statuses = [dict(backlog=b, lost=n_lost, backlog_wait_time_actual=a, backlog_limit=64)
                for b, n_lost, a in [(0, 0, 0), (10, 0, 0), (64, 1, 250), (64, 3, 500), (5, 3, 500)]]
    sample = auditfacts.run_sample(FakeReader(statuses), 1.0, 250, 250, 64, clock=clock, sleep=sleep)
    assert sample['samples'] == 5
    assert [e['t_s'] for e in sample['timeline']] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sample['backlog_peak'] == 64 and sample['lost_delta'] == 3
    assert sample['backlog_wait_time_actual_delta_ms'] == 2000.0


# -- consumer -------------------------------------------------------------------

def make_proc(tmp_path, pid, comm, cmdline, cgroup, exe='/usr/sbin/auditd'):
    base = tmp_path / str(pid)
    base.mkdir(parents=True)
    (base / 'comm').write_text(comm + '\n')
    (base / 'cmdline').write_bytes(b'\0'.join(arg.encode() for arg in cmdline) + b'\0')
    (base / 'cgroup').write_text(cgroup)
    os.symlink(exe, str(base / 'exe'))
    return str(tmp_path)


def test_consumer_auditd_in_systemd_service_and_v1_cpu_group(tmp_path):
    cgroup = ('12:cpu,cpuacct:/system.slice/auditd.service\n'
              '1:name=systemd:/system.slice/auditd.service\n0::/system.slice/auditd.service\n')
    root = make_proc(tmp_path, 812, 'auditd', ['/sbin/auditd'], cgroup)
    consumer = auditfacts.read_consumer(812, root)
    assert consumer['found'] is True and consumer['pid'] == 812
    assert consumer['comm'] == 'auditd' and consumer['exe'] == '/usr/sbin/auditd'
    assert consumer['cmdline'] == ['/sbin/auditd']
    assert consumer['cgroups']['v1']['cpu'] == '/system.slice/auditd.service'
    assert consumer['cgroups']['v1']['cpuacct'] == '/system.slice/auditd.service'
    assert consumer['cgroups']['v2'] == '/system.slice/auditd.service'
    assert consumer['systemd_unit'] == 'auditd.service' and consumer['container'] is None


@pytest.mark.parametrize('cgroup,runtime,cid,unit', [
    ('0::/system.slice/docker-%s.scope\n' % DOCKER_ID, 'docker', DOCKER_ID, 'docker-%s.scope' % DOCKER_ID),
    ('4:cpu,cpuacct:/docker/%s\n4:memory:/docker/%s\n' % (DOCKER_ID, DOCKER_ID), 'docker', DOCKER_ID, None),
    ('0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666.slice/'
     'crio-%s.scope\n' % CRIO_ID, 'cri-o', CRIO_ID, 'crio-%s.scope' % CRIO_ID),
    ('0::/kubepods.slice/kubepods-pod0a1b2c3d_1111_2222_3333_444455556666.slice/cri-containerd-%s.scope\n'
     % CONTAINERD_ID, 'containerd', CONTAINERD_ID, 'cri-containerd-%s.scope' % CONTAINERD_ID),
    ('3:cpu,cpuacct:/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/%s\n' % CONTAINERD_ID,
     'containerd', CONTAINERD_ID, None),
    ('0::/machine.slice/libpod-%s.scope\n' % PODMAN_ID, 'podman', PODMAN_ID, 'libpod-%s.scope' % PODMAN_ID),
])
def test_consumer_in_containers(tmp_path, cgroup, runtime, cid, unit):
    root = make_proc(tmp_path, 4242, 'ids-agent', ['/opt/agent/bin/ids-agent', '--audit'], cgroup,
                     exe='/opt/agent/bin/ids-agent')
    consumer = auditfacts.read_consumer(4242, root)
    assert consumer['container']['runtime'] == runtime
    assert consumer['container']['id'] == cid
    assert consumer['systemd_unit'] == unit
    if 'kubepods' in cgroup:
        assert consumer['container']['pod_uid'] == '0a1b2c3d-1111-2222-3333-444455556666'


def test_consumer_absent_and_invisible(tmp_path):
    assert auditfacts.read_consumer(0, str(tmp_path)) is None
    invisible = auditfacts.read_consumer(999, str(tmp_path))
    assert invisible['found'] is False and invisible['pid'] == 999 and invisible['comm'] is None
    assert invisible == {'pid': 999, 'found': False, 'comm': None, 'exe': None, 'exe_build': None, 'cmdline': None,
                         'cgroups': {'v1': {}, 'v2': None}, 'container': None, 'systemd_unit': None}


# -- gather: sources and unsupported hosts ----------------------------------------

def fake_run(outputs):
    calls = []

    def run(argv):
        calls.append(argv)
        return outputs[argv[-1]]
    run.calls = calls
    return run


class NoAudit:
    def __init__(self, *args, **kwargs):
        raise auditnl.AuditNetlinkError('the kernel has no audit support', 93)


def test_gather_non_root_is_unsupported_not_an_error():
    facts = auditfacts.gather(euid=1000)
    assert facts['supported'] is False and 'root' in facts['reason']
    assert facts['hz']['value'] > 0


def test_gather_auto_falls_back_to_auditctl(monkeypatch, tmp_path):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    run = fake_run({'-s': (0, text('auditctl-s.during-stall.txt'), ''),
                    '-l': (0, text('auditctl-l.seed-rules.txt'), '')})
    facts = auditfacts.gather(run_command=run, auditctl_path='/sbin/auditctl', euid=0,
                              proc_root=str(tmp_path))
    assert facts['supported'] is True and facts['source'] == 'auditctl'
    assert facts['rules_source'] == 'auditctl' and len(facts['rules']) == 2
    assert facts['status']['pid'] == 6398
    assert facts['consumer']['found'] is False
    assert 'netlink' in facts['source_errors'][0]


def test_gather_no_audit_anywhere_is_unsupported(monkeypatch):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    facts = auditfacts.gather(run_command=fake_run({}), auditctl_path=None, euid=0)
    assert facts['supported'] is False
    assert 'no audit support' in facts['reason'] and 'auditctl: not installed' in facts['reason']


def test_gather_auditctl_refused_in_container(monkeypatch):
    run = fake_run({'-s': (1, '', 'Error sending status request (Operation not permitted)\n')})
    facts = auditfacts.gather(source='auditctl', run_command=run, auditctl_path='/sbin/auditctl', euid=0)
    assert facts['supported'] is False and 'Operation not permitted' in facts['reason']


def test_gather_rules_off_and_consumer_off(monkeypatch):
    run = fake_run({'-s': (0, text('auditctl-s.during-stall.txt'), '')})
    facts = auditfacts.gather(source='auditctl', rules=False, consumer=False, run_command=run,
                              auditctl_path='/sbin/auditctl', euid=0)
    assert facts['rules'] == [] and facts['rules_source'] is None and facts['consumer'] is None
    assert run.calls == [['/sbin/auditctl', '-s']]


def test_gather_netlink_reads_status_rules_and_sample_on_one_socket(monkeypatch, tmp_path):
    opened = []

    class OneStatus:
        def __init__(self, *args, **kwargs):
            opened.append(self)
            self.closed = False

        def get_status(self):
            return {'enabled': 1, 'pid': 0, 'backlog': 0, 'lost': 0, 'backlog_limit': 64,
                    'backlog_wait_time_actual': 0}

        def list_rules(self):
            return []

        def close(self):
            self.closed = True

    monkeypatch.setattr(auditnl, 'AuditSocket', OneStatus)
    facts = auditfacts.gather(source='netlink', sample_seconds=0.03, sample_interval_ms=10, euid=0,
                              proc_root=str(tmp_path))
    assert facts['source'] == 'netlink' and facts['rules_source'] == 'netlink'
    assert facts['sample']['samples'] >= 2
    assert len(opened) == 1 and opened[0].closed


def test_utc_now_is_iso8601_utc_with_microseconds():
    assert auditfacts.utc_now(lambda: 1764619303.25) == '2025-12-01T20:01:43.250000Z'
    assert auditfacts.utc_now(lambda: 0) == '1970-01-01T00:00:00.000000Z'
