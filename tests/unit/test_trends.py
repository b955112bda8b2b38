"""auditgap.trends: finding history (first seen, resolved, flapping) and the renderings."""
import re

from auditgap import trends


def row(n, findings=(), state='ok', status='ok', peak=0.1, throttled=0.0, lost=0.0):
    return {'run': n, 'run_id': 'r%02d' % n, 'started_at': 1.7e9 + n * 3600, 'state': state, 'status': status,
            'backlog_peak_ratio': peak, 'throttled_ratio': throttled, 'lost_per_s': lost,
            'findings': [(f, 'critical') for f in findings]}


ROWS = [
    row(1),
    row(2, ['audit_consumer_throttled'], 'regressed', 'critical', 1.0, 0.98, 3.0),
    row(3, ['audit_consumer_throttled'], 'regressed', 'critical', 1.0, 0.97, 2.0),
    row(4),
    row(5, ['audit_events_lost']),
    row(6, state='unknown', status='unreachable', peak=None, throttled=None, lost=None),  # neither ends nor continues
    row(7, ['audit_events_lost']),
    row(8),
    row(9, ['audit_events_lost']),
    row(10),
    row(11, ['audit_events_lost']),
]


def test_finding_history():
    items = {i['id']: i for i in trends.finding_history(ROWS)}
    throttled = items['audit_consumer_throttled']
    assert (throttled['first_seen'], throttled['last_seen'], throttled['resolved']) == ('r02', 'r03', 'r04')
    assert throttled['episodes'] == 1 and not throttled['present'] and not throttled['flapping']
    lost = items['audit_events_lost']
    assert lost['first_seen'] == 'r05' and lost['last_seen'] == 'r11' and lost['present'] and lost['resolved'] is None
    assert lost['episodes'] == 3 and lost['flapping'] and lost['runs'] == 4
    # present findings first
    assert [i['id'] for i in trends.finding_history(ROWS)] == ['audit_events_lost', 'audit_consumer_throttled']


def test_findings_as_dicts_too():
    rows = [dict(row(1), findings=[{'id': 'x', 'severity': 'warning'}]), row(2)]
    assert trends.finding_history(rows)[0]['resolved'] == 'r02'


def test_host_summary_and_table():
    summ = trends.host_summary('web', ROWS)
    assert summ['runs'] == 11 and summ['first_run'] == 'r01' and summ['last_run'] == 'r11' and summ['last_state'] == 'ok'
    assert summ['series']['throttled_ratio'][:3] == [0.0, 0.98, 0.97] and summ['series']['lost_per_s'][5] is None
    table = trends.render_table([summ, trends.host_summary('db', [row(1)])])
    assert 'web: 11 run(s) r01 .. r11, last state ok (ok)' in table
    assert re.search(r'audit_events_lost +critical +r05 +r11 +present +3 yes', table)
    assert re.search(r'audit_consumer_throttled +critical +r02 +r03 +r04 +1 no', table)
    assert 'db: 1 run(s)' in table and 'no findings' in table


def test_html_is_self_contained():
    html = trends.render_html([trends.host_summary('web<1>', ROWS)], '2026-12-01T10:00:00Z', '/r/history.db')
    assert html.startswith('<!DOCTYPE html>') and '<script' not in html
    assert not re.search(r'(src|href)=', html)
    assert html.count('<svg') == 3 and 'web&lt;1&gt;' in html and 'web<1>' not in html
    assert '<td class="flapping">yes</td>' in html


def test_worst_first():
    names = [s['host'] for s in trends.worst_first([trends.host_summary('a', [row(1)]),
                                                     trends.host_summary('b', [row(1, state='unknown')]),
                                                     trends.host_summary('c', [row(1, state='regressed')])])]
    assert names == ['c', 'b', 'a']
