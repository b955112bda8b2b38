# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tracefs access for auditgap: find/mount, lock, private instances, validation.

Everything written to tracefs goes through a RestoreGuard (guard.py) and is
validated first: pids are ints of live tasks, function names must be listed in
``available_filter_functions``, syscall names must have
``events/syscalls/sys_enter_X`` and ``sys_exit_X``, filter expressions are
built here from validated ints only.

Private instances are named ``auditgap-<pid>``; a SIGKILLed sample leaves its
instance behind, so every sample first removes the ``auditgap-<pid>``
instances whose pid is dead.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fnmatch
import os
import re
import subprocess
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
from ansible_collections.auditgap.fleet.plugins.module_utils import tracehist
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import write_value


CANDIDATES = ('/sys/kernel/tracing', '/sys/kernel/debug/tracing')
LOCK_PATH = os.path.join(guard_mod.STATE_DIR, guard_mod.LOCK_NAME)  # the host lock
INSTANCE_PREFIX = 'auditgap-'
_INSTANCE_RE = re.compile(r'auditgap-(\d+)')
_SYMBOL_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_.]{0,127}')
_SYSCALL_RE = re.compile(r'[a-z0-9_]{1,64}')
MAX_FILTER_PIDS = 64

# Top-level files a sample may change (function_graph mode), restored after.
TOP_LEVEL_FILES = ('current_tracer', 'tracing_on', 'tracing_thresh', 'buffer_size_kb',
                   'set_ftrace_pid', 'set_ftrace_notrace_pid', 'set_graph_function', 'max_graph_depth',
                   'options/funcgraph-proc')
# Files read to prove "nothing changed" (tests, and the docs' list).
SNAPSHOT_FILES = TOP_LEVEL_FILES + ('set_event', 'set_event_pid', 'trace_options',
                                    'set_ftrace_filter', 'set_ftrace_notrace', 'trace_clock',
                                    'events/sched/sched_switch/enable',
                                    'events/sched/sched_switch/filter',
                                    'events/sched/sched_switch/trigger',
                                    # syscall latency in the kernel (hist triggers, where the kernel has them)
                                    'synthetic_events',
                                    'events/raw_syscalls/sys_enter/trigger',
                                    'events/raw_syscalls/sys_exit/trigger')


class TracefsError(Exception):
    """A clear, user-facing reason a sample cannot run (nothing was changed)."""


class LockBusy(TracefsError, guard_mod.LockBusy):
    pass


# ---------------------------------------------------------------------------
# pure helpers (text in, value out)

def parse_mounts(text):
    """/proc/mounts text -> [(mountpoint, fstype)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].replace('\\040', ' '), parts[2]))
    return out


def find_tracefs(mounts_text, isfile=os.path.isfile):
    """The tracefs directory from /proc/mounts text, or None.

    A tracefs mount first (``/sys/kernel/tracing`` preferred), then
    ``<debugfs>/tracing``. A directory counts only when it has ``trace``.
    """
    mounts = parse_mounts(mounts_text)
    tracefs = [mp for mp, fs in mounts if fs == 'tracefs']
    tracefs.sort(key=lambda mp: (mp != CANDIDATES[0], mp))
    for mountpoint in tracefs:
        if isfile(os.path.join(mountpoint, 'trace')):
            return mountpoint
    for mountpoint, fs in mounts:
        if fs == 'debugfs' and isfile(os.path.join(mountpoint, 'tracing', 'trace')):
            return os.path.join(mountpoint, 'tracing')
    return None


def parse_tracers(text):
    return text.split()


def parse_buffer_size_kb(text):
    """``1408`` -> 1408; ``7 (expanded: 1408)`` -> 1408 (the size in use); ``X`` -> None."""
    text = text.strip()
    match = re.search(r'expanded:\s*(\d+)', text)
    if match:
        return int(match.group(1))
    match = re.match(r'^(\d+)', text)
    return int(match.group(1)) if match else None


def unexpanded_buffer_kb(text):
    """The size (KiB per CPU) a top-level ``buffer_size_kb`` that was never expanded grows to on
    the kernel's first use of tracing (``7 (expanded: 1408)`` -> 1408); None once expanded
    (``1408``) or for other text."""
    match = re.match(r'^\s*\d+\s*\(expanded:\s*(\d+)\)', text or '')
    return int(match.group(1)) if match else None


def boot_buffer_kb(text):
    """The size (KiB per CPU) a never-expanded top-level ``buffer_size_kb`` has now, its boot size
    (``7 (expanded: 1408)`` -> 7); None for other text."""
    match = re.match(r'^\s*(\d+)\s*\(expanded:', text or '')
    return int(match.group(1)) if match else None


def grow_if_flag_flipped(path, boot_kb, size_kb):
    """The undo step of :func:`size_instance_buffer`: if the top-level ``buffer_size_kb`` reads its
    bare boot size (``7``: the global "expanded" flag set, the buffer not grown), write the size it
    grows to on first use. Anything else (``7 (expanded: 1408)``: nothing flipped, as on 6.7+;
    ``1408``: already grown; a size someone chose) is left alone. Returns whether it wrote."""
    try:
        text = read(path)
    except (IOError, OSError):
        return False
    if text.strip() != str(boot_kb):
        return False
    write_value(path, str(size_kb))
    return True


def size_instance_buffer(guard, root, inst, size_kb):
    """Write an instance's ``buffer_size_kb`` without leaving the top-level buffer at its boot size.

    On kernels with one global "buffers expanded" flag (6.1: ``__tracing_resize_ring_buffer``
    sets it for a write to any instance's ``buffer_size_kb``), the first such write after boot
    marks the never-expanded top-level buffer (``7 (expanded: 1408)``) expanded without growing
    it: every later user of the top level would get 7 KiB per CPU, for good. The flag cannot be
    cleared, so when this write flipped it the top level is set to the size it would have grown
    to (1408), as the kernel itself does the first time anyone enables an event. The undo step
    (:func:`grow_if_flag_flipped`, journaled before the instance's write) does the same if the
    run dies between the two writes, and nothing where the flag did not flip. Kernels that keep
    the flag per instance (6.7+) leave the top level as it was and nothing more is written.
    Returns the KiB per CPU the top level was set to, or None."""
    top = os.path.join(root, 'buffer_size_kb')

    try:
        before = read(top)
    except (IOError, OSError):
        before = None
    first_use, boot = unexpanded_buffer_kb(before), boot_buffer_kb(before)
    if first_use is not None:
        guard.push_op('grow_top_buffer', 'grow %s to %d KiB if sizing an instance set the expanded flag'
                      % (top, first_use), path=top, boot_kb=boot, size_kb=first_use)
    write_value(os.path.join(inst, 'buffer_size_kb'), str(size_kb))
    if first_use is None or not grow_if_flag_flipped(top, boot, first_use):
        return None
    return first_use


def parse_pid_file(text):
    """set_ftrace_pid / set_event_pid text -> [int] (``no pid`` -> [])."""
    return [int(tok) for tok in text.split() if tok.isdigit()]


def parse_function_list(text):
    """set_graph_function / set_ftrace_filter text -> [names] (the "all" banner -> [])."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        out.append(line.split()[0])
    return out


def parse_triggers(text):
    """trigger file text -> active trigger lines (comments dropped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith('#')]


def command_trigger_removal(line):
    """A command trigger (``stacktrace:unlimited if X``) -> ``!stacktrace if X``, what removes it
    (hist triggers: ``tracehist.hist_trigger_removal``)."""
    command, _sep, rest = line.partition(' ')
    command = command.split(':', 1)[0]
    return ('!%s %s' % (command, rest)).strip()


def is_symbol(name):
    return isinstance(name, str) and bool(_SYMBOL_RE.fullmatch(name))


def is_syscall_name(name):
    return isinstance(name, str) and bool(_SYSCALL_RE.fullmatch(name))


def pid_filter(fields, pids, exclude=()):
    """Event filter text from ints only.

    ``pid_filter(['common_pid'], [1, 2])`` -> ``common_pid == 1 || common_pid == 2``;
    with no pids, ``exclude`` gives ``common_pid != 3 && ...``; nothing -> ''.
    """
    pids = [int(p) for p in pids][:MAX_FILTER_PIDS]
    exclude = [int(p) for p in exclude][:MAX_FILTER_PIDS]
    if pids:
        return ' || '.join('%s == %d' % (field, pid) for field in fields for pid in pids)
    if exclude:
        return ' && '.join('%s != %d' % (field, pid) for field in fields for pid in exclude)
    return ''


# OFFCPU_STACKED_SLEEPS: which switch-outs of the targets get a kernel stack (offcpu mode)
OFFCPU_STACKED_SLEEPS = ('blocked', 'all')


def offcpu_trigger(pids, exclude=(), stacked_sleeps='blocked'):
    """The sched_switch stacktrace trigger. With targets: their uninterruptible switch-outs
    (``stacked_sleeps='blocked'``: D, killable and idle sleeps, ``prev_state & 2``: the audit backlog
    wait is one) or every switch-out (``'all'``: their ordinary sleeps in accept, poll or
    nanosleep too, a stack each). Without targets: every uninterruptible switch-out except the
    excluded tasks (a stack for every sleep of every task would cost the host too much)."""
    if stacked_sleeps not in OFFCPU_STACKED_SLEEPS:
        raise TracefsError('offcpu_stacked_sleeps must be one of %s, not %r' % (', '.join(OFFCPU_STACKED_SLEEPS), stacked_sleeps))
    if pids:
        targets = pid_filter(['prev_pid'], pids)
        if stacked_sleeps == 'all':
            return 'stacktrace if ' + targets
        return 'stacktrace if (%s) && prev_state & 2' % targets
    cond = 'prev_state & 2'
    rest = pid_filter(['prev_pid'], [], exclude)
    return 'stacktrace if ' + cond + (' && ' + rest if rest else '')


def events_plan(modes, syscalls, tids, exclude=(), stacked_sleeps='blocked'):
    """What an events sample writes in its instance, in order: ``(path under the instance, value,
    what undoes it)``, the undo a value to write back or ``None`` for a trigger (removed by its
    ``!`` form, ``command_trigger_removal``). ``syscalls``: each syscall's enter and exit events,
    filtered to the targets (``tids``) or to every task but ``exclude``; ``offcpu``:
    ``sched_switch`` filtered to the targets' switch-outs and switch-ins (without targets: every
    switch-out but the excluded tasks'), its stacktrace trigger (``offcpu_trigger``), then the
    event enabled. Pure: the module and the benchmark's kernel floor write the same plan."""
    plan = []
    if 'syscalls' in modes:
        flt = pid_filter(['common_pid'], tids, exclude)
        for name in syscalls:
            if not is_syscall_name(name):
                raise TracefsError('not a syscall name: %r' % (name,))
            for prefix in ('sys_enter_', 'sys_exit_'):
                event = 'events/syscalls/' + prefix + name
                if flt:
                    plan.append((event + '/filter', flt, '0'))
                plan.append((event + '/enable', '1', '0'))
    if 'offcpu' in modes:
        event = 'events/sched/sched_switch'
        if tids:
            flt = pid_filter(['prev_pid', 'next_pid'], tids)
        else:
            flt = pid_filter(['prev_pid'], [], exclude)
        if flt:
            plan.append((event + '/filter', flt, '0'))
        plan.append((event + '/trigger', offcpu_trigger(tids, exclude, stacked_sleeps), None))
        plan.append((event + '/enable', '1', '0'))
    return plan


def instance_pid(name):
    match = _INSTANCE_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def stale_instances(names, alive, own_pid=None):
    """``auditgap-<pid>`` instance names whose pid is dead (never our own)."""
    out = []
    for name in names:
        pid = instance_pid(name)
        if pid is None or pid == own_pid:
            continue
        if not alive(pid):
            out.append(name)
    return sorted(out)


def syscalls_from_rules(rules):
    """Syscall names the audit rules (dicts with ``syscalls``) name, in order, no ``all``."""
    seen = []
    for rule in rules or ():
        for name in rule.get('syscalls') or ():
            if name and name != 'all' and name not in seen:
                seen.append(name)
    return seen


# ---------------------------------------------------------------------------
# host access

def read(path):
    with open(path, 'r') as handle:
        return handle.read()


def pid_alive(pid):
    return os.path.exists('/proc/%d' % int(pid))


def locate(proc_root='/proc'):
    try:
        mounts = read(os.path.join(proc_root, 'mounts'))
    except (IOError, OSError):
        mounts = ''
    return find_tracefs(mounts)


def mount(guard, path=CANDIDATES[0]):
    """Mount tracefs at ``path`` and register the unmount. Returns path or None."""
    if not os.path.isdir(path):
        return None
    guard.push_op('umount', 'umount %s' % path, path=path)
    proc = subprocess.run(['mount', '-t', 'tracefs', 'nodev', path], check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0 or not os.path.isfile(os.path.join(path, 'trace')):
        return None
    return path


def Lock(path=LOCK_PATH, module='ftrace_sample'):
    """The host lock (guard.locked: no wait, busy -> LockBusy naming the holder); entering
    it replays the undo journals of dead runs (``.recovered``). ``path``'s directory is
    auditgap's state directory (root-only, checked)."""
    return guard_mod.locked(module, wait_s=0, state_dir=os.path.dirname(path), busy=LockBusy)


def available_tracers(root):
    try:
        return parse_tracers(read(os.path.join(root, 'available_tracers')))
    except (IOError, OSError):
        return []


def current_tracer(root):
    return read(os.path.join(root, 'current_tracer')).strip()


_FILTER_GLOB_RE = re.compile(r'[A-Za-z0-9_.*?]+')


def is_filter_glob(text):
    """A set_ftrace_filter word auditgap accepts: a function name or a glob of one
    (``*``, ``?``); no module, command or negation syntax."""
    return isinstance(text, str) and len(text) <= 128 and bool(_FILTER_GLOB_RE.fullmatch(text)) and text.strip('*?') != ''


def match_functions(listed, names=(), globs=()):
    """(the subset of ``names`` in ``listed``, the ``globs`` nothing in ``listed`` matches).

    ``listed`` is an iterable of function names, read once and only until both
    answers are known. ``names`` that are not symbols are never found.
    """
    wanted = set(name for name in names if is_symbol(name))
    found = set()
    left = list(dict.fromkeys(globs))
    plain = set(g for g in left if not any(c in g for c in '*?'))
    patterns = [(g, re.compile(fnmatch.translate(g))) for g in left if g not in plain]
    for name in listed:
        if not left and len(found) == len(wanted):
            break
        if name in wanted:
            found.add(name)
        if name in plain:
            plain.discard(name)
            left.remove(name)
        if patterns:
            for entry in [p for p in patterns if p[1].match(name)]:
                patterns.remove(entry)
                left.remove(entry[0])
    return found, left


def filter_functions(root, names=(), globs=()):
    """match_functions over available_filter_functions: one streamed pass answers both
    which ``names`` are traceable and which ``globs`` match no traceable function."""
    path = os.path.join(root, 'available_filter_functions')
    try:
        with open(path, 'r') as handle:
            return match_functions((line.split(' ', 1)[0].rstrip('\n') for line in handle), names, globs)
    except OSError as err:
        raise TracefsError('cannot read %s (%s): function names cannot be validated'
                           % (path, err.strerror or err)) from None


# The syscall's own function, newest naming first (x86_64 >= 4.17, arm64, generic, < 4.17).
SYSCALL_FUNCTION_PATTERNS = ('__x64_sys_%s', '__arm64_sys_%s', '__se_sys_%s', 'sys_%s', 'SyS_%s')
# Where the audit exit record is written (and the task sleeps when the backlog is full).
EXIT_WORK_FUNCTIONS = ('syscall_exit_work', 'syscall_slow_exit_work', 'syscall_exit_to_user_mode_prepare',
                       'exit_to_user_mode_prepare')
SYSCALL_DISPATCHERS = ('x64_sys_call', 'invoke_syscall')


def plan_graph_roots(graph_function, syscalls, traceable, default='do_syscall_64'):
    """set_graph_function roots for the "syscall, then exit work" recipe.

    ``traceable``: the names known to be in available_filter_functions.
    Returns (roots, note). ``graph_function`` itself when traceable; when it is
    the default and not traceable (kernels >= 5.x mark do_syscall_64
    ``noinstr``): the chosen syscalls' own functions plus the exit work, both
    as roots (the parser pairs them per task); a syscall dispatcher stands in
    when no syscall is named. ([], reason) when nothing fits.
    """
    if graph_function in traceable:
        return [graph_function], None
    if graph_function != default:
        return [], 'function %r is not traceable (not in available_filter_functions)' % graph_function
    roots = []
    for name in syscalls or ():
        for pattern in SYSCALL_FUNCTION_PATTERNS:
            candidate = pattern % name
            if candidate in traceable:
                roots.append(candidate)
                break
    if not roots:
        roots.extend(name for name in SYSCALL_DISPATCHERS if name in traceable)
    exits = [name for name in EXIT_WORK_FUNCTIONS if name in traceable]
    if not roots or not exits:
        return [], ('%s is not traceable on this kernel and no syscall/exit-work functions are '
                    '(syscalls: %s)' % (default, ', '.join(syscalls or ()) or 'none'))
    return roots + exits[:1], '%s is not traceable here (noinstr); graphing %s' % (default, ' '.join(roots + exits[:1]))


def graph_candidates(graph_function, syscalls):
    """Every name plan_graph_roots may ask about (for one filter_functions pass)."""
    names = [graph_function] + list(EXIT_WORK_FUNCTIONS) + list(SYSCALL_DISPATCHERS)
    for name in syscalls or ():
        names.extend(pattern % name for pattern in SYSCALL_FUNCTION_PATTERNS)
    return names


def syscall_event_exists(root, name, instance=None):
    if not is_syscall_name(name):
        return False
    base = os.path.join(instance or root, 'events', 'syscalls')
    return (os.path.isdir(os.path.join(base, 'sys_enter_' + name))
            and os.path.isdir(os.path.join(base, 'sys_exit_' + name)))


def validate_pids(pids, proc_root='/proc'):
    """Ints of existing processes, or TracefsError naming the bad one."""
    out = []
    for pid in pids or ():
        try:
            value = int(str(pid).strip())
        except ValueError:
            raise TracefsError('pid %r is not an integer' % (pid,)) from None
        if value <= 0 or not os.path.isdir(os.path.join(proc_root, str(value))):
            raise TracefsError('pid %s not found' % value)
        if value not in out:
            out.append(value)
    return out


def threads_of(pids, proc_root='/proc', limit=MAX_FILTER_PIDS):
    """The task ids (threads) of the given processes, capped at ``limit``."""
    out = []
    for pid in pids:
        try:
            tids = sorted(int(t) for t in os.listdir(os.path.join(proc_root, str(pid), 'task')) if t.isdigit())
        except (IOError, OSError):
            tids = [pid]
        if pid in tids:
            tids.remove(pid)
        for tid in [pid] + tids:
            if tid not in out and len(out) < limit:
                out.append(tid)
    return out


def list_instances(root):
    try:
        return sorted(os.listdir(os.path.join(root, 'instances')))
    except (IOError, OSError):
        return []


def instance_name(pid=None):
    return INSTANCE_PREFIX + str(os.getpid() if pid is None else int(pid))


def remove_instance(root, name):
    """Quiesce and remove one instance (only ``auditgap-<pid>`` names), with the hist
    triggers and the synthetic event of a syscalls sample of that pid."""
    pid = instance_pid(name)
    if pid is None:
        raise TracefsError('refusing to remove instance %r (not ours)' % name)
    path = os.path.join(root, 'instances', name)
    if not os.path.isdir(path):
        remove_synthetic(root, tracehist.synth_name(pid))
        return
    for rel, value in (('tracing_on', '0'), ('set_event', '')):
        try:
            write_value(os.path.join(path, rel), value)
        except (IOError, OSError):
            pass
    trigger = os.path.join(path, 'events', 'sched', 'sched_switch', 'trigger')
    try:
        for line in parse_triggers(read(trigger)):
            _append(trigger, command_trigger_removal(line))
    except (IOError, OSError):
        pass
    # hist triggers of a killed sample (syscall latency in the kernel), then its synthetic event
    # (the journal's order: what still references it goes first), then the instance
    synthetic = tracehist.stale_cleanup(path, pid, _append, read)
    try:
        remove_synthetic(root, synthetic)
        synthetic = None
    except (IOError, OSError):
        pass  # once more after the rmdir, which raises if it still fails
    last = None
    for _attempt in range(20):
        try:
            os.rmdir(path)
            last = None
            break
        except OSError as err:
            if err.errno == errno.ENOENT:
                last = None
                break
            last = err
            time.sleep(0.1)
    if last is not None:
        raise last
    if synthetic is not None:
        remove_synthetic(root, synthetic)


def remove_synthetic(root, name):
    """Delete the synthetic event ``name`` (``auditgap_lat_<pid>`` only) when it exists
    (``!name`` appended to ``synthetic_events``)."""
    if tracehist.synth_pid(name) is None:
        raise TracefsError('refusing to remove synthetic event %r (not ours)' % (name,))
    path = os.path.join(root, 'synthetic_events')
    try:
        defined = tracehist.synthetic_names(read(path))
    except (IOError, OSError):
        return
    if name in defined:
        _append(path, '!' + name)


def stale_synthetics(root, alive=pid_alive):
    """``auditgap_lat_<pid>`` synthetic events whose pid is dead (never our own)."""
    try:
        names = tracehist.synthetic_names(read(os.path.join(root, 'synthetic_events')))
    except (IOError, OSError):
        return []
    return sorted(name for name in names if tracehist.synth_pid(name) not in (None, os.getpid())
                  and not alive(tracehist.synth_pid(name)))


def remove_stale_instances(root, alive=pid_alive, errors=None):
    """Remove instances (and synthetic events) of dead samples; returns their names.

    With ``errors`` (a list), what cannot be removed is added there as text and the rest goes
    on (a sample must not fail for a dead one's leftover the kernel keeps busy); without, the
    first failure raises."""
    removed = []
    failed_pids = set()

    def remove(fn, name, pid):
        try:
            fn(root, name)
        except (IOError, OSError, TracefsError) as err:
            if errors is None:
                raise
            errors.append('%s: %s' % (name, err))
            failed_pids.add(pid)
            return
        removed.append(name)

    for name in stale_instances(list_instances(root), alive, own_pid=os.getpid()):
        remove(remove_instance, name, instance_pid(name))
    # one whose instance was already gone; not one whose instance's removal just failed on it
    # (that failure is reported once, under the instance's name)
    for name in stale_synthetics(root, alive):
        if tracehist.synth_pid(name) not in failed_pids:
            remove(remove_synthetic, name, tracehist.synth_pid(name))
    return removed


def create_instance(guard, root, name):
    """mkdir instances/<name>; the guard removes it. Returns its path. The guard's hard
    timeout is paused for the mkdir (on kernels without eventfs, 6.1 and older, it creates
    ~2,000 event directories: 20 s to minutes under emulation)."""
    if instance_pid(name) is None:
        raise TracefsError('instance names are auditgap-<pid>, not %r' % name)
    path = os.path.join(root, 'instances', name)
    if os.path.isdir(path):
        remove_instance(root, name)
    guard.push_op('remove_instance', 'remove instance %s' % name, root=root, name=name)
    # the kernel creates every event's directory in it: no signal cuts that short, and it is
    # not the sample's time (the guard's timeout runs on after it)
    with guard.timeout_paused():
        os.mkdir(path)
    return path


_append = guard_mod.append_value


def guarded_trigger(guard, path, trigger):
    """Add a trigger; the guard removes exactly that trigger (``!`` form)."""
    guard.push_op('append', 'remove trigger %s' % path, path=path, value=command_trigger_removal(trigger))
    _append(path, trigger)


def top_level_restore_values(root):
    """What to write back to each top-level file a function_graph sample changes."""
    values = {}
    for rel in TOP_LEVEL_FILES:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        try:
            text = read(path)
        except (IOError, OSError):
            text = None
        if rel == 'buffer_size_kb':
            size = parse_buffer_size_kb(text or '')
            values[rel] = str(size) if size else None
        elif rel in ('set_ftrace_pid', 'set_ftrace_notrace_pid'):
            values[rel] = ' '.join(str(p) for p in parse_pid_file(text or ''))
        elif rel == 'set_graph_function':
            values[rel] = '\n'.join(parse_function_list(text or ''))
        else:
            values[rel] = (text or '').strip() or None
    return values


def snapshot(root, extra=()):
    """{relative path: content} of the files a sample may touch + the instance list."""
    out = {}
    for rel in SNAPSHOT_FILES + tuple(extra):
        try:
            out[rel] = read(os.path.join(root, rel))
        except (IOError, OSError) as err:
            out[rel] = 'unreadable: %s' % (err.strerror or err)
    out['instances/'] = ' '.join(list_instances(root))
    return out


def parse_cpu_stats(text):
    """per_cpu/cpuN/stats text -> {entries, overrun, commit_overrun, bytes, dropped_events, read_events}."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(':')
        if not sep:
            continue
        value = value.strip()
        if value.isdigit():
            out[name.strip().replace(' ', '_')] = int(value)
    return out


def cpu_stats(base):
    """[stats dict] for each per_cpu/cpuN of a tracefs root or instance directory."""
    out = []
    per_cpu = os.path.join(base, 'per_cpu')
    try:
        cpus = [name for name in os.listdir(per_cpu) if name.startswith('cpu')]
    except OSError:
        return out
    for name in cpus:
        try:
            out.append(parse_cpu_stats(read(os.path.join(per_cpu, name, 'stats'))))
        except OSError:
            continue
    return out


def buffer_filling(base, buffer_size_kb, ratio=0.5):
    """True when some CPU's ring buffer holds more than ``ratio`` of its size (unread)."""
    limit = buffer_size_kb * 1024 * ratio
    return any(stats.get('bytes', 0) > limit for stats in cpu_stats(base))


def events_lost(base):
    """Events overwritten or dropped in the buffer (all CPUs)."""
    return sum(stats.get('overrun', 0) + stats.get('dropped_events', 0) for stats in cpu_stats(base))


def events_buffered(base):
    """Events the buffer holds now, not yet read (all CPUs)."""
    return sum(stats.get('entries', 0) for stats in cpu_stats(base))


WATERMARK_WAIT_MAX_S = 1.0


def read_until(deadline, read_available, interval_s=0.25, drain_if=None, wait=None, woken_least=0,
               wait_max_s=WATERMARK_WAIT_MAX_S):
    """Call ``read_available()`` every ``interval_s`` until ``deadline`` (time.monotonic);
    with ``drain_if``, only when ``drain_if()`` says the buffer is filling up. The
    readers of a sample's window (trace_pipe text, trace_pipe_raw pages) share it.

    With ``wait`` (``wait(timeout_s)`` -> True when the kernel woke it: some CPU's buffer
    reached the instance's ``buffer_percent`` watermark) it sleeps in the kernel instead and
    reads when woken: a window whose buffer stays under the watermark costs one check of
    ``drain_if`` every ``wait_max_s`` (should a wake-up be missed), not one every
    ``interval_s``. A wake-up whose read gets fewer than ``woken_least`` bytes comes from a
    kernel whose poll does not hold to the watermark (before 6.1 any data wakes it): the
    timed loop from then on.
    """
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if wait is not None:
            if wait(min(wait_max_s, deadline - now)):
                if (read_available() or 0) < woken_least:
                    wait = None
                continue
        else:
            time.sleep(min(interval_s, deadline - now))
        if drain_if is None or drain_if():
            read_available()


class PipeReader:
    """Non-blocking reader of a trace_pipe that hands out text of whole lines (each
    ending with a newline), one chunk per read, for the parsers' ``feed_text``: no
    per-line work before the parser's own."""

    def __init__(self, path, chunk=1 << 16):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.chunk = chunk
        self._tail = b''
        self.bytes = 0

    def read_until(self, deadline, on_text, interval_s=0.25, drain_if=None, buffer_bytes=None):
        """Feed text until ``deadline`` (time.monotonic).

        Wakes every ``interval_s`` instead of on every event: a sampled task
        making thousands of syscalls per second must not pay for a reader that
        wakes as often. With ``drain_if`` the pipe is read only when
        ``drain_if()`` says so (the ring buffer is filling up); the rest is read
        by ``drain`` after tracing stops, so the window itself costs the traced
        tasks only the tracepoints. ``buffer_bytes`` is unused: trace_pipe reads all
        CPUs, whose poll the kernel never holds to the buffer_percent watermark.
        """
        read_until(deadline, lambda: self.read_available(on_text), interval_s, drain_if)

    def read_available(self, on_text, max_bytes=64 << 20):
        """Read what is in the pipe now (up to ``max_bytes``)."""
        got = 0
        while got < max_bytes:
            size = self._read_some(on_text)
            if not size:
                break
            got += size

    def drain(self, on_text, max_s=5.0):
        """Read what is left (after tracing_on=0) until empty or ``max_s``; a last line
        without its newline is handed out as it is."""
        end = time.monotonic() + max_s
        while time.monotonic() < end:
            if not self._read_some(on_text):
                break
        if self._tail:
            on_text(self._tail.decode('utf-8', 'replace'))
            self._tail = b''

    def _read_some(self, on_text):
        try:
            data = os.read(self.fd, self.chunk)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return False
            raise
        if not data:
            return False
        size = len(data)
        self.bytes += size
        # '\n' never occurs inside a UTF-8 sequence: decode everything up to the last one at once
        head, newline, self._tail = (self._tail + data).rpartition(b'\n')
        if newline:
            on_text(head.decode('utf-8', 'replace') + '\n')
        return size

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
