"""Role fleet_audit on this machine, every path under a temp dir: the systemd units pass
`systemd-analyze verify` with nothing on stderr, the cron line really runs a host-mode audit
(twice: the history and the textfile grow; a second run while the lock is held exits at once),
idempotence, check mode, and state absent removes everything. This machine has no systemd as
PID 1: the timer firing for real is the molecule scenario fleet_audit's job."""
import os
import re
import shlex
import sqlite3
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, '.venv', 'bin')

PLAYBOOK = """
- name: fleet_audit
  hosts: localhost
  gather_facts: false
  roles:
    - role: auditgap.fleet.fleet_audit
"""


def run_role(tmp_path, *extra, check=False):
    book = tmp_path / 'role.yml'
    book.write_text(PLAYBOOK)
    paths = {'fleet_audit_systemd_dir': tmp_path / 'systemd', 'fleet_audit_cron_dir': tmp_path / 'cron.d',
             'fleet_audit_config_dir': tmp_path / 'etc', 'fleet_audit_report_root': tmp_path / 'reports',
             'fleet_audit_prom_dir': tmp_path / 'textfile'}
    for name in ('systemd', 'cron.d'):
        (tmp_path / name).mkdir(exist_ok=True)
    cmd = [os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(book),
           '-e', 'fleet_audit_command=%s' % os.path.join(BIN, 'auditgap'), '-e', 'fleet_audit_manage_service=false',
           '-e', 'fleet_audit_sample_seconds=1', '-e', 'fleet_audit_trace=never',
           '-e', 'ansible_python_interpreter=%s' % os.path.join(BIN, 'python')]
    for key, value in paths.items():
        cmd += ['-e', '%s=%s' % (key, value)]
    cmd += list(extra)
    if check:
        cmd += ['--check', '--diff']
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    recap = re.search(r'localhost\s+: ok=(\d+)\s+changed=(\d+)', proc.stdout)
    return int(recap.group(2)), proc.stdout


def test_systemd_units_verify_clean_and_absent(tmp_path):
    inventory = tmp_path / 'fleet.ini'
    inventory.write_text('[fleet]\nlocalhost ansible_connection=local\n')
    changed, _out = run_role(tmp_path, '-e', 'fleet_audit_scheduler=systemd', '-e', 'fleet_audit_mode=controller',
                             '-e', 'fleet_audit_inventory=%s' % inventory, '-e', 'fleet_audit_on_calendar=*:0/15',
                             '-e', '{"fleet_audit_extra_args": ["-e", "x=50% $HOME \\"q\\""]}')
    assert changed > 0
    service = (tmp_path / 'systemd' / 'auditgap-audit.service').read_text()
    timer = (tmp_path / 'systemd' / 'auditgap-audit.timer').read_text()
    assert 'Type=oneshot' in service and 'SuccessExitStatus=1 3 4' in service
    for line in ('OnCalendar=*:0/15', 'RandomizedDelaySec=300', 'AccuracySec=1', 'Persistent=true', 'WantedBy=timers.target'):
        assert line in timer
    proc = subprocess.run(['systemd-analyze', 'verify', str(tmp_path / 'systemd' / 'auditgap-audit.service'),
                           str(tmp_path / 'systemd' / 'auditgap-audit.timer')], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stderr == '', proc.stderr
    # systemd's unquoting of ExecStart= gives back the arguments as given
    exec_start = re.search(r'^ExecStart=(.*)$', service, re.M).group(1)
    argv = [a.replace('%%', '%').replace('$$', '$') for a in shlex.split(exec_start)]
    assert argv[:2] == [os.path.join(BIN, 'auditgap'), 'audit']
    assert argv[argv.index('-i') + 1] == str(inventory) and argv[-2:] == ['-e', 'x=50% $HOME "q"']
    assert '--max-lateness' in argv and '--interval' in argv
    assert not (tmp_path / 'cron.d' / 'auditgap-audit').exists()
    assert run_role(tmp_path, '-e', 'fleet_audit_scheduler=systemd', '-e', 'fleet_audit_inventory=%s' % inventory,
                    '-e', 'fleet_audit_on_calendar=*:0/15',
                    '-e', '{"fleet_audit_extra_args": ["-e", "x=50% $HOME \\"q\\""]}')[0] == 0
    # absent: check mode changes nothing, then everything goes
    assert run_role(tmp_path, '-e', 'fleet_audit_state=absent', check=True)[0] > 0
    assert (tmp_path / 'systemd' / 'auditgap-audit.timer').exists()
    run_role(tmp_path, '-e', 'fleet_audit_state=absent')
    assert os.listdir(tmp_path / 'systemd') == [] and os.listdir(tmp_path / 'cron.d') == []
    assert run_role(tmp_path, '-e', 'fleet_audit_state=absent')[0] == 0


def test_controller_mode_needs_an_inventory(tmp_path):
    book = tmp_path / 'role.yml'
    book.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(book),
                           '-e', 'ansible_python_interpreter=%s' % os.path.join(BIN, 'python')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and 'needs fleet_audit_inventory' in proc.stdout


@pytest.mark.slow
def test_cron_host_mode_runs_audits(tmp_path):
    changed, _out = run_role(tmp_path, '-e', 'fleet_audit_scheduler=cron', '-e', 'fleet_audit_mode=host',
                             '-e', 'fleet_audit_cron_log=%s' % (tmp_path / 'audit.log'))
    assert changed > 0
    cron = (tmp_path / 'cron.d' / 'auditgap-audit').read_text()
    line = [x for x in cron.splitlines() if x and not x.startswith('#') and '=' not in x.split()[0]][0]
    fields = line.split(None, 6)
    assert fields[:6] == ['17', '*', '*', '*', '*', 'root'] and fields[6].startswith('flock -n /run/lock/auditgap-audit.lock ')
    assert os.path.isfile(tmp_path / 'etc' / 'inventory.ini')
    assert run_role(tmp_path, '-e', 'fleet_audit_scheduler=cron', '-e', 'fleet_audit_mode=host',
                    '-e', 'fleet_audit_cron_log=%s' % (tmp_path / 'audit.log'))[0] == 0
    # what cron would run, as cron runs it (sh -c, the file's PATH)
    env = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME': '/root'}
    command = fields[6].replace('\\%', '%')
    for _ in range(2):
        proc = subprocess.run(['sh', '-c', command], cwd=str(tmp_path), env=env, timeout=300, check=False)
        assert proc.returncode in (0, 1), (tmp_path / 'audit.log').read_text()[-3000:]
    conn = sqlite3.connect(str(tmp_path / 'reports' / 'history.db'))
    assert conn.execute('SELECT COUNT(*) FROM runs').fetchone()[0] == 2
    assert conn.execute('SELECT name FROM hosts').fetchall() == [('localhost',)]
    text = (tmp_path / 'textfile' / 'auditgap.prom').read_text()
    assert 'auditgap_runs_total{outcome="ok"}' in text and 'auditgap_schedule_lateness_seconds 0' in text
    # the lock of a run still going: the next one exits at once, running nothing
    with open('/run/lock/auditgap-audit.lock', 'w') as held:
        import fcntl
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run(['sh', '-c', command], cwd=str(tmp_path), env=env, timeout=30, check=False)
    assert proc.returncode == 1
    assert conn.execute('SELECT COUNT(*) FROM runs').fetchone()[0] == 2
    run_role(tmp_path, '-e', 'fleet_audit_state=absent', '-e', 'fleet_audit_mode=host')
    assert os.listdir(tmp_path / 'cron.d') == [] and not (tmp_path / 'textfile' / 'auditgap.prom').exists()
    assert not (tmp_path / 'etc' / 'inventory.ini').exists()
    assert (tmp_path / 'reports' / 'history.db').exists()  # data stays unless fleet_audit_purge
