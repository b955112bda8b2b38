"""auditgap audit as a real process: two runs against this machine (the real playbook through
ansible-runner), and SIGTERM in the middle of a run (the playbook stopped, nothing stored,
nothing half-written). Read-only on the host: diagnose only reads the audit status."""
import json
import os
import signal
import sqlite3
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AUDITGAP = os.path.join(ROOT, '.venv', 'bin', 'auditgap')


def audit_cmd(root, *extra):
    return [AUDITGAP, 'audit', '--report-root', str(root), '--sample-seconds', '1', '--trace', 'never'] + list(extra)


def playbooks_under(root):
    """Processes whose command line names the report root (the runner's ansible-playbook)."""
    found = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                    cmd = handle.read().decode(errors='replace')
            except OSError:
                continue
            if str(root) in cmd and 'ansible-playbook' in cmd:
                found.append(int(pid))
    return found


def test_two_runs_and_lock(tmp_path):
    root = tmp_path / 'reports'
    textdir = tmp_path / 'textfile'
    textdir.mkdir()
    first = subprocess.run(audit_cmd(root, '--prom-dir', str(textdir)), cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=300, check=False)
    assert first.returncode in (0, 1), first.stdout + first.stderr
    assert 'since no earlier run: coverage 100%' in first.stdout and first.stderr == ''
    second = subprocess.run(audit_cmd(root, '--prom-dir', str(textdir), '--progress'), cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode in (0, 1), second.stdout + second.stderr
    assert 'auditgap: 1/1 hosts done' in second.stderr  # progress lines (not a terminal: asked for)
    with open(root / 'latest' / 'fleet.json') as handle:
        doc = json.load(handle)
    assert doc['since_last_run']['previous_run'] == sorted(p.name for p in root.iterdir() if p.name.startswith('2'))[0]
    runner_runs = sorted(os.listdir(root / '.runner' / 'artifacts'))
    assert runner_runs == sorted(p.name for p in root.iterdir() if p.name.startswith('2'))
    text = (textdir / 'auditgap.prom').read_text()
    assert 'auditgap_host_state{host="localhost",state="ok"} 1' in text
    assert [p.name for p in textdir.iterdir()] == ['auditgap.prom']
    conn = sqlite3.connect(str(root / 'history.db'))
    assert conn.execute('SELECT COUNT(*) FROM runs').fetchone()[0] == 2


def test_sigterm_mid_run_stores_nothing(tmp_path):
    root = tmp_path / 'reports'
    proc = subprocess.Popen(audit_cmd(root, '--sample-seconds', '8'), cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not playbooks_under(root):
            assert time.time() < deadline and proc.poll() is None, 'the playbook never started'
            time.sleep(0.2)
        time.sleep(2)  # in the sample window
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 5, out + err
    assert 'interrupted by signal 15' in err and 'not stored' in err and 'Traceback' not in err
    assert out == ''
    # ansible-runner kills the playbook's process group; Ansible's worker processes run in
    # sessions of their own and finish the module already running (its bounded sample, its guard
    # restoring what it changed), then exit: their results go nowhere.
    deadline = time.time() + 40
    while playbooks_under(root) and time.time() < deadline:
        time.sleep(0.2)
    assert not playbooks_under(root)
    assert sorted(p.name for p in root.iterdir()) == ['.runner', 'history.db', 'history.db.lock']
    conn = sqlite3.connect(str(root / 'history.db'))
    assert conn.execute('SELECT COUNT(*) FROM runs').fetchone()[0] == 0
    assert conn.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
    # the next run works
    again = subprocess.run(audit_cmd(root), cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode in (0, 1), again.stdout + again.stderr
