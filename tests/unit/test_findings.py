"""Findings rules: fixture facts (docs/contracts.md shapes) in, findings out."""
import copy
import json
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings')
STABLE_IDS = {'audit_backlog_saturated', 'audit_events_lost', 'audit_wait_time_accrued',
              'audit_consumer_throttled', 'audit_consumer_missing', 'audited_hot_syscall',
              'syscall_stall_observed', 'audit_immutable'}


def load(name):
    with open(os.path.join(FIX, name + '.json')) as handle:
        return json.load(handle)


def ids(findings, severity=None):
    return {f['id'] for f in findings if severity is None or f['severity'] == severity}


def by_id(findings, fid):
    found = [f for f in findings if f['id'] == fid]
    assert found, f'{fid} not in {ids(findings)}'
    return found[0]


def serious(findings):
    return [f for f in findings if f['severity'] in ('critical', 'warning')]


def test_finding_shape_follows_contract():
    for name in ('healthy', 'seed_incident', 'no_audit', 'immutable', 'consumer_missing',
                 'throttled_only', 'hot_syscall', 'lab_stall'):
        for finding in F.auditgap_findings(load(name), 'h1'):
            assert {'id', 'severity', 'host', 'summary', 'evidence', 'remediation'} <= set(finding)
            assert finding['severity'] in ('critical', 'warning', 'info')
            assert finding['host'] == 'h1'
            assert isinstance(finding['evidence'], dict)
            rem = finding['remediation']
            assert rem is None or (set(rem) == {'role', 'vars'} and rem['role'] in ('agent_cpu', 'audit_backlog', 'audit_rules'))


def test_healthy_host_has_no_warning():
    findings, chain = D.evaluate(load('healthy'), 'h1')
    assert serious(findings) == []
    assert chain is None


def test_seed_incident_gives_the_chain():
    findings, chain = D.evaluate(load('seed_incident'), 'web-01')
    assert {'audit_backlog_saturated', 'audit_events_lost', 'audit_wait_time_accrued',
            'audit_consumer_throttled', 'audited_hot_syscall', 'syscall_stall_observed'} <= ids(findings)
    assert by_id(findings, 'audit_backlog_saturated')['severity'] == 'critical'
    assert by_id(findings, 'audit_wait_time_accrued')['severity'] == 'critical'
    throttled = by_id(findings, 'audit_consumer_throttled')
    assert throttled['severity'] == 'critical'
    assert throttled['evidence']['cgroup_path'].startswith('/docker/abc123')
    assert 'audit_backlog_saturated' in throttled['evidence']['probable_cause_of']
    assert throttled['remediation']['role'] == 'agent_cpu'
    rvars = throttled['remediation']['vars']
    assert rvars['agent_cpu_backend'] == 'docker'
    assert rvars['agent_cpu_target'] == {'container': 'ids-agent'}
    assert rvars['agent_cpu_limit_cores'] >= 0.5
    # wait time and the observed stall point at the root cause's fix
    assert by_id(findings, 'audit_wait_time_accrued')['remediation']['role'] == 'agent_cpu'
    assert by_id(findings, 'syscall_stall_observed')['remediation']['role'] == 'agent_cpu'
    # the causal chain, in order: symptom <- backlog <- consumer -> fix
    assert chain.startswith('accept4 stalls (p99 212 ms')
    assert chain.index('accept4') < chain.index('audit backlog at limit (64/64)') < chain.index('throttled 97%')
    assert '-> raise its CPU limit (role agent_cpu' in chain
    assert 'limit 0.01 CPU' in chain
    assert by_id(findings, 'audit_backlog_saturated')['evidence']['chain'] == chain
    # worst first
    assert findings[0]['severity'] == 'critical'


def test_backlog_saturated_threshold_and_severity():
    facts = load('healthy')
    sample = facts['audit_status']['sample']
    sample.update(backlog_peak=6500, backlog_peak_ratio=6500 / 8192)  # 79%: below 80%
    assert 'audit_backlog_saturated' not in ids(F.auditgap_findings(facts, 'h'))
    sample.update(backlog_peak=6554, backlog_peak_ratio=0.8)
    assert by_id(F.auditgap_findings(facts, 'h'), 'audit_backlog_saturated')['severity'] == 'warning'
    sample.update(backlog_peak=8192, backlog_peak_ratio=1.0)
    found = by_id(F.auditgap_findings(facts, 'h'), 'audit_backlog_saturated')
    assert found['severity'] == 'warning'  # at the limit, but nobody measured any harm
    assert found['evidence']['harm']['level'] == 'low'
    sample.update(backlog_wait_time_actual_delta_jiffies=250, backlog_wait_time_actual_delta_ms=1000)
    found = by_id(F.auditgap_findings(facts, 'h'), 'audit_backlog_saturated')
    assert found['severity'] == 'critical'  # 200 ms/s slept
    sample.update(backlog_wait_time_actual_delta_jiffies=0, backlog_wait_time_actual_delta_ms=0)
    assert found['remediation'] == {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 32768}}
    # custom threshold
    sample.update(backlog_peak=4096, backlog_peak_ratio=0.5)
    assert 'audit_backlog_saturated' in ids(F.auditgap_findings(facts, 'h', {'backlog_saturated_ratio': 0.5}))


def test_unlimited_backlog_is_never_saturated():
    facts = load('healthy')
    facts['audit_status']['status']['backlog_limit'] = 0
    facts['audit_status']['sample'].update(backlog_peak=9000, backlog_peak_ratio=None)
    assert 'audit_backlog_saturated' not in ids(F.auditgap_findings(facts, 'h'))


def test_old_kernel_without_wait_time_actual():
    facts = load('healthy')
    facts['audit_status']['status'].update(backlog_wait_time_actual_jiffies=None, backlog_wait_time_actual_ms=None)
    facts['audit_status']['sample'].update(backlog_wait_time_actual_delta_jiffies=None,
                                           backlog_wait_time_actual_delta_ms=None)
    assert F.auditgap_findings(facts, 'h') == []


def test_backlog_without_sample_uses_current_backlog():
    facts = load('healthy')
    facts['audit_status']['sample'] = None
    facts['audit_status']['status']['backlog'] = 8000
    assert 'audit_backlog_saturated' in ids(F.auditgap_findings(facts, 'h'))


def test_events_lost_only_when_growing():
    facts = load('healthy')
    facts['audit_status']['status']['lost'] = 40
    assert serious(F.auditgap_findings(facts, 'h')) == []  # old losses, no growth in the window
    facts['audit_status']['sample'].update(lost_delta=3, lost_per_s=0.6)
    assert by_id(F.auditgap_findings(facts, 'h'), 'audit_events_lost')['severity'] == 'critical'  # records lost
    assert by_id(F.auditgap_findings(facts, 'h', {'harm_crit_lost_per_s': 1}),
                 'audit_events_lost')['severity'] == 'warning'
    facts['audit_status']['sample'] = None
    assert by_id(F.auditgap_findings(facts, 'h'), 'audit_events_lost')['severity'] == 'info'


def test_wait_time_accrued_only_when_growing():
    facts = load('healthy')
    facts['audit_status']['status']['backlog_wait_time_actual_jiffies'] = 500
    assert 'audit_wait_time_accrued' not in ids(F.auditgap_findings(facts, 'h'))
    facts['audit_status']['sample'].update(backlog_wait_time_actual_delta_jiffies=250,
                                           backlog_wait_time_actual_delta_ms=1000)
    found = by_id(F.auditgap_findings(facts, 'h'), 'audit_wait_time_accrued')
    assert found['severity'] == 'critical'
    assert found['evidence']['backlog_wait_time_actual_delta_ms'] == 1000
    facts['audit_status']['sample'].update(backlog_wait_time_actual_delta_jiffies=2,
                                           backlog_wait_time_actual_delta_ms=8)  # 1.6 ms/s: nobody feels it
    assert by_id(F.auditgap_findings(facts, 'h'), 'audit_wait_time_accrued')['severity'] == 'info'
    assert by_id(F.auditgap_findings(facts, 'h', {'harm_warn_wait_ms_per_s': 1.6}),
                 'audit_wait_time_accrued')['severity'] == 'warning'
    assert by_id(F.auditgap_findings(facts, 'h', {'harm_crit_wait_ms_per_s': 1.6}),
                 'audit_wait_time_accrued')['severity'] == 'critical'
    facts['audit_status']['sample'].update(backlog_wait_time_actual_delta_jiffies=250,
                                           backlog_wait_time_actual_delta_ms=1000)
    found = by_id(F.auditgap_findings(facts, 'h'), 'audit_wait_time_accrued')
    assert found['remediation']['role'] == 'audit_backlog'  # no throttled consumer known
    facts['audit_status']['sample'] = None
    assert by_id(F.auditgap_findings(facts, 'h'), 'audit_wait_time_accrued')['severity'] == 'info'


def test_consumer_throttled_alone_is_a_warning_with_systemd_fix():
    findings, chain = D.evaluate(load('throttled_only'), 'h')
    found = by_id(findings, 'audit_consumer_throttled')
    assert found['severity'] == 'warning'
    assert found['remediation']['vars']['agent_cpu_backend'] == 'systemd'
    assert found['remediation']['vars']['agent_cpu_target'] == {'systemd_unit': 'auditd.service'}
    assert 'throttled 45%' in chain


def test_consumer_throttled_below_threshold_is_silent():
    facts = load('throttled_only')
    facts['cgroup_throttle']['targets'][0]['sample']['throttled_ratio'] = 0.1
    assert 'audit_consumer_throttled' not in ids(F.auditgap_findings(facts, 'h'))
    assert 'audit_consumer_throttled' in ids(F.auditgap_findings(facts, 'h', {'throttled_ratio_warn': 0.05}))


def test_consumer_throttled_falls_back_to_total_ratio():
    facts = load('throttled_only')
    facts['cgroup_throttle']['targets'][0]['sample'] = None
    found = by_id(F.auditgap_findings(facts, 'h'), 'audit_consumer_throttled')
    assert found['evidence']['source'] == 'total'
    assert 'since cgroup creation' in found['summary']


def test_lab_stall_names_the_consumer_cgroup():
    findings, chain = D.evaluate(load('lab_stall'), 'lab')
    assert {'audit_backlog_saturated', 'audit_wait_time_accrued', 'audit_consumer_throttled'} <= ids(findings)
    found = by_id(findings, 'audit_consumer_throttled')
    assert found['evidence']['cgroup_path'] == '/auditgap-lab'
    assert found['remediation']['vars'] == {'agent_cpu_backend': 'cgroup',
                                            'agent_cpu_target': {'cgroup_path': '/auditgap-lab'},
                                            'agent_cpu_limit_cores': 0.5}
    assert 'in cgroup /auditgap-lab throttled 98%' in chain


def test_consumer_missing():
    findings = F.auditgap_findings(load('consumer_missing'), 'h')
    assert ids(findings, 'warning') == {'audit_consumer_missing'}
    disabled = load('consumer_missing')
    disabled['audit_status']['status']['enabled'] = 0
    assert F.auditgap_findings(disabled, 'h') == []


def test_audited_hot_syscall_from_trace():
    findings = F.auditgap_findings(load('hot_syscall'), 'h')
    found = by_id(findings, 'audited_hot_syscall')
    assert found['severity'] == 'warning'
    assert found['evidence']['syscalls'][0]['calls_per_s'] == 1000
    assert found['remediation'] == {'role': 'audit_rules',
                                    'vars': {'audit_rules_narrow': [{'syscall': 'connect', 'key': 'net'}]}}


def test_audited_hot_syscall_without_trace_is_info_and_narrow_rules_are_ignored():
    facts = load('hot_syscall')
    del facts['ftrace_sample']
    assert by_id(F.auditgap_findings(facts, 'h'), 'audited_hot_syscall')['severity'] == 'info'
    facts['audit_status']['rules'][0]['fields'].append({'name': 'exe', 'op': '=', 'value': '/usr/bin/curl'})
    assert 'audited_hot_syscall' not in ids(F.auditgap_findings(facts, 'h'))


def test_never_rules_and_cold_syscalls_do_not_count():
    facts = load('hot_syscall')
    facts['audit_status']['rules'][0]['action'] = 'never'
    assert 'audited_hot_syscall' not in ids(F.auditgap_findings(facts, 'h'))
    facts['audit_status']['rules'][0].update(action='always', syscalls=['adjtimex'])
    assert 'audited_hot_syscall' not in ids(F.auditgap_findings(facts, 'h'))


def test_syscall_stall_observed_needs_audit_wait():
    facts = load('seed_incident')
    assert by_id(F.auditgap_findings(facts, 'h'), 'syscall_stall_observed')['evidence']['syscall'] == 'accept4'
    facts['ftrace_sample']['audit_wait_observed'] = False
    assert 'syscall_stall_observed' not in ids(F.auditgap_findings(facts, 'h'))


def test_immutable_is_info_alone_and_noted_in_chain():
    assert [(f['id'], f['severity']) for f in F.auditgap_findings(load('immutable'), 'h')] == [('audit_immutable', 'info')]
    facts = load('seed_incident')
    facts['audit_status']['status']['enabled'] = 2
    findings, chain = D.evaluate(facts, 'h')
    assert 'audit_immutable' in ids(findings)
    assert 'reboot' in chain


@pytest.mark.parametrize('facts', [
    load('no_audit'), {}, None, {'audit_status': None}, {'audit_status': {'supported': True}},
    {'audit_status': {'supported': True, 'status': {'enabled': 'x'}, 'sample': 'bad', 'rules': [None, 3]}},
    {'audit_status': {'supported': True, 'status': {'enabled': 1, 'pid': 5}},
     'cgroup_throttle': {'supported': True, 'targets': [None, {'kind': 'audit_consumer', 'found': True}]},
     'ftrace_sample': {'supported': True, 'audit_wait_observed': True, 'offcpu': [], 'syscalls': {}}},
])
def test_partial_or_unsupported_facts_never_crash(facts):
    findings, _chain = D.evaluate(facts, 'h')
    for finding in findings:
        assert finding['severity'] in ('critical', 'warning', 'info')


def test_unsupported_host_is_info():
    findings = F.auditgap_findings(load('no_audit'), 'h')
    assert [(f['id'], f['severity']) for f in findings] == [('audit_unsupported', 'info')]
    assert 'CONFIG_AUDIT' in findings[0]['summary']


def test_stall_suspected():
    assert D.stall_suspected(load('seed_incident')['audit_status']) is True
    assert D.stall_suspected(load('healthy')['audit_status']) is False
    assert D.stall_suspected(load('no_audit')['audit_status']) is False
    assert D.stall_suspected(None) is False
    facts = load('healthy')['audit_status']
    facts['sample']['lost_delta'] = 1
    assert D.stall_suspected(facts) is True


def test_host_summary_and_metrics():
    entry = F.auditgap_host_summary(load('seed_incident'), 'web-01')
    assert entry['status'] == 'critical' and entry['reachable'] is True and entry['error'] is None
    assert entry['metrics']['audit_backlog_peak_ratio'] == 1.0
    assert entry['metrics']['consumer_throttled_ratio'] == 0.97
    assert entry['metrics']['audit_wait_accrued_ms'] == 3608
    down = F.auditgap_host_summary({}, 'bogus', error='Connection refused', reachable=False)
    assert down['status'] == 'unreachable' and down['error'] == 'Connection refused' and down['findings'] == []
    failed = F.auditgap_host_summary({}, 'x', error='audit_status: boom')
    assert failed['status'] == 'failed'


def test_thresholds_accept_strings_and_ignore_blanks():
    thr = D.merge_thresholds({'throttled_ratio_warn': '0.3', 'backlog_saturated_ratio': '', 'other': 'x'})
    assert thr['throttled_ratio_warn'] == 0.3
    assert thr['backlog_saturated_ratio'] == 0.8


def test_all_stable_ids_are_reachable_from_fixtures():
    seen = set()
    for name in ('seed_incident', 'consumer_missing', 'immutable', 'hot_syscall'):
        seen |= ids(F.auditgap_findings(load(name), 'h'))
    assert STABLE_IDS <= seen


def test_filter_module_exports():
    filters = F.FilterModule().filters()
    assert {'auditgap_findings', 'auditgap_host_summary', 'auditgap_stall_suspected'} <= set(filters)
    copy.deepcopy(filters['auditgap_findings'](load('seed_incident'), 'h'))


def test_role_documents_the_filter_defaults(project_root):
    """The thresholds' defaults live in DEFAULT_THRESHOLDS only: the role does not set them
    (its defaults would hide nothing, the report reads host variables), its argument spec
    shows the value used when they are unset."""
    import yaml
    with open(os.path.join(project_root, 'roles', 'diagnose', 'defaults', 'main.yml')) as handle:
        defaults = yaml.safe_load(handle)
    with open(os.path.join(project_root, 'roles', 'diagnose', 'meta', 'argument_specs.yml')) as handle:
        spec = yaml.safe_load(handle)['argument_specs']['main']['options']
    thresholds = {'diagnose_' + key for key in D.DEFAULT_THRESHOLDS}
    for key, value in D.DEFAULT_THRESHOLDS.items():
        assert float(spec['diagnose_' + key]['default']) == value, key
    assert not thresholds & set(defaults)
    assert set(defaults) | thresholds == set(spec)


def record_rates(rows, seconds=5.0, talkers=()):
    """A sample's record_rates with ``by_syscall`` rows {syscall: (events, records, share)}."""
    return {'seconds': seconds,
            'by_syscall': [{'syscall': name, 'events': ev, 'records': rec, 'records_per_s': rec / seconds,
                            'share': share} for name, (ev, rec, share) in rows.items()],
            'top_talkers': [dict(t) for t in talkers]}


def test_audited_hot_syscall_grounded_on_measured_record_rates():
    facts = load('hot_syscall')
    del facts['ftrace_sample']   # no trace: the measured rates alone make it a warning
    facts['audit_status']['sample'] = {'seconds': 5.0, 'record_rates': record_rates(
        {'connect': (1000, 4000, 0.8)},
        talkers=[{'key': 'net', 'syscall': 'connect', 'exe': '/usr/bin/curl', 'events': 1000}])}
    found = by_id(F.auditgap_findings(facts, 'h'), 'audited_hot_syscall')
    entry = found['evidence']['syscalls'][0]
    assert found['severity'] == 'warning'
    assert (entry['calls_per_s'], entry['rate_source'], entry['records_per_s'], entry['share']) == \
        (200.0, 'record_rates', 800.0, 0.8)
    assert entry['exes'] == ['/usr/bin/curl'] and entry['frequent']
    assert 'connect (200/s measured, 800 records/s, 80% of all, by /usr/bin/curl)' in found['summary']


def test_measured_rates_win_over_the_trace_and_the_threshold_is_inclusive():
    facts = load('hot_syscall')     # the trace says connect 1000/s
    rates = record_rates({'connect': (249, 996, 0.5)})
    facts['audit_status']['sample'] = {'seconds': 5.0, 'record_rates': rates}
    entry = by_id(F.auditgap_findings(facts, 'h'), 'audited_hot_syscall')['evidence']['syscalls'][0]
    assert (entry['calls_per_s'], entry['trace_calls_per_s'], entry['frequent']) == (49.8, 1000, False)
    rates['by_syscall'][0]['events'] = 250       # 50/s: at hot_syscall_per_s
    entry = by_id(F.auditgap_findings(facts, 'h'), 'audited_hot_syscall')['evidence']['syscalls'][0]
    assert entry['frequent'] and entry['calls_per_s'] == 50.0


def test_a_measured_hot_syscall_counts_whatever_its_name_or_narrowing():
    facts = load('hot_syscall')
    del facts['ftrace_sample']
    rule = facts['audit_status']['rules'][0]
    rule.update(syscalls=['getppid'], key='app')
    rule['fields'].append({'name': 'uid', 'op': '=', 'value': '1000'})
    assert 'audited_hot_syscall' not in ids(F.auditgap_findings(facts, 'h'))   # by name: not hot
    facts['audit_status']['sample'] = {'seconds': 2.0, 'record_rates': record_rates({'getppid': (2000, 6000, 0.9)})}
    found = by_id(F.auditgap_findings(facts, 'h'), 'audited_hot_syscall')
    assert found['severity'] == 'warning'
    assert found['remediation']['vars']['audit_rules_narrow'] == [{'syscall': 'getppid', 'key': 'app'}]
