"""Run an auditgap module's ``main()`` in a fork of a process that imported it once.

Under QEMU software emulation (the molecule VMs) starting a module takes 20-40 s, most
of it importing Ansible's module_utils; a test that runs a module tens of times (a
SIGKILL at each step) would spend most of a scenario importing. ``ModuleForks`` imports
the modules once and forks for each run. The child is the module as Ansible runs it:
its own ``main()``, its arguments from a file named by ``sys.argv[1]``, its JSON result
on stdout, its own pid (the one its undo journal names), the environment given; only
the imports happened before the fork.

``start()`` returns an object with the ``subprocess.Popen`` surface the crash tests use
(``pid``, ``returncode``, ``communicate(timeout)``), so the same helpers drive both.
"""
import importlib
import json
import os
import select
import signal
import sys
import time
import traceback

from ansible.module_utils import basic

PACKAGE = 'ansible_collections.auditgap.fleet.plugins.modules.'


class ForkedModule:
    """One forked module run: Popen's pid, returncode and communicate()."""

    def __init__(self, pid, out_fd, err_fd):
        self.pid = pid
        self.returncode = None
        self._fds = {out_fd: [], err_fd: []}
        self._out, self._err = out_fd, err_fd

    def communicate(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        open_fds = set(self._fds)
        while open_fds:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(open_fds), [], [], wait)
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                self._reap()
                raise TimeoutError('module run %d did not finish within %s s' % (self.pid, timeout))
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    self._fds[fd].append(chunk)
                else:
                    open_fds.discard(fd)
                    os.close(fd)
        self._reap()
        return b''.join(self._fds[self._out]), b''.join(self._fds[self._err])

    def _reap(self):
        _, status = os.waitpid(self.pid, 0)
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class ModuleForks:
    """Import ``modules`` (auditgap module names) now; ``start()`` forks a run of one."""

    def __init__(self, *modules):
        self.mains = {name: importlib.import_module(PACKAGE + name).main for name in modules}

    def start(self, module, args, tmp_path, env=None):
        path = tmp_path / ('args-%s-%d.json' % (module, time.monotonic_ns()))
        path.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
        main = self.mains[module]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test
            code = 1
            try:
                os.close(out_r)
                os.close(err_r)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                sys.stdout = os.fdopen(1, 'w')
                sys.stderr = os.fdopen(2, 'w')
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.environ.update(env or {})
                sys.argv = [module, str(path)]
                basic._ANSIBLE_ARGS = None  # read this run's arguments, not a cached set
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # the child reports any error and exits
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(out_w)
        os.close(err_w)
        return ForkedModule(pid, out_r, err_r)
