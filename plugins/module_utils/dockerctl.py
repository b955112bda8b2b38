# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small Docker helper: the Engine API over the UNIX socket, stdlib only (and guard).

Used by cgroup_throttle (container names -> ids), by the incident lab's
docker backend, by agent_cpu's docker backend and by the tests.

- ``docker_api(method, path, body=None)``: one HTTP request to the Engine
  API over ``/var/run/docker.sock``; JSON in, JSON (or text) out;
  ``DockerError`` (with ``status``) for HTTP errors, ``DockerUnavailable``
  when nothing answers.
- ``ensure_dockerd()`` / ``stop_dockerd()``: start Debian's ``dockerd``
  (no bridge, no iptables) when no daemon answers, and stop only a daemon
  that auditgap started. Callers take a lease (one per process); the daemon
  is stopped when the last live lease is released.
- ``import_image(name, source)``: ``docker import`` of a tarball built from
  local files (a rootfs directory, or host files copied with the shared
  libraries ``ldd`` names); ``minimal_rootfs()`` gives /bin/sh (static
  busybox when installed) for busy loops.
- ``container_by_name_or_id(ref)``: inspect a container, None when absent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from http.client import HTTPConnection
from urllib.parse import quote, urlencode

from ansible_collections.auditgap.fleet.plugins.module_utils import guard

DOCKER_SOCK = '/var/run/docker.sock'
STATE_DIR = '/run/auditgap-dockerd'
LOCK_PATH = os.path.join(guard.STATE_DIR, 'dockerd.lock')
DEFAULT_LOG = '/var/log/auditgap-dockerd.log'
DOCKERD_ARGS = ('--bridge=none', '--iptables=false', '--ip6tables=false')
# cgroup parent dockerd creates (cgroupfs driver); removed again when empty
# and absent before auditgap started the daemon.
DOCKER_CGROUP_PARENT = 'docker'


class DockerError(Exception):
    """The Engine API answered with an HTTP error."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class DockerUnavailable(DockerError):
    """No daemon answers on the socket (absent, refused, timed out)."""


class _UnixHTTPConnection(HTTPConnection):
    def __init__(self, socket_path, timeout):
        HTTPConnection.__init__(self, 'localhost', timeout=timeout)
        self._socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except Exception:
            sock.close()
            raise
        self.sock = sock


def docker_api(method, path, body=None, socket_path=DOCKER_SOCK, timeout=30,
               query=None, content_type=None, raw=False):
    """One Engine API request over the UNIX socket.

    ``path`` starts with ``/`` (``/containers/json``); ``query`` a dict
    appended as a query string. ``body``: a dict/list (sent as JSON) or
    bytes (sent as is, ``content_type`` defaults to ``application/x-tar``).
    Returns the decoded JSON, or the text when the answer is not JSON, or
    the bytes with ``raw=True``; None for an empty answer.
    """
    if query:
        path = path + ('&' if '?' in path else '?') + urlencode(query)
    headers = {}
    data = None
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers['Content-Type'] = content_type or 'application/x-tar'
        else:
            data = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = content_type or 'application/json'
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            raise DockerUnavailable(f'docker socket {socket_path}: {exc}')
    finally:
        conn.close()
    if response.status >= 400:
        message = payload.decode('utf-8', 'replace').strip()
        try:
            message = json.loads(message).get('message', message)
        except (ValueError, AttributeError):
            pass
        raise DockerError(f'{method} {path}: HTTP {response.status}: {message}',
                          status=response.status)
    if raw:
        return payload
    if not payload:
        return None
    text = payload.decode('utf-8', 'replace')
    try:
        return json.loads(text)
    except ValueError:
        return text


def ping(socket_path=DOCKER_SOCK, timeout=2):
    """True when a daemon answers ``/_ping`` on the socket."""
    if not os.path.exists(socket_path):
        return False
    try:
        return docker_api('GET', '/_ping', socket_path=socket_path, timeout=timeout) == 'OK'
    except DockerError:
        return False


# -- the daemon ---------------------------------------------------------------

def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    # a zombie is not alive
    try:
        with open(f'/proc/{int(pid)}/stat') as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


def _Lock(path):
    """The Docker helper's own lock (starting/stopping dockerd), in auditgap's root-only
    state directory: opened without following symlinks, owner/type/mode checked, holder
    recorded (guard.HostLock); waits up to 10 minutes (a dockerd start takes up to 60 s)."""
    return guard.HostLock('dockerctl', wait_s=600, path=path)


def _state_file(state_dir, name):
    return os.path.join(state_dir, name)


def _read_state(state_dir):
    try:
        with open(_state_file(state_dir, 'daemon.json')) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _live_leases(state_dir):
    leases = os.path.join(state_dir, 'leases')
    alive = []
    try:
        names = os.listdir(leases)
    except OSError:
        return alive
    for name in names:
        if name.isdigit() and _pid_alive(int(name)):
            alive.append(int(name))
        else:
            try:
                os.unlink(os.path.join(leases, name))
            except OSError:
                pass
    return alive


def _take_lease(state_dir):
    leases = os.path.join(state_dir, 'leases')
    if not os.path.isdir(leases):
        os.makedirs(leases)
    with open(os.path.join(leases, str(os.getpid())), 'w') as handle:
        handle.write(f'{os.getpid()}\n')


def _cgroup_parents(cgroup_root='/sys/fs/cgroup'):
    """Paths where dockerd's cgroupfs parent (``docker``) would live."""
    found = []
    try:
        names = sorted(os.listdir(cgroup_root))
    except OSError:
        return found
    direct = os.path.join(cgroup_root, 'cgroup.controllers')
    if os.path.exists(direct):  # pure v2 mount at the root
        found.append(os.path.join(cgroup_root, DOCKER_CGROUP_PARENT))
    for name in names:
        hierarchy = os.path.join(cgroup_root, name)
        if os.path.isdir(hierarchy) and not os.path.islink(hierarchy) and \
                os.path.exists(os.path.join(hierarchy, 'cgroup.procs')):
            found.append(os.path.join(hierarchy, DOCKER_CGROUP_PARENT))
    return found


def ensure_dockerd(socket_path=DOCKER_SOCK, log_path=DEFAULT_LOG, timeout=60,
                   dockerd='dockerd', extra_args=(), state_dir=STATE_DIR,
                   lock_path=LOCK_PATH, cgroup_root='/sys/fs/cgroup'):
    """Make sure a Docker daemon answers; start Debian's dockerd if not.

    Returns True when this call started the daemon, False when one was
    already answering. Either way the calling process takes a lease, so
    ``stop_dockerd()`` leaves a daemon running while another live process
    still uses it. Raises DockerUnavailable when it cannot start one.
    """
    with _Lock(lock_path):
        _take_lease(state_dir)
        if ping(socket_path):
            return False
        state = _read_state(state_dir)
        if state and _pid_alive(state.get('pid', 0)):
            # ours, still starting (or hung): wait for it below
            started_pid = state['pid']
            started = False
        else:
            binary = shutil.which(dockerd) if hasattr(shutil, 'which') else dockerd
            if not binary:
                raise DockerUnavailable('dockerd not found (install docker.io)')
            pre_existing = [path for path in _cgroup_parents(cgroup_root) if os.path.isdir(path)]
            log_dir = os.path.dirname(log_path)
            if log_dir and not os.path.isdir(log_dir):
                os.makedirs(log_dir)
            argv = [binary] + list(DOCKERD_ARGS) + list(extra_args)
            if socket_path != DOCKER_SOCK:
                argv.append(f'--host=unix://{socket_path}')
            with open(log_path, 'ab') as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, close_fds=True,
                                        start_new_session=True)
            started_pid = proc.pid
            started = True
            with open(_state_file(state_dir, 'daemon.json'), 'w') as handle:
                json.dump({'pid': proc.pid, 'argv': argv, 'log': log_path,
                           'socket': socket_path, 'started_at': time.time(),
                           'cgroups_before': pre_existing, 'cgroup_root': cgroup_root}, handle)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ping(socket_path):
                return started
            if not _pid_alive(started_pid):
                break
            time.sleep(0.2)
        _stop_pid(started_pid)
        _forget_daemon(state_dir)
        raise DockerUnavailable(f'dockerd did not answer on {socket_path} within {timeout}s (log: {log_path})')


def _stop_pid(pid, timeout=20):
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except OSError:  # not our child
            pass
        if not _pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    _reap(pid)


def _reap(pid):
    """Collect our child's exit status (no zombie left); others' children are skipped."""
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass


def _forget_daemon(state_dir):
    try:
        os.unlink(_state_file(state_dir, 'daemon.json'))
    except OSError:
        pass


def stop_dockerd(state_dir=STATE_DIR, lock_path=LOCK_PATH, force=False):
    """Release this process's lease; stop the daemon auditgap started.

    A daemon that auditgap did not start is never stopped. One it started
    is stopped when no other live process holds a lease (``force`` stops
    it anyway). Empty ``docker`` cgroup parents the daemon created are
    removed. Returns True when the daemon was stopped.
    """
    with _Lock(lock_path):
        try:
            os.unlink(os.path.join(state_dir, 'leases', str(os.getpid())))
        except OSError:
            pass
        state = _read_state(state_dir)
        if not state:
            return False
        pid = int(state.get('pid', 0))
        if not pid or not _pid_alive(pid):
            _forget_daemon(state_dir)
            _remove_docker_cgroups(state)
            return False
        if _live_leases(state_dir) and not force:
            return False
        _stop_pid(pid)
        # the containerd that dockerd manages exits with it; wait briefly
        deadline = time.time() + 10
        while time.time() < deadline and os.path.exists(state.get('socket', DOCKER_SOCK)):
            time.sleep(0.1)
        _forget_daemon(state_dir)
        _remove_docker_cgroups(state)
        return True


def _remove_docker_cgroups(state):
    keep = state.get('cgroups_before') or []
    for path in _cgroup_parents(state.get('cgroup_root') or '/sys/fs/cgroup'):
        if path in keep or not os.path.isdir(path):
            continue
        for _attempt in range(20):
            try:
                os.rmdir(path)
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                time.sleep(0.1)


# -- images and containers ----------------------------------------------------

def ldd_libraries(binary):
    """Absolute paths of the shared libraries (and loader) ``binary`` needs."""
    try:
        out = subprocess.check_output(['ldd', binary], stderr=subprocess.STDOUT)
    except (OSError, subprocess.CalledProcessError):
        return []  # static, or no ldd
    libs = []
    for line in out.decode('utf-8', 'replace').splitlines():
        match = re.search(r'(/\S+)\s+\(0x', line)
        if match and os.path.exists(match.group(1)):
            libs.append(match.group(1))
    return libs


def minimal_rootfs():
    """A spec for ``import_image``: /bin/sh and core tools.

    Static busybox (Debian's busybox-static) when installed, as /bin/busybox
    with /bin/sh etc. linked to it; otherwise the host's /bin/sh with its
    shared libraries. Enough for ``sh -c 'while :; do :; done'``.
    """
    busybox = '/bin/busybox'
    if os.path.exists(busybox) and not ldd_libraries(busybox):
        return {'files': {'/bin/busybox': busybox},
                'symlinks': {f'/bin/{applet}': 'busybox'
                             for applet in ('sh', 'sleep', 'cat', 'ls', 'true', 'yes', 'echo')}}
    return {'files': {'/bin/sh': os.path.realpath('/bin/sh')}, 'symlinks': {}}


def _normalise_spec(source):
    """``{'files': {dest: host}, 'symlinks': {dest: target}}`` from any source form."""
    if isinstance(source, dict) and ('files' in source or 'symlinks' in source):
        files = dict(source.get('files') or {})
        symlinks = dict(source.get('symlinks') or {})
    elif isinstance(source, dict):
        files, symlinks = dict(source), {}
    else:
        files = {path: path for path in source}
        symlinks = {}
    # shared libraries of every binary, at their own paths
    for host in list(files.values()):
        for lib in ldd_libraries(host):
            files.setdefault(lib, lib)
    return files, symlinks


def build_rootfs_tar(source):
    """Bytes of an uncompressed tarball: a rootfs directory or a file spec.

    ``source``: a directory (its contents become the image's /), a list of
    host paths (copied at the same paths), ``{dest: host_path}``, or
    ``{'files': {...}, 'symlinks': {dest: target}}``. Binaries bring the
    shared libraries ``ldd`` names.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tar:
        if isinstance(source, str) and os.path.isdir(source):
            for name in sorted(os.listdir(source)):
                tar.add(os.path.join(source, name), arcname=name)
        else:
            files, symlinks = _normalise_spec(source)
            dirs = set()
            for dest in list(files) + list(symlinks):
                parent = os.path.dirname(dest.lstrip('/'))
                while parent:
                    dirs.add(parent)
                    parent = os.path.dirname(parent)
            for directory in sorted(dirs):
                info = tarfile.TarInfo(directory)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            for dest, host in sorted(files.items()):
                tar.add(os.path.realpath(host), arcname=dest.lstrip('/'), recursive=False)
            for dest, target in sorted(symlinks.items()):
                info = tarfile.TarInfo(dest.lstrip('/'))
                info.type = tarfile.SYMTYPE
                info.linkname = target
                info.mode = 0o777
                tar.addfile(info)
            for directory in ('tmp', 'proc', 'sys', 'dev', 'etc'):
                if directory not in dirs:
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o1777 if directory == 'tmp' else 0o755
                    tar.addfile(info)
    return buf.getvalue()


def import_image(name, files_or_rootfs_dir=None, socket_path=DOCKER_SOCK, timeout=120):
    """``docker import`` of a tarball made from local files; returns the image id.

    ``name`` is ``repo`` or ``repo:tag`` (tag defaults to latest).
    ``files_or_rootfs_dir``: see ``build_rootfs_tar``; None means
    ``minimal_rootfs()``.
    """
    if files_or_rootfs_dir is None:
        files_or_rootfs_dir = minimal_rootfs()
    repo, _sep, tag = name.partition(':')
    data = build_rootfs_tar(files_or_rootfs_dir)
    docker_api('POST', '/images/create', body=data, socket_path=socket_path, timeout=timeout,
               query={'fromSrc': '-', 'repo': repo, 'tag': tag or 'latest'})
    info = docker_api('GET', '/images/{}/json'.format(quote(repo + ':' + (tag or 'latest'), safe=':')),
                      socket_path=socket_path)
    return info['Id']


def remove_image(name, socket_path=DOCKER_SOCK, force=True):
    """Remove an image; False when it did not exist."""
    try:
        docker_api('DELETE', '/images/{}'.format(quote(name, safe=':')), socket_path=socket_path,
                   query={'force': 'true' if force else 'false'})
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def run_container(image, cmd, name=None, cpus=None, network='none', labels=None,
                  socket_path=DOCKER_SOCK, host_config=None):
    """Create and start a container (detached); returns its full id.

    ``cpus`` like ``docker run --cpus`` (NanoCpus); ``network`` none|host.
    """
    hc = {'NetworkMode': network}
    if cpus is not None:
        hc['NanoCpus'] = round(float(cpus) * 1e9)
    hc.update(host_config or {})
    body = {'Image': image, 'Cmd': list(cmd), 'Labels': dict(labels or {}),
            'HostConfig': hc, 'NetworkDisabled': network == 'none'}
    created = docker_api('POST', '/containers/create', body=body, socket_path=socket_path,
                         query={'name': name} if name else None)
    cid = created['Id']
    try:
        docker_api('POST', f'/containers/{cid}/start', socket_path=socket_path)
    except DockerError:
        remove_container(cid, socket_path=socket_path)
        raise
    return cid


def update_container_cpus(ref, cpus, socket_path=DOCKER_SOCK):
    """``docker update --cpus`` (0 or None lifts the limit)."""
    nano = round(float(cpus) * 1e9) if cpus else 0
    return docker_api('POST', '/containers/{}/update'.format(quote(ref, safe='')),
                      body={'NanoCpus': nano}, socket_path=socket_path)


def remove_container(ref, socket_path=DOCKER_SOCK, force=True):
    """Remove a container (killing it when ``force``); False when absent."""
    try:
        docker_api('DELETE', '/containers/{}'.format(quote(ref, safe='')), socket_path=socket_path,
                   query={'force': 'true' if force else 'false', 'v': 'true'})
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def list_containers(all_containers=True, filters=None, socket_path=DOCKER_SOCK):
    """``GET /containers/json``; ``filters`` e.g. ``{'label': ['x=y']}``."""
    query = {'all': 'true' if all_containers else 'false'}
    if filters:
        query['filters'] = json.dumps(filters)
    return docker_api('GET', '/containers/json', query=query, socket_path=socket_path) or []


def _summary(info):
    state = info.get('State') or {}
    host_config = info.get('HostConfig') or {}
    return {
        'id': info.get('Id'),
        'name': (info.get('Name') or '').lstrip('/') or None,
        'pid': state.get('Pid') or None,
        'running': bool(state.get('Running')),
        'image': (info.get('Config') or {}).get('Image'),
        'nano_cpus': host_config.get('NanoCpus') or 0,
        'cpu_quota_us': host_config.get('CpuQuota') or 0,
        'cpu_period_us': host_config.get('CpuPeriod') or 0,
        'cgroup_parent': host_config.get('CgroupParent') or None,
        'labels': (info.get('Config') or {}).get('Labels') or {},
        'source': 'socket',
    }


# CRI labels the kubelet puts on every container (docker via dockershim/cri-dockerd, containerd, cri-o)
KUBERNETES_LABELS = (('namespace', 'io.kubernetes.pod.namespace'), ('pod', 'io.kubernetes.pod.name'),
                     ('container', 'io.kubernetes.container.name'))


def kubernetes_from_labels(labels):
    """{namespace, pod, container} from a container's CRI labels, or None when it is no pod's."""
    labels = labels or {}
    found = dict((key, labels.get(label)) for key, label in KUBERNETES_LABELS)
    return found if found['pod'] else None


def _cri_inspect(cid, crictl='crictl', timeout=10):
    """A container by id through crictl (containerd, cri-o): {id, name, labels, source: crictl} or None."""
    answer = _cli(['inspect', '--output', 'json', cid], crictl, timeout)
    if answer is None or answer[0] != 0:
        return None
    try:
        status = (json.loads(answer[1].decode('utf-8', 'replace')) or {}).get('status') or {}
    except ValueError:
        return None
    return {'id': status.get('id') or cid, 'name': (status.get('metadata') or {}).get('name'),
            'labels': status.get('labels') or {}, 'source': 'crictl'}


def _cli(args, docker_cli='docker', timeout=10):
    """(returncode, stdout) of one docker CLI command; None when there is no CLI or it hangs."""
    binary = shutil.which(docker_cli)
    if not binary:
        return None
    try:
        proc = subprocess.run([binary] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.returncode, proc.stdout


def _cli_inspect(ref, docker_cli='docker', timeout=10):
    answer = _cli(['inspect', '--type', 'container', '--format', '{{json .}}', ref], docker_cli, timeout)
    if answer is None or answer[0] != 0:
        return None
    try:
        summary = _summary(json.loads(answer[1].decode('utf-8', 'replace')))
    except ValueError:
        return None
    summary['source'] = 'cli'
    return summary


def lookup_container(ref):
    """(info or None, reason): a container by name or id; never raises.

    Docker first (Engine API, else the CLI); a full container id Docker does not
    know is asked of the CRI (``crictl inspect``: containerd, cri-o). ``info``
    has ``kubernetes: {namespace, pod, container}`` when the CRI labels name a pod.
    """
    reason = None
    try:
        info = container_by_name_or_id(ref)
    except DockerError as exc:
        info, reason = None, 'no Docker daemon to resolve names: %s' % exc
    except Exception as exc:  # lookup problems are reasons, not crashes
        info, reason = None, 'docker lookup failed: %s' % exc
    if info is None and ref and len(ref) == 64 and all(c in '0123456789abcdef' for c in ref):
        info = _cri_inspect(ref)
        if info is not None:
            reason = None
    if info is not None:
        info['kubernetes'] = kubernetes_from_labels(info.get('labels'))
    return info, reason


def container_by_name_or_id(ref, socket_path=DOCKER_SOCK, use_cli=True):
    """Inspect a container by name, full id or unique id prefix.

    Returns ``{id, name, pid, running, image, nano_cpus, cpu_quota_us,
    cpu_period_us, cgroup_parent, source: socket|cli}`` or None when no
    such container exists. The socket is preferred; the docker CLI is the
    fallback (e.g. a DOCKER_HOST elsewhere). Raises DockerUnavailable when
    neither answers.
    """
    if not ref or '/' in ref.lstrip('/'):
        return None
    ref = ref.lstrip('/')
    if os.path.exists(socket_path):
        try:
            info = docker_api('GET', '/containers/{}/json'.format(quote(ref, safe='')),
                              socket_path=socket_path, timeout=10)
            return _summary(info)
        except DockerUnavailable:
            pass
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
    if use_cli and socket_path == DOCKER_SOCK:  # the CLI talks to the default daemon only
        found = _cli_inspect(ref)
        if found is not None:
            return found
        if _cli_answers():
            return None
    raise DockerUnavailable(f'no Docker daemon answers (socket {socket_path}, docker CLI)')


def _cli_answers(docker_cli='docker', timeout=10):
    """True when the docker CLI reaches a daemon."""
    answer = _cli(['version', '--format', '{{.Server.Version}}'], docker_cli, timeout)
    return answer is not None and answer[0] == 0
