# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RestoreGuard: every change auditgap makes to live kernel state goes through one.

A guard is an undo stack. Each change registers how to undo itself *before*
it is made; when the guarded block ends (normally, by an exception, by the
guard's own timeout, or by SIGTERM/SIGINT/SIGHUP) the undo steps run in
reverse order, with those signals blocked so that nothing cuts the restore
short. A failing undo step does not stop the others; its error is kept in
``restore_errors``. A change meant to stay (a remediation that succeeded) is
kept with :meth:`RestoreGuard.commit`.

Undo steps are named operations with JSON arguments (:data:`OPS`), not
closures, so a guard with a ``journal`` also writes them to an undo journal
(``/run/auditgap/journal-<module>-<pid>.json``, root-only, fsync'd before the
change is made). SIGKILL cannot be caught: the next run of any auditgap
module that changes the kernel takes the host lock and replays the journals
whose owner is dead (:func:`recover`), and reports what it undid
(``recovered_from_crash``).

The host lock (:class:`HostLock`, ``/run/auditgap/host.lock``) keeps two
auditgap modules from changing the kernel at the same time; it records its
holder so that a busy lock names who holds it.

Test-only: ``AUDITGAP_TEST_KILL_AT=N`` in the environment makes a journal
SIGKILL its own process once N changes are made, right before the next one
is recorded (or counted, :meth:`Journal.checkpoint`) or the restore or commit
begins (tests/integration/test_crash_recovery.py). Never set it elsewhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import time

STATE_DIR = '/run/auditgap'
LOCK_NAME = 'host.lock'
JOURNAL_PREFIX = 'journal-'
KILL_AT_ENV = 'AUDITGAP_TEST_KILL_AT'


class GuardInterrupted(Exception):
    """Raised inside the guarded block when a signal or the timeout arrives."""

    def __init__(self, why):
        super(GuardInterrupted, self).__init__(why)
        self.why = why


class UnsafePath(Exception):
    """auditgap's state directory or a file in it is not root-only (or is a symlink)."""


class LockBusy(Exception):
    """Another process holds the host lock (the message names it)."""


_SIGNALS = ('SIGTERM', 'SIGINT', 'SIGHUP')
_BLOCKED = tuple(getattr(signal, name) for name in _SIGNALS) + (signal.SIGALRM,)


# ---------------------------------------------------------------------------
# the root-only state directory

def ensure_state_dir(path=STATE_DIR):
    """Create ``path`` (0700) when missing and check it: a real directory (not a
    symlink), owned by us, no access for group or others. Returns ``path``."""
    try:
        os.mkdir(path, 0o700)
    except OSError as err:
        if err.errno != errno.EEXIST:
            raise
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath('%s is not a directory (a symlink or file planted there?); remove it' % path)
    if info.st_uid != os.geteuid():
        raise UnsafePath('%s is owned by uid %d, not by uid %d; remove it' % (path, info.st_uid, os.geteuid()))
    if info.st_mode & 0o077:
        raise UnsafePath('%s has mode %o, group/others may write there; expected 0700'
                         % (path, stat.S_IMODE(info.st_mode)))
    return path


def open_private(path, flags, mode=0o600):
    """os.open with O_NOFOLLOW|O_CLOEXEC; the result must be a regular file we own,
    with one link and no access for group/others. Returns the fd."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath('%s is a symlink (planted?); remove it' % path) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise UnsafePath('%s is not a plain file (type or hard links); remove it' % path)
        if info.st_uid != os.geteuid():
            raise UnsafePath('%s is owned by uid %d; remove it' % (path, info.st_uid))
        if info.st_mode & 0o077:
            raise UnsafePath('%s has mode %o; expected 0600' % (path, stat.S_IMODE(info.st_mode)))
    except BaseException:
        os.close(fd)
        raise
    return fd


def proc_starttime(pid):
    """Start time of ``pid`` (clock ticks since boot) or None when it is gone."""
    try:
        with open('/proc/%d/stat' % int(pid)) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_alive(owner):
    """True when the process a journal or lock names still runs (same start time)."""
    if not owner or not owner.get('pid'):
        return False
    now = proc_starttime(owner['pid'])
    if now is None:
        return False
    return owner.get('starttime') is None or owner['starttime'] == now


def _me(module):
    return {'pid': os.getpid(), 'starttime': proc_starttime(os.getpid()), 'module': module,
            'since': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}


def read_journal(path):
    """A journal (or an incident lab's kept journal) from a root-only file."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, 'r') as handle:
        return json.load(handle)


def write_journal(path, data):
    """Atomic, durable: a private temp file beside ``path``, fsync, rename, fsync the dir."""
    directory = os.path.dirname(path)
    tmp = '%s.tmp.%d' % (path, os.getpid())
    try:
        os.unlink(tmp)
    except OSError:
        pass
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, 'w') as handle:
        json.dump(data, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)
    _fsync_dir(directory)


def _fsync_dir(directory):
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------
# the host lock

class HostLock:
    """Host-wide flock in the root-only state directory.

    ``wait_s``: how long to wait for a busy lock (0: fail at once). The lock
    file records the holder (pid, start time, module, since) so a busy lock
    names it; a record left by a dead holder is stale and simply replaced
    (flock locks die with their process).
    """

    def __init__(self, module, wait_s=0, path=None, state_dir=STATE_DIR, busy=LockBusy):
        self.module = module
        self.wait_s = wait_s
        self.state_dir = state_dir if path is None else os.path.dirname(path)
        self.path = path or os.path.join(state_dir, LOCK_NAME)
        self.busy = busy
        self.fd = None
        self.stale_holder = None

    def __enter__(self):
        try:
            ensure_state_dir(self.state_dir)
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        except UnsafePath:
            raise
        except OSError as err:
            raise UnsafePath('cannot use the host lock %s: %s (auditgap changes the kernel as root)'
                             % (self.path, err.strerror or err)) from None
        deadline = time.monotonic() + max(0.0, float(self.wait_s or 0))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                holder = self._holder(fd)
                os.close(fd)
                raise self.busy(self.describe_busy(holder))
            time.sleep(0.1)
        holder = self._holder(fd)
        if holder and holder.get('pid') != os.getpid():
            self.stale_holder = holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_me(self.module), sort_keys=True) + '\n').encode(), 0)
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd):
        try:
            text = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
            return json.loads(text) if text else None
        except (OSError, ValueError):
            return None

    def describe_busy(self, holder):
        waited = ' after waiting %gs' % self.wait_s if self.wait_s else ''
        if holder and owner_alive(holder):
            return ('host lock %s is held by auditgap %s (pid %s, since %s)%s: another auditgap run is '
                    'changing this host; try again later'
                    % (self.path, holder.get('module') or '?', holder.get('pid'), holder.get('since') or '?', waited))
        recorded = 'pid %s, gone' % holder.get('pid') if holder else 'no record'
        return ('host lock %s is held by a process that is not the one it records (%s)%s; '
                'find it with: fuser %s' % (self.path, recorded, waited, self.path))

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


# ---------------------------------------------------------------------------
# undo operations: name -> function(**args). Each is safe to run twice and on a
# change that was never made (the journal records the step before the change).

def write_value(path, value):
    """Write ``value`` through one open (O_TRUNC) descriptor, to the last byte.

    Most tracefs and cgroupfs files take the value in one write(2). The list
    files (set_graph_function, set_ftrace_filter, set_event) take one word per
    write(2) and return a short count: the rest is written on the same
    descriptor, where it adds to the list instead of replacing it.
    """
    data = value.encode() if not isinstance(value, bytes) else value
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while True:
            written = os.write(fd, view)
            view = view[written:]
            if not view:
                break
            if written <= 0:
                raise OSError(errno.EIO, 'short write to %s: %d bytes of %r left' % (path, len(view), data))
    finally:
        os.close(fd)


def append_value(path, value):
    """Write without O_TRUNC (trigger files: O_TRUNC would drop every trigger)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _op_write_value(path, value):
    write_value(path, value)  # late-bound: tests spy on guard.write_value


def _op_write_if_exists(path, value):
    """write_value for a file inside something that may be gone (an instance, a cgroup)."""
    if os.path.exists(path):
        write_value(path, value)


def _op_append(path, value):
    try:
        append_value(path, value)
    except OSError as err:
        # removing a trigger that is not there: ENOENT/EINVAL, nothing to undo
        if err.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def _op_remove_instance(root, name):
    from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
    tracefs.remove_instance(root, name)


def _op_remove_synthetic(root, name):
    from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
    tracefs.remove_synthetic(root, name)


def _op_grow_top_buffer(path, boot_kb, size_kb):
    from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
    tracefs.grow_if_flag_flipped(path, boot_kb, size_kb)


def _op_umount(path):
    proc = subprocess.run(['umount', path], check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        text = proc.stderr.decode('utf-8', 'replace').strip()
        if 'not mounted' in text:
            return
        raise OSError(text or 'umount failed')


def _audit():
    from ansible_collections.auditgap.fleet.plugins.module_utils import audit
    return audit.Audit()


def _op_audit_rule_delete(argv):
    """Delete one loaded rule exactly (``-d`` with the rule's own fields); absent is fine."""
    with _audit() as client:
        client.delete_rules([argv], missing_ok=True)


def _op_audit_rule_add(argv):
    """Add one rule (``-a``/``-A`` argv); already loaded is fine."""
    with _audit() as client:
        client.add_rules([argv], exists_ok=True)


def _op_audit_rules_restore(rules):
    """Make the loaded syscall rules exactly ``rules`` (auditctl argv lists, in order):
    delete each loaded rule not in the list, add the missing ones, and when the order
    differs, delete and re-add from the first difference on. Watches and rules of other
    lists are never touched."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import rulesfile
    with _audit() as client:
        loaded = rulesfile.loaded_syscall_rules(client.rules())
        wanted = [rulesfile.parse_rule(' '.join(argv)) for argv in rules]
        for argv in rulesfile.restore_plan(loaded, wanted):
            if argv[0] == '-d':
                client.delete_rules([argv], missing_ok=True)
            else:
                client.add_rules([argv], exists_ok=True)


def _op_audit_set(fields):
    """Audit status fields (names as audit.Audit.set takes them)."""
    with _audit() as client:
        client.set(**fields)


def _op_file_restore(path, text=None, mode=0o644):
    """Put a file back: ``text`` None means it did not exist (removed)."""
    if text is None:
        try:
            os.unlink(path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise
        return
    directory = os.path.dirname(path) or '.'
    tmp = os.path.join(directory, '.auditgap-restore-%d' % os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, 'w') as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def _op_systemd_dropin(path, unit, text=None, mode=0o644, runtime_path=None, runtime_text=None, cpu_quota=None):
    """Put a drop-in back (or remove it) and daemon-reload, which applies the unit's
    settings to its cgroup again.

    ``runtime_path``: the drop-in ``systemctl set-property --runtime`` writes
    (``/run/systemd/system.control/<unit>.d/50-CPUQuota.conf``, a transient unit's in
    ``/run/systemd/transient/<unit>.d/``), put back as
    ``runtime_text`` (None: it did not exist, removed with its directory when that is
    empty); None: the runtime property was not changed, leave it. ``cpu_quota``: the
    runtime property set back with ``set-property`` (journals of earlier versions)."""
    _op_file_restore(path, text, mode)
    if runtime_path is not None:
        _op_file_restore(runtime_path, runtime_text, mode)
        if runtime_text is None:
            try:
                os.rmdir(os.path.dirname(runtime_path))
            except OSError:
                pass  # gone, or holds other runtime properties
    commands = [['systemctl', 'daemon-reload']]
    if cpu_quota is not None and runtime_path is None:
        commands.append(['systemctl', 'set-property', '--runtime', unit, 'CPUQuota=%s' % cpu_quota])
    for args in commands:
        proc = subprocess.run(args, check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError('%s: %s' % (' '.join(args), proc.stderr.decode('utf-8', 'replace').strip()))


def set_cgroup_limit(version, directory, quota_us, period_us):
    """A CPU limit on a cgroup (``quota_us`` None or -1: unlimited).

    v1 checks quota/period against the parents on each write: the quota goes to -1
    first, then the period, then the quota. v2 writes ``cpu.max`` at once.
    """
    unlimited = quota_us is None or int(quota_us) < 0
    if int(version) == 1:
        qfile = os.path.join(directory, 'cpu.cfs_quota_us')
        write_value(qfile, '-1')
        if period_us:
            write_value(os.path.join(directory, 'cpu.cfs_period_us'), str(int(period_us)))
        if not unlimited:
            write_value(qfile, str(int(quota_us)))
    else:
        quota = 'max' if unlimited else str(int(quota_us))
        write_value(os.path.join(directory, 'cpu.max'), '%s %d' % (quota, int(period_us or 100000)))


def _op_cgroup_limit(version, directory, quota_us=None, period_us=None):
    if os.path.isdir(directory):
        set_cgroup_limit(version, directory, quota_us, period_us)


def _op_docker_update(container, limit, socket_path='/var/run/docker.sock'):
    """A container's CPU limit back (``limit``: dockerctl.update_cpu's nano_cpus or quota_us);
    a container that is gone has nothing to put back."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl
    try:
        dockerctl.update_cpu(container, socket_path=socket_path, **limit)
    except dockerctl.DockerError as err:
        if err.status != 404:
            raise


def _op_rmdir(path):
    try:
        os.rmdir(path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise


def process_alive(pid, starttime=None):
    """True when ``pid`` runs, is no zombie and (if given) has the recorded start time."""
    try:
        with open('/proc/%d/stat' % int(pid)) as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError, ValueError):
        return False
    return fields[0] not in ('Z', 'X') and (starttime is None or int(fields[19]) == starttime)


def pids_with_cmdline(argv):
    """Pids whose command line is exactly ``argv`` (a daemon recorded before it started)."""
    want = b'\0'.join(a.encode() for a in argv) + b'\0'
    found = []
    for name in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as handle:
                if name.isdigit() and handle.read() == want:
                    found.append(int(name))
        except OSError:
            continue
    return found


def _leased_by_others(leases):
    """A live process other than this one holds a lease file (named by its pid) in ``leases``."""
    try:
        names = os.listdir(leases)
    except OSError:
        return False
    return any(n.isdigit() and int(n) != os.getpid() and process_alive(int(n)) for n in names)


def _audit_status():
    from ansible_collections.auditgap.fleet.plugins.module_utils import audit
    try:
        with _audit() as client:
            return client.status()
    except audit.AuditError:
        return {}


def release_audit_registration(pid, timeout_s=5.0):
    """Make the kernel drop a dead consumer's registration (auditd does not always
    unregister): the kernel resets its audit pid when sending the next record fails. With
    audit enabled a rate_limit write of the same value logs one; disabled, enabled goes
    1 and back to 0. True when the registration is gone."""
    deadline = time.time() + timeout_s
    nudged = 0
    while time.time() < deadline:
        status = _audit_status()
        if status.get('pid') != pid:
            return True
        if not process_alive(pid) and nudged < 2 and time.time() > deadline - timeout_s + 2.0 * nudged:
            if status.get('enabled') == 0:
                _op_audit_set({'enabled': 1})
                _op_audit_set({'enabled': 0})
            elif status.get('enabled') == 1:
                _op_audit_set({'rate_limit': status.get('rate_limit') or 0})
            nudged += 1
        time.sleep(0.1)
    return _audit_status().get('pid') != pid


def _op_stop_process(pid=None, starttime=None, argv=None, timeout_s=15.0, audit_consumer=False, unless_leased=None):
    """Stop a process the run started: ``pid`` when it still has ``starttime``, or every
    process running exactly ``argv`` (recorded before the start, when no pid was known).
    SIGTERM, SIGKILL after ``timeout_s``. ``audit_consumer``: then wait until the kernel
    drops its registration. ``unless_leased``: leave it running while another live process
    holds a lease there (a shared dockerd)."""
    if unless_leased and _leased_by_others(unless_leased):
        return
    targets = [(pid, starttime)] if pid else [(p, proc_starttime(p)) for p in pids_with_cmdline(argv or [])]
    for target, start in targets:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not process_alive(target, start):
                break
            try:
                os.kill(target, signum)
            except ProcessLookupError:
                break
            deadline = time.time() + timeout_s
            while time.time() < deadline and process_alive(target, start):
                time.sleep(0.05)
        if audit_consumer and not release_audit_registration(target):
            raise RuntimeError('the kernel still has pid %d registered as the audit consumer' % target)


def _op_move_process(pid, starttime, directory):
    """Move a process back into its cgroup ``directory`` (when it still runs)."""
    if process_alive(pid, starttime):
        write_value(os.path.join(directory, 'cgroup.procs'), str(pid))


def _op_cgroup_remove(path=None, paths=(), timeout_s=10.0):
    """Remove cgroups the run created (``path``, ``paths``): their remaining tasks go to the
    parent, then rmdir (retried while tasks are leaving)."""
    for one in ([path] if path else []) + list(paths):
        deadline = time.time() + timeout_s
        while os.path.isdir(one):
            try:
                with open(os.path.join(one, 'cgroup.procs')) as handle:
                    for task in handle.read().split():
                        _op_write_if_exists(os.path.join(os.path.dirname(one), 'cgroup.procs'), task)
                os.rmdir(one)
            except OSError as err:
                if err.errno != errno.ENOENT and time.time() > deadline:
                    raise
                time.sleep(0.1)


def _op_remove_files(directory, names):
    """Remove the named files and trees in ``directory``, then the directory when empty."""
    import shutil
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    try:
        os.rmdir(directory)
    except OSError:
        pass


def _op_docker(action, ref):
    """A Docker object the run made: ``remove_container`` (quota lifted, stopped with
    SIGTERM so its process deregisters cleanly, removed), ``remove_image``, ``unthrottle``
    (CPU quota lifted). Nothing to do when no daemon answers (nothing of it is left)."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl
    if not dockerctl.ping():
        return
    if action == 'remove_image':
        dockerctl.remove_image(ref)
        return
    found = dockerctl.container_by_name_or_id(ref, use_cli=False)
    if found is None:
        return
    try:
        dockerctl.update_cpu(found['id'], quota_us=-1)
        if action == 'remove_container':
            dockerctl.docker_api('POST', '/containers/%s/stop' % found['id'], query={'t': '15'}, timeout=30)
    except dockerctl.DockerError:
        pass
    if action == 'remove_container':
        dockerctl.remove_container(found['id'])
        # a run killed before it recorded the consumer's stop: the container's auditd may
        # have registered, and one killed after docker stop's timeout never deregisters
        if found.get('pid') and not release_audit_registration(found['pid']):
            raise RuntimeError('the kernel still has pid %d (container %s) registered as the audit consumer'
                               % (found['pid'], found['id'][:12]))


OPS = {
    'write_value': _op_write_value,
    'write_if_exists': _op_write_if_exists,
    'append': _op_append,
    'remove_instance': _op_remove_instance,
    'remove_synthetic': _op_remove_synthetic,
    'grow_top_buffer': _op_grow_top_buffer,
    'umount': _op_umount,
    'audit_rule_delete': _op_audit_rule_delete,
    'audit_rule_add': _op_audit_rule_add,
    'audit_rules_restore': _op_audit_rules_restore,
    'audit_set': _op_audit_set,
    'file_restore': _op_file_restore,
    'systemd_dropin': _op_systemd_dropin,
    'rmdir': _op_rmdir,
    'cgroup_limit': _op_cgroup_limit,
    'stop_process': _op_stop_process,
    'move_process': _op_move_process,
    'cgroup_remove': _op_cgroup_remove,
    'remove_files': _op_remove_files,
    'docker': _op_docker,
    'docker_update': _op_docker_update,
}


def run_op(op, args):
    if op not in OPS:
        raise ValueError('unknown undo operation %r' % op)
    OPS[op](**args)


# ---------------------------------------------------------------------------
# the journal

def _kill_at():
    value = os.environ.get(KILL_AT_ENV, '')
    return int(value) if value.strip().isdigit() else None


class Journal:
    """The undo steps of one run, on disk before each change is made.

    ``{version, module, owner: {pid, starttime, module, since}, entries: [{op, args,
    description}]}``, entries oldest first. The file goes when the run ends with
    every step undone or its changes committed.
    """

    def __init__(self, module, state_dir=STATE_DIR, path=None):
        self.module = module
        self.state_dir = state_dir
        self.path = path or os.path.join(state_dir, '%s%s-%d.json' % (JOURNAL_PREFIX, module, os.getpid()))
        self.data = {'version': 1, 'module': module, 'owner': _me(module), 'entries': []}
        self.recorded = 0
        self.kill_at = _kill_at()

    @property
    def entries(self):
        return self.data['entries']

    def _maybe_die(self):
        if self.kill_at is not None and self.recorded >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def checkpoint(self):
        """One more change made under steps already recorded (a multi-command change):
        counts for the test hook."""
        self._maybe_die()
        self.recorded += 1

    def record(self, op, args, description):
        self._maybe_die()
        entry = {'op': op, 'args': args, 'description': description}
        self.entries.append(entry)
        if len(self.entries) == 1:
            ensure_state_dir(self.state_dir)
        write_journal(self.path, self.data)
        self.recorded += 1
        return entry

    def before_restore(self):
        self._maybe_die()

    def done(self, entry):
        if entry in self.entries:
            self.entries.remove(entry)
        if self.entries:
            write_journal(self.path, self.data)
        else:
            self.delete()

    def adopt(self, path):
        """Take over the steps of a kept journal at ``path`` (an incident lab's state file,
        its entries already in this journal): written as this run's journal, then the kept
        file goes, so a crash from here on is replayed by the next auditgap run."""
        if self.entries:
            ensure_state_dir(self.state_dir)
            write_journal(self.path, self.data)
        os.unlink(path)
        _fsync_dir(os.path.dirname(path) or '.')

    def delete(self):
        del self.entries[:]
        try:
            os.unlink(self.path)
            _fsync_dir(os.path.dirname(self.path))
        except OSError:
            pass


def list_journals(state_dir=STATE_DIR):
    try:
        names = os.listdir(state_dir)
    except OSError:
        return []
    return sorted(os.path.join(state_dir, n) for n in names
                  if n.startswith(JOURNAL_PREFIX) and n.endswith('.json'))


def recover(state_dir=STATE_DIR, alive=owner_alive):
    """Replay the journals whose owner is dead (newest step first). Call it holding
    the host lock. Returns [{journal, module, owner_pid, since, undone, errors}];
    steps that fail stay in the journal for the next run."""
    out = []
    for path in list_journals(state_dir):
        try:
            data = read_journal(path)
        except (OSError, ValueError, UnsafePath) as err:
            out.append({'journal': path, 'module': None, 'owner_pid': None, 'since': None, 'undone': [],
                        'errors': ['unreadable journal left alone: %s' % err]})
            continue
        owner = data.get('owner') or {}
        if owner.get('pid') == os.getpid() or alive(owner):
            continue
        journal = Journal(data.get('module') or '?', state_dir=state_dir, path=path)
        journal.data = data
        journal.kill_at = None
        undone, errors = replay(journal)
        out.append({'journal': path, 'module': data.get('module'), 'owner_pid': owner.get('pid'),
                    'since': owner.get('since'), 'undone': undone, 'errors': errors})
    return out


def replay(journal):
    """Run a journal's steps, newest first, signals blocked; each step leaves the journal
    once undone, failed ones stay. Returns (undone descriptions, errors)."""
    undone, errors = [], []
    with signals_blocked():
        for entry in list(reversed(journal.entries)):
            journal.checkpoint()  # the test-only kill hook (a lab's absent adopts its journal)
            try:
                run_op(entry['op'], entry.get('args') or {})
                undone.append(entry.get('description') or entry['op'])
                journal.done(entry)
            except Exception as err:  # keep going: undo everything we can
                errors.append('%s: %s' % (entry.get('description') or entry['op'], err))
    return undone, errors


class signals_blocked:
    """Block SIGTERM/SIGINT/SIGHUP/SIGALRM in this thread for the block.

    At the end, a signal that arrived meanwhile (``pending``, reported) goes to its
    handler when that is a Python one (an enclosing guard, which then stops and
    restores too); when it would kill the process (SIG_DFL) or is ignored, it is
    dropped: the restore it would have cut short is what it asked for.
    """

    def __init__(self):
        self.pending = []
        self._old_mask = None

    def __enter__(self):
        if hasattr(signal, 'pthread_sigmask'):
            self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        return self

    def __exit__(self, *exc):
        if self._old_mask is None:
            return False
        pending = signal.sigpending() & set(_BLOCKED)
        self.pending = sorted(signal.Signals(s).name for s in pending)
        dropped = {}
        if _in_main_thread():
            for signum in pending:
                handler = signal.getsignal(signum)
                if not callable(handler):  # SIG_IGN discards a pending signal
                    dropped[signum] = signal.signal(signum, signal.SIG_IGN)
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        finally:
            for signum, handler in dropped.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        return False


# ---------------------------------------------------------------------------
# the guard

class RestoreGuard:
    """Undo stack with signal and timeout handling, optionally journaled.

    >>> with RestoreGuard(timeout_s=30, journal='ftrace_sample') as guard:
    ...     guard.write_file('/sys/kernel/tracing/tracing_on', '0')
    ...     guard.push_op('remove_instance', 'remove instance x', root=root, name=name)
    """

    def __init__(self, timeout_s=None, signals=True, journal=None, state_dir=STATE_DIR):
        self.timeout_s = timeout_s
        self.handle_signals = signals
        if isinstance(journal, str):
            journal = Journal(journal, state_dir=state_dir)
        self.journal = journal
        self._undo = []
        self._old_handlers = {}
        self.restore_errors = []
        self.restored = []
        self.interrupted = None
        self.signals_during_restore = []
        self.committed = False

    @property
    def ok(self):
        """Every undo step so far succeeded."""
        return not self.restore_errors

    # -- registering changes -------------------------------------------------
    def push_op(self, op, description=None, **args):
        """Register a named, serialisable undo step (journaled when the guard has a journal)."""
        if op not in OPS:
            raise ValueError('unknown undo operation %r' % op)
        description = description or op
        entry = self.journal.record(op, args, description) if self.journal is not None else None
        self._undo.append((description, op, args, entry))

    def push(self, fn, *args, **kwargs):
        """Register an in-process undo step (not journaled: for what dies with the
        process, such as an open file); ``description`` (keyword) names it."""
        description = kwargs.pop('description', getattr(fn, '__name__', 'undo'))
        self._undo.append((description, (fn, args, kwargs), None, None))

    def write_file(self, path, value, restore_value=None):
        """Write ``value`` to ``path``; on exit write back what was there.

        ``restore_value`` overrides what is written back (for files whose read
        format differs from their write format).
        """
        if restore_value is None:
            with open(path, 'r') as handle:
                restore_value = handle.read().strip()
        self.push_op('write_value', 'restore %s' % path, path=path, value=restore_value)
        write_value(path, value)

    def checkpoint(self):
        """Mark one more change made under the undo steps already pushed (see Journal.checkpoint)."""
        if self.journal is not None:
            self.journal.checkpoint()

    def commit(self):
        """Keep every change made so far: drop the undo steps and the journal."""
        if self.journal is not None:
            self.journal.before_restore()
            self.journal.delete()
        self._undo = []
        self.committed = True

    @contextlib.contextmanager
    def timeout_paused(self):
        """Stop the hard timeout around one kernel call that a signal cannot cut short and
        that may take long (mkdir of a tracefs instance: ~2,000 event directories, 20 s to
        minutes on a 6.1 kernel under emulation), then re-arm it with the time that was left."""
        if not (self.timeout_s and signal.SIGALRM in self._old_handlers):
            yield
            return
        left, _interval = signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            yield
        finally:
            if left > 0:
                signal.setitimer(signal.ITIMER_REAL, left)

    # -- context manager -----------------------------------------------------
    def __enter__(self):
        if self.handle_signals and _in_main_thread():
            for name in _SIGNALS:
                signum = getattr(signal, name)
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
            if self.timeout_s:
                self._old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
                signal.setitimer(signal.ITIMER_REAL, float(self.timeout_s))
        return self

    def __exit__(self, exc_type, exc, tb):
        blocked = signals_blocked()
        with blocked:
            if self.timeout_s and signal.SIGALRM in self._old_handlers:
                signal.setitimer(signal.ITIMER_REAL, 0)
            try:
                self.restore()
            finally:
                for signum, handler in self._old_handlers.items():
                    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
                self._old_handlers = {}
        self._note_pending(blocked.pending)
        return False

    def restore(self):
        """Run every undo step, newest first, whatever happens; signals are blocked."""
        blocker = signals_blocked()
        with blocker:
            if self.journal is not None and self._undo:
                self.journal.before_restore()
            while self._undo:
                description, op, args, entry = self._undo.pop()
                try:
                    if isinstance(op, tuple):
                        fn, fargs, fkwargs = op
                        fn(*fargs, **fkwargs)
                    else:
                        run_op(op, args)
                    self.restored.append(description)
                    if entry is not None:
                        self.journal.done(entry)
                except Exception as err:  # keep going: restore everything we can
                    self.restore_errors.append('%s: %s' % (description, err))
            if self.journal is not None and not self.journal.entries:
                self.journal.delete()
        self._note_pending(blocker.pending)

    def _note_pending(self, pending):
        for name in pending:
            if name not in self.signals_during_restore:
                self.signals_during_restore.append(name)
        if pending and self.interrupted is None:
            self.interrupted = pending[0]

    def _on_signal(self, signum, frame):
        self.interrupted = signal.Signals(signum).name
        raise GuardInterrupted('interrupted by %s' % self.interrupted)

    def _on_alarm(self, signum, frame):
        self.interrupted = 'timeout'
        raise GuardInterrupted('timed out after %ss' % self.timeout_s)


LOCK_WAIT_ENV = 'AUDITGAP_LOCK_WAIT_S'


def lock_wait(default_s):
    """How long the controllers wait for the host lock: ``AUDITGAP_LOCK_WAIT_S`` when set
    (0..3600), else ``default_s``."""
    value = os.environ.get(LOCK_WAIT_ENV, '').strip()
    try:
        return min(3600.0, max(0.0, float(value))) if value else default_s
    except ValueError:
        return default_s


def locked(module, wait_s=0, state_dir=STATE_DIR, busy=LockBusy):
    """The host lock for ``module``; entering it also replays dead runs' journals
    (the lock object's ``recovered`` is what :func:`recover` returned)."""
    return _Locked(module, wait_s, state_dir, busy)


def run_locked(ansible_module, name, body, out, result, wait_s=30):
    """``body()`` of a changing module: under the host lock (waited for ``wait_s``, or
    ``AUDITGAP_LOCK_WAIT_S``) after replaying dead runs' journals (``out['recovered_from_crash']``);
    in check mode without the lock (nothing changes, nothing is replayed). A busy lock fails
    the task (``result``) naming the holder, nothing changed."""
    if ansible_module.check_mode:
        return body()
    try:
        with locked(name, wait_s=lock_wait(wait_s)) as lock:
            out['recovered_from_crash'] = lock.recovered
            return body()
    except (LockBusy, UnsafePath) as err:
        ansible_module.fail_json(msg='%s; nothing changed' % err, **result)


def journaled(name, out, change):
    """``change(rg)`` in a RestoreGuard journaled as ``name``, committed when it returns.
    On any failure the guard has undone it: returns the error (None on success) with
    ``out['restored']`` and ``out['restore_errors']`` saying how well."""
    rg = RestoreGuard(journal=name)
    try:
        with rg:
            change(rg)
            rg.commit()
    except Exception as err:  # any failure: the guard has rolled back
        out['restored'] = rg.ok
        out['restore_errors'] = list(rg.restore_errors)
        return err
    return None


class _Locked(HostLock):
    def __init__(self, module, wait_s, state_dir, busy):
        HostLock.__init__(self, module, wait_s=wait_s, state_dir=state_dir, busy=busy)
        self.recovered = []

    def __enter__(self):
        HostLock.__enter__(self)
        try:
            self.recovered = recover(self.state_dir)
        except BaseException:
            HostLock.__exit__(self)
            raise
        return self


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
