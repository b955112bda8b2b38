# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU cgroups as auditgap reads them: mounts, limits, throttling, pressure.

Everything here is pure or reads files below a ``root`` path (``/`` on a
live host, a fixture tree in unit tests), so it is testable without root.

- ``parse_mountinfo(text)`` / ``discover_hierarchies(mountinfo_text, root)``:
  where the v1 ``cpu``/``cpuacct`` hierarchies and the v2 mount(s) are,
  and which one really holds the cpu controller (hybrid hosts).
- ``parse_cpu_stat``, ``parse_cpu_max``, ``parse_pressure``: file formats.
- ``read_group(hierarchy, path, root)``: one cgroup's limit and counters,
  in normalised units (``_us``), whatever the version.
- ``limited_chain(...)``: the process's own group and every ancestor with a
  limit; ``tightest(...)``: the group whose limit is the smallest.
- ``sample_delta(before, after, seconds)``: throttled_ratio,
  throttled_seconds_per_s, cpu_usage_cores over a window.
- Target resolution over /proc: ``scan_proc_cgroups``,
  ``match_container_id``, ``match_systemd_unit``, ``find_group_dirs``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import procinfo

# v1 mount options that are not controllers
_V1_NON_CONTROLLERS = frozenset(('rw', 'ro', 'noprefix', 'clone_children', 'xattr', 'none', 'all',
                                 'cpuset_v2_mode', 'favordynmods', 'nosuid', 'nodev', 'noexec',
                                 'relatime', 'noatime'))


# -- mounts -------------------------------------------------------------------

def _unescape_mount(text):
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text):
    """Parse /proc/self/mountinfo into a list of dicts.

    Keys: mount_id, parent_id, root, mount_point, mount_options, fstype,
    source, super_options (list).
    """
    mounts = []
    for line in text.splitlines():
        if ' - ' not in line:
            continue
        left, right = line.split(' - ', 1)
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        mounts.append({
            'mount_id': int(fields[0]),
            'parent_id': int(fields[1]),
            'root': _unescape_mount(fields[3]),
            'mount_point': _unescape_mount(fields[4]),
            'mount_options': fields[5].split(','),
            'fstype': tail[0],
            'source': tail[1],
            'super_options': tail[2].split(',') if len(tail) > 2 else [],
        })
    return mounts


def cgroup_mounts(mounts):
    """cgroup mounts from ``parse_mountinfo`` output.

    Returns ``{'v1': {controller: mount}, 'v2': [mount, ...]}``; each mount
    is ``{'mount_point', 'root', 'controllers'}``. Named v1 hierarchies
    appear as ``name=systemd``. When a hierarchy is mounted more than once
    the mount of its root (``root == '/'``) wins, else the first one.
    """
    v1 = {}
    v2 = []
    for mount in mounts:
        if mount['fstype'] == 'cgroup':
            controllers = [opt for opt in mount['super_options']
                           if opt and opt not in _V1_NON_CONTROLLERS
                           and not opt.startswith('release_agent=')]
            entry = {'mount_point': mount['mount_point'], 'root': mount['root'],
                     'controllers': controllers}
            for controller in controllers:
                current = v1.get(controller)
                if current is None or (current['root'] != '/' and entry['root'] == '/'):
                    v1[controller] = entry
        elif mount['fstype'] == 'cgroup2':
            v2.append({'mount_point': mount['mount_point'], 'root': mount['root'],
                       'controllers': None})
    v2.sort(key=lambda m: m['root'] != '/')
    return {'v1': v1, 'v2': v2}


def host_path(root, path):
    """``path`` (absolute, on the target) below ``root`` (a fixture tree or /)."""
    if root in (None, '', '/'):
        return path
    return os.path.join(root, path.lstrip('/'))


def discover_hierarchies(mountinfo_text, root='/'):
    """Where the cpu controller is, from mountinfo text and the cgroup files.

    Returns a dict:
    ``supported`` (bool), ``reason``, ``version`` (1, 2 or None: where the
    cpu controller is), ``cpu`` / ``cpuacct`` (v1 mounts or None), ``v2``
    (the cgroup2 mount used, or None), ``v2_controllers`` (list), and
    ``cpu_controller`` (bool). Hybrid hosts: the v1 ``cpu`` hierarchy wins
    when the controller is bound there (it then cannot be on v2).
    """
    mounts = cgroup_mounts(parse_mountinfo(mountinfo_text or ''))
    found = {'supported': False, 'reason': None, 'version': None, 'cpu': None, 'cpuacct': None,
             'v2': None, 'v2_controllers': [], 'cpu_controller': False}
    for mount in mounts['v2']:
        text = procinfo.read_text(host_path(root, os.path.join(mount['mount_point'], 'cgroup.controllers')))
        mount['controllers'] = text.split() if text is not None else []
    if mounts['v2']:
        with_cpu = [m for m in mounts['v2'] if 'cpu' in m['controllers']]
        found['v2'] = with_cpu[0] if with_cpu else mounts['v2'][0]
        found['v2_controllers'] = found['v2']['controllers']
    if 'cpu' in mounts['v1']:
        found.update(supported=True, version=1, cpu=mounts['v1']['cpu'],
                     cpuacct=mounts['v1'].get('cpuacct'), cpu_controller=True)
    elif found['v2'] is not None:
        found.update(supported=True, version=2, cpu_controller='cpu' in found['v2_controllers'])
    else:
        found['reason'] = 'no cgroup filesystem with a cpu hierarchy mounted (no cgroup v1 cpu, no cgroup2)'
    return found


def normalise_path(cgroup_path):
    """``a/b/`` -> ``/a/b``; empty or ``/`` -> ``/``."""
    return '/' + cgroup_path.strip('/')


def cpu_mount(hier):
    """The mount holding the cpu controller (``discover_hierarchies`` output)."""
    return hier['cpu'] if hier['version'] == 1 else hier['v2']


def dir_for(mount, cgroup_path, root='/'):
    """Directory of ``cgroup_path`` (as in /proc/<pid>/cgroup) in ``mount``."""
    path = normalise_path(cgroup_path)
    mount_root = mount['root'].rstrip('/') or '/'
    if mount_root != '/' and (path == mount_root or path.startswith(mount_root + '/')):
        path = path[len(mount_root):] or '/'
    return host_path(root, os.path.join(mount['mount_point'], path.lstrip('/'))).rstrip('/') or '/'


# -- file formats -------------------------------------------------------------

def parse_flat_keyed(text):
    """``key value`` lines (cpu.stat) into ``{key: int}``."""
    values = {}
    for line in (text or '').splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return values


def parse_cpu_stat(text, version):
    """cpu.stat in normalised units.

    v1: nr_periods, nr_throttled, throttled_time (ns), nr_bursts,
    burst_time (ns). v2: usage_usec, user_usec, system_usec, nr_periods,
    nr_throttled, throttled_usec, nr_bursts, burst_usec. Returns
    ``{nr_periods, nr_throttled, throttled_us, nr_bursts, burst_us,
    usage_us}``; keys a file lacks are None (v1 has no usage here).
    """
    raw = parse_flat_keyed(text)
    out = {'nr_periods': raw.get('nr_periods'), 'nr_throttled': raw.get('nr_throttled'),
           'throttled_us': None, 'nr_bursts': raw.get('nr_bursts'), 'burst_us': None,
           'usage_us': None}
    if int(version) == 1:
        if 'throttled_time' in raw:
            out['throttled_us'] = raw['throttled_time'] / 1000.0
        if 'burst_time' in raw:
            out['burst_us'] = raw['burst_time'] / 1000.0
    else:
        out['throttled_us'] = raw.get('throttled_usec')
        out['burst_us'] = raw.get('burst_usec')
        out['usage_us'] = raw.get('usage_usec')
    return out


def parse_cpu_max(text):
    """v2 cpu.max (``max 100000`` / ``50000 100000``) -> (quota_us|None, period_us)."""
    parts = (text or '').split()
    if not parts:
        return None, None
    quota = None if parts[0] == 'max' else int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100000
    return quota, period


def parse_pressure(text):
    """PSI (cpu.pressure) -> ``{some: {avg10, avg60, avg300, total_us}, full: ...}``.

    The avgN values are percentages of wall time (0..100); ``total`` is in
    microseconds. None when the text is empty.
    """
    result = {}
    for line in (text or '').splitlines():
        parts = line.split()
        if not parts or parts[0] not in ('some', 'full'):
            continue
        entry = {}
        for item in parts[1:]:
            key, _sep, value = item.partition('=')
            if key == 'total':
                entry['total_us'] = int(value)
            elif key.startswith('avg'):
                entry[key] = float(value)
        result[parts[0]] = entry
    return result or None


def limit_cores(quota_us, period_us):
    """Cores a CFS quota allows, or None for unlimited."""
    if quota_us is None or quota_us < 0 or not period_us:
        return None
    return round(float(quota_us) / float(period_us), 6)


def ratio(part, whole):
    """part / whole, 0.0 when whole is 0 or unknown (no periods: no throttling)."""
    if not whole or part is None:
        return 0.0
    return round(float(part) / float(whole), 6)


# -- reading groups -----------------------------------------------------------

def _read_int(path):
    text = procinfo.read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_group(hier, cgroup_path, root='/'):
    """One cgroup's CPU limit and counters, or None when it does not exist.

    ``hier`` is ``discover_hierarchies`` output. Returns ``{path,
    quota_us, period_us, burst_us, limit_cores, nr_periods, nr_throttled,
    throttled_us, nr_bursts, usage_us, usage_source, pressure}`` (unit: microseconds;
    v1 throttled_time ns and cpuacct.usage ns are converted).
    """
    path = normalise_path(cgroup_path)
    group = {'path': path, 'quota_us': None, 'period_us': None, 'burst_us': None,
             'limit_cores': None, 'nr_periods': None, 'nr_throttled': None,
             'throttled_us': None, 'nr_bursts': None, 'usage_us': None, 'usage_source': None,
             'pressure': None}
    if hier.get('version') == 1:
        directory = dir_for(hier['cpu'], path, root)
        if not os.path.isdir(directory):
            return None
        group['quota_us'] = _read_int(os.path.join(directory, 'cpu.cfs_quota_us'))
        if group['quota_us'] is not None and group['quota_us'] < 0:
            group['quota_us'] = None
        group['period_us'] = _read_int(os.path.join(directory, 'cpu.cfs_period_us'))
        group['burst_us'] = _read_int(os.path.join(directory, 'cpu.cfs_burst_us'))
        stat = parse_cpu_stat(procinfo.read_text(os.path.join(directory, 'cpu.stat')), 1)
        usage_dir = directory
        if 'cpuacct' not in hier['cpu']['controllers'] and hier.get('cpuacct'):
            usage_dir = dir_for(hier['cpuacct'], path, root)
        usage_ns = _read_int(os.path.join(usage_dir, 'cpuacct.usage'))
        if usage_ns is not None:
            group['usage_source'] = 'cpuacct.usage'
        else:
            # no cpuacct group at this path (made in the cpu hierarchy only):
            # the tasks' own on-CPU time, this group and its descendants
            usage_ns = tasks_cpu_ns(directory, host_path(root, '/proc'))
            group['usage_source'] = 'tasks' if usage_ns is not None else None
        stat['usage_us'] = usage_ns / 1000.0 if usage_ns is not None else None
        # PSI lives in the v2 tree only; on hybrid hosts read it there
        if hier.get('v2'):
            v2dir = dir_for(hier['v2'], path, root)
            group['pressure'] = parse_pressure(procinfo.read_text(os.path.join(v2dir, 'cpu.pressure')))
    elif hier.get('version') == 2:
        directory = dir_for(hier['v2'], path, root)
        if not os.path.isdir(directory):
            return None
        quota, period = parse_cpu_max(procinfo.read_text(os.path.join(directory, 'cpu.max')))
        group['quota_us'], group['period_us'] = quota, period
        group['burst_us'] = _read_int(os.path.join(directory, 'cpu.max.burst'))
        stat = parse_cpu_stat(procinfo.read_text(os.path.join(directory, 'cpu.stat')), 2)
        group['pressure'] = parse_pressure(procinfo.read_text(os.path.join(directory, 'cpu.pressure')))
        group['usage_source'] = 'cpu.stat' if stat.get('usage_us') is not None else None
    else:
        return None
    for key in ('nr_periods', 'nr_throttled', 'throttled_us', 'nr_bursts', 'usage_us'):
        group[key] = stat.get(key)
    group['limit_cores'] = limit_cores(group['quota_us'], group['period_us'])
    return group


def tasks_cpu_ns(directory, proc_root='/proc'):
    """Sum of on-CPU ns (``/proc/<tid>/schedstat``) of the threads in a v1 group tree.

    None when the group has no ``tasks`` file. Threads that exited are not
    counted: a fallback for groups without a cpuacct counterpart.
    """
    if not os.path.exists(os.path.join(directory, 'tasks')):
        return None
    total = 0
    for dirpath, _dirnames, _files in os.walk(directory):
        for tid in (procinfo.read_text(os.path.join(dirpath, 'tasks')) or '').split():
            text = procinfo.read_text(proc_root + '/' + tid + '/schedstat')
            if text:
                try:
                    total += int(text.split()[0])
                except (ValueError, IndexError):
                    continue
    return total


def ancestors(cgroup_path):
    """``/a/b/c`` -> ``['/a/b/c', '/a/b', '/a', '/']``."""
    path = normalise_path(cgroup_path)
    chain = [path]
    while path != '/':
        path = path.rsplit('/', 1)[0] or '/'
        chain.append(path)
    return chain


def limited_chain(hier, cgroup_path, root='/'):
    """The own group first, then every ancestor that has a CPU limit."""
    groups = []
    for index, path in enumerate(ancestors(cgroup_path)):
        group = read_group(hier, path, root)
        if group is None:
            if index == 0:
                return []
            continue
        if index == 0 or group['limit_cores'] is not None:
            groups.append(group)
    return groups


def tightest(groups):
    """The group with the smallest ``limit_cores`` (first on ties), or None."""
    best = None
    for group in groups:
        if group['limit_cores'] is None:
            continue
        if best is None or group['limit_cores'] < best['limit_cores']:
            best = group
    return best


def _delta(after, before):
    if after is None or before is None:
        return None
    return after - before


def sample_delta(before, after, seconds):
    """Rates between two ``read_group`` readings of one group ``seconds`` apart."""
    periods = _delta(after['nr_periods'], before['nr_periods'])
    throttled = _delta(after['nr_throttled'], before['nr_throttled'])
    throttled_us = _delta(after['throttled_us'], before['throttled_us'])
    usage_us = _delta(after['usage_us'], before['usage_us'])
    seconds = float(seconds)
    return {
        'seconds': round(seconds, 3),
        'path': after['path'],
        'nr_periods_delta': periods,
        'nr_throttled_delta': throttled,
        'throttled_ratio': ratio(throttled, periods),
        'throttled_seconds_per_s': (round(throttled_us / 1e6 / seconds, 6)
                                    if throttled_us is not None and seconds > 0 else None),
        'cpu_usage_cores': (round(usage_us / 1e6 / seconds, 6)
                            if usage_us is not None and seconds > 0 else None),
        'limit_cores': after['limit_cores'],
    }


# -- targets over /proc -------------------------------------------------------

def scan_proc_cgroups(proc_root='/proc'):
    """``{pid: parsed /proc/<pid>/cgroup}`` for every readable process."""
    found = {}
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        text = procinfo.read_text(proc_root + '/' + entry + '/cgroup')
        if text is not None:
            found[int(entry)] = procinfo.parse_proc_cgroup(text)
    return found


def cpu_path_of(cgroups, hier):
    """The process's path in the hierarchy holding the cpu controller."""
    if hier.get('version') == 1:
        return cgroups['v1'].get('cpu')
    return cgroups.get('v2')


def _all_paths(cgroups):
    paths = list(cgroups['v1'].values())
    if cgroups.get('v2'):
        paths.append(cgroups['v2'])
    return paths


CONTAINER_REF_RE = re.compile(r'^[0-9a-f]{4,64}$')


def match_container_id(ref, proc_cgroups, group_dirs=()):
    """Containers whose id starts with ``ref`` (lowercase hex, >= 4 chars).

    Looks at every process's cgroup paths (``procinfo.container_from_cgroup_path``)
    and at cgroup directory paths (``group_dirs``, paths relative to the
    hierarchy, for containers without a process we can see). Returns
    ``{id: {'runtime', 'id', 'pod_uid'?, 'pids': [...], 'paths': [...]}}``.
    """
    ref = ref.lower()
    matches = {}
    if not CONTAINER_REF_RE.match(ref):
        return matches
    for pid, cgroups in sorted(proc_cgroups.items()):
        for path in _all_paths(cgroups):
            container = procinfo.container_from_cgroup_path(path)
            if container and container['id'].startswith(ref):
                entry = matches.setdefault(container['id'], dict(container, pids=[], paths=[]))
                if pid not in entry['pids']:
                    entry['pids'].append(pid)
                break
    for path in group_dirs:
        container = procinfo.container_from_cgroup_path(path)
        if container and container['id'].startswith(ref):
            entry = matches.setdefault(container['id'], dict(container, pids=[], paths=[]))
            if path not in entry['paths']:
                entry['paths'].append(path)
    return matches


MAX_SAMPLE_SECONDS = 3600
UNIT_RE = re.compile(r'^[A-Za-z0-9:_.\\@-]+$')
UNIT_SUFFIXES = ('.service', '.scope', '.slice', '.socket', '.mount', '.swap', '.target')


def normalise_unit(name):
    """``foo`` -> ``foo.service``; a name with a unit suffix stays."""
    return name if name.endswith(UNIT_SUFFIXES) else name + '.service'


def unit_prefix(path, unit):
    """The prefix of ``path`` ending in the component ``unit``, or None."""
    parts = path.strip('/').split('/')
    if unit in parts:
        return '/' + '/'.join(parts[:parts.index(unit) + 1])
    return None


def match_systemd_unit(unit, proc_cgroups):
    """Pids whose cgroup paths (any hierarchy) have the component ``unit``."""
    return sorted(pid for pid, cgroups in proc_cgroups.items()
                  if any(unit_prefix(path, unit) for path in _all_paths(cgroups)))


def find_group_dirs(mount_dir, predicate, max_depth=6):
    """Cgroup paths (relative to ``mount_dir``) of directories ``predicate(name)`` accepts."""
    found = []
    base_len = len(mount_dir.rstrip('/'))
    for dirpath, dirnames, _files in os.walk(mount_dir):
        rel = dirpath[base_len:] or '/'
        depth = rel.count('/') if rel != '/' else 0
        if depth >= max_depth:
            dirnames[:] = []
        for name in dirnames:
            if predicate(name):
                found.append(rel.rstrip('/') + '/' + name)
    return sorted(found)


# -- collecting: targets -> measured entries ----------------------------------

TARGET_OPTIONS = ('pids', 'process_names', 'systemd_units', 'containers', 'cgroup_paths')


def validate_options(options):
    """Error message for invalid target options, or None."""
    for pid in options.get('pids') or []:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return f'pids: {pid!r} is not a positive integer'
    for key in ('process_names', 'systemd_units', 'containers', 'cgroup_paths'):
        for value in options.get(key) or []:
            if not isinstance(value, str) or not value.strip() or '\0' in value or '\n' in value:
                return f'{key}: {value!r} is not a non-empty string'
    for name in options.get('process_names') or []:
        if '/' in name:
            return f'process_names: {name!r}: give a comm or an exe basename, not a path'
    for unit in options.get('systemd_units') or []:
        if not UNIT_RE.match(unit):
            return f'systemd_units: {unit!r} is not a unit name'
    for ref in options.get('containers') or []:
        if not re.match(r'^/?[A-Za-z0-9][A-Za-z0-9_.-]*$', ref):
            return f'containers: {ref!r} is not a container id or name'
    for path in options.get('cgroup_paths') or []:
        error = cgroup_path_error(path)
        if error:
            return f'cgroup_paths: {error}'
    seconds = options.get('sample_seconds')
    if seconds is not None and not (isinstance(seconds, (int, float)) and 0 <= seconds <= MAX_SAMPLE_SECONDS):
        return f'sample_seconds: {seconds!r} must be a number between 0 and {MAX_SAMPLE_SECONDS}'
    return None


def cgroup_path_error(path):
    """Why ``path`` is not a cgroup path (as in /proc/PID/cgroup) to read or write, or None:
    it must be an absolute path without ``.``/``..`` components or control characters, so it
    stays inside the cgroup tree."""
    if not isinstance(path, str) or not path.startswith('/') or re.search(r'[\x00-\x1f\x7f]', path):
        return f'{path!r} must be an absolute path (as in /proc/PID/cgroup)'
    if '/../' in path + '/' or '/./' in path + '/':
        return f'{path!r} must be an absolute path without . or .. components'
    if len(path) > 4096:
        return 'a cgroup path is at most 4096 characters'
    return None


class Collector:
    """Resolve targets to cgroups, read them, sample them.

    ``container_lookup(ref)`` returns ``(info, reason)``: info ``{id, name,
    pid}`` or None, reason why not (no daemon, ...). ``audit_consumer``
    returns ``(pid or None, reason)``.
    """

    def __init__(self, hier, root='/', container_lookup=None):
        self.hier = hier
        self.root = root
        self.proc_root = host_path(root, '/proc')
        self.container_lookup = container_lookup
        self._proc_cgroups = None
        self._group_dirs = None

    # cached scans
    def proc_cgroups(self):
        if self._proc_cgroups is None:
            self._proc_cgroups = scan_proc_cgroups(self.proc_root)
        return self._proc_cgroups

    def cpu_mount_dir(self):
        return dir_for(cpu_mount(self.hier), '/', self.root)

    def group_dirs(self):
        """Every cgroup path of the cpu hierarchy that names a container or unit."""
        if self._group_dirs is None:
            self._group_dirs = find_group_dirs(
                self.cpu_mount_dir(),
                lambda name: bool(procinfo.container_from_cgroup_path('/' + name)
                                  or name.endswith(UNIT_SUFFIXES)))
        return self._group_dirs

    def pid_cgroups(self, pid):
        text = procinfo.read_text(f'{self.proc_root}/{pid}/cgroup')
        return procinfo.parse_proc_cgroup(text) if text is not None else None

    # entries
    def _base(self, kind, name):
        return {'kind': kind, 'name': name, 'found': False, 'reason': None, 'pids': [],
                'container': None, 'systemd_unit': None, 'cgroup_version': self.hier['version'],
                'cgroup_path': None, 'limit_cores': None, 'limited_by': None, 'cgroups': [],
                'throttled_ratio_total': None, 'sample': None}

    def _not_found(self, kind, name, reason):
        entry = self._base(kind, name)
        entry['reason'] = reason
        return entry

    def _measured(self, kind, name, cpu_path, pids, container=None, unit=None):
        entry = self._base(kind, name)
        entry['pids'] = sorted(pids)
        entry['cgroup_path'] = cpu_path
        groups = limited_chain(self.hier, cpu_path, self.root)
        if not groups:
            entry['reason'] = f'cgroup {cpu_path} not found in the cpu hierarchy'
            return entry
        entry['found'] = True
        if container is None or unit is None:
            c2 = procinfo.container_from_cgroup_path(cpu_path)
            u2 = procinfo.systemd_unit_from_cgroup_path(cpu_path)
            container = container or c2
            unit = unit or u2
        if container is not None:
            pod_uid = container.get('pod_uid')
            kubernetes = container.get('kubernetes')
            container = {'runtime': container.get('runtime'), 'id': container.get('id'),
                         'name': container.get('name')}
            if container['name'] is None and container['id'] and self.container_lookup is not None:
                # a container found from the cgroup path (the audit consumer's own): name it too
                info, _reason = self.container_lookup(container['id'])
                if info:
                    container['name'] = info.get('name')
                    kubernetes = info.get('kubernetes')
                    if container['runtime'] == 'unknown' and info.get('source') != 'crictl':
                        container['runtime'] = 'docker'
            if pod_uid:
                container['pod_uid'] = pod_uid
            if kubernetes:
                container['kubernetes'] = kubernetes
        entry['container'] = container
        entry['systemd_unit'] = unit
        for group in groups:
            group['throttled_ratio_total'] = ratio(group['nr_throttled'], group['nr_periods'])
            group['sample'] = None
        entry['cgroups'] = groups
        tight = tightest(groups)
        entry['limit_cores'] = tight['limit_cores'] if tight else None
        entry['limited_by'] = tight['path'] if tight else None
        own = groups[0]
        entry['throttled_ratio_total'] = (tight or own)['throttled_ratio_total']
        return entry

    def _by_pids(self, kind, name, pids, container=None, unit=None):
        """One entry per distinct cpu cgroup of ``pids``."""
        by_path = {}
        gone = []
        for pid in pids:
            cgroups = self.pid_cgroups(pid)
            path = cpu_path_of(cgroups, self.hier) if cgroups else None
            if path is None:
                gone.append(pid)
                continue
            by_path.setdefault(path, []).append(pid)
        if not by_path:
            return [self._not_found(kind, name, 'process {} exited or its cgroup is unreadable'.format(','.join(str(p) for p in pids)))]
        return [self._measured(kind, name, path, members, container, unit)
                for path, members in sorted(by_path.items())]

    def audit_consumer(self, lookup):
        pid, reason = lookup()
        if not pid:
            return [self._not_found('audit_consumer', 'audit_consumer',
                                    reason or 'no audit consumer registered')]
        if not os.path.isdir(f'{self.proc_root}/{pid}'):
            return [self._not_found('audit_consumer', str(pid),
                                    f'audit consumer pid {pid} is registered but not running')]
        return self._by_pids('audit_consumer', str(pid), [pid])

    def pid(self, pid):
        if not os.path.isdir(f'{self.proc_root}/{pid}'):
            return [self._not_found('pid', str(pid), f'no process with pid {pid}')]
        return self._by_pids('pid', str(pid), [pid])

    def process_names(self, names):
        found = procinfo.find_pids_by_name(names, proc_root=self.proc_root)
        entries = []
        for name in names:
            pids = found.get(name) or []
            if not pids:
                entries.append(self._not_found('process_name', name,
                                               f'no process with comm or exe basename {name}'))
            else:
                entries.extend(self._by_pids('process_name', name, pids))
        return entries

    def systemd_unit(self, name):
        unit = normalise_unit(name)
        pids = match_systemd_unit(unit, self.proc_cgroups())
        if pids:
            return self._by_pids('systemd_unit', name, pids, unit=unit)
        dirs = [path for path in self.group_dirs() if path.rsplit('/', 1)[-1] == unit]
        if dirs:
            return [self._measured('systemd_unit', name, dirs[0], [], unit=unit)]
        return [self._not_found('systemd_unit', name,
                                f'no cgroup for unit {unit} (no process in it, no cgroup directory)')]

    def container(self, ref):
        ref = ref.lstrip('/')
        matches = match_container_id(ref, self.proc_cgroups()) if CONTAINER_REF_RE.match(ref) else {}
        if not matches and CONTAINER_REF_RE.match(ref):
            matches = match_container_id(ref, {}, self.group_dirs())
        info = None
        lookup_reason = None
        if not matches and self.container_lookup is not None:
            info, lookup_reason = self.container_lookup(ref)
            if info and info.get('id'):
                matches = match_container_id(info['id'], self.proc_cgroups())
                if not matches:
                    matches = match_container_id(info['id'], {}, self.group_dirs())
                if not matches:
                    state = '' if info.get('running') else ': not running'
                    label = info.get('name') or ref
                    return [self._not_found('container', ref,
                                            f"container {label} ({info['id'][:12]}) has no cgroup here{state}")]
        if not matches:
            reason = f'no container with id or name {ref}'
            if lookup_reason:
                reason += f' ({lookup_reason})'
            return [self._not_found('container', ref, reason)]
        if len(matches) > 1:
            return [self._not_found('container', ref, 'ambiguous container id prefix {}: {}'.format(ref, ', '.join(sorted(cid[:12] for cid in matches))))]
        match = next(iter(matches.values()))
        if info is None and self.container_lookup is not None and match['runtime'] in ('docker', 'unknown'):
            info, _reason = self.container_lookup(match['id'])
        container = {'runtime': match['runtime'], 'id': match['id'],
                     'name': (info or {}).get('name'), 'pod_uid': match.get('pod_uid'),
                     'kubernetes': (info or {}).get('kubernetes')}
        if info and container['runtime'] == 'unknown':
            container['runtime'] = 'docker'
        for key in ('pod_uid', 'kubernetes'):
            if not container[key]:
                del container[key]
        if match['pids']:
            return self._by_pids('container', ref, match['pids'], container=container)
        return [self._measured('container', ref, match['paths'][0], [], container=container)]

    def cgroup_path(self, path):
        rel = path.rstrip('/') or '/'
        mount = cpu_mount(self.hier)
        mount_point = mount['mount_point'].rstrip('/')
        if rel == mount_point or rel.startswith(mount_point + '/'):
            rel = rel[len(mount_point):] or '/'
        directory = dir_for(mount, rel, self.root)
        if not os.path.isdir(directory):
            return [self._not_found('cgroup_path', path, 'no cgroup {} in the cpu hierarchy ({})'.format(rel, mount['mount_point']))]
        procs = procinfo.read_text(os.path.join(directory, 'cgroup.procs')) or ''
        pids = [int(line) for line in procs.split() if line.isdigit()]
        return [self._measured('cgroup_path', path, rel, pids)]

    def resolve(self, options, audit_lookup=None):
        entries = []
        if options.get('audit_consumer', True) and audit_lookup is not None:
            entries.extend(self.audit_consumer(audit_lookup))
        for pid in options.get('pids') or []:
            entries.extend(self.pid(pid))
        if options.get('process_names'):
            entries.extend(self.process_names(list(options['process_names'])))
        for unit in options.get('systemd_units') or []:
            entries.extend(self.systemd_unit(unit))
        for ref in options.get('containers') or []:
            entries.extend(self.container(ref))
        for path in options.get('cgroup_paths') or []:
            entries.extend(self.cgroup_path(path))
        return entries

    def sample(self, entries, seconds, sleep, clock):
        """Read every measured group again after ``seconds``; fill ``sample``."""
        if not seconds:
            return
        before = {}
        t0 = clock()
        for entry in entries:
            for group in entry['cgroups']:
                if group['path'] not in before:
                    before[group['path']] = read_group(self.hier, group['path'], self.root)
        sleep(seconds)
        elapsed = clock() - t0
        after = {}
        for path, first in before.items():
            if first is not None:
                after[path] = read_group(self.hier, path, self.root)
        for entry in entries:
            if not entry['found']:
                continue
            for group in entry['cgroups']:
                first, last = before.get(group['path']), after.get(group['path'])
                if first is not None and last is not None:
                    group['sample'] = sample_delta(first, last, elapsed)
            tight = tightest(entry['cgroups'])
            chosen = tight or entry['cgroups'][0]
            entry['sample'] = chosen['sample']


def collect(options, root='/', container_lookup=None, audit_lookup=None, sleep=None, clock=None):
    """The whole cgroup_throttle fact, from options.

    ``root``: filesystem root holding ``proc/`` and ``sys/`` (``/`` live).
    """
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    seconds = options.get('sample_seconds')
    seconds = 5 if seconds is None else seconds
    mountinfo = procinfo.read_text(host_path(root, '/proc/self/mountinfo'))
    result = {'supported': False, 'reason': None, 'sample_seconds': seconds,
              'hierarchy': None, 'targets': []}
    if mountinfo is None:
        result['reason'] = 'cannot read /proc/self/mountinfo'
        return result
    hier = discover_hierarchies(mountinfo, root)
    result['hierarchy'] = {
        'version': hier['version'],
        'cpu_controller': hier['cpu_controller'],
        'cpu_mount': hier['cpu']['mount_point'] if hier['cpu'] else None,
        'cpuacct_mount': hier['cpuacct']['mount_point'] if hier['cpuacct'] else None,
        'v2_mount': hier['v2']['mount_point'] if hier['v2'] else None,
        'v2_controllers': hier['v2_controllers'],
    }
    if not hier['supported']:
        result['reason'] = hier['reason']
        return result
    result['supported'] = True
    collector = Collector(hier, root, container_lookup)
    entries = collector.resolve(options, audit_lookup)
    collector.sample(entries, seconds, sleep, clock)
    result['targets'] = entries
    return result
