"""What the benchmarks share: the tree on ``sys.path`` (the project root for ``tests.support``
and ``auditgap``, ``collections/`` for ``ansible_collections.auditgap.fleet``, as ansible.cfg
links it) and the start of those that run the incident lab (root and auditd checked, the
kernel-tests lock held, the lab present for a block). Imported first, before anything of the tree."""
import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, '.venv', 'bin')
COLLECTIONS = os.path.join(ROOT, 'collections')
for _path in (COLLECTIONS, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def run_lab_locked(name, run, args):
    """``run(args)`` holding the kernel-tests lock; 2 (and why, on stderr) without root or auditd."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import labkit
    from tests.support.kernel import kernel_lock
    if os.geteuid() != 0 or not labkit.find_auditd():
        print('%s: needs root and auditd' % name, file=sys.stderr)
        return 2
    with kernel_lock():
        return run(args)


@contextlib.contextmanager
def lab_present(name, params):
    """The incident lab (``labkit.lab_present``, as playbooks/lab.yml) for the block, removed
    after it, also on error; yields (the checked params, the lab, the guard). Exits 2 when the
    host refuses the lab; the guard's restore errors are printed after the block."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import labkit
    from ansible_collections.auditgap.fleet.plugins.module_utils.guard import RestoreGuard
    p = labkit.validate_lab_params(params)
    labkit.lab_absent(p['state_path'])
    with RestoreGuard() as guard:
        guard.push(lambda: labkit.lab_absent(p['state_path']), description='lab absent')
        try:
            _, lab = labkit.lab_present(params)
        except labkit.LabRefused as err:
            print('%s: %s' % (name, err), file=sys.stderr)
            raise SystemExit(2)
        yield p, lab, guard
    if guard.restore_errors:
        print('%s: restore errors: %s' % (name, guard.restore_errors), file=sys.stderr)
