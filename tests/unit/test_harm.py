"""Severity from measured harm: the scale and its thresholds at the boundaries."""
import json
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings')


def load(name):
    with open(os.path.join(FIX, name + '.json')) as handle:
        return json.load(handle)


def saturated(wait_ms=0.0, lost=0, p99_ms=None, max_ms=None, seconds=5.0):
    """A host whose backlog of 64 touches its limit, with the harm given (trace only when p99 is)."""
    facts = load('healthy')
    facts['audit_status']['status']['backlog_limit'] = 64
    facts['audit_status']['rules'] = [{'list': 'exit', 'action': 'always', 'syscalls': ['accept4'],
                                       'fields': [{'name': 'success', 'op': '=', 'value': '1'}],
                                       'key': 'net', 'text': '-a always,exit -S accept4 -F success=1 -k net'}]
    facts['audit_status']['sample'].update(
        seconds=seconds, backlog_peak=64, backlog_peak_ratio=1.0, lost_delta=lost, lost_per_s=lost / seconds,
        backlog_wait_time_actual_delta_jiffies=wait_ms / 4.0, backlog_wait_time_actual_delta_ms=wait_ms)
    if p99_ms is not None:
        facts['ftrace_sample'] = {'supported': True, 'modes': ['syscalls'], 'duration_s': seconds,
                                  'audit_wait_observed': False, 'offcpu': [],
                                  'syscalls': {'accept4': {'count': 100, 'p50_us': 50.0, 'p99_us': p99_ms * 1000.0,
                                                           'max_us': (max_ms or p99_ms) * 1000.0}}}
    return facts


def severity(facts, fid, thresholds=None):
    return next(f['severity'] for f in F.auditgap_findings(facts, 'h', thresholds) if f['id'] == fid)


def test_backlog_touching_its_limit_with_small_waits_is_not_critical():
    """The issue's case: a 64 backlog at its limit, waits of a few ms, accept4 p99 0.1 ms."""
    facts = saturated(wait_ms=4.0, p99_ms=0.1, max_ms=0.3)
    summary = F.auditgap_host_summary(facts, 'h')
    assert summary['harm']['level'] == 'low'
    assert summary['severity'] == 'warning'
    assert severity(facts, 'audit_backlog_saturated') == 'warning'
    assert severity(facts, 'audit_wait_time_accrued') == 'info'


def test_throttled_consumer_with_long_stalls_and_lost_records_is_critical():
    findings = F.auditgap_findings(load('seed_incident'), 'h')
    harm = next(f for f in findings if f['id'] == 'audit_backlog_saturated')['evidence']['harm']
    assert harm['level'] == 'critical' and harm['lost_per_s'] > 0
    assert {f['id'] for f in findings if f['severity'] == 'critical'} >= {
        'audit_backlog_saturated', 'audit_consumer_throttled', 'audit_wait_time_accrued'}


@pytest.mark.parametrize('kwargs,level', [
    ({'p99_ms': 100.0}, 'critical'), ({'p99_ms': 99.99}, 'warning'),
    ({'p99_ms': 10.0}, 'warning'), ({'p99_ms': 9.99}, 'low'),
    ({'p99_ms': 1.0, 'max_ms': 1000.0}, 'critical'), ({'p99_ms': 1.0, 'max_ms': 999.0}, 'warning'),
    ({'p99_ms': 1.0, 'max_ms': 100.0}, 'warning'), ({'p99_ms': 1.0, 'max_ms': 99.0}, 'low'),
    ({'wait_ms': 500.0}, 'critical'), ({'wait_ms': 499.0}, 'warning'),   # 100 ms/s over 5 s
    ({'wait_ms': 50.0}, 'warning'), ({'wait_ms': 49.0}, 'low'),          # 10 ms/s
    ({'lost': 1}, 'critical'), ({'lost': 0}, 'low'),
])
def test_harm_boundaries(kwargs, level):
    facts = saturated(**kwargs)
    harm = D.measure_harm(D._View(facts), D.merge_thresholds())
    assert harm['level'] == level, harm
    expected = {'critical': 'critical', 'warning': 'warning', 'low': 'warning'}[level]
    assert severity(facts, 'audit_backlog_saturated') == expected
    if level == 'critical':
        assert harm['reasons']


def test_thresholds_are_variables():
    facts = saturated(p99_ms=50.0)
    assert severity(facts, 'audit_backlog_saturated') == 'warning'
    assert severity(facts, 'audit_backlog_saturated', {'harm_crit_p99_ms': 50}) == 'critical'
    # lost: critical above the threshold (5 in 5 s = 1/s)
    assert severity(saturated(lost=5), 'audit_events_lost', {'harm_crit_lost_per_s': 0.99}) == 'critical'
    assert severity(saturated(lost=5), 'audit_events_lost', {'harm_crit_lost_per_s': 1}) == 'warning'


def test_nothing_measured_is_none_and_healthy_host_is_ok():
    facts = load('healthy')
    facts['audit_status']['sample'] = None
    assert D.measure_harm(D._View(facts), D.merge_thresholds())['level'] == 'none'
    summary = F.auditgap_host_summary(load('healthy'), 'h')
    assert summary['severity'] in ('ok', 'info') and summary['harm']['level'] == 'low'


def test_stall_observed_takes_the_harm_level():
    facts = saturated(p99_ms=0.2, max_ms=2.0)
    facts['ftrace_sample'].update(audit_wait_observed=True, offcpu=[
        {'stack': ['schedule_timeout', 'audit_log_start'], 'stack_text': 'schedule_timeout <- audit_log_start',
         'count': 1, 'total_us': 2000, 'max_us': 2000, 'pids': [1]}])
    assert severity(facts, 'syscall_stall_observed') == 'warning'
    facts['ftrace_sample']['offcpu'][0]['max_us'] = 1200000
    assert severity(facts, 'syscall_stall_observed') == 'critical'   # a 1.2 s sleep
