import os

from ansible_collections.auditgap.fleet.plugins.module_utils import procinfo

DOCKER_ID = '4f' * 32


def test_parse_proc_cgroup_hybrid():
    text = ('12:cpu,cpuacct:/docker/%s\n1:name=systemd:/docker/%s\n0::/docker/%s\n'
            % (DOCKER_ID, DOCKER_ID, DOCKER_ID))
    parsed = procinfo.parse_proc_cgroup(text)
    assert parsed['v1']['cpu'] == '/docker/' + DOCKER_ID
    assert parsed['v1']['cpuacct'] == '/docker/' + DOCKER_ID
    assert parsed['v2'] == '/docker/' + DOCKER_ID


def test_containers_by_runtime():
    cases = {
        '/system.slice/docker-%s.scope' % DOCKER_ID: 'docker',
        '/docker/%s' % DOCKER_ID: 'docker',
        '/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666.slice/'
        'cri-containerd-%s.scope' % DOCKER_ID: 'containerd',
        '/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_1111_2222_3333_444455556666.slice/'
        'crio-%s.scope' % DOCKER_ID: 'cri-o',
        '/machine.slice/libpod-%s.scope' % DOCKER_ID: 'podman',
        '/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/%s' % DOCKER_ID: 'containerd',
    }
    for path, runtime in cases.items():
        found = procinfo.container_from_cgroup_path(path)
        assert found == dict(found, runtime=runtime, id=DOCKER_ID), path
    assert procinfo.container_from_cgroup_path('/system.slice/auditd.service') is None


def test_systemd_unit():
    assert procinfo.systemd_unit_from_cgroup_path('/system.slice/auditd.service') == 'auditd.service'
    assert procinfo.systemd_unit_from_cgroup_path('/user.slice/user-0.slice/session-3.scope') == 'session-3.scope'
    assert procinfo.systemd_unit_from_cgroup_path('/') is None


def test_read_process_fixture_tree(tmp_path):
    base = tmp_path / '4242'
    base.mkdir()
    (base / 'comm').write_text('auditd\n')
    (base / 'cmdline').write_bytes(b'/sbin/auditd\0-n\0')
    (base / 'cgroup').write_text('4:cpu,cpuacct:/system.slice/auditd.service\n0::/system.slice/auditd.service\n')
    (base / 'exe').symlink_to('/sbin/auditd')
    info = procinfo.read_process(4242, proc_root=str(tmp_path))
    assert info['comm'] == 'auditd'
    assert info['exe'] == '/sbin/auditd'
    st = os.stat('/sbin/auditd') if os.path.exists('/sbin/auditd') else None
    assert info['exe_build'] == (procinfo.exe_build(st) if st else None)
    assert info['cmdline'] == ['/sbin/auditd', '-n']
    assert info['systemd_unit'] == 'auditd.service'
    assert info['container'] is None
    assert procinfo.read_process(1, proc_root=str(tmp_path)) is None
    assert procinfo.find_pids_by_name(['auditd', 'nothere'], proc_root=str(tmp_path)) == {'auditd': [4242], 'nothere': []}
