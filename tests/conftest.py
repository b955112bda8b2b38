"""Test policy shared by every auditgap test.

- Tests marked ``kernel`` need root and the real kernel. They skip elsewhere,
  but under CI (CI=true) every skip is a failure: the real run is the point.
- Tests that change live kernel state (audit settings, rules, tracefs,
  cgroups, audit consumer) take one host-wide lock, so two test runs (or two
  developers' runs on one machine) never change the kernel at the same time.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Import project code the way Ansible does once the collection is installed.
sys.path.insert(0, os.path.join(ROOT, 'collections'))
sys.path.insert(0, ROOT)

from tests.support.kernel import kernel_lock  # noqa: E402  (after the sys.path set-up)

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def pytest_configure(config):
    config.addinivalue_line('markers', 'kernel: needs root and the real kernel')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, 'wasxfail'):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = 'failed'
        report.longrepr = 'skipped under CI=true (skips are failures in CI): %s' % reason


@pytest.fixture(autouse=True)
def _kernel_lock(request):
    """Serialise tests marked ``kernel`` across processes; skip them without root."""
    if request.node.get_closest_marker('kernel') is None:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip('needs root (kernel test)')
    with kernel_lock():
        yield


@pytest.fixture
def project_root():
    return ROOT
