"""What AWX / Automation Controller sees of a job (root, real kernel): the set_stats data
that ansible-runner hands to AWX as the job's artifacts (the playbook_on_stats event's
artifact_data), with the reports under report_base_dir, and a remediate run fed the
diagnosis's artifacts as extra vars, as an AWX workflow's next node gets them."""
import json
import os
import sys

import ansible_runner
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def run(tmp_path, name, playbook, extravars):
    inventory = tmp_path / 'inventory.ini'
    inventory.write_text('[fleet]\nlocalhost ansible_connection=local '
                         'ansible_python_interpreter="{{ ansible_playbook_python }}"\n')
    private = tmp_path / ('runner-' + name)
    private.mkdir()
    env_path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')])
    result = ansible_runner.run(
        private_data_dir=str(private), project_dir=ROOT,
        playbook=os.path.join(ROOT, 'playbooks', playbook), inventory=str(inventory), extravars=extravars,
        envvars={'ANSIBLE_CONFIG': os.path.join(ROOT, 'ansible.cfg'), 'ANSIBLE_NOCOLOR': '1', 'PATH': env_path},
        quiet=True)
    stats = [e for e in result.events if e.get('event') == 'playbook_on_stats']
    assert result.rc == 0 and stats, result.stdout.read()[-4000:]
    return stats[-1]['event_data'].get('artifact_data') or {}, list(result.events)


def fact(events, task, name):
    """A fact a set_fact task set (the runner's event for it)."""
    ok = [e for e in events if e.get('event') == 'runner_on_ok' and e['event_data'].get('task') == task]
    return ok[-1]['event_data']['res']['ansible_facts'][name]


def test_diagnose_artifacts_and_a_remediate_node_fed_with_them(tmp_path):
    base = tmp_path / 'persistent'
    artifacts, _events = run(tmp_path, 'diagnose', 'diagnose.yml', {
        'report_base_dir': str(base), 'report_stats_findings': True, 'diagnose_trace': 'never',
        'diagnose_audit_sample_seconds': 0, 'diagnose_cgroup_sample_seconds': 0})
    # the reports went to report_base_dir/<timestamp>, latest points at it
    latest = base / 'latest'
    assert latest.is_symlink() and (latest / 'fleet.json').is_file()
    report = artifacts['auditgap_report']
    assert report['report_dir'] == os.path.realpath(str(latest))
    assert report['summary']['hosts'] == 1
    assert report['summary_lines'] and report['summary_lines'][0].startswith('auditgap')
    assert isinstance(artifacts['remediate_findings'], list)
    assert all(f['host'] == 'localhost' for f in artifacts['remediate_findings'])

    # the next workflow node: remediate (dry run) with the artifacts as extra vars, no report_base_dir
    rem, _events = run(tmp_path, 'remediate', 'remediate.yml', dict(artifacts, remediate_settle_seconds=0))
    assert rem['auditgap_remediation']['mode'] == 'dry-run'
    assert rem['auditgap_remediation']['report'] is None
    assert rem['auditgap_remediation']['summary']['failed_roles'] == 0


def test_remediate_reads_the_reports_of_a_sliced_run(tmp_path):
    """Job slicing: each slice wrote <dir>/<slice>/fleet.json; remediate reads them all."""
    sliced = tmp_path / 'workflow-42'
    for n, host in enumerate(('web-01', 'web-02')):
        (sliced / ('job-%d' % n)).mkdir(parents=True)
        finding = {'id': 'audit_backlog_saturated', 'severity': 'warning', 'summary': 'backlog full',
                   'remediation': {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 8192}}}
        (sliced / ('job-%d' % n) / 'fleet.json').write_text(json.dumps(
            {'schema': 'auditgap.fleet/v1',
             'hosts': [{'host': host, 'status': 'warning', 'findings': [finding]}]}))
    _rem, events = run(tmp_path, 'remediate', 'remediate.yml', {'remediate_report_dir': str(sliced)})
    findings = fact(events, 'Collect the findings', 'remediate_all_findings')
    assert sorted(f['host'] for f in findings) == ['web-01', 'web-02']
