"""Shared by tests and benchmarks that change live kernel state.

``kernel_lock()`` is the host-wide lock every such test and benchmark holds,
so two runs never change audit settings, tracefs or cgroups at the same time.
``rmdir_cgroup()`` removes a cgroup directory a test made, waiting for its
tasks to leave.
"""
import contextlib
import fcntl
import os
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
