"""The remediation roles on the real kernel: check mode changes nothing, apply,
a second run changes nothing, the diff is readable, bad input fails cleanly.

- audit_backlog: live settings (restored after each test), persistent file in a temp dir.
- audit_rules: a temp rules.d dir with rules keyed ``auditgap-test-*``, loaded and removed by key.
- agent_cpu: cgroup backend on a v1 cpu group the test creates with a busy process;
  docker backend with the session Docker fixture.
- Immutable audit and the systemd backend are VM-only (marker vm): they run only when
  AUDITGAP_VM=1 and skip elsewhere with that reason, the one skip CI=true accepts.
"""
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, dropins, rulesfile

from tests.support.kernel import rmdir_cgroup
from tests.support.labsnapshot import delete_rules_by_key

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(ROOT, '.venv', 'bin', 'ansible-playbook')
if not os.path.exists(ANSIBLE_PLAYBOOK):
    # in a VM, the bundle's wrapper (scripts/vm-bundle: /opt/auditgap/bin on PATH)
    ANSIBLE_PLAYBOOK = shutil.which('ansible-playbook') or os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
IN_VM = os.environ.get('AUDITGAP_VM') == '1'
CPU_V1 = '/sys/fs/cgroup/cpu'

PLAY = """---
- name: Run one remediation role
  hosts: localhost
  gather_facts: false
  roles:
    - role: auditgap.fleet.{role}
"""


def run_role(role, variables, check=False, diff=True, env=None):
    """ansible-playbook with one role; returns (rc, output, changed count)."""
    with tempfile.TemporaryDirectory(prefix='auditgap-test-role-') as tmp:
        play = os.path.join(tmp, 'play.yml')
        with open(play, 'w') as handle:
            handle.write(PLAY.format(role=role))
        varfile = os.path.join(tmp, 'vars.json')
        with open(varfile, 'w') as handle:
            json.dump(variables, handle)
        cmd = [ANSIBLE_PLAYBOOK, play, '-e', '@' + varfile]
        if check:
            cmd.append('--check')
        if diff:
            cmd.append('--diff')
        full_env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
        full_env.update(env or {})
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    match = re.search(r'localhost\s+:\s+ok=\d+\s+changed=(\d+)', out)
    return proc.returncode, out, int(match.group(1)) if match else None


def audit_status():
    out = subprocess.run(['auditctl', '-s'], capture_output=True, text=True, check=True).stdout
    return audit.parse_status(out)


def loaded_rules():
    out = subprocess.run(['auditctl', '-l'], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip() and line.strip() != 'No rules']


@pytest.fixture
def audit_settings_restored():
    """Put backlog_limit, backlog_wait_time and rate_limit back whatever happens."""
    before = audit_status()
    if before.get('enabled') == 2:
        pytest.skip('audit is immutable on this host')
    try:
        yield before
    finally:
        for opt, name in (('-b', 'backlog_limit'), ('--backlog_wait_time', 'backlog_wait_time'),
                          ('-r', 'rate_limit')):
            subprocess.run(['auditctl', opt, str(before[name])], capture_output=True, check=False)
        assert {k: audit_status()[k] for k in ('backlog_limit', 'backlog_wait_time', 'rate_limit')} == \
            {k: before[k] for k in ('backlog_limit', 'backlog_wait_time', 'rate_limit')}


# -- audit_backlog ------------------------------------------------------------------

@pytest.mark.kernel
def test_audit_backlog_check_apply_idempotent(tmp_path, audit_settings_restored):
    before = audit_settings_restored
    rules_file = tmp_path / 'rules.d' / 'auditgap.rules'
    rules_file.parent.mkdir()
    (rules_file.parent / '10-base.rules').write_text('-D\n-b 320\n')
    limit = before['backlog_limit'] + 64
    variables = {'audit_backlog_limit': limit, 'audit_backlog_wait_time_jiffies': 250,
                 'audit_backlog_rules_file': str(rules_file)}

    rc, out, changed = run_role('audit_backlog', variables, check=True)
    assert rc == 0, out
    assert changed == 1
    assert '+-b %d' % limit in out and '+--backlog_wait_time 250' in out      # file diff
    assert '-backlog_limit %d' % before['backlog_limit'] in out                # live diff
    assert not rules_file.exists()
    assert audit_status()['backlog_limit'] == before['backlog_limit']

    rc, out, changed = run_role('audit_backlog', variables)
    assert rc == 0, out
    assert changed == 1
    now = audit_status()
    assert now['backlog_limit'] == limit and now['backlog_wait_time'] == 250
    text = rules_file.read_text()
    assert '-b %d\n--backlog_wait_time 250\n' % limit in text
    assert rulesfile.effective_settings(rulesfile.read_rules_dir(str(rules_file.parent)))['backlog_limit'] == limit

    rc, out, changed = run_role('audit_backlog', variables)
    assert rc == 0, out
    assert changed == 0

    # a changed value keeps a backup of the previous file
    variables['audit_backlog_limit'] = limit + 64
    rc, out, changed = run_role('audit_backlog', variables)
    assert rc == 0 and changed == 1, out
    backups = [p for p in os.listdir(rules_file.parent) if p.startswith('auditgap.rules.') and p.endswith('~')]
    assert len(backups) == 1
    assert '-b %d\n' % limit in (rules_file.parent / backups[0]).read_text()


@pytest.mark.kernel
@pytest.mark.parametrize('variables,message', [
    ({'audit_backlog_limit': 0}, 'backlog_limit 0 out of range'),
    ({'audit_backlog_limit': 99999999}, 'out of range'),
    ({'audit_backlog_limit': 8192, 'audit_backlog_wait_time_jiffies': -1}, 'backlog_wait_time_jiffies -1 out of range'),
    ({'audit_backlog_limit': 8192, 'audit_backlog_rate_limit': -5}, 'rate_limit -5 out of range'),
])
def test_audit_backlog_bad_input_changes_nothing(tmp_path, audit_settings_restored, variables, message):
    before = audit_settings_restored
    rules_file = tmp_path / 'auditgap.rules'
    variables = dict(variables, audit_backlog_rules_file=str(rules_file))
    rc, out, _changed = run_role('audit_backlog', variables)
    assert rc != 0
    assert message in out and 'nothing changed' in out
    assert 'Traceback' not in out
    assert not rules_file.exists()
    assert audit_status()['backlog_limit'] == before['backlog_limit']


# -- audit_rules --------------------------------------------------------------------

KEY = 'auditgap-test-narrow'
OTHER = 'auditgap-test-narrow-live'
FILE_RULES = ('-a always,exit -F arch=b64 -S clone,fork,execve -k %s\n'
              '-a always,exit -F arch=b64 -S bind,listen,accept4 -F success=1 -k %s\n' % (KEY, KEY))


@pytest.fixture
def keyed_rules(tmp_path):
    """A rules.d dir with the seed's rules under a test key, loaded live; removed by key after."""
    before = audit_status()
    if before.get('enabled') == 2:
        pytest.skip('audit is immutable on this host')
    rules_dir = tmp_path / 'rules.d'
    rules_dir.mkdir()
    (rules_dir / '50-test.rules').write_text('## test rules\n' + FILE_RULES)
    try:
        for line in FILE_RULES.splitlines():
            subprocess.run(['auditctl'] + line.split(), check=True, capture_output=True)
        # a live-only rule auditing accept4 that no file holds: must be reported, never touched
        subprocess.run(['auditctl', '-a', 'always,exit', '-F', 'arch=b64', '-S', 'accept4',
                        '-F', 'exe=/bin/true', '-k', OTHER], check=True, capture_output=True)
        yield rules_dir
    finally:
        for key in (KEY, OTHER):  # exactly the rules carrying the key (never auditctl -D)
            delete_rules_by_key(key)
        assert not [r for r in loaded_rules() if 'auditgap-test-narrow' in r]


@pytest.mark.kernel
def test_audit_rules_check_apply_idempotent(keyed_rules):
    rules_file = keyed_rules / '50-test.rules'
    original = rules_file.read_text()
    loaded_before = loaded_rules()
    variables = {'audit_rules_narrow': [{'syscall': 'accept4'}], 'audit_rules_dir': str(keyed_rules)}

    rc, out, changed = run_role('audit_rules', variables, check=True)
    assert rc == 0, out
    assert changed == 1
    assert '--a always,exit -F arch=b64 -S bind,listen,accept4 -F success=1 -k %s' % KEY in out
    assert '+-a always,exit -F arch=b64 -S bind,listen -F success=1 -k %s' % KEY in out
    assert 'exe=/bin/true' in out  # the unmapped live rule is reported
    assert rules_file.read_text() == original
    assert loaded_rules() == loaded_before

    rc, out, changed = run_role('audit_rules', variables)
    assert rc == 0, out
    assert changed == 1
    assert rules_file.read_text() == original.replace('-S bind,listen,accept4', '-S bind,listen')
    now = loaded_rules()
    mine = [r for r in now if r.endswith('key=%s' % KEY)]
    assert '-a always,exit -F arch=b64 -S bind,listen -F success=1 -F key=%s' % KEY in mine
    assert not any('accept4' in r for r in mine)
    # the live-only rule is still there, untouched
    assert any('key=%s' % OTHER in r and 'accept4' in r for r in now)
    # nothing else changed
    assert [r for r in now if 'auditgap-test-narrow' not in r] == \
        [r for r in loaded_before if 'auditgap-test-narrow' not in r]
    backups = [p for p in os.listdir(keyed_rules) if p.startswith('50-test.rules.')]
    assert len(backups) == 1

    rc, out, changed = run_role('audit_rules', variables)
    assert rc == 0, out
    assert changed == 0


@pytest.mark.kernel
def test_audit_rules_scope_splits_and_loaded_equals_intended(keyed_rules):
    variables = {'audit_rules_narrow': [{'syscall': 'accept4', 'key': KEY, 'scope': {'exe': '!=/usr/bin/node'}}],
                 'audit_rules_dir': str(keyed_rules)}
    rc, out, changed = run_role('audit_rules', variables)
    assert rc == 0, out
    assert changed == 1
    text = (keyed_rules / '50-test.rules').read_text()
    assert '-a always,exit -F arch=b64 -S accept4 -F success=1 -F exe!=/usr/bin/node -k %s\n' % KEY in text
    mine = [r for r in loaded_rules() if r.endswith('key=%s' % KEY)]
    assert len(mine) == 3
    assert any(r.startswith('-a always,exit -F arch=b64 -S accept4 -F success=1 -F exe') for r in mine)
    rc, out, changed = run_role('audit_rules', variables)
    assert rc == 0 and changed == 0, out


@pytest.mark.kernel
@pytest.mark.parametrize('narrow,message', [
    ([{'syscall': 'accept4', 'scope': {'comm': 'node'}}], 'unsupported scope field'),
    ([{'syscall': 'all'}], 'needs a syscall name'),
    ([{'syscall': 'accept4', 'scope': {'exe': 'node'}}], 'absolute path'),
])
def test_audit_rules_bad_input_changes_nothing(keyed_rules, narrow, message):
    original = (keyed_rules / '50-test.rules').read_text()
    loaded_before = loaded_rules()
    rc, out, _changed = run_role('audit_rules', {'audit_rules_narrow': narrow, 'audit_rules_dir': str(keyed_rules)})
    assert rc != 0
    assert message in out and 'nothing changed' in out and 'Traceback' not in out
    assert (keyed_rules / '50-test.rules').read_text() == original
    assert loaded_rules() == loaded_before


# -- agent_cpu: cgroup backend ---------------------------------------------------------

@pytest.fixture
def throttled_process():
    """A busy process in a new cgroup v1 cpu group limited to 0.01 cores."""
    if not os.path.exists(os.path.join(CPU_V1, 'cpu.cfs_quota_us')):
        pytest.skip('no cgroup v1 cpu controller at %s' % CPU_V1)
    group = os.path.join(CPU_V1, 'auditgap-test-agent-cpu-%d' % os.getpid())
    os.mkdir(group)
    proc = None
    try:
        with open(os.path.join(group, 'cpu.cfs_quota_us'), 'w') as handle:
            handle.write('1000')
        proc = subprocess.Popen(['sh', '-c', 'while :; do :; done'], start_new_session=True)
        with open(os.path.join(group, 'cgroup.procs'), 'w') as handle:
            handle.write(str(proc.pid))
        yield proc.pid, group
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rmdir_cgroup(group)
        assert not os.path.exists(group)


def quota(group):
    with open(os.path.join(group, 'cpu.cfs_quota_us')) as handle:
        return int(handle.read())


@pytest.mark.kernel
def test_agent_cpu_cgroup_check_apply_idempotent(throttled_process):
    pid, group = throttled_process
    variables = {'agent_cpu_backend': 'cgroup', 'agent_cpu_target': {'pid': pid}, 'agent_cpu_limit_cores': 0.5}
    rc, out, changed = run_role('agent_cpu', variables, check=True)
    assert rc == 0, out
    assert changed == 1
    assert '-cgroup v1 %s: 0.01 cores (quota 1000 us / period 100000 us)' % group in out
    assert '+cgroup v1 %s: 0.5 cores (quota 50000 us / period 100000 us)' % group in out
    assert quota(group) == 1000

    rc, out, changed = run_role('agent_cpu', variables)
    assert rc == 0 and changed == 1, out
    assert quota(group) == 50000
    assert '0.01 -> 0.5 cores' in out

    rc, out, changed = run_role('agent_cpu', variables)
    assert rc == 0 and changed == 0, out

    # by cgroup path (what the findings name when the limit sits on the group)
    path = '/' + os.path.basename(group)
    rc, out, changed = run_role('agent_cpu', {'agent_cpu_target': {'cgroup_path': path}, 'agent_cpu_limit_cores': 0.5})
    assert rc == 0 and changed == 0, out


@pytest.mark.kernel
def test_agent_cpu_refuses_lowering_unless_forced(throttled_process):
    pid, group = throttled_process
    rc, out, _ = run_role('agent_cpu', {'agent_cpu_target': {'pid': pid}, 'agent_cpu_limit_cores': 0.005})
    assert rc != 0 and 'out of range' in out and quota(group) == 1000
    with open(os.path.join(group, 'cpu.cfs_quota_us'), 'w') as handle:
        handle.write('50000')
    rc, out, _ = run_role('agent_cpu', {'agent_cpu_target': {'pid': pid}, 'agent_cpu_limit_cores': 0.2})
    assert rc != 0
    assert 'refusing to lower the CPU limit from 0.5 cores to 0.2 cores' in out and 'nothing changed' in out
    assert quota(group) == 50000
    rc, out, changed = run_role('agent_cpu', {'agent_cpu_target': {'pid': pid}, 'agent_cpu_limit_cores': 0.2,
                                              'agent_cpu_force': True})
    assert rc == 0 and changed == 1, out
    assert quota(group) == 20000


@pytest.mark.kernel
@pytest.mark.parametrize('variables,message', [
    ({'agent_cpu_target': {'pid': 2 ** 22 + 7}}, 'target process 4194311 not found'),
    ({'agent_cpu_target': {'cgroup_path': '/auditgap-test-absent'}}, 'not found in the cpu hierarchy'),
    ({'agent_cpu_target': {'pid': 1, 'container': 'x'}}, 'parameters are mutually exclusive: pid|container'),
    ({'agent_cpu_target': 'pid=1'}, 'target must be a mapping'),
    ({'agent_cpu_backend': 'systemd', 'agent_cpu_target': {'systemd_unit': 'auditgap-test-missing.service'}},
     'auditgap-test-missing.service' if IN_VM else 'systemd is not running'),
])
def test_agent_cpu_bad_target(variables, message):
    rc, out, _ = run_role('agent_cpu', dict(variables, agent_cpu_limit_cores=1.0))
    assert rc != 0
    assert message in out and 'nothing changed' in out and 'Traceback' not in out


@pytest.mark.kernel
def test_agent_cpu_docker_not_running():
    rc, out, _ = run_role('agent_cpu', {'agent_cpu_backend': 'docker', 'agent_cpu_target': {'container': 'ids-agent'},
                                        'agent_cpu_limit_cores': 1.0,
                                        'agent_cpu_docker_socket': '/run/auditgap-test-no-docker.sock'},
                          env={'DOCKER_HOST': 'unix:///run/auditgap-test-no-docker.sock'})
    assert rc != 0
    assert 'Docker is not running' in out and 'nothing changed' in out and 'Traceback' not in out


# -- agent_cpu: docker backend ---------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.docker
def test_agent_cpu_docker_check_apply_idempotent(docker_engine):
    name = 'auditgap-test-agent-%d' % os.getpid()
    docker_engine.run(['sh', '-c', 'while :; do :; done'], name=name, cpus=0.05)
    variables = {'agent_cpu_target': {'container': name}, 'agent_cpu_limit_cores': 0.5}
    rc, out, changed = run_role('agent_cpu', variables, check=True)
    assert rc == 0 and changed == 1, out
    assert '-docker container %s' % name in out and '0.05 cores' in out and '+docker container' in out
    assert docker_engine.inspect(name)['nano_cpus'] == 50000000

    rc, out, changed = run_role('agent_cpu', variables)
    assert rc == 0 and changed == 1, out
    info = docker_engine.inspect(name)
    assert info['nano_cpus'] == 500000000 and info['running']

    rc, out, changed = run_role('agent_cpu', variables)
    assert rc == 0 and changed == 0, out

    # auto backend from the container's pid: docker
    rc, out, changed = run_role('agent_cpu', {'agent_cpu_target': {'pid': info['pid']}, 'agent_cpu_limit_cores': 0.5})
    assert rc == 0 and changed == 0, out
    assert 'docker pid' in out

    rc, out, _ = run_role('agent_cpu', {'agent_cpu_target': {'container': name + '-absent'}, 'agent_cpu_limit_cores': 1})
    assert rc != 0 and 'container %s-absent not found' % name in out
    docker_engine.remove(name)


# -- VM-only: immutable audit, systemd backend -----------------------------------------
# These change state a shared machine must never get (enabled 2 lasts until reboot) or
# need systemd as PID 1: marked vm, they run only inside a throwaway VM (AUDITGAP_VM=1)
# and skip elsewhere with that reason (tests/conftest.py).


@pytest.mark.kernel
@pytest.mark.vm('auditctl -e 2 lasts until reboot')
def test_vm_audit_backlog_immutable_writes_file_and_needs_reboot(tmp_path):
    if audit_status()['enabled'] != 2:  # once locked, auditctl -e 2 itself is refused
        subprocess.run(['auditctl', '-e', '2'], check=True, capture_output=True)
    before = audit_status()
    assert before['enabled'] == 2
    rules_file = tmp_path / 'auditgap.rules'
    rc, out, changed = run_role('audit_backlog', {'audit_backlog_limit': before['backlog_limit'] + 64,
                                                  'audit_backlog_rules_file': str(rules_file)})
    assert rc == 0 and changed == 1, out
    assert 'immutable' in out and 'after a reboot' in out
    assert '-b %d' % (before['backlog_limit'] + 64) in rules_file.read_text()
    assert audit_status()['backlog_limit'] == before['backlog_limit']


@pytest.mark.kernel
@pytest.mark.vm('needs systemd as PID 1')
def test_vm_agent_cpu_systemd(tmp_path):
    # a transient unit (systemd-run): set-property --runtime keeps its settings in
    # /run/systemd/transient; the drop-in goes where systemd reads it (/etc/systemd/system)
    unit = 'auditgap-test-busy.service'
    dropin_dir = '/etc/systemd/system/%s.d' % unit
    subprocess.run(['systemd-run', '--unit', unit, '-p', 'CPUQuota=5%', 'sh', '-c', 'while :; do :; done'],
                   check=True, capture_output=True)
    try:
        variables = {'agent_cpu_target': {'systemd_unit': unit}, 'agent_cpu_limit_cores': 0.5,
                     'agent_cpu_backend': 'systemd'}
        rc, out, changed = run_role('agent_cpu', variables, check=True)
        assert rc == 0 and changed == 1, out
        rc, out, changed = run_role('agent_cpu', variables)
        assert rc == 0 and changed == 1, out
        shown = subprocess.run(['systemctl', 'show', unit, '-p', 'CPUQuotaPerSecUSec'],
                               capture_output=True, text=True, check=False).stdout
        assert '500ms' in shown
        with open(os.path.join(dropin_dir, '50-auditgap-cpu.conf')) as handle:
            assert 'CPUQuota=50%' in handle.read()
        rc, out, changed = run_role('agent_cpu', variables)
        assert rc == 0 and changed == 0, out
    finally:
        subprocess.run(['systemctl', 'stop', unit], capture_output=True, check=False)
        shutil.rmtree(dropin_dir, ignore_errors=True)
        shutil.rmtree(os.path.dirname(dropins.runtime_dropin(unit, 'CPUQuota', transient=True)), ignore_errors=True)
        subprocess.run(['systemctl', 'daemon-reload'], capture_output=True, check=False)


@pytest.mark.kernel
def test_agent_cpu_raises_the_limited_parent_when_the_own_group_is_unlimited():
    if not os.path.exists(os.path.join(CPU_V1, 'cpu.cfs_quota_us')):
        pytest.skip('no cgroup v1 cpu controller at %s' % CPU_V1)
    parent = os.path.join(CPU_V1, 'auditgap-test-agent-pod-%d' % os.getpid())
    child = os.path.join(parent, 'agent')
    os.mkdir(parent)
    proc = None
    try:
        os.mkdir(child)
        with open(os.path.join(parent, 'cpu.cfs_quota_us'), 'w') as handle:
            handle.write('2000')
        proc = subprocess.Popen(['sh', '-c', 'while :; do :; done'], start_new_session=True)
        with open(os.path.join(child, 'cgroup.procs'), 'w') as handle:
            handle.write(str(proc.pid))
        rc, out, changed = run_role('agent_cpu', {'agent_cpu_target': {'pid': proc.pid}, 'agent_cpu_limit_cores': 0.5})
        assert rc == 0 and changed == 1, out
        assert quota(parent) == 50000 and quota(child) == -1
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for group in (child, parent):
            rmdir_cgroup(group)
        assert not os.path.exists(parent)
