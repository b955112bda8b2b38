"""dockerctl and labdocker without Docker: the HTTP client against a fake Engine on a UNIX socket,
rootfs tarballs, and ensure/stop of a fake dockerd with leases (no root needed)."""
import http.server
import io
import json
import os
import socketserver
import subprocess
import sys
import tarfile
import threading
from typing import ClassVar

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl, labdocker
from tests.support.docker import minimal_rootfs


class _Engine(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict] = {}
    seen: ClassVar[list] = []

    def _answer(self):
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else b''
        self.seen.append((self.command, self.path, self.headers.get('Content-Type'), body))
        status, payload = self.routes.get((self.command, self.path.split('?')[0]),
                                          (404, {'message': 'No such container: x'}))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def address_string(self):
        return 'unix'

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path):
    path = str(tmp_path / 'docker.sock')
    _Engine.routes = {}
    _Engine.seen = []
    server = _Server(path, _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, _Engine
    server.shutdown()
    server.server_close()


def _tar_names(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def _tar_members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_docker_api_json_text_and_errors(engine):
    sock, handler = engine
    handler.routes[('GET', '/_ping')] = (200, b'OK')
    handler.routes[('POST', '/containers/create')] = (201, {'Id': 'abc'})
    assert dockerctl.docker_api('GET', '/_ping', socket_path=sock) == 'OK'
    assert dockerctl.ping(sock) is True
    created = dockerctl.docker_api('POST', '/containers/create', body={'Image': 'x'},
                                   query={'name': 'n1'}, socket_path=sock)
    assert created == {'Id': 'abc'}
    method, path, ctype, body = handler.seen[-1]
    assert (method, path, ctype) == ('POST', '/containers/create?name=n1', 'application/json')
    assert json.loads(body) == {'Image': 'x'}
    with pytest.raises(dockerctl.DockerError) as err:
        dockerctl.docker_api('GET', '/containers/x/json', socket_path=sock)
    assert err.value.status == 404 and 'No such container' in str(err.value)


def test_update_cpu_sends_only_the_given_fields(engine):
    """One `docker update` of the CPU limit: cpu_limit (NanoCpus or quota/period) and the lab."""
    sock, handler = engine
    handler.routes[('POST', '/containers/ids/update')] = (200, {'Warnings': []})
    dockerctl.update_cpu('ids', nano_cpus=500000000, socket_path=sock)
    dockerctl.update_cpu('ids', quota_us=1000, period_us=250000, socket_path=sock)
    dockerctl.update_cpu('ids', quota_us=-1, socket_path=sock)
    assert [(m, p, json.loads(b)) for m, p, _ct, b in handler.seen] == [
        ('POST', '/containers/ids/update', {'NanoCpus': 500000000}),
        ('POST', '/containers/ids/update', {'CpuQuota': 1000, 'CpuPeriod': 250000}),
        ('POST', '/containers/ids/update', {'CpuQuota': -1})]


def test_docker_api_unavailable(tmp_path):
    with pytest.raises(dockerctl.DockerUnavailable):
        dockerctl.docker_api('GET', '/_ping', socket_path=str(tmp_path / 'none.sock'))
    assert dockerctl.ping(str(tmp_path / 'none.sock')) is False


def test_container_by_name_or_id(engine):
    sock, handler = engine
    info = {'Id': 'f' * 64, 'Name': '/ids', 'State': {'Pid': 4242, 'Running': True},
            'Config': {'Image': 'img'}, 'HostConfig': {'NanoCpus': 50000000}}
    handler.routes[('GET', '/containers/ids/json')] = (200, info)
    found = dockerctl.container_by_name_or_id('ids', socket_path=sock, use_cli=False)
    assert found['id'] == 'f' * 64 and found['name'] == 'ids' and found['pid'] == 4242
    assert found['nano_cpus'] == 50000000 and found['source'] == 'socket'
    assert dockerctl.container_by_name_or_id('ghost', socket_path=sock, use_cli=False) is None
    assert dockerctl.container_by_name_or_id('a/b', socket_path=sock, use_cli=False) is None


def _fake_docker_cli(tmp_path, monkeypatch, script):
    cli = tmp_path / 'bin' / 'docker'
    cli.parent.mkdir(parents=True)
    cli.write_text('#!/bin/sh\n' + script)
    cli.chmod(0o755)
    monkeypatch.setenv('PATH', str(cli.parent))


def test_container_by_name_or_id_falls_back_to_the_cli(tmp_path, monkeypatch):
    monkeypatch.setattr(dockerctl, 'DOCKER_SOCK', str(tmp_path / 'none.sock'))
    info = json.dumps({'Id': 'e' * 64, 'Name': '/ids', 'State': {'Pid': 7, 'Running': True},
                       'HostConfig': {'CpuQuota': 50000, 'CpuPeriod': 100000}})
    _fake_docker_cli(tmp_path, monkeypatch, f"""case "$1 $6" in
  'inspect ids') echo '{info}' ;;
  'version ') echo 27.0 ;;
  *) exit 1 ;;
esac
""")
    sock = dockerctl.DOCKER_SOCK
    found = dockerctl.container_by_name_or_id('ids', socket_path=sock)
    assert found['source'] == 'cli' and found['id'] == 'e' * 64 and found['cpu_quota_us'] == 50000
    assert dockerctl.container_by_name_or_id('ghost', socket_path=sock) is None  # the daemon answers
    _fake_docker_cli(tmp_path / 'down', monkeypatch, 'exit 1\n')
    with pytest.raises(dockerctl.DockerUnavailable):
        dockerctl.container_by_name_or_id('ids', socket_path=sock)
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))  # no CLI at all
    with pytest.raises(dockerctl.DockerUnavailable):
        dockerctl.container_by_name_or_id('ids', socket_path=sock)


def test_import_image_posts_a_tarball(engine):
    sock, handler = engine
    handler.routes[('POST', '/images/create')] = (200, b'{"status":"sha256:1"}')
    handler.routes[('GET', '/images/busy:1/json')] = (200, {'Id': 'sha256:1'})
    spec = {'files': {'/bin/true': sys.executable}, 'symlinks': {'/bin/sh': 'true'}}
    assert labdocker.import_image('busy:1', spec, socket_path=sock) == 'sha256:1'
    _method, path, ctype, body = handler.seen[0]
    assert path.startswith('/images/create?') and 'fromSrc=-' in path and 'repo=busy' in path
    assert 'tag=1' in path and ctype == 'application/x-tar'
    names = _tar_names(body)
    assert 'bin/true' in names and 'bin/sh' in names and 'tmp' in names


def test_build_rootfs_tar_forms(tmp_path):
    spec = minimal_rootfs()
    members = _tar_members(labdocker.build_rootfs_tar(spec))
    if '/bin/busybox' in spec['files']:
        assert members['bin/sh'].issym() and members['bin/sh'].linkname == 'busybox'
        assert members['bin/busybox'].isfile()
    else:
        assert members['bin/sh'].isfile()
    # host files bring their shared libraries at their own paths
    libs = labdocker.ldd_libraries(sys.executable)
    names = _tar_names(labdocker.build_rootfs_tar([sys.executable]))
    assert sys.executable.lstrip('/') in names
    assert all(lib.lstrip('/') in names for lib in libs)
    # a directory becomes /
    (tmp_path / 'root/bin').mkdir(parents=True)
    (tmp_path / 'root/bin/hello').write_text('hi')
    names = _tar_names(labdocker.build_rootfs_tar(str(tmp_path / 'root')))
    assert 'bin/hello' in names


FAKE_DOCKERD = r'''
import http.server, os, signal, socketserver, sys
path = [a.split('unix://', 1)[1] for a in sys.argv if a.startswith('--host=unix://')][0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()
        self.wfile.write(b'OK')
    def address_string(self): return 'unix'
    def log_message(self, *a): pass
srv = socketserver.UnixStreamServer(path, H)
def stop(*_):
    os.unlink(path); os._exit(0)
signal.signal(signal.SIGTERM, stop)
srv.serve_forever()
'''


def test_ensure_and_stop_fake_dockerd_with_leases(tmp_path):
    fake = tmp_path / 'dockerd'
    fake.write_text(f'#!{sys.executable}\n{FAKE_DOCKERD}')
    fake.chmod(0o755)
    cg_root = tmp_path / 'cgroup'
    (cg_root / 'cpu').mkdir(parents=True)
    (cg_root / 'cpu/cgroup.procs').write_text('')
    kw = {'socket_path': str(tmp_path / 'd.sock'), 'state_dir': str(tmp_path / 'state'),
          'lock_path': str(tmp_path / 'd.lock')}
    started = labdocker.ensure_dockerd(dockerd=str(fake), log_path=str(tmp_path / 'd.log'),
                                       timeout=20, cgroup_root=str(cg_root), **kw)
    assert started is True and dockerctl.ping(kw['socket_path'])
    (cg_root / 'cpu/docker').mkdir()  # what dockerd would create
    # a second caller finds it running, does not start another
    assert labdocker.ensure_dockerd(dockerd=str(fake), **kw) is False
    # another live process holds a lease: not stopped
    other = subprocess.Popen(['sleep', '30'])
    try:
        os.makedirs(os.path.join(kw['state_dir'], 'leases'), exist_ok=True)
        open(os.path.join(kw['state_dir'], 'leases', str(other.pid)), 'w').close()
        assert labdocker.stop_dockerd(state_dir=kw['state_dir'], lock_path=kw['lock_path']) is False
        assert dockerctl.ping(kw['socket_path'])
    finally:
        other.kill()
        other.wait()
    # the lease holder died: the last caller stops it and removes the cgroup parent
    assert labdocker.stop_dockerd(state_dir=kw['state_dir'], lock_path=kw['lock_path']) is True
    assert not dockerctl.ping(kw['socket_path'])
    assert not (cg_root / 'cpu/docker').exists()
    # nothing of ours left: stopping again is a no-op
    assert labdocker.stop_dockerd(state_dir=kw['state_dir'], lock_path=kw['lock_path']) is False


def test_stop_never_touches_a_daemon_we_did_not_start(tmp_path):
    assert labdocker.stop_dockerd(state_dir=str(tmp_path / 'state'),
                                  lock_path=str(tmp_path / 'lock')) is False
