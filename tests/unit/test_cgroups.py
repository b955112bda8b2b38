"""cgroups module_utils on fixture trees (real v1 files of this machine kind, v2 formats
from the kernel's cgroup-v2 documentation). No root needed."""
import os
import shutil

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import cgroups

from tests.support import fixturetree

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'cgroups')
# copies with the /proc/<pid>/exe links made (the tree stores their targets in exe.link)
V1 = fixturetree.materialize(os.path.join(FIX, 'v1'))
V2 = fixturetree.materialize(os.path.join(FIX, 'v2'))
CID = 'a7d4bef1b2cc17ea3eaa76a4fab847d22e9f8f588e6e233737e0eca84d0b99a3'
KID = '3f1c2b9a8e7d6c5b4a392817161514131211100f0e0d0c0b0a09080706050403'
POD = 'pod0b6c4a2e-9f1d-4c3b-8a7e-5d2f1e0c9b8a'
D2 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
K2 = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
PS2 = ('/kubepods.slice/kubepods-burstable.slice/'
       'kubepods-burstable-pod0b6c4a2e_9f1d_4c3b_8a7e_5d2f1e0c9b8a.slice')


def _mountinfo(root):
    with open(os.path.join(root, 'proc/self/mountinfo')) as handle:
        return handle.read()


def _collect(root, no_sleep=True, **options):
    options.setdefault('audit_consumer', False)
    options.setdefault('sample_seconds', 0)
    calls = []
    return cgroups.collect(options, root=root, sleep=calls.append if no_sleep else None,
                           container_lookup=options.pop('lookup', None),
                           audit_lookup=options.pop('audit', None))


def _by_kind(result, kind):
    return [t for t in result['targets'] if t['kind'] == kind]


# -- mounts -------------------------------------------------------------------

def test_discover_hybrid_v1_host():
    hier = cgroups.discover_hierarchies(_mountinfo(V1), V1)
    assert hier['supported'] is True
    assert hier['version'] == 1
    assert hier['cpu']['mount_point'] == '/sys/fs/cgroup/cpu'
    assert hier['cpu']['controllers'] == ['cpu']
    assert hier['cpuacct']['mount_point'] == '/sys/fs/cgroup/cpuacct'
    assert hier['v2']['mount_point'] == '/sys/fs/cgroup/unified'
    assert hier['v2_controllers'] == ['hugetlb']
    assert hier['cpu_controller'] is True


def test_discover_pure_v2():
    hier = cgroups.discover_hierarchies(_mountinfo(V2), V2)
    assert (hier['supported'], hier['version'], hier['cpu_controller']) == (True, 2, True)
    assert hier['cpu'] is None and hier['v2']['mount_point'] == '/sys/fs/cgroup'


def test_discover_comounted_cpu_cpuacct_and_named():
    text = ('35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n'
            '36 25 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n'
            '37 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n')
    mounts = cgroups.cgroup_mounts(cgroups.parse_mountinfo(text))
    assert mounts['v1']['cpu'] is mounts['v1']['cpuacct']
    assert mounts['v1']['cpu']['mount_point'] == '/sys/fs/cgroup/cpu,cpuacct'
    assert 'name=systemd' in mounts['v1']
    assert 'xattr' not in mounts['v1']
    hier = cgroups.discover_hierarchies(text, '/nonexistent-root')
    assert hier['version'] == 1 and hier['cpuacct'] is hier['cpu']


def test_discover_v2_without_cpu_controller(tmp_path):
    (tmp_path / 'sys/fs/cgroup').mkdir(parents=True)
    (tmp_path / 'sys/fs/cgroup/cgroup.controllers').write_text('memory pids\n')
    text = '30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n'
    hier = cgroups.discover_hierarchies(text, str(tmp_path))
    assert (hier['supported'], hier['version'], hier['cpu_controller']) == (True, 2, False)


def test_discover_no_cgroup_filesystem():
    text = '22 1 259:2 / / rw - ext4 /dev/sda1 rw\n23 22 0:21 / /proc rw - proc proc rw\n'
    hier = cgroups.discover_hierarchies(text, '/')
    assert hier['supported'] is False
    assert 'no cgroup filesystem' in hier['reason']


def test_mountinfo_escapes_and_namespaced_root():
    text = r'40 31 0:29 /docker/abc /sys/fs/cgroup/cpu\040x rw - cgroup cgroup rw,cpu' + '\n'
    mount = cgroups.cgroup_mounts(cgroups.parse_mountinfo(text))['v1']['cpu']
    assert mount['mount_point'] == '/sys/fs/cgroup/cpu x'
    # a path under the mount's root is stripped; the root itself maps to the mount point
    assert cgroups.dir_for(mount, '/docker/abc/sub', '/') == '/sys/fs/cgroup/cpu x/sub'
    assert cgroups.dir_for(mount, '/docker/abc', '/') == '/sys/fs/cgroup/cpu x'
    # inside a cgroup namespace the path is relative to the namespace root already
    assert cgroups.dir_for(mount, '/', '/') == '/sys/fs/cgroup/cpu x'


# -- formats ------------------------------------------------------------------

def test_parse_cpu_stat_v1_real_reference():
    with open(os.path.join(V1, 'sys/fs/cgroup/cpu/docker', CID, 'cpu.stat')) as handle:
        stat = cgroups.parse_cpu_stat(handle.read(), 1)
    assert stat['nr_periods'] == 357
    assert stat['nr_throttled'] == 351
    assert stat['throttled_us'] == pytest.approx(34188148.669)
    assert stat['usage_us'] is None


def test_parse_cpu_stat_v2():
    text = ('usage_usec 2032941\nuser_usec 1305284\nsystem_usec 727657\nnr_periods 2050\n'
            'nr_throttled 1987\nthrottled_usec 98765432\nnr_bursts 3\nburst_usec 2500\n')
    stat = cgroups.parse_cpu_stat(text, 2)
    assert stat == {'nr_periods': 2050, 'nr_throttled': 1987, 'throttled_us': 98765432,
                    'nr_bursts': 3, 'burst_us': 2500, 'usage_us': 2032941}


def test_parse_cpu_max_and_limits():
    assert cgroups.parse_cpu_max('max 100000\n') == (None, 100000)
    assert cgroups.parse_cpu_max('50000 100000\n') == (50000, 100000)
    assert cgroups.parse_cpu_max('') == (None, None)
    assert cgroups.limit_cores(5000, 100000) == 0.05
    assert cgroups.limit_cores(None, 100000) is None
    assert cgroups.limit_cores(-1, 100000) is None
    assert cgroups.limit_cores(250000, 100000) == 2.5


def test_parse_pressure():
    text = ('some avg10=45.12 avg60=40.03 avg300=30.50 total=123456789\n'
            'full avg10=40.00 avg60=35.21 avg300=25.10 total=98765432\n')
    psi = cgroups.parse_pressure(text)
    assert psi['some'] == {'avg10': 45.12, 'avg60': 40.03, 'avg300': 30.5, 'total_us': 123456789}
    assert psi['full']['total_us'] == 98765432
    assert cgroups.parse_pressure('') is None


def test_ancestors():
    assert cgroups.ancestors('/a/b/c') == ['/a/b/c', '/a/b', '/a', '/']
    assert cgroups.ancestors('/') == ['/']


# -- groups -------------------------------------------------------------------

def test_read_group_v1_container_with_psi_from_unified():
    hier = cgroups.discover_hierarchies(_mountinfo(V1), V1)
    group = cgroups.read_group(hier, '/docker/' + CID, V1)
    assert group['quota_us'] == 1000 and group['period_us'] == 100000
    assert group['limit_cores'] == 0.01
    assert group['burst_us'] == 0
    assert group['usage_us'] == pytest.approx(480123.456)
    assert group['pressure']['some']['avg10'] == 91.2
    assert cgroups.read_group(hier, '/no/such/group', V1) is None


def test_limited_chain_v1_pod_limit_is_tightest():
    hier = cgroups.discover_hierarchies(_mountinfo(V1), V1)
    path = f'/kubepods/burstable/{POD}/{KID}'
    chain = cgroups.limited_chain(hier, path, V1)
    assert [g['path'] for g in chain] == [path, '/kubepods/burstable/' + POD]
    assert cgroups.tightest(chain)['limit_cores'] == 0.5


def test_sample_delta_rates():
    before = {'path': '/x', 'nr_periods': 100, 'nr_throttled': 90, 'throttled_us': 1e6,
              'usage_us': 2e6, 'limit_cores': 0.05}
    after = dict(before, nr_periods=150, nr_throttled=140, throttled_us=5e6, usage_us=2.1e6)
    sample = cgroups.sample_delta(before, after, 2.0)
    assert sample['throttled_ratio'] == 1.0
    assert sample['throttled_seconds_per_s'] == 2.0
    assert sample['cpu_usage_cores'] == pytest.approx(0.05)
    idle = cgroups.sample_delta(before, before, 2.0)
    assert idle['throttled_ratio'] == 0.0 and idle['nr_periods_delta'] == 0


# -- collect: targets ---------------------------------------------------------

def test_collect_v1_targets_and_not_found():
    lookups = []

    def lookup(ref):
        lookups.append(ref)
        if ref in ('ids', CID):
            return {'id': CID, 'name': 'ids', 'pid': 4242, 'running': True}, None
        return None, None

    result = _collect(V1, pids=[4242, 999999], process_names=['ids-agent', 'falco', 'deleted-agent', 'nope'],
                      containers=['a7d4bef1', 'ids', 'ghost'], cgroup_paths=['/sys/fs/cgroup/cpu/docker/' + CID,
                                                                               '/auditgap-free', '/missing'],
                      systemd_units=['nothing'], lookup=lookup)
    assert result['supported'] is True and result['hierarchy']['version'] == 1
    pid, missing = _by_kind(result, 'pid')
    assert pid['found'] and pid['cgroup_path'] == '/docker/' + CID
    assert pid['limit_cores'] == 0.01 and pid['limited_by'] == '/docker/' + CID
    assert pid['container']['id'] == CID and pid['container']['runtime'] == 'docker'
    assert pid['throttled_ratio_total'] == pytest.approx(351 / 357.0, abs=1e-6)
    assert pid['sample'] is None
    assert missing == dict(missing, found=False, name='999999', reason='no process with pid 999999')

    names = {t['name']: t for t in _by_kind(result, 'process_name')}
    assert names['ids-agent']['pids'] == [5151, 5152]
    assert names['ids-agent']['limited_by'] == '/kubepods/burstable/' + POD
    assert names['ids-agent']['limit_cores'] == 0.5
    assert names['ids-agent']['container']['pod_uid'] == POD[3:]
    assert names['falco']['pids'] == [6001]
    assert names['deleted-agent']['pids'] == [6002]
    assert names['nope']['found'] is False and 'nope' in names['nope']['reason']

    by_prefix, by_name, ghost = _by_kind(result, 'container')
    assert by_prefix['found'] and by_prefix['container'] == {'runtime': 'docker', 'id': CID, 'name': 'ids'}
    assert by_prefix['pids'] == [4242]
    assert by_name['found'] and by_name['name'] == 'ids' and by_name['container']['id'] == CID
    assert ghost['found'] is False and 'ghost' in ghost['reason']

    abs_path, free, gone = _by_kind(result, 'cgroup_path')
    assert abs_path['cgroup_path'] == '/docker/' + CID and abs_path['pids'] == [4242]
    assert free['found'] and free['limit_cores'] is None and free['limited_by'] is None
    assert gone['found'] is False

    unit, = _by_kind(result, 'systemd_unit')
    assert unit['found'] is False and 'nothing.service' in unit['reason']


def test_collect_v2_units_containers_pods():
    result = _collect(V2, systemd_units=['auditd', 'idle-agent.service'],
                      containers=['e3b0c442', K2[:12]])
    auditd, idle = _by_kind(result, 'systemd_unit')
    assert auditd['found'] and auditd['pids'] == [700]
    assert auditd['systemd_unit'] == 'auditd.service'
    assert auditd['cgroup_version'] == 2
    own = auditd['cgroups'][0]
    assert own['limit_cores'] == 0.05 and own['burst_us'] == 1000
    assert own['throttled_us'] == 98765432 and own['usage_us'] == 2032941
    assert own['pressure']['full']['avg10'] == 40.0
    assert auditd['throttled_ratio_total'] == pytest.approx(1987 / 2050.0, abs=1e-6)
    # system.slice has cpu.max "max": not listed as a limited ancestor
    assert [g['path'] for g in auditd['cgroups']] == ['/system.slice/auditd.service']
    assert idle['found'] and idle['pids'] == [] and idle['limit_cores'] is None

    docker, kube = _by_kind(result, 'container')
    assert docker['container']['id'] == D2 and docker['systemd_unit'] == f'docker-{D2}.scope'
    assert docker['limit_cores'] == 0.05
    assert kube['container']['runtime'] == 'containerd'
    assert kube['limited_by'] == PS2 and kube['limit_cores'] == 0.25
    assert kube['cgroup_path'] == PS2 + f'/cri-containerd-{K2}.scope'


def test_collect_audit_consumer():
    result = _collect(V2, audit_consumer=True, audit=lambda: (700, None))
    consumer, = result['targets']
    assert consumer['kind'] == 'audit_consumer' and consumer['name'] == '700'
    assert consumer['systemd_unit'] == 'auditd.service' and consumer['limit_cores'] == 0.05
    none = _collect(V2, audit_consumer=True, audit=lambda: (None, 'no audit consumer registered'))
    assert none['targets'][0]['found'] is False
    assert none['targets'][0]['reason'] == 'no audit consumer registered'
    dead = _collect(V2, audit_consumer=True, audit=lambda: (31337, None))
    assert 'not running' in dead['targets'][0]['reason']


def test_container_prefix_ambiguous_and_short():
    proc = {1: {'v1': {}, 'v2': '/docker/' + 'ab' * 32}, 2: {'v1': {}, 'v2': '/docker/abcd' + '0' * 60}}
    assert sorted(cgroups.match_container_id('abab', proc)) == ['ab' * 32]
    assert len(cgroups.match_container_id('ab', proc)) == 0   # too short: not an id prefix
    assert len(cgroups.match_container_id('ab' * 2, proc)) == 1
    proc[3] = {'v1': {}, 'v2': '/docker/abab' + '1' * 60}
    assert len(cgroups.match_container_id('abab', proc)) == 2


def test_collect_ambiguous_prefix_reported(tmp_path):
    root = str(tmp_path / 'v1')
    shutil.copytree(V1, root, symlinks=True)
    other = CID[:8] + 'f' * 56
    src = os.path.join(root, 'proc/4242')
    shutil.copytree(src, os.path.join(root, 'proc/4243'), symlinks=True)
    with open(os.path.join(root, 'proc/4243/cgroup'), 'w') as handle:
        handle.write(f'1:cpu:/docker/{other}\n0::/docker/{other}\n')
    os.makedirs(os.path.join(root, 'sys/fs/cgroup/cpu/docker', other))
    result = _collect(root, containers=[CID[:8]])
    assert result['targets'][0]['found'] is False
    assert 'ambiguous' in result['targets'][0]['reason']


def test_collect_sample_window(tmp_path):
    root = str(tmp_path / 'v2')
    shutil.copytree(V2, root, symlinks=True)
    stat = os.path.join(root, 'sys/fs/cgroup/system.slice/auditd.service/cpu.stat')
    clock = iter([100.0, 102.0])

    def sleep(seconds):
        assert seconds == 2
        with open(stat, 'w') as handle:
            handle.write('usage_usec 2132941\nuser_usec 1355284\nsystem_usec 777657\nnr_periods 2070\n'
                         'nr_throttled 2006\nthrottled_usec 102765432\nnr_bursts 3\nburst_usec 2500\n')

    result = cgroups.collect({'audit_consumer': False, 'systemd_units': ['auditd.service'],
                              'sample_seconds': 2}, root=root, sleep=sleep, clock=lambda: next(clock))
    sample = result['targets'][0]['sample']
    assert sample['path'] == '/system.slice/auditd.service'
    assert sample['nr_periods_delta'] == 20 and sample['nr_throttled_delta'] == 19
    assert sample['throttled_ratio'] == 0.95
    assert sample['throttled_seconds_per_s'] == 2.0
    assert sample['cpu_usage_cores'] == 0.05
    assert sample['limit_cores'] == 0.05
    assert result['targets'][0]['cgroups'][0]['sample'] == sample


def test_collect_sample_v1_real_counters(tmp_path):
    """The reproduced incident's before/after cpu.stat: nearly every period throttled."""
    root = str(tmp_path / 'v1')
    shutil.copytree(V1, root, symlinks=True)
    group = os.path.join(root, 'sys/fs/cgroup/cpu/docker', CID)

    def sleep(seconds):
        shutil.copy(os.path.join(FIX, 'v1-cpu.stat.after.txt'), os.path.join(group, 'cpu.stat'))
        with open(os.path.join(root, 'sys/fs/cgroup/cpuacct/docker', CID, 'cpuacct.usage'), 'w') as handle:
            handle.write(f'{480123456 + 131 * 1000 * 1000}\n')  # 1 ms per 100 ms period

    clock = iter([0.0, 13.1])
    result = cgroups.collect({'audit_consumer': False, 'pids': [4242], 'sample_seconds': 13},
                             root=root, sleep=sleep, clock=lambda: next(clock))
    sample = result['targets'][0]['sample']
    assert (sample['nr_periods_delta'], sample['nr_throttled_delta']) == (131, 129)
    assert sample['throttled_ratio'] == pytest.approx(129 / 131.0, abs=1e-6)
    assert sample['throttled_seconds_per_s'] == pytest.approx((47226431104 - 34188148669) / 1e9 / 13.1, abs=1e-5)
    assert sample['cpu_usage_cores'] == pytest.approx(0.01, abs=1e-6)
    assert sample['limit_cores'] == 0.01


def test_snapshot_does_not_sleep():
    slept = []
    result = cgroups.collect({'audit_consumer': False, 'pids': [700], 'sample_seconds': 0},
                             root=V2, sleep=slept.append)
    assert slept == [] and result['targets'][0]['sample'] is None
    assert result['sample_seconds'] == 0


def test_collect_unsupported(tmp_path):
    (tmp_path / 'proc/self').mkdir(parents=True)
    (tmp_path / 'proc/self/mountinfo').write_text('22 1 259:2 / / rw - ext4 /dev/sda1 rw\n')
    result = cgroups.collect({'pids': [1]}, root=str(tmp_path))
    assert result['supported'] is False and 'no cgroup filesystem' in result['reason']
    assert result['targets'] == []


@pytest.mark.parametrize('options, message', [
    ({'pids': [0]}, 'pids'),
    ({'pids': [-3]}, 'pids'),
    ({'process_names': ['']}, 'process_names'),
    ({'process_names': ['/usr/sbin/auditd']}, 'basename'),
    ({'systemd_units': ['bad unit']}, 'systemd_units'),
    ({'containers': ['a;b']}, 'containers'),
    ({'cgroup_paths': ['relative/path']}, 'cgroup_paths'),
    ({'cgroup_paths': ['/a/../b']}, 'cgroup_paths'),
    ({'sample_seconds': -1}, 'sample_seconds'),
])
def test_validate_options_errors(options, message):
    assert message in cgroups.validate_options(options)


def test_validate_options_ok():
    assert cgroups.validate_options({'pids': [1], 'process_names': ['auditd'], 'containers': ['/ids'],
                                     'systemd_units': ['auditd.service', 'user@1000.service'],
                                     'cgroup_paths': ['/'], 'sample_seconds': 0}) is None


def test_v1_usage_falls_back_to_tasks_schedstat(tmp_path):
    """A group made in the cpu hierarchy only (no cpuacct twin): usage from its threads."""
    root = str(tmp_path / 'v1')
    shutil.copytree(V1, root, symlinks=True)
    shutil.rmtree(os.path.join(root, 'sys/fs/cgroup/cpuacct/auditgap-free'))
    group = os.path.join(root, 'sys/fs/cgroup/cpu/auditgap-free')
    os.makedirs(os.path.join(group, 'leaf'))
    with open(os.path.join(group, 'tasks'), 'w') as handle:
        handle.write('4242\n')
    with open(os.path.join(group, 'leaf', 'tasks'), 'w') as handle:
        handle.write('5151\n')
    for tid, ns in (('4242', 123456789), ('5151', 1000000)):
        with open(os.path.join(root, 'proc', tid, 'schedstat'), 'w') as handle:
            handle.write(f'{ns} 5000 7\n')
    hier = cgroups.discover_hierarchies(_mountinfo(root), root)
    group = cgroups.read_group(hier, '/auditgap-free', root)
    assert group['usage_source'] == 'tasks'
    assert group['usage_us'] == pytest.approx(124456.789)
    assert cgroups.read_group(hier, '/docker/' + CID, root)['usage_source'] == 'cpuacct.usage'


def test_module_on_fixture_root_through_ansible(tmp_path):
    """The module's wiring (argument spec, validation, output key) on the v2 fixture tree."""
    import json
    import subprocess
    project = os.path.dirname(os.path.dirname(os.path.dirname(FIX)))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(project, 'ansible.cfg'))
    args = {'audit_consumer': False, 'systemd_units': ['auditd'], 'pids': [4242000],
            'sample_seconds': 0, 'root': V2}
    playbook = tmp_path / 'play.yml'
    out = tmp_path / 'out.json'
    playbook.write_text(json.dumps([{'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'name': 'Measure', 'auditgap.fleet.cgroup_throttle': args, 'register': 'm'},
        {'name': 'Bad input fails clearly', 'auditgap.fleet.cgroup_throttle': {'pids': [0]},
         'register': 'bad', 'ignore_errors': True},
        {'name': 'Save', 'ansible.builtin.copy': {'content': '{{ [m.cgroup_throttle, bad.msg] | to_json }}',
                                                  'dest': str(out), 'mode': '0600'}}]}]))
    proc = subprocess.run([os.path.join(project, '.venv/bin/ansible-playbook'), '-l', 'localhost', str(playbook)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    facts, bad = json.loads(out.read_text())
    unit, missing = facts['targets'][1], facts['targets'][0]
    assert missing['found'] is False and missing['name'] == '4242000'
    assert unit['found'] and unit['limit_cores'] == 0.05 and unit['cgroup_version'] == 2
    assert bad == 'pids: 0 is not a positive integer'
