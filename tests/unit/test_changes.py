"""auditgap.changes: stored host state, regressions against the baseline, what changed
(ranked probable causes), coverage and the run outcome. Real fleet.json entries are built
from the findings fixtures with the findings filter, as the report action does."""
import copy
import json
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.filter import findings

from auditgap import changes

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings')


def entry(name, host='web'):
    with open(os.path.join(FIXTURES, name + '.json')) as handle:
        return findings.auditgap_host_summary(json.load(handle), host)


def stored(name, run_id, host='web', **override):
    row = changes.host_state(entry(name, host))
    row.update(run_id=run_id, state='ok', regressed=False)
    row.update(override)
    return row


def test_host_state_of_the_lab_stall():
    e = entry('lab_stall')
    row = changes.host_state(e)
    assert row['host'] == 'web' and row['status'] == 'critical'
    assert row['backlog_peak_ratio'] == e['metrics']['audit_backlog_peak_ratio']
    assert row['wait_accrued_s'] == pytest.approx(e['metrics']['audit_wait_accrued_ms'] / 1000.0)
    assert row['throttled_ratio'] == e['metrics']['consumer_throttled_ratio']
    assert row['limit_cores'] == e['metrics']['consumer_limit_cores']
    assert row['backlog_limit'] == int(e['metrics']['audit_backlog_limit'])
    assert row['rules_count'] == len(e['facts']['audit_status']['rules']) and len(row['rules_hash']) == 16
    assert {f['id'] for f in row['findings']} == {f['id'] for f in e['findings']}


def test_rules_fingerprint_ignores_order():
    a = [{'text': '-a always,exit -S accept4'}, {'text': '-a always,exit -S bind'}]
    assert changes.rules_fingerprint(a) == changes.rules_fingerprint(list(reversed(a)))
    assert changes.rules_fingerprint(a)[0] != changes.rules_fingerprint(a[:1])[0]
    assert changes.rules_fingerprint(None) == (None, None)


def test_unreachable_host_state_and_compare():
    row = changes.host_state(findings.auditgap_host_summary({}, 'web', reachable=False, error='ssh: refused'))
    assert row['status'] == 'unreachable' and row['backlog_peak_ratio'] is None
    result = changes.compare(row, [stored('healthy', 'r1')])
    assert not result['regressed'] and result['new_findings'] == []


def test_first_run_is_never_a_regression():
    result = changes.compare(changes.host_state(entry('lab_stall')), [])
    assert result['first_run'] and not result['regressed']


def test_new_and_resolved_findings_and_probable_causes():
    good = stored('healthy', 'r1', limit_cores=None, backlog_limit=8192, rules_count=1, rules_hash='a' * 16,
                  kernel='6.1.0-1')
    bad = changes.host_state(entry('lab_stall'))
    bad.update(run_id='r2', kernel='6.1.0-2')
    result = changes.compare(bad, [good])
    assert result['regressed']
    new_ids = {f['id'] for f in result['new_findings']}
    assert 'audit_consumer_throttled' in new_ids
    assert result['last_good_run'] == 'r1' and result['first_bad_run'] == 'r2'
    kinds = [c['change'] for c in result['causes']]
    # the CPU limit appeared where the consumer is now throttled: the most probable cause
    assert kinds[0] == 'cpu_limit_added', result['causes']
    assert 'kernel_changed' in kinds and [c['rank'] for c in result['causes']] == list(range(1, len(kinds) + 1))
    back = changes.compare(changes.host_state(entry('healthy')), [dict(bad, state='regressed', regressed=True)])
    assert {f['id'] for f in back['resolved_findings']} >= {'audit_consumer_throttled'}
    assert not back['regressed']


def test_the_first_bad_run_of_a_streak_is_diffed():
    good = stored('healthy', 'r1', limit_cores=2.0)
    first_bad = stored('throttled_only', 'r2', limit_cores=0.05, regressed=True)
    still_bad = stored('throttled_only', 'r3', limit_cores=0.05)
    now = dict(still_bad, run_id='r4', throttled_ratio=1.0,
               findings=still_bad['findings'] + [{'id': 'audit_events_lost', 'severity': 'critical'}])
    result = changes.compare(now, [still_bad, first_bad, good])
    assert result['regressed'] and result['first_bad_run'] == 'r2' and result['last_good_run'] == 'r1'
    assert result['causes'][0]['change'] == 'cpu_limit_lowered'
    assert result['causes'][0]['text'] == 'consumer CPU limit lowered 2 -> 0.05 cores'


def test_a_host_never_good_is_diffed_from_the_run_before_its_regression():
    # a standing warning (no audit consumer) before the lab: no good run, still a cause
    warned = stored('healthy', 'r1', limit_cores=None,
                    findings=[{'id': 'audit_consumer_missing', 'severity': 'warning'}])
    now = changes.host_state(entry('lab_stall'))
    now.update(run_id='r2')
    result = changes.compare(now, [warned])
    assert result['regressed'] and result['last_good_run'] == 'r1' and result['first_bad_run'] == 'r2'
    assert result['causes'][0]['change'] == 'cpu_limit_added', result['causes']
    # the streak is followed back to the run before it began
    later = dict(now, run_id='r3')
    result = changes.compare(later, [dict(now, regressed=True), warned])
    assert result['last_good_run'] == 'r1' and result['first_bad_run'] == 'r2'
    # every earlier run regressed: nothing to diff from
    assert changes.last_good_and_first_bad(later, [dict(now, regressed=True)]) == (None, later)


def test_metric_worse_than_baseline():
    previous = [stored('healthy', 'r%d' % i, backlog_peak_ratio=v) for i, v in enumerate([0.1, 0.05, 0.1, 0.9, 0.1])]
    now = stored('healthy', 'now', backlog_peak_ratio=0.7)
    worse = changes.worse_metrics(now, previous)
    assert worse == [{'metric': 'backlog_peak_ratio', 'value': 0.7, 'baseline': 0.1}]
    assert changes.compare(now, previous)['regressed']
    # within the margin: not worse
    assert changes.worse_metrics(stored('healthy', 'now', backlog_peak_ratio=0.25), previous) == []


@pytest.mark.parametrize('value, worse', [(0.203, False), (0.49, False), (0.5, True), (1.0, True)])
def test_backlog_peak_below_half_the_limit_is_not_a_regression(value, worse):
    # a quiet host (peak 0) under load: 13 of 64 records is beyond margin and factor, below the floor
    previous = [stored('healthy', 'r%d' % i, backlog_peak_ratio=0.0) for i in range(3)]
    now = stored('healthy', 'now', backlog_peak_ratio=value)
    assert bool(changes.worse_metrics(now, previous)) is worse
    assert changes.compare(now, previous)['regressed'] is worse


@pytest.mark.parametrize('good, bad, expected', [
    ({'backlog_limit': 8192}, {'backlog_limit': 64}, 'backlog_limit lowered 8192 -> 64'),
    ({'rules_hash': 'a', 'rules_count': 2}, {'rules_hash': 'b', 'rules_count': 5}, 'audit rules added: 2 -> 5 rules'),
    ({'rules_hash': 'a', 'rules_count': 2}, {'rules_hash': 'b', 'rules_count': 2}, 'audit rules changed (2 rules)'),
    ({'consumer_exe': '/usr/sbin/auditd', 'consumer_version': '1:1'},
     {'consumer_exe': '/usr/sbin/auditd', 'consumer_version': '2:2'}, 'audit consumer /usr/sbin/auditd upgraded (build 1:1 -> 2:2)'),
    ({'consumer_exe': '/usr/sbin/auditd'}, {'consumer_exe': '/opt/ids/agent'}, 'audit consumer /usr/sbin/auditd -> /opt/ids/agent'),
    ({'limit_cores': 0.5}, {'limit_cores': None}, 'consumer CPU limit removed (was 0.5 cores)'),
])
def test_state_diff(good, bad, expected):
    assert [d[1] for d in changes.state_diff(good, bad)] == [expected]


def test_causes_ranked_by_what_regressed():
    good = {'backlog_limit': 8192, 'rules_hash': 'a', 'rules_count': 2, 'kernel': '6.1'}
    bad = {'backlog_limit': 64, 'rules_hash': 'b', 'rules_count': 3, 'kernel': '6.2', 'findings': []}
    lost = changes.probable_causes(good, bad, [{'id': 'audit_events_lost', 'severity': 'critical'}], [])
    assert lost[0]['change'] == 'backlog_limit_lowered'
    hot = changes.probable_causes(good, bad, [{'id': 'audited_hot_syscall', 'severity': 'warning'}], [])
    assert hot[0]['change'] == 'rules_added'


def test_coverage_states_and_ratio():
    current = {'a': {'status': 'ok'}, 'b': {'status': 'critical', 'regressed': True},
               'c': {'status': 'unreachable'}, 'd': {'status': 'failed'}}
    ago = {'e': 0, 'f': 2, 'g': 5}
    states = changes.coverage(current, ago, stale_after_runs=3, previous_state={'e': 'regressed', 'f': 'ok', 'g': 'ok'})
    assert {h: s['state'] for h, s in states.items()} == {
        'a': 'ok', 'b': 'regressed', 'c': 'unknown', 'd': 'unknown', 'e': 'regressed', 'f': 'ok', 'g': 'unknown'}
    assert states['g']['reason'] == 'not seen for 3 runs' and states['c']['reason'] == 'unreachable'
    assert changes.coverage_ratio(states) == pytest.approx(4 / 7.0)
    assert changes.coverage_ratio({}) == 0.0


def test_outcome_and_exit_status():
    ok = {'a': {'state': 'ok'}}
    finding_rows = [{'findings': [{'id': 'x', 'severity': 'warning'}]}]
    info_rows = [{'findings': [{'id': 'x', 'severity': 'info'}]}]
    assert changes.outcome(False, ok, info_rows) == 'ok'
    assert changes.outcome(False, ok, finding_rows) == 'findings'
    assert changes.outcome(False, dict(ok, b={'state': 'unknown'}), finding_rows) == 'partial'
    assert changes.outcome(False, dict(ok, b={'state': 'unknown'}, c={'state': 'regressed'}), []) == 'regressions'
    assert changes.outcome(True, ok, []) == 'failed'
    codes = [changes.EXIT[o] for o in changes.OUTCOME_ORDER]
    assert codes == sorted(codes) and changes.EXIT_USAGE not in codes and changes.EXIT_LOCKED not in codes


def test_inputs_are_not_modified():
    previous = [stored('healthy', 'r1')]
    now = changes.host_state(entry('lab_stall'))
    before = copy.deepcopy((now, previous))
    changes.compare(now, previous)
    assert (now, previous) == before
