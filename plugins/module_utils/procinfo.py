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
import time

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


# ---------------------------------------------------------------- activity over a window
# What a process did during a sample window, from /proc: its scheduler state
# sampled each tick, CPU used (utime+stime), time waiting for a CPU
# (schedstat run_delay), how often it slept and was woken (voluntary context
# switches), where it sleeps (wchan, kernel stack of tasks in D) and its I/O.
# Used to tell why an audit consumer does not drain its backlog.

# Process state for one tick, from its tasks' states: the most telling first.
STATE_ORDER = ('T', 'D', 'R', 'S')
_STATE_CLASS = {'T': 'T', 't': 'T', 'D': 'D', 'R': 'R', 'S': 'S', 'I': 'S'}
ACTIVITY_STACK_DEPTH = 8


def parse_stat(text):
    """/proc/PID/stat -> {state, utime_ticks, stime_ticks, nice, num_threads, policy}.

    The comm field may hold spaces and parentheses: fields are counted after
    the last ``)``. None when the text is not a stat line.
    """
    end = text.rfind(')')
    if end < 0:
        return None
    fields = text[end + 1:].split()
    if len(fields) < 18:
        return None
    try:
        return {'state': fields[0], 'utime_ticks': int(fields[11]), 'stime_ticks': int(fields[12]),
                'nice': int(fields[16]), 'num_threads': int(fields[17]),
                'policy': int(fields[38]) if len(fields) > 38 else None}
    except ValueError:
        return None


def parse_schedstat(text):
    """/proc/PID/schedstat -> {run_ns, run_delay_ns, timeslices} (None when malformed)."""
    parts = text.split()
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        return None
    return {'run_ns': int(parts[0]), 'run_delay_ns': int(parts[1]), 'timeslices': int(parts[2])}


def parse_voluntary_switches(text):
    """/proc/PID/status -> voluntary_ctxt_switches (times the task blocked and was woken), None when absent."""
    for line in text.splitlines():
        if line.startswith('voluntary_ctxt_switches:'):
            value = line.split(':', 1)[1].strip()
            return int(value) if value.isdigit() else None
    return None


def parse_io(text):
    """/proc/PID/io -> {name: int}."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(':')
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value.strip())
    return out


def parse_stack(text, depth=ACTIVITY_STACK_DEPTH):
    """/proc/PID/stack -> function names, innermost first (offsets dropped)."""
    frames = []
    for line in text.splitlines():
        word = line.split()[-1] if line.split() else ''
        name = word.split('+', 1)[0]
        if name:
            frames.append(name)
    return frames[:depth]


def process_state(task_states):
    """One letter (T, D, R, S) for a process from its tasks' state letters."""
    classes = {_STATE_CLASS.get(s, 'S') for s in task_states}
    for letter in STATE_ORDER:
        if letter in classes:
            return letter
    return None


def read_text(path):
    """A file's text, None when it cannot be read (gone, no permission, not text)."""
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def freezer_state(cgroups, cgroup_root='/sys/fs/cgroup'):
    """True when the process's cgroup is frozen (v1 freezer or v2 cgroup.freeze), False, None unknown."""
    v1_path = _d(cgroups).get('v1', {}).get('freezer')
    if v1_path is not None:
        text = read_text(os.path.join(cgroup_root, 'freezer', v1_path.lstrip('/'), 'freezer.state'))
        if text is not None:
            return text.strip() in ('FROZEN', 'FREEZING')
    v2_path = _d(cgroups).get('v2')
    if v2_path is not None:
        for base in (cgroup_root, os.path.join(cgroup_root, 'unified')):
            text = read_text(os.path.join(base, v2_path.lstrip('/'), 'cgroup.events'))
            if text is not None:
                return 'frozen 1' in text.splitlines()
    return None


def _d(value):
    return value if isinstance(value, dict) else {}


class ActivitySampler:
    """Measures one process over a window: ``tick()`` each poll, ``summary()`` at the end.

    Reads only /proc (and the freezer state); a process that vanishes gives
    ``found: false``. Pure aggregation in ``summarize_activity``.
    """

    def __init__(self, pid, proc_root='/proc', cgroup_root='/sys/fs/cgroup', clock=time.monotonic):
        self.pid = int(pid)
        self.base = os.path.join(proc_root, str(self.pid))
        self.cgroup_root = cgroup_root
        self.clock = clock
        self.ticks = []
        self.started = self.clock()
        self.first = self.counters()
        self.last = self.first
        self.ended = self.started
        # tasks seen runnable and not run since: {tid: {since, run_ns, timeslices}}
        self.queued = track_queued({}, (self.first or {}).get('tasks') or {}, self.started)

    def tids(self):
        try:
            return sorted(int(t) for t in os.listdir(os.path.join(self.base, 'task')) if t.isdigit())
        except OSError:
            return []

    def counters(self):
        """{stat, io, tasks: {tid: {ticks, run_delay_ns, run_ns, wakeups}}} or None when the process is gone."""
        stat = parse_stat(read_text(os.path.join(self.base, 'stat')) or '')
        if stat is None:
            return None
        tasks = {}
        for tid in self.tids():
            tbase = os.path.join(self.base, 'task', str(tid))
            tstat = parse_stat(read_text(os.path.join(tbase, 'stat')) or '')
            sched = parse_schedstat(read_text(os.path.join(tbase, 'schedstat')) or '')
            if tstat is None:
                continue
            tasks[tid] = {'ticks': tstat['utime_ticks'] + tstat['stime_ticks'], 'state': tstat['state'],
                          'run_delay_ns': sched['run_delay_ns'] if sched else None,
                          'run_ns': sched['run_ns'] if sched else None,
                          'timeslices': sched['timeslices'] if sched else None,
                          'wakeups': parse_voluntary_switches(read_text(os.path.join(tbase, 'status')) or '')}
        return {'stat': stat, 'io': parse_io(read_text(os.path.join(self.base, 'io')) or ''),
                'tasks': tasks}

    def tick(self):
        states, wchans, stacks, runnable = [], [], [], {}
        now = self.clock()
        for tid in self.tids():
            tbase = os.path.join(self.base, 'task', str(tid))
            tstat = parse_stat(read_text(os.path.join(tbase, 'stat')) or '')
            if tstat is None:
                continue
            states.append(tstat['state'])
            if tstat['state'] == 'R':
                sched = parse_schedstat(read_text(os.path.join(tbase, 'schedstat')) or '')
                if sched:
                    runnable[tid] = {'state': 'R', 'run_ns': sched['run_ns'], 'timeslices': sched['timeslices']}
            if tstat['state'] in ('D', 'S'):
                wchan = (read_text(os.path.join(tbase, 'wchan')) or '').strip()
                if wchan and wchan != '0':
                    wchans.append(wchan)
            if tstat['state'] == 'D':
                frames = parse_stack(read_text(os.path.join(tbase, 'stack')) or '')
                if frames:
                    stacks.append(frames)
        self.ticks.append({'state': process_state(states), 'wchans': wchans, 'stacks': stacks})
        self.queued = track_queued(self.queued, runnable, now)

    def summary(self, clk_tck=None, frozen=None):
        last = self.counters()
        self.ended = self.clock()
        self.last = last or self.last
        if clk_tck is None:
            clk_tck = os.sysconf('SC_CLK_TCK')
        if frozen is None:
            info = read_process(self.pid, os.path.dirname(self.base))
            frozen = freezer_state(info['cgroups'], self.cgroup_root) if info else None
        pending = queued_waits_ns(self.queued, (last or {}).get('tasks') or {}, self.ended)
        return summarize_activity(self.pid, self.first, self.last, self.ticks, self.ended - self.started,
                                  clk_tck, frozen, pending_ns=pending)


# schedstat's run_delay grows when a waiting task gets a CPU, not while it waits:
# a consumer starved for the whole window would show none. The sampler keeps the
# tasks it saw runnable (R) that have not run since (same run time and timeslice
# count); the wait still under way at the window's end is added, from when it was
# first seen (a lower bound: it was queued before that).

def _still_queued(seen, task):
    """True when ``task`` is runnable and has not run since ``seen`` (same run time and timeslices)."""
    return bool(seen) and task.get('state') == 'R' and task.get('run_ns') == seen['run_ns'] \
        and task.get('timeslices') == seen['timeslices']


def track_queued(queued, tasks, now):
    """{tid: {since, run_ns, timeslices}} of the tasks runnable in ``tasks`` that have not run
    since ``since`` (pure: a task that ran, slept or has no schedstat starts over or is dropped)."""
    out = {}
    for tid, task in tasks.items():
        if task.get('state') != 'R' or task.get('run_ns') is None or task.get('timeslices') is None:
            continue
        seen = queued.get(tid)
        if not _still_queued(seen, task):
            seen = {'since': now, 'run_ns': task['run_ns'], 'timeslices': task['timeslices']}
        out[tid] = seen
    return out


def queued_waits_ns(queued, last_tasks, ended):
    """{tid: ns} the tasks of ``queued`` still runnable and unrun in ``last_tasks`` have waited by ``ended``."""
    return {tid: max(0, int((ended - queued[tid]['since']) * 1e9))
            for tid, task in last_tasks.items() if _still_queued(queued.get(tid), task)}


def summarize_activity(pid, first, last, ticks, seconds, clk_tck, frozen, pending_ns=None):
    """The contract ``consumer_activity`` from two counter readings and the ticks (pure).

    ``pending_ns``: {tid: ns} of waits for a CPU still under way at the window's end
    (``queued_waits_ns``), not yet in schedstat's run_delay: added to it. A task's
    delay counts at most the window (a wait booked in it may have begun before).
    """
    if first is None or last is None:
        return {'pid': pid, 'found': False, 'seconds': round(seconds, 3), 'samples': len(ticks)}
    states = [t['state'] for t in ticks if t.get('state')]
    ratios = dict((letter, round(states.count(letter) / float(len(states)), 3) if states else None)
                  for letter in STATE_ORDER)
    wchan_counts, stack_counts = {}, {}
    for tick in ticks:
        for name in tick.get('wchans') or []:
            wchan_counts[name] = wchan_counts.get(name, 0) + 1
        for frames in tick.get('stacks') or []:
            key = ' <- '.join(frames)
            stack_counts[key] = stack_counts.get(key, 0) + 1
    wchan = [{'function': name, 'samples': count}
             for name, count in sorted(wchan_counts.items(), key=lambda item: (-item[1], item[0]))][:5]
    d_stack = max(stack_counts.items(), key=lambda item: item[1])[0] if stack_counts else None

    def per_s(delta):
        return round(delta / seconds, 3) if seconds > 0 else None
    ticks_delta = (last['stat']['utime_ticks'] + last['stat']['stime_ticks']
                   - first['stat']['utime_ticks'] - first['stat']['stime_ticks'])
    cpu_cores = round(ticks_delta / float(clk_tck) / seconds, 3) if seconds > 0 else None
    busiest, delay_ns, run_ns, wakeups = 0, 0, 0, 0
    delay_known = run_known = wakeups_known = False
    for tid, task in last['tasks'].items():
        before = first['tasks'].get(tid, {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 0, 'wakeups': 0})
        busiest = max(busiest, task['ticks'] - before['ticks'])
        if task['run_delay_ns'] is not None and before.get('run_delay_ns') is not None:
            delay_known = True
            waited = task['run_delay_ns'] - before['run_delay_ns'] + (pending_ns or {}).get(tid, 0)
            delay_ns += min(waited, int(seconds * 1e9)) if seconds > 0 else waited
        if task.get('run_ns') is not None and before.get('run_ns') is not None:
            run_known = True
            run_ns += task['run_ns'] - before['run_ns']
        if task.get('wakeups') is not None and before.get('wakeups') is not None:
            wakeups_known = True
            wakeups += task['wakeups'] - before['wakeups']
    io_first, io_last = first['io'], last['io']
    # its history before the window (since it started): what sizing.wakeup_cost weighs the window against
    history = {'cpu_seconds': None, 'wakeups': None, 'write_chars': io_first.get('wchar')}
    before = list(first['tasks'].values())
    if before and all(t.get('run_ns') is not None for t in before):
        history['cpu_seconds'] = round(sum(t['run_ns'] for t in before) / 1e9, 6)
    if before and all(t.get('wakeups') is not None for t in before):
        history['wakeups'] = sum(t['wakeups'] for t in before)

    def io_rate(name):
        if name not in io_first or name not in io_last:
            return None
        return per_s(io_last[name] - io_first[name])
    return {
        'pid': pid, 'found': True, 'seconds': round(seconds, 3), 'samples': len(states),
        'state_ratios': ratios, 'frozen': frozen,
        'cpu_cores': cpu_cores,
        'cpu_seconds': round(run_ns / 1e9, 6) if run_known else None,
        'busiest_thread_cores': round(busiest / float(clk_tck) / seconds, 3) if seconds > 0 else None,
        'run_delay_ms_per_s': round(delay_ns / 1e6 / seconds, 3) if (seconds > 0 and delay_known) else None,
        'wakeups_per_s': per_s(wakeups) if wakeups_known else None,
        'nice': last['stat']['nice'], 'threads': last['stat']['num_threads'],
        'write_bytes_per_s': io_rate('write_bytes'), 'syscw_per_s': io_rate('syscw'),
        'syscr_per_s': io_rate('syscr'), 'wchar_per_s': io_rate('wchar'), 'history': history,
        'wchan': wchan, 'd_state_stack': d_stack,
    }
