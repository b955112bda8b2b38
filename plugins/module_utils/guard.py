# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RestoreGuard: every change auditgap makes to live kernel state goes through one.

A guard is an undo stack. Each change registers how to undo itself *before*
it is made; when the guarded block ends (normally, by an exception, by the
guard's own timeout, or by SIGTERM/SIGINT/SIGHUP) the undo steps run in
reverse order. A failing undo step does not stop the others; its error is
kept in ``restore_errors`` so callers can report it.

SIGKILL cannot be caught: callers that keep state across processes (tracefs
instances, lab state) name what they create after their pid or a state file
so that the next run can find and remove leftovers.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import signal


class GuardInterrupted(Exception):
    """Raised inside the guarded block when a signal or the timeout arrives."""

    def __init__(self, why):
        super(GuardInterrupted, self).__init__(why)
        self.why = why


_SIGNALS = ('SIGTERM', 'SIGINT', 'SIGHUP')


class RestoreGuard:
    """Undo stack with signal and timeout handling.

    >>> with RestoreGuard(timeout_s=30) as guard:
    ...     guard.write_file('/sys/kernel/tracing/tracing_on', '0')
    ...     guard.push(cleanup_fn, arg, description='remove instance')
    """

    def __init__(self, timeout_s=None, signals=True):
        self.timeout_s = timeout_s
        self.handle_signals = signals
        self._undo = []
        self._old_handlers = {}
        self._old_alarm = None
        self.restore_errors = []
        self.restored = []
        self.interrupted = None

    # -- registering changes -------------------------------------------------
    def push(self, fn, *args, **kwargs):
        """Register an undo step; ``description`` (keyword) names it in reports."""
        description = kwargs.pop('description', getattr(fn, '__name__', 'undo'))
        self._undo.append((description, fn, args, kwargs))

    def write_file(self, path, value, restore_value=None):
        """Write ``value`` to ``path``; on exit write back what was there.

        ``restore_value`` overrides what is written back (for files whose read
        format differs from their write format).
        """
        if restore_value is None:
            with open(path, 'r') as handle:
                restore_value = handle.read().strip()
        self.push(write_value, path, restore_value, description='restore %s' % path)
        write_value(path, value)

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
        if self.timeout_s and signal.SIGALRM in self._old_handlers:
            signal.setitimer(signal.ITIMER_REAL, 0)
        # Block further interruption while restoring: a second SIGTERM must not
        # abort the restore half-way.
        for signum in self._old_handlers:
            if signum != signal.SIGALRM:
                signal.signal(signum, signal.SIG_IGN)
        try:
            self.restore()
        finally:
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            self._old_handlers = {}
        return False

    def restore(self):
        while self._undo:
            description, fn, args, kwargs = self._undo.pop()
            try:
                fn(*args, **kwargs)
                self.restored.append(description)
            except Exception as err:  # keep going: restore everything we can
                self.restore_errors.append('%s: %s' % (description, err))

    def _on_signal(self, signum, frame):
        self.interrupted = signal.Signals(signum).name
        raise GuardInterrupted('interrupted by %s' % self.interrupted)

    def _on_alarm(self, signum, frame):
        self.interrupted = 'timeout'
        raise GuardInterrupted('timed out after %ss' % self.timeout_s)


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


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
