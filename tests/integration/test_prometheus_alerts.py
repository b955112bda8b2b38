"""The alert rules and the audit textfile with Prometheus' own promtool (Debian's prometheus
package, in the Makefile's APT_TEST): rules valid, their unit tests on synthetic series pass,
and the textfile of every kind of run, and fleet.prom, are `promtool check metrics` clean."""
import os
import shutil
import subprocess

import pytest

from auditgap import promfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, 'prometheus', 'auditgap-alerts.yml')
RULE_TESTS = os.path.join(ROOT, 'prometheus', 'auditgap-alerts.test.yml')


@pytest.fixture(scope='module')
def promtool():
    path = shutil.which('promtool')
    if not path:
        pytest.skip('promtool not installed (Debian package prometheus: make test installs it)')
    return path


def test_rules_are_valid(promtool):
    proc = subprocess.run([promtool, 'check', 'rules', RULES], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'SUCCESS: 8 rules found' in proc.stdout


def test_rule_unit_tests(promtool):
    proc = subprocess.run([promtool, 'test', 'rules', RULE_TESTS], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'SUCCESS' in proc.stdout


@pytest.mark.parametrize('outcome', ['ok', 'regressions', 'failed'])
def test_textfile_passes_promtool_check_metrics(promtool, outcome):
    hosts = []
    if outcome != 'failed':
        hosts = [{'host': 'web-01', 'status': 'critical', 'severity': 'critical', 'backlog_peak_ratio': 1.0,
                  'lost_per_s': 2.0, 'wait_accrued_s': 3.6, 'throttled_ratio': 0.98, 'limit_cores': 0.01,
                  'usage_cores': 0.01, 'backlog_limit': 64,
                  'findings': [{'id': 'audit_consumer_throttled', 'severity': 'critical'}],
                  'changes': {'regressed': outcome == 'regressions',
                              'new_findings': [{'id': 'audit_consumer_throttled', 'severity': 'critical'}],
                              'resolved_findings': [{'id': 'audit_events_lost', 'severity': 'warning'}],
                              'worse_metrics': [{'metric': 'throttled_ratio', 'value': 0.98, 'baseline': 0.0}],
                              'causes': [{'change': 'cpu_limit_lowered', 'rank': 1}]}},
                 {'host': 'db-01', 'status': 'unreachable', 'severity': None, 'findings': [], 'changes': {}}]
    states = {'web-01': {'state': 'regressed'}, 'db-01': {'state': 'unknown'}}
    run = {'started_at': 1000.0, 'finished_at': 1010.25, 'outcome': outcome, 'coverage_ratio': 0.5}
    text = promfile.render(run, hosts, states, {outcome: 2}, last_success_at=900.0, version='0.1.0')
    proc = subprocess.run([promtool, 'check', 'metrics'], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_fleet_prom_passes_promtool_check_metrics(promtool):
    """fleet.prom (the report step) is written by the same writer: base units, counters _total."""
    from benchmarks.fleetgen import fleet_results
    from ansible_collections.auditgap.fleet.plugins.action import diagnose_report
    from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis, report
    entries = diagnose_report.host_entries(list(fleet_results(60, bad=True)), diagnosis.DEFAULT_THRESHOLDS)
    text = report.render_prometheus(report.fleet_document(entries, '2026-12-01T10:00:00Z'))
    assert 'auditgap_audit_lost_total{' in text and 'auditgap_audit_backlog_wait_time_actual_seconds_total{' in text
    proc = subprocess.run([promtool, 'check', 'metrics'], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr
