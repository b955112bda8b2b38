"""Shared by tests and benchmarks that change live kernel state.

``kernel_lock()`` is the host-wide lock every such test and benchmark holds,
so two runs never change audit settings, tracefs or cgroups at the same time.
``rmdir_cgroup()`` removes a cgroup directory a test made, waiting for its
tasks to leave. ``tracefs_mounted()`` sets up tracefs the way the product does
on a fresh machine (mounted at /sys/kernel/tracing when nothing is mounted)
and unmounts only what it mounted.
"""
import contextlib
import fcntl
import os
import subprocess
import time

KERNEL_LOCK = '/run/lock/auditgap-kernel-tests.lock'


@contextlib.contextmanager
def kernel_lock():
    os.makedirs(os.path.dirname(KERNEL_LOCK), exist_ok=True)
    with open(KERNEL_LOCK, 'w') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replay_dead_runs():
    """Replay the undo journals of auditgap runs that died with SIGKILL (a killed test run among
    them), as the next auditgap run on a host does, holding the host lock. Returns what was replayed
    as ``(journal, undone steps, errors)``.

    A test that compares the kernel's state before and after its run must not take a dead run's
    leftovers (an experiment's backlog_limit 64, a test audit rule) for the state to come back to:
    the first product run inside it would replay them and the comparison would fail for a change the
    test never made.
    """
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard
    with guard.locked('tests', wait_s=60) as lock:
        return [(entry['journal'], entry['undone'], entry['errors']) for entry in lock.recovered]


@contextlib.contextmanager
def tracefs_mounted(path='/sys/kernel/tracing'):
    """Yield the tracefs root; mount it first when the machine has none mounted.

    A fresh machine has tracefs unmounted (ftrace_sample mounts it for its own
    run and unmounts it again). Tests that inspect tracefs around a module run
    need it mounted for their whole run, so they mount it here and unmount it
    at the end, only when they were the ones who mounted it.
    """
    from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
    root = tracefs.locate()
    if root is not None:
        yield root
        return
    proc = subprocess.run(['mount', '-t', 'tracefs', 'nodev', path], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError('cannot mount tracefs at %s: %s' % (path, proc.stderr.strip()))
    try:
        yield tracefs.locate() or path
    finally:
        subprocess.run(['umount', path], capture_output=True, check=False)


def rmdir_cgroup(path, attempts=50):
    """Remove an (empty) cgroup directory; retry while tasks are still leaving it."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    os.rmdir(path)  # the last try raises, so a leftover is reported
