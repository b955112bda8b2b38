"""auditgap.promfile: the audit textfile follows Prometheus conventions; atomic writes.
(promtool's own check runs in tests/integration/test_prometheus_alerts.py.)"""
import os
import re

import pytest

from auditgap import promfile

SAMPLE = re.compile(r'^(auditgap_[a-z_]+)(\{[^}]*\})? (-?[0-9.e+-]+|NaN)$')


def render():
    run = {'started_at': 1000.0, 'finished_at': 1012.5, 'outcome': 'regressions', 'coverage_ratio': 0.5}
    hosts = [
        {'host': 'web"01', 'status': 'critical', 'severity': 'critical', 'backlog_peak_ratio': 1.0, 'lost_per_s': 3.5,
         'wait_accrued_s': 0.8, 'throttled_ratio': 0.97, 'limit_cores': 0.01, 'usage_cores': 0.0099, 'backlog_limit': 64,
         'findings': [{'id': 'audit_consumer_throttled', 'severity': 'critical'}],
         'changes': {'regressed': True, 'new_findings': [{'id': 'audit_consumer_throttled', 'severity': 'critical'}],
                     'resolved_findings': [{'id': 'audit_events_lost', 'severity': 'warning'}],
                     'worse_metrics': [{'metric': 'throttled_ratio', 'value': 0.97, 'baseline': 0.0}],
                     'causes': [{'change': 'cpu_limit_added', 'rank': 1}]}},
        {'host': 'db', 'status': 'unreachable', 'severity': None, 'findings': [], 'changes': {}},
    ]
    states = {'web"01': {'state': 'regressed'}, 'db': {'state': 'unknown'}}
    return promfile.render(run, hosts, states, {'ok': 3, 'regressions': 1}, last_success_at=1012.5, version='0.1.0')


def test_conventions():
    text = render()
    families = {}
    for line in text.splitlines():
        if line.startswith('# TYPE '):
            _, _, name, kind = line.split()
            families[name] = kind
            continue
        if line.startswith('#'):
            continue
        match = SAMPLE.match(line)
        assert match, line  # name{labels} value: no timestamp
        assert match.group(1) in families
        assert 'run' not in (match.group(2) or '')  # no per-run labels
    for name, kind in families.items():
        assert name.startswith('auditgap_')
        assert name.endswith('_total') == (kind == 'counter'), name
        assert not re.search(r'_(milli|micro)?seconds?_|_ms$|_us$|milliseconds', name), name
    for needed in ('auditgap_last_run_timestamp_seconds', 'auditgap_last_success_timestamp_seconds',
                   'auditgap_run_duration_seconds', 'auditgap_build_info', 'auditgap_scan_coverage_ratio',
                   'auditgap_runs_total'):
        assert needed in families


def test_values():
    text = render()
    assert 'auditgap_run_duration_seconds 12.5\n' in text
    assert 'auditgap_scan_coverage_ratio 0.5\n' in text
    assert 'auditgap_finding_new{host="web\\"01",id="audit_consumer_throttled",severity="critical"} 1\n' in text
    assert 'auditgap_finding_resolved{host="web\\"01",id="audit_events_lost"} 1\n' in text
    assert 'auditgap_probable_cause_rank{host="web\\"01",change="cpu_limit_added"} 1\n' in text
    assert 'auditgap_host_regressed{host="web\\"01"} 1\n' in text
    assert 'auditgap_host_regressed{host="db"' not in text  # not diagnosed: unknown, not "not regressed"
    assert 'auditgap_host_state{host="db",state="unknown"} 1\n' in text
    assert 'auditgap_runs_total{outcome="regressions"} 1\n' in text and 'auditgap_runs_total{outcome="failed"} 0\n' in text
    assert 'auditgap_last_run_outcome{outcome="regressions"} 1\n' in text
    assert 'auditgap_audit_wait_accrued_seconds{host="web\\"01"} 0.8\n' in text


def test_write_textfile_atomic(tmp_path):
    path = promfile.write_textfile(str(tmp_path), 'a 1\n')
    assert open(path).read() == 'a 1\n' and os.stat(path).st_mode & 0o777 == 0o644
    assert os.listdir(str(tmp_path)) == ['auditgap.prom']
    with pytest.raises(OSError, match='does not exist'):
        promfile.write_textfile(str(tmp_path / 'missing'), 'a 1\n')


def test_write_atomic_leaves_nothing_on_error(tmp_path):
    target = tmp_path / 'out.prom'
    target.write_text('old\n')
    with pytest.raises(TypeError):
        promfile.write_atomic(str(target), object())
    assert target.read_text() == 'old\n' and os.listdir(str(tmp_path)) == ['out.prom']
