"""Bad input to the pure layers: the CLI, the filters, the trace parsers, the reports and the
modules' argument checks. Each case gives a clear one-line error (or, for the reports, the
one bad host becomes ``failed`` and every other host keeps its entry), never a traceback.

The modules themselves, run as root through their entry point with the host compared
before and after, are in tests/integration/test_bad_inputs.py.
"""
import copy
import json
import os
import re

import pytest
from ansible.errors import AnsibleError, AnsibleFilterError
from ansible_collections.auditgap.fleet.plugins.action import diagnose_report as action
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
from ansible_collections.auditgap.fleet.plugins.filter import remediation as rem
from ansible_collections.auditgap.fleet.plugins.module_utils import cgroups, traceparse
from ansible_collections.auditgap.fleet.plugins.module_utils import report as R
from ansible_collections.auditgap.fleet.plugins.modules import cpu_limit

from auditgap import cli

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'findings')


def load(name):
    with open(os.path.join(FIX, name + '.json')) as handle:
        return json.load(handle)


# ---------------------------------------------------------------- CLI: exit 2, one line on stderr

CLI_CASES = [
    (['--sample-seconds', 'nan'], "'nan' is not a number between 0 and 300"),
    (['--sample-seconds', 'inf'], "'inf' is not a number between 0 and 300"),
    (['--sample-seconds', '1e9'], "'1e9' is not a number between 0 and 300"),
    (['--sample-seconds', '-1'], "'-1' is not a number between 0 and 300"),
    (['--sample-seconds', 'soon'], "'soon' is not a number"),
    (['--report-dir', 'reports/a\nb'], 'holds a control character'),
    (['--hosts', 'web\n'], 'holds a control character'),
    (['-i', 'inv\x1b[2J'], 'holds a control character'),
    (['--report-dir', ' '], 'empty value'),
    (['-e', 'diagnose_throttled_ratio_warn=abc'], "diagnose_throttled_ratio_warn: 'abc' is not a number"),
    (['-e', 'diagnose_audit_sample_seconds=nan'], "diagnose_audit_sample_seconds: 'nan' is not a number"),
    (['-e', 'diagnose_backlog_saturated_ratio=-0.5'], "'-0.5' is not a number between 0"),
    (['-e', 'novalue'], 'KEY=VALUE'),
    (['-e', 'report_dir=/tmp/x\ny'], 'control character'),
    (['--trace', 'sometimes'], "invalid choice: 'sometimes'"),
]


@pytest.mark.parametrize('argv,message', CLI_CASES, ids=[' '.join(a)[:40] for a, _m in CLI_CASES])
def test_cli_refuses_with_one_line(argv, message, capsys, monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError('the CLI accepted %r and would have run' % (argv,))
    monkeypatch.setattr(cli, 'diagnose', never)
    with pytest.raises(SystemExit) as exc:
        cli.main(['diagnose'] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert message in last, err
    assert 'Traceback' not in err


# ---------------------------------------------------------------- filters and module argument checks

def fleet_doc():
    hosts = [F.auditgap_host_summary(load(n), n) for n in ('seed_incident', 'hot_syscall', 'healthy')]
    return json.loads(R.to_json(R.fleet_document(hosts, '2026-11-25T20:00:00Z')))


def _edit(fn):
    doc = fleet_doc()
    fn(doc)
    return doc


def _rem(doc, role):
    return next(f['remediation'] for h in doc['hosts'] for f in h['findings']
                if (f.get('remediation') or {}).get('role') == role)


FLEET = 'auditgap_fleet_findings'
PLAN = 'auditgap_remediation_plan'
FILTER_CASES = [
    (FLEET, lambda: _edit(lambda d: d['hosts'][0]['findings'][0].update(host=None)), 'host: None is not string'),
    (FLEET, lambda: _edit(lambda d: d['hosts'].append('web-09')), "hosts[3]: 'web-09' is not object"),
    (FLEET, lambda: _edit(lambda d: d['hosts'][0]['findings'].append(42)), 'is not object'),
    (FLEET, lambda: _edit(lambda d: d['hosts'][0]['findings'][0].update(host='db-01')), "is not the entry's host"),
    (FLEET, lambda: _edit(lambda d: _rem(d, 'agent_cpu')['vars'].update(agent_cpu_force=True)),
     "unknown key 'agent_cpu_force'"),
    (FLEET, lambda: _edit(lambda d: _rem(d, 'agent_cpu')['vars'].update(
        agent_cpu_target={'cgroup_path': '/ids/../../../etc'})), 'cgroup_path'),
    (FLEET, lambda: _edit(lambda d: _rem(d, 'audit_rules').update(role='shell')), "'shell' is not one of"),
    (FLEET, lambda: _edit(lambda d: d.update(schema='auditgap.fleet/v0')), 'schema'),
    (FLEET, lambda: 'not json at all', "(document): 'not json at all' is not object"),
    (PLAN, lambda: 'web-01', 'expected a list'),
    (PLAN, lambda: [None], 'item 0: None is not object'),
    (PLAN, lambda: [{'id': 'audit_backlog_saturated', 'severity': 'critical',
                     'remediation': {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 8192}}}],
     'item 0: host is missing'),
    (PLAN, lambda: [{'role': 'agent_cpu', 'vars': {'agent_cpu_limit_cores': float('nan')}}], 'is not number'),
    (PLAN, lambda: [{'role': 'audit_backlog', 'vars': {'audit_backlog_limit': '8192; reboot'}}], 'is not integer'),
]


@pytest.mark.parametrize('name,make,message', FILTER_CASES, ids=['%s-%d' % (c[0], i) for i, c in enumerate(FILTER_CASES)])
def test_filters_refuse_with_one_line(name, make, message):
    with pytest.raises(AnsibleFilterError) as exc:
        if name == FLEET:
            rem.auditgap_fleet_findings(make())
        else:
            rem.auditgap_remediation_plan(make(), 'web-01')
    text = str(exc.value)
    assert message in text and '\n' not in text and text.endswith('nothing planned'), text


def test_a_null_host_finding_is_never_planned_for_every_host():
    finding = {'id': 'audit_backlog_saturated', 'severity': 'critical', 'host': None,
               'remediation': {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 8192}}}
    with pytest.raises(AnsibleFilterError):
        rem.auditgap_remediation_plan([finding], 'web-01')
    named = dict(finding, host='web-02')
    assert rem.auditgap_remediation_plan([named], 'web-01') == {}
    assert list(rem.auditgap_remediation_plan([named], 'web-02')) == ['audit_backlog']


THRESHOLD_CASES = [({'throttled_ratio_warn': 'abc'}, "threshold throttled_ratio_warn: 'abc' is not a number"),
                   ({'backlog_saturated_ratio': float('inf')}, 'backlog_saturated_ratio: inf'),
                   ({'hot_syscall_per_s': -5}, 'hot_syscall_per_s: -5 is not a number >= 0')]


@pytest.mark.parametrize('thresholds,message', THRESHOLD_CASES)
def test_a_bad_threshold_is_one_clear_error(thresholds, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        D.merge_thresholds(thresholds)
    # the report step: one error for the run, not every host failed
    with pytest.raises(AnsibleError, match=re.escape(message)):
        action.check_thresholds(thresholds)


MODULE_ARG_CASES = [
    (lambda: cpu_limit.check_target('pid=1'), 'target must be a mapping'),
    (lambda: cpu_limit.check_target({'cgroup_path': '/x/../../etc'}), 'without . or .. components'),
    (lambda: cpu_limit.check_target({'pid': 1}), 'process id above 1'),
    (lambda: cpu_limit.check_target({'pid': 3, 'systemd_unit': 'a.service'}), 'mutually exclusive'),
]


@pytest.mark.parametrize('call,message', MODULE_ARG_CASES)
def test_cpu_limit_target_checks(call, message):
    with pytest.raises(cpu_limit.Failure, match=re.escape(message)):
        call()


@pytest.mark.parametrize('options,message', [
    ({'sample_seconds': float('nan')}, 'sample_seconds: nan must be a number'),
    ({'sample_seconds': float('inf')}, 'sample_seconds: inf must be a number'),
    ({'cgroup_paths': ['/a/..']}, 'without . or .. components'),
    ({'cgroup_paths': ['/a\n/b']}, 'not a non-empty string'),
])
def test_cgroup_throttle_option_checks(options, message):
    assert message in cgroups.validate_options(options)


# ---------------------------------------------------------------- trace parsers: bad lines are noise

@pytest.mark.parametrize('lines', [
    [' 0) ! 1e400 us |  } /* schedule_timeout */'],
    [' 0) ! %s us |  } /* schedule_timeout */' % ('9' * 400)],
    [' 0)               |  schedule_timeout() {', ' 0) ! %s.5 us |  }' % ('9' * 320)],
    [' 0) ! nan us |  } /* schedule_timeout */'],
    [' 0) ! -5 us |  } /* schedule_timeout */'],
    ['inf |  0)               |  schedule_timeout() {', 'inf |  0) ! 1e999 us |  }'],
])
def test_function_graph_overflowing_durations_are_ignored(lines):
    result = traceparse.parse_function_graph(lines)
    assert result['slow_calls'] == [] and result['lines'] == len(lines)


def test_events_with_overflowing_timestamps_are_ignored():
    lines = ['  nginx-10  [000] .... 1e400: sys_enter_accept4: (fd: 3)',
             '  nginx-10  [000] .... -1e308: sys_enter_accept4: (fd: 3)',
             '  nginx-10  [000] .... 1e308: sys_exit_accept4 -> 0x3',
             '  nginx-10  [000] .... nan: sys_exit_accept4 -> 0x3',
             '  nginx-10  [000] .... %s.0: sys_enter_accept4: (fd: 3)' % ('9' * 400),
             '  nginx-10  [000] .... 1.0: sys_exit_accept4 -> 0x3']
    result = traceparse.parse_events(lines)
    assert result['events'] == 0 and result['window_s'] == 0.0


# ---------------------------------------------------------------- reports: one bad host never loses the others

def _entry(name, edit=None, host=None):
    facts = load(name)
    if edit:
        edit(facts)
    return F.auditgap_host_summary(facts, host or name)


def _timeline(facts):
    return facts['audit_status']['sample']['timeline']


REPORT_CASES = [
    ('lost inf', lambda f: f['audit_status']['status'].update(lost='inf')),
    ('lost NaN float', lambda f: f['audit_status']['status'].update(lost=float('nan'))),
    ('timeline point not numeric', lambda f: _timeline(f)[1].update(backlog='many', t_s='later')),
    ('timeline not a list', lambda f: f['audit_status']['sample'].update(timeline='none')),
    ('timeline item not a mapping', lambda f: _timeline(f).append(7)),
    ('backlog limit huge', lambda f: f['audit_status']['status'].update(backlog_limit=1e308)),
    ('infinite fact', lambda f: f['audit_status'].update(extra=float('inf'))),
    ('record_rates not a mapping', lambda f: f['audit_status']['sample'].update(record_rates=7)),
    ('record_rates rows not lists', lambda f: f['audit_status']['sample'].update(
        record_rates={'seconds': 'x', 'by_syscall': 5, 'top_talkers': 'none'})),
    ('record_rates row values bad', lambda f: f['audit_status']['sample'].update(
        record_rates={'seconds': float('nan'), 'by_syscall': [{'syscall': 'accept4', 'events': 'many'}, 3],
                      'top_talkers': [{'syscall': 'accept4', 'exe': 5}]})),
]


@pytest.mark.parametrize('what,edit', REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_a_bad_host_value_never_loses_the_fleet_report(what, edit, tmp_path):
    entries = R.checked_entries([_entry('seed_incident', edit, host='bad'), _entry('healthy')])
    doc = R.fleet_document(entries, '2026-11-25T20:00:00Z', report_dir=str(tmp_path))
    files = action.write_reports(doc, str(tmp_path), ['json', 'md', 'html', 'prom'])
    with open(tmp_path / 'fleet.json') as handle:
        written = json.load(handle)
    hosts = {h['host']: h for h in written['hosts']}
    assert set(hosts) == {'bad', 'healthy'} and hosts['healthy']['status'] == 'ok'
    if hosts['bad']['status'] == 'failed':
        assert hosts['bad']['error'].startswith('report failed: ') and '\n' not in hosts['bad']['error']
    assert 'auditgap_host_reachable{host="bad"} 1' in (tmp_path / 'fleet.prom').read_text()
    assert len(files) == 6


def test_infinite_fact_makes_only_that_host_failed():
    entries = R.checked_entries([_entry('seed_incident', lambda f: f['audit_status'].update(extra=float('inf')),
                                       host='bad'), _entry('healthy')])
    assert [e['status'] for e in entries] == ['failed', 'ok']
    assert 'Out of range float values are not JSON compliant' in entries[0]['error']


def test_host_files_unique_and_bounded(tmp_path):
    names = ['web/1', 'web_1', 'h' * 259, 'fleet', '../../etc/cron.d/x', 'web:1', '.hidden']
    entries = [F.auditgap_host_summary({}, n, error='down', reachable=False) for n in names]
    doc = R.fleet_document(entries, '2026-11-25T20:00:00Z')
    action.write_reports(doc, str(tmp_path), ['json'])
    files = sorted(os.listdir(tmp_path))
    assert len(files) == len(names) + 1 and 'fleet.json' in files
    assert all(len(f.encode()) <= 255 and '/' not in f for f in files)
    for entry in json.loads((tmp_path / 'fleet.json').read_text())['hosts']:
        assert json.loads((tmp_path / entry['report_file']).read_text())['host'] == entry['host']


def test_temp_files_never_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('keep')
    report_dir = tmp_path / 'r'
    report_dir.mkdir()
    # every name the old writer would have used for this process
    for name in ('fleet.json', 'fleet.md', 'fleet.html', 'fleet.prom', 'healthy.json'):
        os.symlink(str(victim), str(report_dir / ('%s.tmp.%d' % (name, os.getpid()))))
    doc = R.fleet_document([_entry('healthy')], '2026-11-25T20:00:00Z')
    action.write_reports(doc, str(report_dir), ['json', 'md', 'html', 'prom'])
    assert victim.read_text() == 'keep'
    assert json.loads((report_dir / 'fleet.json').read_text())['hosts'][0]['host'] == 'healthy'


def test_embedded_svg_cannot_run_script():
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><foreignObject><img src=x onerror=alert(2)></foreignObject></svg>'
    html = R.render_html(R.fleet_document([_entry('healthy')], 'x'), timeline_svg=svg)
    # the page's own search script is the only one; nothing of the SVG is markup in the page
    assert html.count('<script') == 1 and 'alert(' not in html and 'onerror' not in html
    assert '<foreignObject' not in html


def test_timeline_svg_that_is_no_svg_is_not_embedded(tmp_path):
    page = tmp_path / 'lab-timeline.svg'
    page.write_text('<html><script>alert(1)</script></html>')
    assert R.read_svg(str(page)) == (None, 'not an SVG document')


def test_markdown_escapes_host_names_and_messages():
    hostile = '[click](http://evil.example) <img src=x> | # `x`'
    doc = R.fleet_document([F.auditgap_host_summary({}, hostile, error='boom `| <b>`', reachable=False),
                            copy.deepcopy(_entry('healthy', host='- * item'))], 'x')
    md = R.render_markdown(doc)
    assert '### \\[click\\](http://evil.example) \\<img src=x\\> \\| \\# \\`x\\`: UNREACHABLE' in md
    assert '**Error:** `` boom `\\| <b>` ``' in md
    assert '\\- \\* item' in md and '\n- * item' not in md
