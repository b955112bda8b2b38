"""auditgap CLI: argument handling and the runner call (ansible-runner faked)."""
import datetime
import io
import json
import os

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


def test_negative_sample_seconds(tmp_path):
    with pytest.raises(ValueError):
        cli.build_run(parse('diagnose', '--sample-seconds', '-1'), str(tmp_path), NOW)


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
