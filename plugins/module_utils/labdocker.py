# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident lab's docker backend (the audit consumer in a real container), and the
Docker code only the lab and the tests use: starting and stopping Debian's dockerd
(leases), images built from host files, running containers.

Debian's auditd and the shared libraries ``ldd`` names are imported as an
image (no registry: ``import_image`` of a tarball built from host
files). The container runs ``auditd -n`` with:

- ``--pid host``: the kernel accepts audit netlink requests (AUDIT_SET pid,
  i.e. registering as the consumer) only from the initial pid namespace
  (and the initial user namespace: no userns remapping), so a container in
  its own pid namespace gets EPERM and never becomes the consumer;
- ``--network none``: audit netlink works from the container's own network
  namespace;
- ``--cap-add AUDIT_CONTROL --cap-add AUDIT_READ --cap-add AUDIT_WRITE``;
- the lab dir bind-mounted at the same path (config, log);
- CPU: it starts unthrottled (auditd's start at a tiny quota takes seconds)
  and gets ``--cpu-period``/``--cpu-quota`` (``docker update``) once it is
  registered. ``--cpus`` cannot go below 0.01 (1000 us per 100 ms); the
  period/quota pair expresses the same limit with the lab's longer period.

Every step's undo is journaled first through the lab's guard (the shared ops
``docker``, ``stop_process``, ``cgroup_remove``): the container (quota lifted, its
auditd stopped with SIGTERM so it deregisters cleanly, removed), the image, and
dockerd only when the lab started it and no other live process holds a lease.
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
import subprocess
import tarfile
import time
from urllib.parse import quote

from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl, guard, labkit
from ansible_collections.auditgap.fleet.plugins.module_utils.dockerctl import (
    DOCKER_SOCK, DockerError, DockerUnavailable, docker_api, ping, remove_container)

STATE_DIR = '/run/auditgap-dockerd'
LOCK_PATH = os.path.join(guard.STATE_DIR, 'dockerd.lock')
DEFAULT_LOG = '/var/log/auditgap-dockerd.log'
DOCKERD_ARGS = ('--bridge=none', '--iptables=false', '--ip6tables=false')
# cgroup parent dockerd creates (cgroupfs driver); removed again when empty
# and absent before auditgap started the daemon.
DOCKER_CGROUP_PARENT = 'docker'

IMAGE = 'auditgap-lab-auditd:latest'
CONTAINER = 'auditgap-lab-auditd'
LABEL = 'auditgap.lab'
CAPS = ['AUDIT_CONTROL', 'AUDIT_READ', 'AUDIT_WRITE']


def image_spec(auditd, ddir):
    """dockerctl file spec: auditd (+ its libraries), minimal passwd/group, run dirs."""
    etc = os.path.join(ddir, 'rootfs-etc')
    if not os.path.isdir(etc):
        os.makedirs(etc, 0o755)
    files = {'/usr/sbin/auditd': auditd}
    for name, text in (('passwd', 'root:x:0:0:root:/root:/bin/false\n'),
                       ('group', 'root:x:0:\nadm:x:4:\n'),
                       ('keep', '')):
        path = os.path.join(etc, name)
        with open(path, 'w') as handle:
            handle.write(text)
        if name != 'keep':
            files['/etc/' + name] = path
    keep = os.path.join(etc, 'keep')
    for directory in ('/run', '/var/run', '/var/log/audit'):
        files[directory + '/.keep'] = keep
    return {'files': files, 'symlinks': {}}


def start_docker_consumer(g, workdir, params):
    """auditd in a container; returns labkit's consumer dict (+ container_id). ``g``: the lab's guard."""
    auditd = labkit.find_auditd()
    if not auditd:
        raise RuntimeError('auditd is not installed (Debian: apt-get install auditd)')
    ensure_dockerd(g=g)
    ddir = os.path.join(workdir, 'docker')
    if not os.path.isdir(ddir):
        os.makedirs(ddir, 0o700)
    g.push_op('docker', 'remove the image %s' % IMAGE, action='remove_image', ref=IMAGE)
    import_image(IMAGE, image_spec(auditd, ddir))
    confdir = os.path.join(ddir, 'etc')
    labkit.write_auditd_config(confdir, ddir)
    g.push_op('docker', 'remove the container %s' % CONTAINER, action='remove_container', ref=CONTAINER)
    remove_container(CONTAINER)  # a leftover of ours (same name, lab label)
    cid = run_container(
        IMAGE, ['/usr/sbin/auditd', '-n', '-s', 'nochange', '-c', confdir], name=CONTAINER,
        network='none', labels={LABEL: '1'},
        host_config={'PidMode': 'host', 'CapAdd': list(CAPS),
                     'Binds': ['%s:%s' % (ddir, ddir)]})
    info = docker_api('GET', '/containers/%s/json' % cid)
    pid = (info.get('State') or {}).get('Pid')
    if not pid:
        raise RuntimeError('the consumer container %s is not running: %s'
                           % (cid[:12], (info.get('State') or {}).get('Error')))
    start = labkit.proc_starttime(pid)
    g.push_op('stop_process', 'stop auditd in container %s' % cid[:12], pid=pid, starttime=start,
              audit_consumer=True)
    if not labkit.wait_registered(pid):
        raise RuntimeError('auditd in container %s (pid %d) did not register as the audit consumer'
                           % (cid[:12], pid))
    g.push_op('docker', 'lift the CPU quota of %s' % CONTAINER, action='unthrottle', ref=cid)
    dockerctl.update_cpu(cid, quota_us=params['quota_us'], period_us=params['period_us'])
    cgroup_path = labkit.cgroup_of_pid(pid)
    return {'pid': pid, 'starttime': start, 'cgroup_path': cgroup_path, 'container_id': cid,
            'quota_us': params['quota_us'], 'period_us': params['period_us']}


# -- the daemon ---------------------------------------------------------------

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
        if name.isdigit() and guard.process_alive(int(name)):
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
                   lock_path=LOCK_PATH, cgroup_root='/sys/fs/cgroup', g=None):
    """Make sure a Docker daemon answers; start Debian's dockerd if not.

    Returns True when this call started the daemon, False when one was
    already answering. Either way the calling process takes a lease, so
    ``stop_dockerd()`` leaves a daemon running while another live process
    still uses it. Raises DockerUnavailable when it cannot start one.
    ``g``: a RestoreGuard that journals stopping the daemon it starts (and removing
    the cgroup parents it makes) before the start.
    """
    with _Lock(lock_path):
        _take_lease(state_dir)
        if ping(socket_path):
            return False
        state = _read_state(state_dir)
        if state and guard.process_alive(state.get('pid', 0)):
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
            if g is not None:
                g.push_op('cgroup_remove', 'remove the cgroup parents dockerd makes',
                          paths=[path for path in _cgroup_parents(cgroup_root) if path not in pre_existing])
                g.push_op('stop_process', 'stop the dockerd the lab started', argv=argv,
                          unless_leased=os.path.join(state_dir, 'leases'))
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
            if not guard.process_alive(started_pid):
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
        if not guard.process_alive(pid):
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
        if not pid or not guard.process_alive(pid):
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


# -- images and containers ---

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


def import_image(name, files_or_rootfs_dir, socket_path=DOCKER_SOCK, timeout=120):
    """``docker import`` of a tarball made from local files; returns the image id.

    ``name`` is ``repo`` or ``repo:tag`` (tag defaults to latest).
    ``files_or_rootfs_dir``: see ``build_rootfs_tar``.
    """
    repo, _sep, tag = name.partition(':')
    data = build_rootfs_tar(files_or_rootfs_dir)
    docker_api('POST', '/images/create', body=data, socket_path=socket_path, timeout=timeout,
               query={'fromSrc': '-', 'repo': repo, 'tag': tag or 'latest'})
    info = docker_api('GET', '/images/{}/json'.format(quote(repo + ':' + (tag or 'latest'), safe=':')),
                      socket_path=socket_path)
    return info['Id']


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


def list_containers(all_containers=True, filters=None, socket_path=DOCKER_SOCK):
    """``GET /containers/json``; ``filters`` e.g. ``{'label': ['x=y']}``."""
    query = {'all': 'true' if all_containers else 'false'}
    if filters:
        query['filters'] = json.dumps(filters)
    return docker_api('GET', '/containers/json', query=query, socket_path=socket_path) or []
