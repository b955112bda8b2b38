# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Processes as auditgap sees them: identity, cgroups, container, systemd unit.

Pure parsing functions take text; the readers take a ``proc_root`` so tests
run on fixture trees. Used by audit_status (the audit consumer),
cgroup_throttle (targets) and ftrace_sample (targets).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

# Container runtimes leave their id in the cgroup path. Order matters: the
# first match wins, the most specific patterns first.
_CONTAINER_PATTERNS = (
    ('cri-o', re.compile(r'crio-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?$')),
    ('containerd', re.compile(r'cri-containerd-([0-9a-f]{64})(?:\.scope)?$')),
    ('podman', re.compile(r'libpod-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?$')),
    ('docker', re.compile(r'docker-([0-9a-f]{64})\.scope$')),
    ('docker', re.compile(r'/docker/([0-9a-f]{64})$')),
    # kubelet with cgroupfs driver: /kubepods/<qos>/pod<uid>/<id>
    ('containerd', re.compile(r'/kubepods[^/]*(?:/[^/]+)?/pod[0-9a-f_-]+/([0-9a-f]{64})$')),
    # a bare 64-hex leaf anywhere else (e.g. LXC-style or custom parents)
    ('unknown', re.compile(r'/([0-9a-f]{64})$')),
)
_UNIT_RE = re.compile(r'([^/]+\.(?:service|scope))$')
_KUBE_POD_RE = re.compile(r'pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})')


def parse_proc_cgroup(text):
    """Parse /proc/<pid>/cgroup.

    Returns ``{'v1': {controller: path}, 'v2': path or None}``. Named v1
    hierarchies appear as ``name=systemd``; comounted controllers
    (``cpu,cpuacct``) are listed under each controller name.
    """
    v1 = {}
    v2 = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        hier_id, controllers, path = parts
        if hier_id == '0' and controllers == '':
            v2 = path
            continue
        for controller in controllers.split(','):
            if controller:
                v1[controller] = path
    return {'v1': v1, 'v2': v2}


def container_from_cgroup_path(path):
    """``{'runtime': ..., 'id': ...}`` when a cgroup path names a container."""
    if not path:
        return None
    for runtime, pattern in _CONTAINER_PATTERNS:
        match = pattern.search(path)
        if match:
            found = {'runtime': runtime, 'id': match.group(1)}
            pod = _KUBE_POD_RE.search(path)
            if pod:
                found['pod_uid'] = pod.group(1).replace('_', '-')
            return found
    return None


def systemd_unit_from_cgroup_path(path):
    """The systemd unit (service or scope) a cgroup path belongs to, or None.

    Container scopes (docker-<id>.scope, ...) are units too; they are
    reported as such, the container is reported separately.
    """
    if not path:
        return None
    for component in reversed(path.split('/')):
        match = _UNIT_RE.match(component)
        if match:
            return match.group(1)
    return None


def identify_cgroups(cgroups):
    """Container and systemd unit from parsed /proc/<pid>/cgroup."""
    candidates = []
    if cgroups.get('v2'):
        candidates.append(cgroups['v2'])
    for controller in ('cpu', 'name=systemd', 'cpuacct', 'memory', 'pids'):
        if controller in cgroups['v1']:
            candidates.append(cgroups['v1'][controller])
    candidates.extend(cgroups['v1'].values())
    container = None
    unit = None
    for path in candidates:
        container = container or container_from_cgroup_path(path)
        unit = unit or systemd_unit_from_cgroup_path(path)
    return container, unit


def _read(path, binary=False):
    with open(path, 'rb' if binary else 'r') as handle:
        return handle.read()


def unknown_process(pid):
    """The identity ``read_process`` returns, with every field unknown (None)."""
    return {'pid': int(pid), 'comm': None, 'exe': None, 'exe_build': None, 'cmdline': None,
            'cgroups': {'v1': {}, 'v2': None}, 'container': None, 'systemd_unit': None}


def exe_build(stat_result):
    """The identity of an executable's build: ``<size>:<mtime>`` (an upgrade changes it)."""
    return '%d:%d' % (stat_result.st_size, int(stat_result.st_mtime))


def read_process(pid, proc_root='/proc'):
    """Identity of one process, or None when it does not exist.

    Fields that cannot be read (permissions, a process exiting) are None.
    """
    base = os.path.join(proc_root, str(int(pid)))
    if not os.path.isdir(base):
        return None
    info = unknown_process(pid)
    try:
        info['comm'] = _read(os.path.join(base, 'comm')).strip()
    except (IOError, OSError):
        pass
    try:
        info['exe'] = os.readlink(os.path.join(base, 'exe'))
        info['exe_build'] = exe_build(os.stat(os.path.join(base, 'exe')))
    except (IOError, OSError):
        pass
    try:
        raw = _read(os.path.join(base, 'cmdline'), binary=True)
        info['cmdline'] = [part.decode('utf-8', 'replace') for part in raw.split(b'\0') if part]
    except (IOError, OSError):
        pass
    try:
        info['cgroups'] = parse_proc_cgroup(_read(os.path.join(base, 'cgroup')))
    except (IOError, OSError):
        pass
    info['container'], info['systemd_unit'] = identify_cgroups(info['cgroups'])
    return info


def find_pids_by_name(names, proc_root='/proc'):
    """Map each name to the pids whose comm or exe basename equals it.

    Reads ``comm`` first; ``exe`` only when comm does not match (comm is
    truncated to 15 characters and can be renamed by the process).
    Built for hosts with many processes: raw ``os.open``/``os.read`` (no
    buffered text file per process) and one ``readlink`` per non-matching
    process; processes that vanish or deny access are skipped.
    """
    wanted = set(names)
    found = dict((name, []) for name in wanted)
    wanted_bytes = dict((name.encode('utf-8', 'surrogateescape'), name) for name in wanted)
    o_rdonly = os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0)
    deleted = ' (deleted)'
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        base = proc_root + '/' + entry
        try:
            fd = os.open(base + '/comm', o_rdonly)
        except OSError:
            continue
        try:
            comm = os.read(fd, 64).rstrip(b'\n')
        except OSError:
            continue
        finally:
            os.close(fd)
        name = wanted_bytes.get(comm)
        if name is not None:
            found[name].append(int(entry))
            continue
        try:
            exe = os.readlink(base + '/exe')
        except OSError:
            continue
        exe = exe[exe.rfind('/') + 1:]
        if exe.endswith(deleted):
            exe = exe[:-len(deleted)]
        if exe in wanted:
            found[exe].append(int(entry))
    for pids in found.values():
        pids.sort()
    return found
