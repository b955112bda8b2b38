"""diagnose.yml on this machine (root, real kernel): healthy, during a real stall,
and with an unreachable host in the inventory."""
import json
import os
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(ROOT, 'playbooks', 'diagnose.yml')
FLEET_FILES = ('fleet.json', 'fleet.md', 'fleet.html', 'fleet.prom')

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def write_inventory(tmp_path, bogus=False):
    lines = ['[fleet]', 'localhost ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"']
    if bogus:
        # loopback, a port nothing listens on: refused at once
        lines.append('bogus ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh ansible_user=nobody')
    path = tmp_path / 'inventory.ini'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def run_diagnose(tmp_path, inventory, *extra, timeout=240):
    report_dir = tmp_path / 'report'
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    cmd = [os.path.join(ROOT, '.venv', 'bin', 'ansible-playbook'), PLAYBOOK, '-i', inventory,
           '-e', f'report_dir={report_dir}'] + list(extra)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in FLEET_FILES:
        assert (report_dir / name).is_file(), name
    with open(report_dir / 'fleet.json') as handle:
        doc = json.load(handle)
    return doc, report_dir, proc.stdout


def host(doc, name):
    return next(h for h in doc['hosts'] if h['host'] == name)


def test_healthy_localhost_and_unreachable_host(tmp_path):
    doc, report_dir, stdout = run_diagnose(
        tmp_path, write_inventory(tmp_path, bogus=True),
        '-e', 'diagnose_audit_sample_seconds=1', '-e', 'diagnose_cgroup_sample_seconds=1')
    local = host(doc, 'localhost')
    assert local['reachable'] is True and local['error'] is None
    assert local['facts']['audit_status']['supported'] is True
    serious = [f for f in local['findings'] if f['severity'] in ('critical', 'warning')]
    assert serious == [], serious
    assert local['status'] in ('ok', 'info')
    # the unreachable host is in the report, with its error, and did not stop it
    bogus = host(doc, 'bogus')
    assert bogus['reachable'] is False and bogus['status'] == 'unreachable'
    assert 'port 1' in bogus['error'] or 'refused' in bogus['error'].lower()
    assert doc['summary']['hosts'] == 2 and doc['summary']['unreachable'] == 1
    assert (report_dir / 'localhost.json').is_file() and (report_dir / 'bogus.json').is_file()
    assert 'UNREACHABLE bogus' in stdout  # the printed fleet summary
    prom = (report_dir / 'fleet.prom').read_text()
    assert 'auditgap_host_reachable{host="bogus"} 0' in prom
    assert 'auditgap_host_reachable{host="localhost"} 1' in prom


def test_stall_is_diagnosed_with_the_consumer_cgroup(tmp_path):
    from tests.support.stall import audit_stall

    inventory = write_inventory(tmp_path)
    with audit_stall(backlog_limit=64, backlog_wait_time=250, quota_us=1000,
                     key='auditgap-test-diagnose') as stall:
        stall.wait_for(seconds=2, min_count=1, timeout_s=20)
        time.sleep(1)
        doc, report_dir, stdout = run_diagnose(
            tmp_path, inventory, '-e', 'diagnose_audit_sample_seconds=3', '-e', 'diagnose_cgroup_sample_seconds=3',
            '-e', 'diagnose_trace_seconds=3')
        cgroup_dir = stall.cgroup_path
    local = host(doc, 'localhost')
    ids = {f['id']: f for f in local['findings']}
    assert {'audit_backlog_saturated', 'audit_wait_time_accrued', 'audit_consumer_throttled'} <= set(ids), \
        [(f['id'], f['severity']) for f in local['findings']]
    assert local['status'] == 'critical'
    throttled = ids['audit_consumer_throttled']
    path = throttled['evidence']['limited_by'] or throttled['evidence']['cgroup_path']
    assert path and cgroup_dir.rstrip('/').endswith(path.rstrip('/')), (path, cgroup_dir)
    assert throttled['remediation']['role'] == 'agent_cpu'
    assert path in local['chain']
    assert 'audit backlog at limit' in local['chain'] or 'audit backlog near limit' in local['chain']
    assert '-> raise its CPU limit (role agent_cpu' in local['chain']
    assert local['chain'] in stdout.replace('\n        ', ' ') or 'CRITICAL localhost' in stdout
    html = (report_dir / 'fleet.html').read_text()
    assert 'Audit consumer CPU-throttled' in html


def test_cli_diagnose_writes_the_report_and_latest(tmp_path):
    """`auditgap diagnose` (ansible-runner) from another working directory."""
    exe = os.path.join(ROOT, '.venv', 'bin', 'auditgap')
    proc = subprocess.run([exe, 'diagnose', '--sample-seconds', '0', '--trace', 'never'], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-2000:]
    latest = tmp_path / 'reports' / 'latest'
    assert latest.is_symlink()
    with open(latest / 'fleet.json') as handle:
        doc = json.load(handle)
    assert [h['host'] for h in doc['hosts']] == ['localhost']
    assert proc.stdout.startswith('auditgap ')
    assert 'report: %s' % os.path.realpath(str(latest)) in proc.stdout


def test_fanout_without_a_trace_host_ends_every_host_at_once(tmp_path):
    """diagnose_transport fanout, no host chosen for the trace: one meta end_batch ends the
    play for every host (no end_host evaluated per host); every host is still in the report."""
    inventory = tmp_path / 'inventory.ini'
    inventory.write_text('[fleet]\n' + ''.join(
        '%s ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n' % name
        for name in ('localhost', 'local-2', 'local-3'))
        + 'bogus ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh ansible_user=nobody\n')
    doc, _report_dir, stdout = run_diagnose(
        tmp_path, str(inventory), '-e', 'diagnose_transport=fanout', '-e', 'diagnose_trace=never',
        '-e', 'diagnose_audit_sample_seconds=0', '-e', 'diagnose_cgroup_sample_seconds=0')
    assert sorted(h['host'] for h in doc['hosts']) == ['bogus', 'local-2', 'local-3', 'localhost']
    assert doc['summary']['reachable'] == 3 and doc['summary']['unreachable'] == 1
    assert all(host(doc, name)['facts']['audit_status']['supported'] for name in ('localhost', 'local-2', 'local-3'))
    assert 'Done with every host when the fan-out chose none for the trace' in stdout
    assert 'Done with the hosts the fan-out gathered that need no trace' not in stdout
    recap = stdout[stdout.rindex('PLAY RECAP'):]
    assert 'local-2 ' not in recap and 'bogus ' not in recap, recap
