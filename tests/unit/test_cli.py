"""auditgap CLI: argument handling and the runner call (ansible-runner faked)."""
import datetime
import io
import json
import os
import re

import pytest

from auditgap import __version__, cli

NOW = datetime.datetime(2026, 11, 25, 20, 0, 0, tzinfo=datetime.UTC)


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_version_matches_galaxy(project_root):
    with open(os.path.join(project_root, 'galaxy.yml')) as handle:
        assert f'version: {__version__}\n' in handle.read()


def test_defaults(tmp_path):
    kwargs, report_dir, is_default = cli.build_run(parse('diagnose'), str(tmp_path), NOW)
    assert report_dir == str(tmp_path / 'reports' / '20261125T200000Z') and is_default
    assert kwargs['extravars'] == {'report_dir': report_dir}
    assert kwargs['playbook'].endswith('playbooks/diagnose.yml')
    assert kwargs['inventory'].endswith('inventory.example')
    assert kwargs['envvars']['ANSIBLE_CONFIG'].endswith('ansible.cfg')
    assert kwargs['quiet'] is True


def test_options(tmp_path):
    args = parse('diagnose', '-i', 'inv.ini', '--hosts', 'web:&prod', '--report-dir', 'out/r1',
                 '--sample-seconds', '2.5', '--trace', 'never', '-e', 'diagnose_throttled_ratio_warn=0.3',
                 '-e', 'x=a=b')
    kwargs, report_dir, is_default = cli.build_run(args, str(tmp_path), NOW)
    assert report_dir == str(tmp_path / 'out' / 'r1') and not is_default
    assert kwargs['inventory'] == str(tmp_path / 'inv.ini')
    assert kwargs['extravars'] == {'report_dir': report_dir, 'diagnose_hosts': 'web:&prod',
                                   'diagnose_audit_sample_seconds': 2.5, 'diagnose_cgroup_sample_seconds': 2.5,
                                   'diagnose_trace': 'never', 'diagnose_throttled_ratio_warn': '0.3', 'x': 'a=b'}


@pytest.mark.parametrize('bad', ['novalue', '=x', '1abc=2', 'a-b=1'])
def test_bad_extra_vars(bad):
    with pytest.raises(ValueError):
        cli.parse_extra([bad])


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(['diagnose', '--trace', 'sometimes'])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(['diagnose', '-e', 'oops'])
    assert exc.value.code == 2
    assert 'KEY=VALUE' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_limits_match_the_collection():
    from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import DEFAULT_THRESHOLDS
    from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts
    assert cli.MAX_SAMPLE_SECONDS == auditfacts.MAX_SAMPLE_SECONDS
    assert {'diagnose_' + key for key in DEFAULT_THRESHOLDS} <= cli.numeric_vars()


class FakeResult:
    def __init__(self, status='successful', rc=0):
        self.status, self.rc = status, rc
        self.stdout = io.StringIO('PLAY RECAP')


def fake_runner(doc):
    calls = []

    def run(private_data_dir, **kwargs):
        calls.append(kwargs)
        assert os.path.isdir(private_data_dir)
        if doc is not None:
            report_dir = kwargs['extravars']['report_dir']
            os.makedirs(report_dir)
            with open(os.path.join(report_dir, 'fleet.json'), 'w') as handle:
                json.dump(doc, handle)
            return FakeResult()
        return FakeResult('failed', 2)
    return run, calls


def doc_with(**statuses):
    by_status = {s: 0 for s in ('critical', 'warning', 'failed', 'unreachable', 'info', 'ok')}
    by_status.update(statuses)
    return {'generated_at': '2026-11-25T20:00:00Z', 'report_dir': '/r', 'hosts': [],
            'summary': {'hosts': sum(by_status.values()), 'by_status': by_status}}


def test_diagnose_healthy_exit_0_and_latest(tmp_path):
    run, calls = fake_runner(doc_with(ok=2))
    out = io.StringIO()
    rc = cli.diagnose(parse('diagnose'), runner=run, cwd=str(tmp_path), now=NOW, out=out)
    assert rc == 0 and len(calls) == 1
    assert os.readlink(str(tmp_path / 'reports' / 'latest')) == '20261125T200000Z'
    assert '2 host(s)' in out.getvalue()


def test_diagnose_findings_exit_1_no_latest_for_explicit_dir(tmp_path):
    run, _calls = fake_runner(doc_with(ok=1, unreachable=1))
    rc = cli.diagnose(parse('diagnose', '--report-dir', 'mine'), runner=run, cwd=str(tmp_path), now=NOW,
                      out=io.StringIO())
    assert rc == 1
    assert not os.path.lexists(str(tmp_path / 'latest'))


def test_diagnose_failed_run_exit_2(tmp_path):
    run, _calls = fake_runner(None)
    out = io.StringIO()
    assert cli.diagnose(parse('diagnose'), runner=run, cwd=str(tmp_path), now=NOW, out=out) == 2
    assert 'diagnose failed' in out.getvalue()


def test_ensure_ansible_on_path(tmp_path):
    (tmp_path / 'ansible-playbook').write_text('')
    env = {'PATH': '/usr/bin'}
    cli.ensure_ansible_on_path(env, str(tmp_path / 'python'))
    assert env['PATH'] == str(tmp_path) + os.pathsep + '/usr/bin'
    cli.ensure_ansible_on_path(env, str(tmp_path / 'python'))
    assert env['PATH'].count(str(tmp_path)) == 1


# ---------------------------------------------------------------- auditgap audit (runner faked: no playbook runs)

def audit_doc(*entries):
    report = cli.report
    return report.fleet_document(list(entries), '2026-12-01T10:00:00Z')


def fixture_entry(name, host='web'):
    from ansible_collections.auditgap.fleet.plugins.filter import findings
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings', name + '.json')) as handle:
        return findings.auditgap_host_summary(json.load(handle), host)


def audit_runner(doc, seen):
    """A runner that writes ``doc`` as the report (None: the playbook failed, no report)."""
    def run(private_data_dir, **kwargs):
        seen.append(dict(kwargs, private_data_dir=private_data_dir))
        if doc is None:
            return FakeResult('failed', 2)
        report_dir = kwargs['extravars']['report_dir']
        os.makedirs(report_dir)
        with open(os.path.join(report_dir, 'fleet.json'), 'w') as handle:
            json.dump(dict(doc, report_dir=report_dir), handle)
        return FakeResult()
    return run


class Clock:
    def __init__(self, start=1796119200.0):
        self.now = start

    def __call__(self):
        self.now += 1.5
        return self.now


def run_audit(tmp_path, doc, *argv, hosts=('web',), clock=None, every=None):
    seen, out, err = [], io.StringIO(), io.StringIO()
    args = parse('audit', '--report-root', str(tmp_path / 'reports'), *argv)
    rc = cli.audit(args, runner=audit_runner(doc, seen), cwd=str(tmp_path), clock=clock or Clock(), out=out, err=err,
                   list_hosts=lambda inventory, pattern: (list(hosts), list(every or hosts) + ['other']))
    return rc, out.getvalue(), err.getvalue(), seen


def test_audit_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(['audit', '--help'])
    text = capsys.readouterr().out
    for line in ('0  ok', '1  findings', '2  usage error', '3  partial coverage', '4  regressions', '5  run failed',
                 '6  another auditgap audit holds the lock'):
        assert line in text


def test_audit_two_runs_regression_what_changed(tmp_path):
    prom = tmp_path / 'textfile'
    prom.mkdir()
    clock = Clock()
    rc, out, err, seen = run_audit(tmp_path, audit_doc(fixture_entry('healthy')), '--prom-dir', 'textfile', clock=clock)
    assert rc == 0, err
    first = seen[0]
    assert first['ident'] == os.path.basename(first['extravars']['report_dir'])
    assert first['private_data_dir'] == str(tmp_path / 'reports' / '.runner')
    assert first['rotate_artifacts'] == 10 and first['cancel_callback']() is False
    assert 'audit %s: ok (exit 0)' % first['ident'] in out
    rc, out, err, seen = run_audit(tmp_path, audit_doc(fixture_entry('lab_stall')), '--prom-dir', 'textfile',
                                   clock=clock)
    assert rc == 4, out + err
    assert 'web: REGRESSED; new: ' in out and 'probable cause 1: consumer CPU limit added' in out
    report_dir = seen[0]['extravars']['report_dir']
    with open(os.path.join(report_dir, 'fleet.json')) as handle:
        doc = json.load(handle)
    since = doc['since_last_run']
    assert since['previous_run'] == first['ident'] and since['coverage'] == {
        'ratio': 1.0, 'hosts': {'ok': 0, 'regressed': 1, 'unknown': 0}}
    web = since['hosts'][0]
    assert web['regressed'] and web['causes'][0]['change'] == 'cpu_limit_added' and web['last_good_run'] == first['ident']
    for name in ('fleet.md', 'fleet.html'):
        with open(os.path.join(report_dir, name)) as handle:
            assert 'Since last run' in handle.read()
    text = (prom / 'auditgap.prom').read_text()
    assert 'auditgap_finding_new{host="web",id="audit_consumer_throttled",severity="critical"} 1' in text
    assert 'auditgap_runs_total{outcome="ok"} 1' in text and 'auditgap_runs_total{outcome="regressions"} 1' in text
    assert text == open(os.path.join(report_dir, 'auditgap.prom')).read()
    assert os.readlink(str(tmp_path / 'reports' / 'latest')) == os.path.basename(report_dir)
    # the same state again: no longer new, still regressed (until the host is good again)
    rc, out, err, _seen = run_audit(tmp_path, audit_doc(fixture_entry('lab_stall')), clock=clock)
    assert rc == 4 and 'new: ' not in out, out + err
    rc, out, err, _seen = run_audit(tmp_path, audit_doc(fixture_entry('healthy')), clock=clock)
    assert rc == 0 and 'resolved: audit_backlog_saturated' in out, out + err


def test_audit_partial_coverage_and_stale_hosts(tmp_path):
    from ansible_collections.auditgap.fleet.plugins.filter import findings
    clock = Clock()
    both = audit_doc(fixture_entry('healthy', 'web'), fixture_entry('healthy', 'db'))
    assert run_audit(tmp_path, both, hosts=('web', 'db'), clock=clock)[0] == 0
    down = findings.auditgap_host_summary({}, 'db', reachable=False, error='ssh: connection refused')
    rc, out, _err, seen = run_audit(tmp_path, audit_doc(fixture_entry('healthy', 'web'), down), hosts=('web', 'db'),
                                    clock=clock)
    assert rc == 3 and 'coverage 50% (1 ok, 0 regressed, 1 unknown)' in out
    with open(os.path.join(seen[0]['extravars']['report_dir'], 'auditgap.prom')) as handle:
        assert 'auditgap_scan_coverage_ratio 0.5\n' in handle.read()
    # db leaves the audited pattern: it keeps its last state for --stale-after-runs runs, then is unknown
    web_only = audit_doc(fixture_entry('healthy', 'web'))
    codes = [run_audit(tmp_path, web_only, '--stale-after-runs', '2', clock=clock, every=('web', 'db'))[0]
             for _ in range(2)]
    assert codes == [3, 3]  # db was unknown (unreachable) when last stored: never counted healthy
    # a host seen ok, then out of the pattern: ok for a run, unknown once not seen for N runs
    clock2 = Clock()
    other = tmp_path / 'other'
    other.mkdir()
    assert run_audit(other, both, hosts=('web', 'db'), clock=clock2)[0] == 0
    codes = [run_audit(other, web_only, '--stale-after-runs', '2', clock=clock2, every=('web', 'db'))
             for _ in range(3)]
    assert [c[0] for c in codes] == [0, 0, 3]
    assert 'db: UNKNOWN (not seen for 2 runs)' in codes[2][1]


def test_audit_failed_run_is_stored_and_exit_5(tmp_path):
    clock = Clock()
    prom = tmp_path / 'textfile'
    prom.mkdir()
    assert run_audit(tmp_path, audit_doc(fixture_entry('healthy')), '--prom-dir', str(prom), clock=clock)[0] == 0
    before = (prom / 'auditgap.prom').read_text()
    rc, out, err, _seen = run_audit(tmp_path, None, '--prom-dir', str(prom), clock=clock)
    assert rc == 5 and 'failed' in err and out == ''
    text = (prom / 'auditgap.prom').read_text()
    assert 'auditgap_last_run_outcome{outcome="failed"} 1' in text and 'auditgap_scan_coverage_ratio 0\n' in text
    success = [line for line in before.splitlines() if line.startswith('auditgap_last_success_timestamp_seconds')]
    assert success and success[0] in text  # the last success is still the first run's


def test_audit_sigterm_stores_nothing(tmp_path):
    import signal
    clock = Clock()
    prom = tmp_path / 'textfile'
    prom.mkdir()
    assert run_audit(tmp_path, audit_doc(fixture_entry('healthy')), '--prom-dir', str(prom), clock=clock)[0] == 0
    before = (prom / 'auditgap.prom').read_text()
    seen = []

    def killed(private_data_dir, **kwargs):
        seen.append(kwargs)
        os.makedirs(kwargs['extravars']['report_dir'])
        with open(os.path.join(kwargs['extravars']['report_dir'], 'web.json'), 'w') as handle:
            handle.write('{"partial": ')
        os.kill(os.getpid(), signal.SIGTERM)
        assert kwargs['cancel_callback']() is True  # the runner stops the playbook
        return FakeResult('canceled', 254)

    err = io.StringIO()
    args = parse('audit', '--report-root', str(tmp_path / 'reports'), '--prom-dir', str(prom))
    with pytest.raises(cli.AuditError, match='interrupted by signal 15') as exc:
        cli.audit(args, runner=killed, cwd=str(tmp_path), clock=clock, out=io.StringIO(), err=err,
                  list_hosts=lambda i, p: (['web'], ['web']))
    assert exc.value.code == 5
    assert not os.path.exists(seen[0]['extravars']['report_dir'])
    assert (prom / 'auditgap.prom').read_text() == before
    from auditgap import history
    conn = history.connect(str(tmp_path / 'reports' / 'history.db'))
    assert len(history.runs(conn)) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_audit_bad_input_messages(tmp_path, capsys, monkeypatch):
    from auditgap import history
    monkeypatch.chdir(tmp_path)
    root = tmp_path / 'reports'
    # no such textfile directory: usage error before anything runs
    assert cli.main(['audit', '--report-root', str(root), '--prom-dir', str(tmp_path / 'nope')]) == 2
    assert 'textfile directory' in capsys.readouterr().err and not root.exists()
    # another run holds the lock
    root.mkdir()
    with history.run_lock(str(root / 'history.db')):
        assert cli.main(['audit', '--report-root', str(root)]) == 6
    assert 'another auditgap audit is running' in capsys.readouterr().err
    # a corrupt database
    (root / 'history.db').write_bytes(b'garbage' * 1000)
    assert cli.main(['audit', '--report-root', str(root)]) == 5
    assert 'not usable' in capsys.readouterr().err
    # a newer schema
    (root / 'history.db').unlink()
    import sqlite3
    conn = sqlite3.connect(str(root / 'history.db'))
    conn.execute('PRAGMA user_version = 99')
    conn.close()
    assert cli.main(['audit', '--report-root', str(root)]) == 5
    assert 'newer than this auditgap' in capsys.readouterr().err


def test_audit_inventory_without_hosts(tmp_path):
    with pytest.raises(cli.AuditError, match='no hosts matching') as exc:
        run_audit(tmp_path, audit_doc(), hosts=())
    assert exc.value.code == 2
    inventory = tmp_path / 'empty.ini'
    inventory.write_text('[fleet]\n')
    assert cli.inventory_hosts(str(inventory), 'fleet') == ([], [])


def test_audit_read_only_report_root(tmp_path, capsys):
    import subprocess
    root = tmp_path / 'ro'
    root.mkdir()
    if os.geteuid() == 0:
        subprocess.run(['mount', '--bind', str(root), str(root)], check=True)
        subprocess.run(['mount', '-o', 'remount,bind,ro', str(root)], check=True)
    else:
        root.chmod(0o555)
    try:
        assert cli.main(['audit', '--report-root', str(root)]) == 5
        assert 'cannot write under the report root' in capsys.readouterr().err
        assert os.listdir(str(root)) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(['umount', str(root)], check=True)
        else:
            root.chmod(0o755)


def test_history_prune(tmp_path, capsys):
    from auditgap import history
    root = tmp_path / 'reports'
    assert cli.main(['history', '--report-root', str(root), 'prune', '--keep-days', '1']) == 2
    clock = Clock(1000.0)
    run_audit(tmp_path, audit_doc(fixture_entry('healthy')), clock=clock)
    capsys.readouterr()
    assert cli.main(['history', '--report-root', str(root), 'prune', '--keep-days', '1']) == 0
    assert '1 run(s) older than 1 day(s) removed' in capsys.readouterr().out
    assert history.runs(history.connect(str(root / 'history.db'))) == []


def test_progress_lines():
    stream = io.StringIO()
    ticks = iter([0.0, 1.0, 2.5, 4.0])
    progress = cli.Progress(2, stream, tty=False, clock=lambda: next(ticks))
    progress({'event': 'runner_on_ok', 'event_data': {'host': 'a', 'task_action': 'auditgap.fleet.diagnose_gather'}})
    progress({'event': 'runner_on_skipped', 'event_data': {'host': 'a', 'task_action': 'auditgap.fleet.ftrace_sample'}})
    progress({'event': 'runner_on_unreachable', 'event_data': {'host': 'b', 'task_action': 'auditgap.fleet.diagnose_gather'}})
    assert progress({'event': 'verbose'}) is True
    assert stream.getvalue() == ('auditgap: 1/2 hosts done, 1.0 s elapsed\nauditgap: 2/2 hosts done, 2.5 s elapsed\n')
    tty = io.StringIO()
    progress = cli.Progress(None, tty, tty=True, clock=lambda: 0.0)
    progress({'event': 'runner_on_unreachable', 'event_data': {'host': 'b'}})
    progress.finish()
    assert tty.getvalue() == '\rauditgap: 1/? hosts done, 0.0 s elapsed\x1b[K\n'


def test_progress_quiet_when_not_a_terminal():
    assert cli.want_progress(parse('diagnose'), io.StringIO()) is False
    assert cli.want_progress(parse('diagnose', '--progress'), io.StringIO()) is True
    assert cli.want_progress(parse('audit', '--no-progress'), io.StringIO()) is False


def test_history_table_json_html(tmp_path, capsys):
    clock = Clock()
    for name in ('healthy', 'lab_stall', 'lab_stall', 'healthy'):
        run_audit(tmp_path, audit_doc(fixture_entry(name)), clock=clock)
    capsys.readouterr()
    root = str(tmp_path / 'reports')
    assert cli.main(['history', '--report-root', root]) == 0
    table = capsys.readouterr().out
    assert 'web: 4 run(s)' in table and 'last state ok' in table
    assert re.search(r'audit_consumer_throttled +critical +\S+ +\S+ +\S+ +1 no', table)
    assert cli.main(['history', '--report-root', root, '--format', 'json', '--runs', '2']) == 0
    doc = json.loads(capsys.readouterr().out)
    web = doc['hosts'][0]
    assert web['host'] == 'web' and web['runs'] == 2 and len(web['series']['backlog_peak_ratio']) == 2
    assert cli.main(['history', '--report-root', root, '--format', 'html']) == 0
    assert (tmp_path / 'reports' / 'history.html').read_text().count('<svg') == 3
    assert cli.main(['history', '--report-root', root, '--host', 'nobody']) == 2
    assert 'no such host' in capsys.readouterr().err
    assert cli.main(['history', '--report-root', str(tmp_path / 'none')]) == 5
    assert 'no history database' in capsys.readouterr().err


def test_schedule_lateness(tmp_path):
    assert cli.schedule_lateness(10000.0, 6000.0, 3600) == 400.0
    assert cli.schedule_lateness(9000.0, 6000.0, 3600) == 0.0
    assert cli.schedule_lateness(9000.0, None, 3600) is None and cli.schedule_lateness(9000.0, 1.0, None) is None
    clock = Clock()
    run_audit(tmp_path, audit_doc(fixture_entry('healthy')), clock=clock)
    clock.now += 7200
    rc, _out, err, seen = run_audit(tmp_path, audit_doc(fixture_entry('healthy')), '--interval', '3600',
                                    '--max-lateness', '600', clock=clock)
    assert rc == 0 and 'late (more than --max-lateness 600 s' in err
    with open(os.path.join(seen[0]['extravars']['report_dir'], 'auditgap.prom')) as handle:
        late = re.search(r'^auditgap_schedule_lateness_seconds (\S+)$', handle.read(), re.M)
    assert 3600 < float(late.group(1)) < 3700
    with pytest.raises(cli.AuditError, match='needs --interval'):
        run_audit(tmp_path, None, '--max-lateness', '5')
