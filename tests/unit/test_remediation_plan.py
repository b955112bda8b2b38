"""remediate.yml's pure parts: plan per host, before/after record, report (no root)."""
import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.auditgap.fleet.plugins.filter import remediation as rem
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
from ansible_collections.auditgap.fleet.plugins.module_utils import report as R
from ansible_collections.auditgap.fleet.plugins.modules import cpu_limit


def finding(fid, severity, role=None, host='web-01', **vars_):
    return {'id': fid, 'severity': severity, 'host': host, 'summary': fid, 'evidence': {},
            'remediation': {'role': role, 'vars': vars_} if role else None}


FINDINGS = [
    finding('audit_events_lost', 'warning', 'audit_backlog', audit_backlog_limit=4096),
    finding('audit_backlog_saturated', 'critical', 'audit_backlog', audit_backlog_limit=8192),
    finding('audit_consumer_throttled', 'critical', 'agent_cpu', agent_cpu_backend='docker',
            agent_cpu_target={'container': 'ids'}, agent_cpu_limit_cores=1.0),
    finding('audited_hot_syscall', 'warning', 'audit_rules', audit_rules_narrow=[{'syscall': 'accept4', 'key': 'net'}]),
    finding('syscall_stall_observed', 'critical'),
    finding('audit_consumer_throttled', 'critical', 'agent_cpu', host='web-02', agent_cpu_limit_cores=2.0),
]


def test_plan_names_only_this_hosts_roles_and_most_severe_vars_win():
    plan = rem.auditgap_remediation_plan(FINDINGS, 'web-01')
    assert sorted(plan) == ['agent_cpu', 'audit_backlog', 'audit_rules']
    assert plan['audit_backlog']['vars'] == {'audit_backlog_limit': 8192}
    assert plan['audit_backlog']['findings'] == ['audit_backlog_saturated', 'audit_events_lost']
    assert plan['agent_cpu']['vars']['agent_cpu_target'] == {'container': 'ids'}
    assert rem.auditgap_remediation_plan(FINDINGS, 'web-02')['agent_cpu']['vars'] == {'agent_cpu_limit_cores': 2.0}
    assert rem.auditgap_remediation_plan(FINDINGS, 'db-01') == {}
    assert sorted(rem.auditgap_remediation_plan(FINDINGS, 'web-01', only=['agent_cpu'])) == ['agent_cpu']


def test_plan_merges_narrow_items_and_accepts_explicit_remediations():
    more = FINDINGS + [finding('audited_hot_syscall', 'info', 'audit_rules',
                               audit_rules_narrow=[{'syscall': 'accept4', 'key': 'net'}, {'syscall': 'connect'}])]
    narrow = rem.auditgap_remediation_plan(more, 'web-01')['audit_rules']['vars']['audit_rules_narrow']
    assert narrow == [{'syscall': 'accept4', 'key': 'net'}, {'syscall': 'connect'}]
    explicit = rem.auditgap_remediation_plan([{'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 16384}}], 'any')
    assert explicit['audit_backlog']['vars'] == {'audit_backlog_limit': 16384}
    with pytest.raises(AnsibleFilterError, match=r"item 0.role: 'rm_rf' is not one of agent_cpu"):
        rem.auditgap_remediation_plan([{'role': 'rm_rf', 'vars': {}}], 'any')


def test_fleet_findings_take_their_entrys_host():
    doc = {'schema': 'auditgap.fleet/v1',
           'hosts': [{'host': 'a', 'status': 'info', 'findings': [{'id': 'x', 'severity': 'info'}]},
                     {'host': 'b', 'status': 'ok', 'findings': []}]}
    assert rem.auditgap_fleet_findings(doc) == [{'id': 'x', 'severity': 'info', 'host': 'a'}]


def test_dry_run_record_is_pending_and_applied_record_compares_after(monkeypatch):
    before = [f for f in FINDINGS if f['host'] == 'web-01']
    plan = rem.auditgap_remediation_plan(before, 'web-01')
    dry = rem.auditgap_remediation_host(before, plan, {}, None, 'web-01', None, False)
    assert {f['id']: f['status'] for f in dry['findings']}['audit_consumer_throttled'] == 'pending'
    assert {f['id']: f['status'] for f in dry['findings']}['syscall_stall_observed'] == 'not_remediated'

    after = [finding('audited_hot_syscall', 'info', 'audit_rules', audit_rules_narrow=[]),
             finding('audit_wait_time_accrued', 'warning')]
    monkeypatch.setattr(D, 'evaluate', lambda facts, host, thr=None: (after, None))
    outcomes = {'agent_cpu': {'changed': True, 'failed': False, 'result': {'before': {'limit_cores': 0.01}}},
                'audit_backlog': {'changed': True, 'failed': False},
                'audit_rules': {'changed': False, 'failed': True, 'msg': 'boom'}}
    results = {'gather': {'audit_status': {'supported': True}, 'cgroup_throttle': {'supported': True}},
               'ftrace_sample': {'skipped': True}}
    rec = rem.auditgap_remediation_host(before, plan, outcomes, results, 'web-01', None, True)
    status = {f['id']: f['status'] for f in rec['findings']}
    assert status == {'audit_events_lost': 'fixed', 'audit_backlog_saturated': 'fixed',
                      'audit_consumer_throttled': 'fixed', 'audited_hot_syscall': 'not_fixed',
                      'syscall_stall_observed': 'fixed', 'audit_wait_time_accrued': 'new'}
    assert rec['fixed'] == 4 and rec['not_fixed'] == 1
    doc = R.remediation_document([rec], '2026-11-25T20:00:00Z', '/r', True)
    assert doc['summary']['fixed'] == 4 and doc['summary']['new'] == 1 and doc['summary']['failed_roles'] == 1
    md = R.remediation_markdown(doc)
    assert '# auditgap remediation (applied)' in md
    assert '| audit_consumer_throttled | **fixed** |' in md
    assert '| audit_rules | False | True |' in md


def test_thresholds_from_host_variables():
    # what auditgap_remediation_host reads from a thresholds dict or the host's variables
    def read(variables):
        return D.thresholds_from_vars(variables, ('', 'diagnose_'))
    assert read({'diagnose_throttled_ratio_warn': 0.3, 'ansible_host': 'x'}) == {'throttled_ratio_warn': 0.3}
    assert read({'throttled_ratio_crit': 0.9}) == {'throttled_ratio_crit': 0.9}
    assert read({'other': 1}) == {}


def test_applied_without_audit_status_is_unknown():
    before = [finding('audit_backlog_saturated', 'critical', 'audit_backlog', audit_backlog_limit=8192)]
    plan = rem.auditgap_remediation_plan(before, 'web-01')
    rec = rem.auditgap_remediation_host(before, plan, {}, {'audit_status': {'failed': True}}, 'web-01', None, True)
    assert rec['findings'][0]['status'] == 'unknown' and rec['after_error']


def test_cpu_limit_decisions():
    assert cpu_limit.decide(0.01, 0.5, False) == (True, None)
    assert cpu_limit.decide(0.5, 0.5, False) == (False, None)
    change, err = cpu_limit.decide(0.5, 0.2, False)
    assert change is False and 'refusing to lower the CPU limit from 0.5 cores to 0.2 cores' in err
    assert cpu_limit.decide(0.5, 0.2, True) == (True, None)
    change, err = cpu_limit.decide(None, 2.0, False)
    assert change is False and 'from unlimited to 2 cores' in err


def test_systemd_helpers():
    assert cpu_limit.parse_timespan_us('infinity') is None
    assert cpu_limit.parse_timespan_us('500ms') == 500000
    assert cpu_limit.parse_timespan_us('1s 500ms') == 1500000
    assert cpu_limit.parse_timespan_us('1.500000s') == 1500000
    assert cpu_limit.quota_percent(1.5) == '150%' and cpu_limit.quota_percent(0.125) == '12.50%'
    assert cpu_limit.dropin_text('ids.service', 2) .endswith('[Service]\nCPUQuota=200%\n')
    assert '[Scope]' in cpu_limit.dropin_text('docker-abc.scope', 1)


def test_docker_limit_from_nano_cpus_or_quota():
    def info(nano=0, quota=0, period=0):
        return {'nano_cpus': nano, 'cpu_quota_us': quota, 'cpu_period_us': period}
    assert cpu_limit.docker_limit(info(nano=1500000000))['limit_cores'] == 1.5
    assert cpu_limit.docker_limit(info(quota=50000, period=200000))['limit_cores'] == 0.25
    assert cpu_limit.docker_limit(info(quota=25000))['limit_cores'] == 0.25  # default period
    assert cpu_limit.docker_limit(info(quota=-1, period=100000))['limit_cores'] is None  # lifted quota
    assert cpu_limit.docker_limit(info()) == {'limit_cores': None, 'nano_cpus': 0, 'cpu_quota_us': 0, 'cpu_period_us': 0}


def test_docker_updates_can_always_be_put_back():
    """--cpus stays --cpus; anything else becomes a quota in the container's own period,
    which docker update can lift again (it ignores NanoCpus 0)."""
    def info(nano=0, quota=0, period=0):
        return {'nano_cpus': nano, 'cpu_quota_us': quota, 'cpu_period_us': period}
    assert cpu_limit.docker_updates(info(nano=50000000), 0.5) == ({'nano_cpus': 500000000}, {'nano_cpus': 50000000})
    assert cpu_limit.docker_updates(info(quota=1000, period=250000), 0.5) == ({'quota_us': 125000}, {'quota_us': 1000})
    assert cpu_limit.docker_updates(info(), 0.5) == ({'quota_us': 50000}, {'quota_us': -1})
    assert cpu_limit.docker_updates(info(quota=-1, period=100000), 2) == ({'quota_us': 200000}, {'quota_us': -1})
