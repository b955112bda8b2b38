# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""labkit: the incident lab's machinery, shared by the lab module and the tests.

The workload daemon is the standalone script labworkload.py (stdlib only), which the
lab writes to its dir and runs; this file is the host side of the lab:

- audit status (netlink, auditctl fallback for changes), rules added and removed by key;
- the consumer: Debian's auditd in the foreground with a private config dir,
  started daemonized inside a cgroup v1 ``cpu`` group or a cgroup v2 group;
- the state file: every change is recorded *before* it is made, so
  ``undo_state`` can restore the host after a crash half-way, and twice;
- snapshots of the lab-relevant host state and their diff (tests).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import labworkload
from ansible_collections.auditgap.fleet.plugins.module_utils.labworkload import proc_starttime

LAB_DIR = '/run/auditgap-lab'
STATE_FILE = LAB_DIR + '/state.json'
LAB_KEY = 'auditgap-lab'
CGROUP_V1_CPU = '/sys/fs/cgroup/cpu'
CGROUP_V2_ROOT = '/sys/fs/cgroup'
CGROUP_V2_ALT = '/sys/fs/cgroup/unified'
PERIOD_US = 100000
# The lab's and the stall's default CFS period: with quota 1000 us the consumer
# runs 1 ms every 250 ms and stalls last ~250 ms (hundreds of ms, as in the
# incident); with 100 ms periods they stay under ~100 ms.
STALL_PERIOD_US = 250000

# The seed's rules (incident.md), with the lab key appended.
SEED_RULES = (
    ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'bind,listen,accept4', '-F', 'success=1'],
    ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'clone,fork,execve'],
)
ACCEPT_RULE = SEED_RULES[0]


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------
def process_alive(pid, starttime=None, proc_root='/proc'):
    """True when pid runs and (if given) has the recorded start time."""
    now = proc_starttime(pid, proc_root)
    if now is None:
        return False
    return starttime is None or now == starttime


def spawn_daemon(argv, log_path, cgroup_procs=None, cwd='/', env=None):
    """Start argv as a daemon (double fork, setsid, stdio to log_path).

    ``cgroup_procs``: a cgroup.procs file the daemon joins before exec, so it
    never runs a moment outside its group. Returns (pid, starttime). The
    daemon is not our child: it outlives the caller (an Ansible module).
    """
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            os.setsid()
            second = os.fork()
            if second:
                os._exit(0)
            try:
                if cgroup_procs:
                    with open(cgroup_procs, 'w') as handle:
                        handle.write('0')
                os.chdir(cwd)
                null = os.open(os.devnull, os.O_RDONLY)
                log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.write(write_fd, ('%d\n' % os.getpid()).encode())
                os.set_inheritable(write_fd, False)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                os.closerange(3, write_fd)
                os.closerange(write_fd + 1, 65536)
                if env is None:
                    os.execv(argv[0], argv)
                os.execve(argv[0], argv, env)
            except BaseException as err:
                try:
                    os.write(write_fd, ('ERROR %s\n' % err).encode())
                finally:
                    os._exit(127)
        finally:
            os._exit(127)
    os.close(write_fd)
    os.waitpid(first, 0)
    chunks = []
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    lines = b''.join(chunks).decode('utf-8', 'replace').splitlines()
    if not lines or not lines[0].isdigit():
        raise RuntimeError('could not start %s: %s' % (argv[0], ' '.join(lines) or 'no pid'))
    pid = int(lines[0])
    if len(lines) > 1:
        raise RuntimeError('could not start %s: %s' % (argv[0], ' '.join(lines[1:])))
    return pid, proc_starttime(pid)


def stop_process(pid, starttime=None, timeout_s=10.0):
    """SIGTERM, then SIGKILL after timeout_s; only if it is still the same process."""
    if not process_alive(pid, starttime):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not process_alive(pid, starttime):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return True
    deadline = time.time() + 5
    while time.time() < deadline and process_alive(pid, starttime):
        time.sleep(0.05)
    return True


def pids_with_cmdline(argv, proc_root='/proc'):
    """Pids whose command line is exactly ``argv`` (a daemon started with it)."""
    want = b'\0'.join(a.encode() for a in argv) + b'\0'
    found = []
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, name, 'cmdline'), 'rb') as handle:
                if handle.read() == want:
                    found.append(int(name))
        except (IOError, OSError):
            continue
    return found


def stop_spawned(entry):
    """Undo a ``spawn`` entry (recorded before the daemon started, when its pid was not
    known yet): stop every process running exactly that command line; for the audit
    consumer, wait until the kernel drops its registration."""
    for pid in pids_with_cmdline(entry['argv']):
        start = proc_starttime(pid)
        stop_process(pid, start, timeout_s=15.0)
        if entry.get('consumer'):
            release_stale_registration(pid)


# --------------------------------------------------------------------------
# audit status and rules
# --------------------------------------------------------------------------
NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_SET = 1001
NLMSG_ERROR = 2
STATUS_FIELDS = ('mask', 'enabled', 'failure', 'pid', 'rate_limit', 'backlog_limit',
                 'lost', 'backlog', 'feature_bitmap', 'backlog_wait_time',
                 'backlog_wait_time_actual')
SETTABLE = ('enabled', 'failure', 'rate_limit', 'backlog_limit', 'backlog_wait_time')


def parse_auditctl_status(text):
    """`auditctl -s` text -> dict of ints (unknown/non-int values skipped)."""
    status = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip('-').isdigit():
            status[parts[0]] = int(parts[1])
    return status


def _auditnl():
    try:
        from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl
    except ImportError:
        return None
    if hasattr(auditnl, 'get_status') and hasattr(auditnl, 'set_status'):
        return auditnl
    return None


def get_status():
    """Audit status dict (netlink; auditctl -s when netlink fails)."""
    nl = _auditnl()
    if nl is not None:
        try:
            return dict(nl.get_status())
        except Exception:
            pass
    try:
        return labworkload.netlink_get_status()
    except (OSError, socket.error):
        out = subprocess.run(['auditctl', '-s'], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, check=True)
        return parse_auditctl_status(out.stdout)


def set_status(**fields):
    """Set audit status fields (auditnl.set_status when present, else auditctl)."""
    unknown = set(fields) - set(SETTABLE)
    if unknown:
        raise ValueError('cannot set audit status fields %s' % ', '.join(sorted(unknown)))
    nl = _auditnl()
    if nl is not None:
        nl.set_status(**fields)
        return
    flags = {'enabled': '-e', 'failure': '-f', 'rate_limit': '-r',
             'backlog_limit': '-b', 'backlog_wait_time': '--backlog_wait_time'}
    # auditctl wants -e last: a rule change after enabling 2 would fail.
    for name in ('failure', 'rate_limit', 'backlog_limit', 'backlog_wait_time', 'enabled'):
        if name in fields:
            run_auditctl([flags[name], str(int(fields[name]))])


def run_auditctl(args):
    proc = subprocess.run(['auditctl'] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError('auditctl %s: %s' % (' '.join(args), (proc.stderr or proc.stdout).strip()))
    return proc.stdout


def rule_args(base, key):
    """A rule's auditctl -a arguments with the key appended (validated)."""
    if not key or not all(c.isalnum() or c in '-_.' for c in key):
        raise ValueError('bad audit key %r' % key)
    return list(base) + ['-k', key]


def rules_with_key(listing, key):
    """`auditctl -l` lines carrying exactly this key, as the argument lists that delete
    exactly them (``-d`` for a syscall rule, ``-W`` for a watch)."""
    found = []
    for line in listing.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) < 2 or words[0] not in ('-a', '-w'):
            continue
        keys = [w.split('=', 1)[1] for w in words if w.startswith('key=')]
        for i, w in enumerate(words[:-1]):
            if w == '-k':
                keys.append(words[i + 1])
        if key in keys:
            found.append(['-d' if words[0] == '-a' else '-W'] + words[1:])
    return found


def list_rules():
    out = run_auditctl(['-l'])
    return [] if out.strip() == 'No rules' else [line for line in out.splitlines() if line.strip()]


def delete_rules_by_key(key):
    """Delete every rule carrying ``key`` (only those). Returns how many."""
    count = 0
    for args in rules_with_key('\n'.join(list_rules()), key):
        try:
            run_auditctl(args)
        except RuntimeError:
            # auditctl 3.x prints a loaded exe!=X as exe=X: delete it as it was added
            if not any(a.startswith('exe=') for a in args):
                raise
            run_auditctl([('exe!=' + a[4:]) if a.startswith('exe=') else a for a in args])
        count += 1
    return count


# --------------------------------------------------------------------------
# cgroups
# --------------------------------------------------------------------------
def detect_cgroup(v1_root=CGROUP_V1_CPU, v2_roots=(CGROUP_V2_ROOT, CGROUP_V2_ALT)):
    """('v1', root) when a v1 cpu hierarchy exists, else ('v2', root) with cpu, else (None, reason)."""
    if os.path.exists(os.path.join(v1_root, 'cpu.cfs_quota_us')):
        return 'v1', v1_root
    for root in v2_roots:
        if os.path.exists(os.path.join(root, 'cgroup.controllers')):
            try:
                with open(os.path.join(root, 'cgroup.controllers')) as handle:
                    if 'cpu' in handle.read().split():
                        return 'v2', root
            except (IOError, OSError):
                continue
    return None, 'no cgroup v1 cpu hierarchy and no cgroup v2 hierarchy with the cpu controller'


def _write(path, value):
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read(path):
    with open(path) as handle:
        return handle.read().strip()


def cgroup_create(version, root, name, quota_us, period_us=PERIOD_US):
    """Create the group and set its quota. Returns the absolute path."""
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        os.mkdir(path)
    cgroup_set_quota(version, path, quota_us, period_us)
    return path


def cgroup_set_quota(version, path, quota_us, period_us=PERIOD_US):
    """quota_us None or -1: unlimited."""
    if version == 'v1':
        _write(os.path.join(path, 'cpu.cfs_period_us'), int(period_us))
        _write(os.path.join(path, 'cpu.cfs_quota_us'), -1 if quota_us in (None, -1) else int(quota_us))
    else:
        quota = 'max' if quota_us in (None, -1) else str(int(quota_us))
        _write(os.path.join(path, 'cpu.max'), '%s %d' % (quota, int(period_us)))


def cgroup_remove(path, timeout_s=10.0):
    """Move remaining processes to the parent, then rmdir. Idempotent."""
    if not os.path.isdir(path):
        return False
    parent = os.path.dirname(path)
    deadline = time.time() + timeout_s
    while True:
        try:
            pids = [p for p in _read(os.path.join(path, 'cgroup.procs')).split() if p]
        except (IOError, OSError):
            pids = []
        for pid in pids:
            try:
                _write(os.path.join(parent, 'cgroup.procs'), pid)
            except (IOError, OSError):
                pass
        try:
            os.rmdir(path)
            return True
        except OSError as err:
            if err.errno == errno.ENOENT:
                return True
            if time.time() > deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------
# state file: record intent before each change; undo everything recorded
# --------------------------------------------------------------------------
class LabState:
    """A JSON list of changes made to the host, written before each change."""

    def __init__(self, path, on_record=None):
        self.path = path
        # called before each change is recorded: incident_lab passes its RestoreGuard's
        # checkpoint (the journal's test-only kill hook counts lab steps too)
        self.on_record = on_record
        self.data = {'version': 1, 'entries': []}
        if os.path.exists(path):
            with open(path) as handle:
                self.data = json.load(handle)

    @property
    def entries(self):
        return self.data['entries']

    def exists(self):
        return os.path.exists(self.path)

    def save(self):
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        tmp = '%s.tmp.%d' % (self.path, os.getpid())
        with open(tmp, 'w') as handle:
            json.dump(self.data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, self.path)

    def record(self, kind, **data):
        if self.on_record is not None:
            self.on_record()
        entry = dict(data, kind=kind)
        self.entries.append(entry)
        self.save()
        return entry

    def find(self, kind):
        return [e for e in self.entries if e['kind'] == kind]

    def remove(self, entry):
        self.entries.remove(entry)
        self.save()

    def delete(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


# Undo order: quiet the load first, then the rules, let the consumer drain
# unthrottled and stop it, then settings, groups, containers, files.
UNDO_ORDER = ('process', 'rules', 'unthrottle', 'container', 'consumer', 'spawn', 'moved_process',
              'audit_status', 'cgroup', 'v2_subtree', 'image', 'dockerd', 'path')


def undo_order(entries):
    """Entries in the order they must be undone (stable; newest first per kind)."""
    rank = dict((kind, i) for i, kind in enumerate(UNDO_ORDER))
    indexed = list(enumerate(entries))
    indexed.sort(key=lambda item: (rank.get(item[1]['kind'], len(rank)), -item[0]))
    return [item[1] for item in indexed]


def _undo_entry(entry, handlers):
    kind = entry['kind']
    if kind in handlers:
        return handlers[kind](entry)
    if kind == 'process':
        stop_process(entry['pid'], entry.get('starttime'))
    elif kind == 'consumer':
        stop_process(entry['pid'], entry.get('starttime'), timeout_s=15.0)
        release_stale_registration(entry['pid'])
    elif kind == 'spawn':
        stop_spawned(entry)
    elif kind == 'rules':
        delete_rules_by_key(entry['key'])
    elif kind == 'unthrottle':
        if os.path.isdir(entry['path']):
            cgroup_set_quota(entry['version'], entry['path'], None)
    elif kind == 'audit_status':
        set_status(**entry['saved'])
    elif kind == 'cgroup':
        cgroup_remove(entry['path'])
    elif kind == 'moved_process':
        if process_alive(entry['pid'], entry.get('starttime')):
            _write(os.path.join(entry['original'], 'cgroup.procs'), entry['pid'])
    elif kind == 'v2_subtree':
        _write(os.path.join(entry['root'], 'cgroup.subtree_control'), '-cpu')
    elif kind == 'path' and entry.get('mode') == 'lab_dir':
        _remove_lab_dir(entry['path'])
    elif kind == 'path':
        _remove_path(entry['path'])
    else:
        raise RuntimeError('no undo handler for %s' % kind)


# What the lab creates in its dir (the dir itself goes only when empty: the
# state file and other runs' stall-* files may live beside them).
LAB_FILES = ('etc', 'plugins.d', 'auditd.out', 'latency.jsonl', 'latency.summary.json',
             'latency.summary.json.tmp', 'timeline.jsonl', 'workload.json', 'workload.json.tmp',
             'workload.log', labworkload.SCRIPT_NAME, 'docker')


def _remove_lab_dir(path):
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if name in LAB_FILES or name.startswith('audit.log'):
            _remove_path(os.path.join(path, name))
    try:
        os.rmdir(path)
    except OSError:
        pass


def release_stale_registration(pid, timeout_s=5.0):
    """Make the kernel drop a dead consumer's registration.

    auditd does not always unregister when it stops; the kernel resets its
    audit pid only when sending the next record to it fails. With audit
    enabled a rate_limit write of the same value logs a CONFIG_CHANGE
    record; with audit disabled nothing is logged, so enabled goes 1 and
    back to 0. Returns True when the registration is gone.
    """
    start = time.time()
    nudges = []
    while time.time() < start + timeout_s:
        status = get_status()
        if status.get('pid') != pid:
            return True
        if process_alive(pid):
            time.sleep(0.1)
            continue
        if not nudges or (len(nudges) == 1 and time.time() > nudges[0] + 2.0):
            if status.get('enabled') == 0:
                set_status(enabled=1)
                set_status(enabled=0)
            elif status.get('enabled') == 1:
                set_status(rate_limit=status.get('rate_limit') or 0)
            nudges.append(time.time())
        time.sleep(0.1)
    return get_status().get('pid') != pid


def _remove_path(path):
    if os.path.isdir(path) and not os.path.islink(path):
        for name in os.listdir(path):
            _remove_path(os.path.join(path, name))
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)


def undo_state(state, handlers=None):
    """Undo every recorded change (each entry removed once undone).

    Returns (undone descriptions, errors). Entries that fail stay in the
    state file so a second run retries them; the file goes when empty.
    """
    handlers = handlers or {}
    undone, errors = [], []
    for entry in undo_order(list(state.entries)):
        desc = describe(entry)
        try:
            _undo_entry(entry, handlers)
            undone.append(desc)
            state.remove(entry)
        except Exception as err:
            errors.append('%s: %s' % (desc, err))
    if not state.entries:
        state.delete()
        try:  # the lab dir holding the state file, now empty
            os.rmdir(os.path.dirname(state.path))
        except OSError:
            pass
    return undone, errors


def describe(entry):
    kind = entry['kind']
    detail = entry.get('name') or entry.get('key') or entry.get('path') or entry.get('pid') or entry.get('id') or ''
    return ('%s %s' % (kind, detail)).strip()


# --------------------------------------------------------------------------
# the consumer: Debian's auditd with a private config
# --------------------------------------------------------------------------
AUDITD_CONF = """\
# auditgap incident lab: private config, logs and plugins under the lab dir
local_events = yes
write_logs = yes
log_file = {workdir}/audit.log
log_group = root
log_format = RAW
flush = NONE
freq = 0
max_log_file = {max_log_mb}
num_logs = 2
priority_boost = 0
name_format = NONE
max_log_file_action = ROTATE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
use_libwrap = no
tcp_client_max_idle = 0
transport = TCP
distribute_network = no
q_depth = 2000
overflow_action = IGNORE
max_restarts = 0
plugin_dir = {workdir}/plugins.d
end_of_event_timeout = 2
"""


def write_auditd_config(confdir, workdir, max_log_mb=8, overrides=None):
    """A config dir for ``auditd -c``: logs under workdir, no plugins.

    ``overrides``: {setting: value} replacing the lab's values (e.g. ``{'flush': 'SYNC'}``)."""
    if not os.path.isdir(confdir):
        os.makedirs(confdir, 0o700)
    plugins = os.path.join(workdir, 'plugins.d')
    if not os.path.isdir(plugins):
        os.makedirs(plugins, 0o700)
    path = os.path.join(confdir, 'auditd.conf')
    lines = AUDITD_CONF.format(workdir=workdir, max_log_mb=int(max_log_mb)).splitlines()
    for key, value in (overrides or {}).items():
        lines = [line for line in lines if line.split('=', 1)[0].strip() != key] + ['%s = %s' % (key, value)]
    with open(path, 'w') as handle:
        handle.write('\n'.join(lines) + '\n')
    os.chmod(path, 0o640)
    return path


def find_auditd():
    for path in ('/usr/sbin/auditd', '/sbin/auditd'):
        if os.access(path, os.X_OK):
            return path
    return None


def wait_registered(pid, timeout_s=10.0):
    """Wait until the kernel's audit pid is ``pid``; True when it is."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if get_status().get('pid') == pid:
            return True
        if not process_alive(pid):
            return False
        time.sleep(0.05)
    return False


def consumer_check(status, allow_existing=False):
    """None when the lab may start its consumer, else the refusal reason (pure)."""
    pid = status.get('pid') or 0
    if pid and not allow_existing:
        return ('an audit consumer is already registered (pid %d); the lab refuses to '
                'replace it (allow_existing_consumer throttles it instead and restores it at absent)' % pid)
    if status.get('enabled') == 2:
        return 'audit configuration is immutable (enabled 2) until reboot'
    return None


def start_workload(state, workdir, script_path, python=None, rate_per_s=0,
                   cpu_stat_dir=None, clients=4, timeout_s=10.0):
    """Start the workload daemon; record both processes in the state."""
    python = python or sys.executable
    argv = [python, script_path, '--dir', workdir, '--rate', str(int(rate_per_s)),
            '--clients', str(int(clients))]
    if cpu_stat_dir:
        argv += ['--cpu-stat', cpu_stat_dir]
    info_path = os.path.join(workdir, 'workload.json')
    for name in ('workload.json', 'latency.jsonl', 'latency.summary.json', 'timeline.jsonl'):
        try:
            os.unlink(os.path.join(workdir, name))
        except OSError:
            pass
    state.record('spawn', name='workload', argv=argv)  # stops client and server (same argv) after a crash
    pid, start = spawn_daemon(argv, os.path.join(workdir, 'workload.log'))
    state.record('process', name='workload-client', pid=pid, starttime=start)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.exists(info_path):
            with open(info_path) as handle:
                info = json.load(handle)
            state.record('process', name='workload-server', pid=info['server_pid'],
                         starttime=info['server_starttime'])
            return info
        if not process_alive(pid, start):
            break
        time.sleep(0.05)
    raise RuntimeError('the workload did not start (see %s/workload.log)' % workdir)


def write_workload_script(workdir):
    """The standalone workload (labworkload.py) written into the lab dir, to run as a daemon
    (its source comes from the file, or from the AnsiballZ payload's loader)."""
    loader = getattr(labworkload, '__loader__', None)
    source = loader.get_source(labworkload.__name__) if loader is not None and hasattr(loader, 'get_source') else None
    if not source:
        with open(labworkload.__file__) as handle:
            source = handle.read()
    dest = os.path.join(workdir, labworkload.SCRIPT_NAME)
    with open(dest + '.tmp', 'w') as handle:
        handle.write(source)
    os.chmod(dest + '.tmp', 0o700)
    os.rename(dest + '.tmp', dest)
    return dest


# --------------------------------------------------------------------------
# the cgroup-backend consumer
# --------------------------------------------------------------------------
def enable_v2_cpu(state, version, root):
    """cgroup v2: make the cpu controller available to the root's children (cpu.max).

    A systemd host does not always delegate it. Recorded (``v2_subtree``) before the
    write, so absent writes ``-cpu`` back. No-op on v1 or when already enabled.
    """
    if version != 'v2':
        return False
    with open(os.path.join(root, 'cgroup.subtree_control')) as handle:
        enabled = handle.read().split()
    if 'cpu' in enabled:
        return False
    state.record('v2_subtree', root=root)
    _write(os.path.join(root, 'cgroup.subtree_control'), '+cpu')
    return True


def start_cgroup_consumer(state, workdir, quota_us, name, period_us=PERIOD_US, cgroup=None, auditd_conf=None):
    """Create a throttled cpu group, start auditd -n inside it, wait for registration.

    ``cgroup``: (version, parent dir) to create the group under (default the hierarchy's root);
    ``auditd_conf``: auditd.conf overrides (``write_auditd_config``).

    Returns {'pid', 'starttime', 'cgroup_path', 'cgroup_version'}.
    """
    version, root = cgroup or detect_cgroup()
    if version is None:
        raise RuntimeError(root)
    auditd = find_auditd()
    if not auditd:
        raise RuntimeError('auditd is not installed (Debian: apt-get install auditd)')
    path = os.path.join(root, name)
    enable_v2_cpu(state, version, root)
    state.record('cgroup', path=path, version=version)
    # auditd starts unthrottled (startup at 1% of a CPU takes seconds); the
    # quota applies once it is registered.
    cgroup_create(version, root, name, None, period_us)
    state.record('unthrottle', path=path, version=version)
    confdir = os.path.join(workdir, 'etc')
    write_auditd_config(confdir, workdir, overrides=auditd_conf)
    argv = [auditd, '-n', '-s', 'nochange', '-c', confdir]
    # before the start, when its pid is not known yet: a crash right after it still stops it
    state.record('spawn', name='auditd', argv=argv, consumer=True)
    pid, start = spawn_daemon(argv, os.path.join(workdir, 'auditd.out'),
                              cgroup_procs=os.path.join(path, 'cgroup.procs'))
    state.record('consumer', name='auditd', pid=pid, starttime=start, backend='cgroup')
    if not wait_registered(pid):
        raise RuntimeError('auditd (pid %d) did not register as the audit consumer; see %s/auditd.out'
                           % (pid, workdir))
    cgroup_set_quota(version, path, quota_us, period_us)
    return {'pid': pid, 'starttime': start, 'cgroup_path': path, 'cgroup_version': version,
            'quota_us': quota_us, 'period_us': period_us}


# --------------------------------------------------------------------------
# snapshots (tests: the host after absent equals the host before present)
# --------------------------------------------------------------------------
SNAPSHOT_STATUS = ('enabled', 'failure', 'pid', 'rate_limit', 'backlog_limit', 'backlog_wait_time')


def host_snapshot(tracefs='/sys/kernel/tracing', cgroup_roots=(CGROUP_V1_CPU, CGROUP_V2_ROOT, CGROUP_V2_ALT),
                  docker=None, daemons=('auditd', 'dockerd', 'containerd')):
    """The lab-relevant host state: audit settings, rules, tracefs instances,
    cgroup dirs (top two levels of each hierarchy), lab processes, containers."""
    status = get_status()
    snap = {'audit_status': dict((k, status.get(k)) for k in SNAPSHOT_STATUS),
            'rules': sorted(list_rules()),
            'tracefs_instances': [], 'cgroups': [], 'processes': [], 'containers': docker}
    instances = os.path.join(tracefs, 'instances')
    if os.path.isdir(instances):
        snap['tracefs_instances'] = sorted(os.listdir(instances))
    for root in cgroup_roots:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                snap['cgroups'].append(path)
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                cmd = handle.read().split(b'\0')
        except (IOError, OSError):
            continue
        words = [w.decode('utf-8', 'replace') for w in cmd if w]
        if not words or proc_starttime(pid) is None:
            continue
        text = ' '.join(words)
        workload = len(words) > 1 and os.path.basename(words[1]) == labworkload.SCRIPT_NAME
        if os.path.basename(words[0]) in daemons or workload:
            snap['processes'].append(text)
    snap['processes'].sort()
    return snap


def snapshot_diff(before, after):
    """Human-readable differences between two snapshots (empty list: equal)."""
    diffs = []
    keys = sorted(set(before) | set(after))
    for key in keys:
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append('%s.%s: %r -> %r' % (key, sub, a.get(sub), b.get(sub)))
        elif isinstance(a, list) and isinstance(b, list):
            for item in a:
                if item not in b:
                    diffs.append('%s: gone %r' % (key, item))
            for item in b:
                if item not in a:
                    diffs.append('%s: new %r' % (key, item))
        else:
            diffs.append('%s: %r -> %r' % (key, a, b))
    return diffs


# --------------------------------------------------------------------------
# the lab: present / absent (the module and the tests call these)
# --------------------------------------------------------------------------
LAB_DEFAULTS = {
    'backend': 'cgroup',
    'quota_us': 1000,
    'period_us': STALL_PERIOD_US,
    'backlog_limit': 64,
    'backlog_wait_time_jiffies': 250,
    'allow_existing_consumer': False,
    'workload': True,
    'clients': 1,
    'rate_per_s': 0,
    'key': LAB_KEY,
    'rules': 'seed',
    'state_path': STATE_FILE,
    'script_path': None,
}


def lab_rules(which):
    """'seed': the seed's two rules; 'accept': only the accept4 rule."""
    if which == 'seed':
        return [list(r) for r in SEED_RULES]
    if which == 'accept':
        return [list(ACCEPT_RULE)]
    raise ValueError('rules must be seed or accept, got %r' % which)


def validate_lab_params(params):
    """Merged, checked parameters (raises ValueError with a clear message)."""
    p = dict(LAB_DEFAULTS)
    p.update(dict((k, v) for k, v in params.items() if v is not None))
    if p['backend'] not in ('cgroup', 'docker'):
        raise ValueError('backend must be cgroup or docker, got %r' % p['backend'])
    for name, low, high in (('quota_us', 1000, 10 ** 7), ('period_us', 1000, 1000000),
                            ('backlog_limit', 1, 2 ** 31), ('backlog_wait_time_jiffies', 1, 60000),
                            ('clients', 1, 64), ('rate_per_s', 0, 10 ** 6)):
        try:
            p[name] = int(p[name])
        except (TypeError, ValueError):
            raise ValueError('%s must be an integer, got %r' % (name, p[name]))
        if not low <= p[name] <= high:
            raise ValueError('%s must be between %d and %d, got %d' % (name, low, high, p[name]))
    if p['quota_us'] > p['period_us'] * 64:
        raise ValueError('quota_us %d is not a throttle for period_us %d' % (p['quota_us'], p['period_us']))
    rule_args([], p['key'])
    lab_rules(p['rules'])
    if not os.path.isabs(p['state_path']):
        raise ValueError('state_path must be absolute')
    return p


def lab_workdir(state_path):
    return os.path.dirname(state_path)


def lab_info(state):
    """What the state file says about a present lab (None when absent)."""
    if not state.entries:
        return None
    info = {'backend': None, 'consumer_pid': None, 'cgroup_path': None, 'server_pid': None,
            'client_pid': None, 'container_id': None, 'key': None,
            'workdir': lab_workdir(state.path), 'alive': True}
    for entry in state.entries:
        kind = entry['kind']
        if kind == 'consumer':
            info['consumer_pid'] = entry['pid']
            info['backend'] = entry.get('backend')
            info['alive'] = info['alive'] and process_alive(entry['pid'], entry.get('starttime'))
        elif kind == 'moved_process':
            info['consumer_pid'] = entry['pid']
            info['backend'] = 'cgroup'
            info['existing_consumer'] = True
        elif kind in ('cgroup', 'unthrottle'):
            info['cgroup_path'] = entry['path']
        elif kind == 'container':
            info['container_id'] = entry.get('id')
            info['cgroup_path'] = entry.get('cgroup_path') or info['cgroup_path']
        elif kind == 'rules':
            info['key'] = entry['key']
        elif kind == 'process':
            info[entry['name'].replace('workload-', '') + '_pid'] = entry['pid']
            info['alive'] = info['alive'] and process_alive(entry['pid'], entry.get('starttime'))
    info['latency_path'] = os.path.join(info['workdir'], 'latency.jsonl')
    info['timeline_path'] = os.path.join(info['workdir'], 'timeline.jsonl')
    return info


def cgroup_of_pid(pid, controller='cpu'):
    """Absolute cpu cgroup dir of a process (v1 cpu controller, else v2)."""
    with open('/proc/%d/cgroup' % int(pid)) as handle:
        lines = handle.read().splitlines()
    v2 = None
    for line in lines:
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        if controller in parts[1].split(','):
            return os.path.join(CGROUP_V1_CPU, parts[2].lstrip('/'))
        if parts[0] == '0' and parts[1] == '':
            v2 = parts[2]
    if v2 is not None:
        for root in (CGROUP_V2_ROOT, CGROUP_V2_ALT):
            if os.path.exists(os.path.join(root, 'cgroup.controllers')):
                return os.path.join(root, v2.lstrip('/'))
    raise RuntimeError('no cpu cgroup for pid %d' % pid)


def throttle_existing_consumer(state, pid, quota_us, period_us, name):
    """allow_existing_consumer: move the registered consumer into a lab group.

    Its original cgroup is recorded and restored at absent.
    """
    version, root = detect_cgroup()
    if version is None:
        raise RuntimeError(root)
    original = cgroup_of_pid(pid)
    path = os.path.join(root, name)
    enable_v2_cpu(state, version, root)
    state.record('cgroup', path=path, version=version)
    cgroup_create(version, root, name, quota_us, period_us)
    state.record('unthrottle', path=path, version=version)
    state.record('moved_process', pid=pid, starttime=proc_starttime(pid), original=original)
    _write(os.path.join(path, 'cgroup.procs'), pid)
    return {'pid': pid, 'starttime': proc_starttime(pid), 'cgroup_path': path,
            'cgroup_version': version, 'quota_us': quota_us, 'period_us': period_us}


def lab_present(params, docker_backend=None, check_mode=False, handlers=None, on_record=None):
    """Create the incident lab. Returns (changed, result dict).

    ``docker_backend``: a callable(state, workdir, p) -> consumer dict for
    the docker backend (plugins/module_utils/labdocker.py), so labkit stays
    free of project imports; ``handlers``: the undo handlers of its entries
    (labdocker.UNDO_HANDLERS), for a broken or other-backend lab found first;
    ``on_record``: called before each change is recorded (LabState).
    """
    p = validate_lab_params(params)
    state = LabState(p['state_path'], on_record)
    info = lab_info(state)
    if info and info['alive'] and (info['backend'] == p['backend']):
        return False, dict(info, state='present', note='already present')
    status = get_status()
    if info is None:
        reason = consumer_check(status, p['allow_existing_consumer'])
        if reason:
            raise LabRefused(reason)
    if check_mode:
        return True, {'state': 'present', 'note': 'would create the lab (check mode)',
                      'existing_consumer_pid': status.get('pid') or None}
    if info is not None:  # broken or other backend: clean up first
        errors = undo_state(state, handlers)[1]
        if errors:
            raise RuntimeError('could not clean up the previous lab: %s' % '; '.join(errors))
        state = LabState(p['state_path'], on_record)
        status = get_status()
    workdir = lab_workdir(p['state_path'])
    state.record('path', path=workdir, mode='lab_dir')
    if not os.path.isdir(workdir):
        os.makedirs(workdir, 0o700)
    existing = status.get('pid') or 0
    saved = dict((k, status[k]) for k in ('enabled', 'backlog_limit', 'backlog_wait_time'))
    state.record('audit_status', saved=saved)
    set_status(backlog_limit=p['backlog_limit'], backlog_wait_time=p['backlog_wait_time_jiffies'])
    group = 'auditgap-lab'
    if existing:
        if p['backend'] != 'cgroup':
            raise LabRefused('allow_existing_consumer works with the cgroup backend only '
                             '(the existing consumer pid %d is throttled in a lab cgroup)' % existing)
        consumer = throttle_existing_consumer(state, existing, p['quota_us'], p['period_us'], group)
    elif p['backend'] == 'cgroup':
        consumer = start_cgroup_consumer(state, workdir, p['quota_us'], group, period_us=p['period_us'])
    else:
        if docker_backend is None:
            raise RuntimeError('the docker backend needs labdocker')
        consumer = docker_backend(state, workdir, p)
    state.record('rules', key=p['key'])
    for base in lab_rules(p['rules']):
        run_auditctl(rule_args(base, p['key']))
    if status.get('enabled') != 1:
        set_status(enabled=1)
    result = {'state': 'present', 'backend': p['backend'], 'consumer_pid': consumer['pid'],
              'cgroup_path': consumer['cgroup_path'], 'container_id': consumer.get('container_id'),
              'quota_us': p['quota_us'], 'period_us': p['period_us'], 'key': p['key'],
              'existing_consumer': bool(existing), 'workdir': workdir,
              'latency_path': os.path.join(workdir, 'latency.jsonl'),
              'timeline_path': os.path.join(workdir, 'timeline.jsonl'),
              'server_pid': None, 'client_pid': None, 'port': None}
    if p['workload']:
        script = p['script_path'] or write_workload_script(workdir)
        python = sys.executable if sys.executable and os.path.exists(sys.executable) else '/usr/bin/python3'
        wl = start_workload(state, workdir, script, python=python, rate_per_s=p['rate_per_s'],
                            clients=p['clients'], cpu_stat_dir=consumer['cgroup_path'])
        result.update(server_pid=wl['server_pid'], client_pid=wl['client_pid'], port=wl['port'])
    return True, result


class LabRefused(RuntimeError):
    """The host cannot take the lab (another consumer, immutable audit)."""


def lab_absent(state_path=STATE_FILE, check_mode=False, handlers=None):
    """Undo everything the state file records. Returns (changed, result)."""
    state = LabState(state_path)
    if not state.entries:
        if state.exists():
            state.delete()
        return False, {'state': 'absent', 'undone': [], 'errors': []}
    if check_mode:
        return True, {'state': 'absent', 'undone': [describe(e) for e in undo_order(state.entries)],
                      'errors': []}
    undone, errors = undo_state(state, handlers)
    return True, {'state': 'absent', 'undone': undone, 'errors': errors}
