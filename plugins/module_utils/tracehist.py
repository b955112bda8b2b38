# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Syscall latency aggregated in the kernel: hist triggers and a synthetic event (pure parts).

On kernels with ``CONFIG_HIST_TRIGGERS`` the latency of each chosen syscall is
computed by the kernel itself, in a private tracefs instance:

- a synthetic event ``auditgap_lat_<pid>`` (``u64 lat; int id; int pid``: the types of the
  syscall events' ``__syscall_nr`` and ``common_pid``; kernel 6.1 refuses others, ``error_log``:
  "Param type doesn't match synthetic event field type");
- for each chosen syscall X, ``syscalls:sys_enter_X``:
  ``hist:keys=common_pid:ts0_X=common_timestamp.usecs`` (the entry time per task), filtered
  to the tasks;
- ``syscalls:sys_exit_X``: ``onmatch(syscalls.sys_enter_X)`` traces the synthetic event with
  ``lat = now - $ts0_X``;
- the synthetic event: ``hist:keys=id.syscall,pid,lat`` (one entry per syscall, task
  and latency in microseconds), read once at the end.

The triggers hang on the chosen syscalls' own events, not on ``raw_syscalls``: a syscall
that is not chosen pays the tracepoint's slow path and a bit test, as with events mode,
instead of a record reserved in the instance's buffer and the triggers' filter (what made
the ``raw_syscalls`` recipe cost 17-22% of an accept loop in the ftrace VM). The variables
carry the syscall's name (``ts0_X``, ``lat_X``): one instance holds a pair per syscall, and a
variable name used on two events must otherwise be qualified with its event.

No per-call text line is written or parsed. Off-CPU time stays event text: the time a
task slept is known at its switch-in, its stack at its switch-out, and carrying a stack
from one event to another (hist ``stacktrace`` variables, synthetic ``unsigned long[]``
fields) needs kernel 6.3 or later. ``latency_commands`` builds the
trigger texts from validated integers only; ``parse_hist`` reads a ``hist``
file; ``syscalls_from_hist`` turns it into the ``syscalls`` result of the event
parser (same shape: count, p50/p99 exact to the microsecond, max, total and the
slowest calls, which carry no timestamp: ``ts_s`` is null).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import re

SYNTH_PREFIX = 'auditgap_lat_'
# the syscall events' own types: ``int __syscall_nr``, ``int common_pid`` (6.1 refuses others)
SYNTH_FIELDS = 'u64 lat; int id; int pid'
_SYNTH_RE = re.compile(r'auditgap_lat_(\d+)')
_SYSCALL_NAME_RE = re.compile(r'[a-z0-9_]{1,64}')
HIST_SIZE = 16384      # tracing_map entries (2^14); Dropped counts what did not fit
# The enter and exit histograms hold one entry per task (keyed by common_pid), and the kernel
# allocates every entry when the trigger is added: 2048 by default, a pair per syscall. With
# the tasks named they are sized for them (per_task_size: 128, the kernel's smallest, up to 64).
PER_TASK_SIZE_MIN = 128
KERNEL_DEFAULT_SIZE = 2048
_SIZE_RE = re.compile(r':size=(\d+)')
_KEY_RE = re.compile(r'(\w+): +(.*?)(?:, (?=\w+: )|$)')
_SYSCALL_KEY_RE = re.compile(r'^(\S+)\s*\[\s*(\d+)\]$')
_VALUE_RE = re.compile(r'(\w+): +(\d+)')


class HistError(Exception):
    """The kernel refused a hist command (the message has its error_log)."""


def error_log_tail(root, lines=3):
    """The last lines of tracefs ``error_log`` (where 5.x+ kernels say why a command failed)."""
    try:
        with open(os.path.join(root, 'error_log')) as handle:
            text = handle.read()
    except (IOError, OSError):
        return ''
    return ' / '.join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def write_command(root, path, command, append):
    """``append(path, command)``; a refusal raises HistError naming the file, the command and
    the kernel's error_log."""
    try:
        append(path, command)
    except (IOError, OSError) as err:
        log = error_log_tail(root)
        raise HistError('the kernel refused %r in %s: %s%s' % (
            command, path, err.strerror or err, ' (error_log: %s)' % log if log else '')) from None


def synth_name(pid=None):
    return SYNTH_PREFIX + str(os.getpid() if pid is None else int(pid))


def synth_pid(name):
    """``auditgap_lat_<pid>`` -> pid, else None (not ours)."""
    match = _SYNTH_RE.fullmatch(name or '')
    return int(match.group(1)) if match else None


def synthetic_names(text):
    """The event names a ``synthetic_events`` file lists (one definition a line)."""
    return [line.split(None, 1)[0] for line in text.splitlines() if line.strip() and not line.startswith('#')]


def available(root):
    """True when the kernel has hist triggers and synthetic events (CONFIG_HIST_TRIGGERS)."""
    return (os.path.isfile(os.path.join(root, 'synthetic_events'))
            and os.path.isfile(os.path.join(root, 'events', 'raw_syscalls', 'sys_enter', 'hist')))


def _condition(field, values, op='==', join=' || '):
    return join.join('%s %s %d' % (field, op, int(value)) for value in values)


def latency_commands(name, syscalls, pids=(), exclude=()):
    """The synthetic event definition and the triggers, as written to tracefs.

    ``syscalls``: syscall names (each must have its ``sys_enter_X``/``sys_exit_X`` events);
    ``pids``: tasks to time (all but ``exclude`` when empty). Returns ``{synthetic, hist,
    triggers}``, ``triggers`` the ``(event, trigger)`` pairs in the order they are written
    (each syscall's enter trigger before its exit trigger, which reads the enter's variable).
    """
    names = sorted(set(syscalls or ()))
    if not names:
        raise ValueError('no syscall to time')
    for syscall in names:
        if not isinstance(syscall, str) or not _SYSCALL_NAME_RE.fullmatch(syscall):
            raise ValueError('bad syscall name %r' % (syscall,))
    if not re.match(r'^[a-z_][a-z0-9_]*$', name):
        raise ValueError('bad synthetic event name %r' % (name,))
    size = ''
    if pids:
        where = ' if (%s)' % _condition('common_pid', pids)
        size = ':size=%d' % per_task_size(len(set(pids)))
    elif exclude:
        where = ' if (%s)' % _condition('common_pid', exclude, '!=', ' && ')
    else:
        where = ''
    triggers = []
    for syscall in names:
        base = _trigger_bases(name, syscall)
        triggers.append(('sys_enter_' + syscall, base['enter'] + size + where))
        triggers.append(('sys_exit_' + syscall, base['exit'] + size + where))
    return {
        'synthetic': '%s %s' % (name, SYNTH_FIELDS),
        'hist': _hist_base(),
        'triggers': triggers,
    }


def per_task_size(tasks):
    """The entries of an enter or exit histogram for ``tasks`` named tasks: a power of two with
    room for twice as many (a tracing_map keeps its lookups short under half full), at least
    the kernel's smallest map."""
    size = PER_TASK_SIZE_MIN
    while size < 2 * tasks:
        size *= 2
    return size


def _hist_base():
    return 'hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id,lat:size=%d' % HIST_SIZE


def _trigger_bases(name, syscall):
    """Syscall ``syscall``'s two triggers for synthetic event ``name`` as written, without
    their filters."""
    return {
        'enter': 'hist:keys=common_pid:ts0_%s=common_timestamp.usecs' % syscall,
        'exit': ('hist:keys=common_pid:lat_{sc}=common_timestamp.usecs-$ts0_{sc}:'
                 'onmatch(syscalls.sys_enter_{sc}).trace({name},$lat_{sc},__syscall_nr,common_pid)'
                 .format(sc=syscall, name=name)),
    }


def _strip_state(trigger):
    trigger = trigger.strip()
    if trigger.endswith('[active]') or trigger.endswith('[paused]'):
        trigger = trigger[:trigger.rfind('[')].rstrip()
    return trigger


def printed_filter(trigger):
    """`` if <filter>`` of a trigger as the trigger file shows it (the filter text as written),
    or ''."""
    trigger = _strip_state(trigger)
    at = trigger.find(' if ')
    return trigger[at:] if at >= 0 else ''


def hist_trigger_removal(trigger):
    """``hist:...`` (as written, or as the trigger file shows it) -> ``!hist:...``, what removes it."""
    return '!' + _strip_state(trigger)


def _trigger_event(event):
    """``sys_exit_X`` -> ('exit', X), ``sys_enter_X`` -> ('enter', X), else None."""
    for kind in ('exit', 'enter'):
        prefix = 'sys_%s_' % kind
        if event.startswith(prefix) and len(event) > len(prefix):
            return kind, event[len(prefix):]
    return None


def stale_removals(name, kind, printed, syscall=None):
    """What may remove a trigger a killed sample left (``kind``: enter, exit or hist;
    ``syscall``: the enter or exit event's syscall), best first: the trigger as this module
    writes it with the filter the file shows (what the journal would have appended), then the
    printed form. The printed form alone is not enough: 6.1 prints the histogram's sort keys
    with their modifier (``sort=id.syscall,lat``) and refuses that back ("Invalid sort
    modifier"), and a synthetic event whose histogram trigger goes with the instance's rmdir
    instead of a ``!hist`` keeps a reference the kernel never drops: deleting it fails with
    EBUSY until reboot."""
    if kind == 'hist':
        base = _hist_base()
    else:
        base = _trigger_bases(name, syscall)[kind]
        size = _SIZE_RE.search(printed)
        if size and int(size.group(1)) != KERNEL_DEFAULT_SIZE:  # written only when not the default
            base += size.group(0)
    written = '!' + base + printed_filter(printed)
    printed_form = hist_trigger_removal(printed)
    return [written] if printed_form == written else [written, printed_form]


def stale_trigger_files(instance_path, listdir=os.listdir):
    """``(path, kind, syscall)`` of the trigger files a sample may have used in its instance,
    in the order they must go: every syscall's exit event, then every enter event (an
    ``onmatch`` trigger reads its enter trigger's variable); ``raw_syscalls`` last (where
    samples of an earlier version hung them)."""
    syscalls_dir = os.path.join(instance_path, 'events', 'syscalls')
    try:
        events = sorted(listdir(syscalls_dir))
    except (IOError, OSError):
        events = []
    parsed = [(_trigger_event(event), event) for event in events]
    files = []
    for kind in ('exit', 'enter'):
        files.extend((os.path.join(syscalls_dir, event, 'trigger'), kind, which[1])
                     for which, event in parsed if which and which[0] == kind)
    files.extend((os.path.join(instance_path, 'events', 'raw_syscalls', event, 'trigger'), kind, None)
                 for event, kind in (('sys_exit', 'exit'), ('sys_enter', 'enter')))
    return files


def stale_cleanup(instance_path, pid, append, read, listdir=os.listdir):
    """Remove what a killed sample ``pid`` left in its instance: its hist triggers (exit,
    enter, then the synthetic event's), best effort. ``append(path, text)``/``read(path)``/
    ``listdir(path)`` do the file access. Returns the synthetic event name, to delete next
    (before the instance goes)."""
    name = synth_name(pid)
    files = stale_trigger_files(instance_path, listdir)
    files.append((os.path.join(instance_path, 'events', 'synthetic', name, 'trigger'), 'hist', None))
    for path, kind, syscall in files:
        try:
            lines = [line for line in read(path).splitlines() if line.startswith('hist:')]
        except (IOError, OSError):
            continue
        for line in lines:
            # a raw_syscalls trigger (an earlier version's) goes by its printed form
            removals = ([hist_trigger_removal(line)] if kind != 'hist' and syscall is None
                        else stale_removals(name, kind, line, syscall))
            for removal in removals:
                try:
                    append(path, removal)
                    break
                except (IOError, OSError):
                    continue
    return name


def parse_hist(text):
    """A ``hist`` file -> ``{entries: [{keys: {}, values: {}}], hits, entries_count, dropped}``.

    A key printed with ``.syscall`` (``id: sys_read [  0]``) gives
    ``{'name': 'read', 'nr': 0}``; numeric keys and values give ints; other keys
    stay text. Lines that are no entry (comments, Totals) are skipped.
    """
    entries = []
    totals = {'hits': None, 'entries_count': None, 'dropped': None}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith('{'):
            close = stripped.rfind('}')
            if close < 0:
                continue
            keys = {}
            for key, raw in _KEY_RE.findall(stripped[1:close].strip()):
                keys[key] = _key_value(raw.strip())
            values = dict((key, int(value)) for key, value in _VALUE_RE.findall(stripped[close + 1:]))
            entries.append({'keys': keys, 'values': values})
            continue
        for label, key in (('Hits:', 'hits'), ('Entries:', 'entries_count'), ('Dropped:', 'dropped')):
            if stripped.startswith(label):
                try:
                    totals[key] = int(stripped[len(label):].strip())
                except ValueError:
                    pass
    result = {'entries': entries}
    result.update(totals)
    return result


def _key_value(raw):
    try:
        return int(raw)
    except ValueError:
        pass
    match = _SYSCALL_KEY_RE.match(raw)
    if match:
        name = match.group(1)
        for prefix in ('sys_', '__x64_sys_', '__ia32_sys_'):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        return {'name': name, 'nr': int(match.group(2))}
    return raw


def _percentile(counts, total, fraction):
    """The value at ``fraction`` of a sorted [(value, count)] list (nearest rank)."""
    rank = max(1, int(math.ceil(fraction * total)))
    seen = 0
    for value, count in counts:
        seen += count
        if seen >= rank:
            return value
    return counts[-1][0] if counts else None


def syscalls_from_hist(parsed, syscalls, names_by_nr=None, top=10):
    """The latency hist (keys id.syscall, pid, lat) -> the ``syscalls`` result of the event parser.

    ``syscalls``: the names traced (each appears, count 0 when unseen);
    ``names_by_nr``: syscall number -> name, for kernels that print the number
    only. ``slowest`` carries ``ts_s: None`` (the kernel keeps no timestamp per call).
    """
    names_by_nr = names_by_nr or {}
    per_name = {}
    for entry in parsed.get('entries', ()):
        keys = entry['keys']
        sid = keys.get('id')
        if isinstance(sid, dict):
            name = sid['name'] if sid['name'] not in ('unknown_syscall', '') else names_by_nr.get(sid['nr'])
            name = name or names_by_nr.get(sid['nr'], str(sid['nr']))
        elif isinstance(sid, int):
            name = names_by_nr.get(sid, str(sid))
        else:
            continue
        lat = keys.get('lat')
        hits = entry['values'].get('hitcount', 0)
        if not isinstance(lat, int) or not hits:
            continue
        per_name.setdefault(name, []).append((lat, keys.get('pid'), hits))
    out = {}
    for name in sorted(set(syscalls or ()) | set(per_name)):
        rows = per_name.get(name)
        if not rows:
            out[name] = {'count': 0, 'p50_us': None, 'p99_us': None, 'max_us': None,
                         'total_us': 0.0, 'slowest': []}
            continue
        by_lat = {}
        for lat, _pid, hits in rows:
            by_lat[lat] = by_lat.get(lat, 0) + hits
        counts = sorted(by_lat.items())
        count = sum(hits for _lat, _pid, hits in rows)
        slowest = []
        for lat, pid, hits in sorted(rows, key=lambda row: (-row[0], row[1] if row[1] is not None else 0)):
            slowest.extend({'pid': pid, 'ts_s': None, 'duration_us': float(lat)}
                           for _call in range(min(hits, top - len(slowest))))
            if len(slowest) >= top:
                break
        out[name] = {
            'count': count,
            'p50_us': float(_percentile(counts, count, 0.5)),
            'p99_us': float(_percentile(counts, count, 0.99)),
            'max_us': float(counts[-1][0]),
            'total_us': float(sum(lat * hits for lat, _pid, hits in rows)),
            'slowest': slowest,
        }
    return out
