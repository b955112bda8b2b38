"""audit_status on the real kernel (root; tests/conftest.py takes the kernel lock).

Everything a test changes is restored by a RestoreGuard: audit status
values, rules (deleted by their own key, never ``auditctl -D``), the test
consumer (stopped, unregistered) and the cgroup it was put in.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, auditfacts, auditnl, kernelhz
from tests.support import labsnapshot
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import RestoreGuard
from tests.support.kernel import rmdir_cgroup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONSUMER = os.path.join(ROOT, 'tests', 'support', 'audit_consumer.py')
CPU_V1 = '/sys/fs/cgroup/cpu'
COMPARED = ('enabled', 'failure', 'pid', 'rate_limit', 'backlog_limit', 'backlog_wait_time')

pytestmark = pytest.mark.kernel


def auditctl(*args):
    return subprocess.run(['auditctl'] + list(args), check=True, capture_output=True, text=True,
                          timeout=30).stdout


def delete_rules_by_key(key):
    """Each rule carrying exactly this key, deleted exactly (never auditctl -D)."""
    assert key.startswith('auditgap-test')
    labsnapshot.delete_rules_by_key(key)


def run_module(*args, check_mode=False):
    cmd = [os.path.join(ROOT, '.venv', 'bin', 'ansible'), 'localhost', '-m', 'auditgap.fleet.audit_status',
           '-a', ' '.join(args), '-o']
    if check_mode:
        cmd.append('--check')
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    # one line: "localhost | SUCCESS => {...}" (or FAILED!)
    head, _, body = out.partition(' => ')
    result = json.loads(body)
    result['failed'] = 'FAILED' in head
    return result


def wait_for_no_consumer(timeout_s=30):
    """Another engineer's auditd may still be registered: wait, else skip."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid = auditnl.get_status()['pid']
        if not pid:
            return
        if time.monotonic() > deadline:
            comm = None
            try:
                with open('/proc/%d/comm' % pid) as handle:
                    comm = handle.read().strip()
            except OSError:
                pass
            pytest.skip('another audit consumer is registered (pid %s, %s)' % (pid, comm))
        time.sleep(0.5)


def kick_kernel():
    """Make the kernel send a record, so it notices a consumer that went away."""
    subprocess.run(['auditctl', '-m', 'auditgap-test: consumer check'], capture_output=True, timeout=30)


class Consumer:
    """tests/support/audit_consumer.py as a child process."""

    def __init__(self, guard, rcvbuf=None):
        args = [sys.executable, CONSUMER]
        if rcvbuf:
            args += ['--rcvbuf', str(rcvbuf)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        guard.push(self.stop, description='stop the test audit consumer')
        line = self.proc.stdout.readline().strip()
        if not line.startswith('ready'):
            raise AssertionError('consumer did not register: %r %s' % (line, self.proc.stderr.read()))
        self.pid = self.proc.pid

    def pause(self):
        os.kill(self.pid, signal.SIGUSR1)

    def resume(self):
        os.kill(self.pid, signal.SIGUSR2)

    def stop(self):
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # the kernel forgets a dead consumer on its next send
        for _ in range(20):
            if auditnl.get_status()['pid'] != self.pid:
                return
            kick_kernel()
            time.sleep(0.1)


def guard_status(guard, **fields):
    """Set audit status fields; restore the previous values when the guard ends."""
    before = auditnl.set_status(**fields)
    previous = {name: before[name] for name in fields}
    guard.push(auditnl.set_status, description='restore audit status %s' % previous, **previous)
    return before


def test_status_equals_auditctl_s_taken_right_after():
    facts = auditfacts.gather(source='netlink', rules=False, consumer=False)
    text = auditctl('-s')
    assert facts['supported'] is True and facts['source'] == 'netlink'
    parsed = audit.parse_status(text)
    for name in COMPARED:
        assert facts['status'][name if name != 'backlog_wait_time' else 'backlog_wait_time_jiffies'] == \
            parsed[name], name
    # counters only grow between the two reads
    assert parsed['lost'] >= facts['status']['lost']
    assert parsed['backlog_wait_time_actual'] >= facts['status']['backlog_wait_time_actual_jiffies']
    assert facts['status']['feature_bitmap'] is not None
    assert facts['hz'] == kernelhz.detect_hz()


def test_module_end_to_end_and_check_mode():
    result = run_module('sample_seconds=0.3', 'sample_interval_ms=100')
    facts = result['audit_status']
    assert result['changed'] is False
    assert facts['supported'] is True and facts['source'] == 'netlink'
    assert facts['sample']['samples'] >= 3
    assert facts['status']['backlog_wait_time_ms'] == pytest.approx(
        facts['status']['backlog_wait_time_jiffies'] * 1000.0 / facts['hz']['value'], abs=5e-4)  # 3 decimals
    checked = run_module('source=auditctl', check_mode=True)
    assert checked['changed'] is False and checked['audit_status']['source'] == 'auditctl'
    bad = run_module('sample_seconds=301')
    assert bad['failed'] is True and 'between 0 and 300' in bad['msg']
    assert 'Traceback' not in json.dumps(bad)


def test_module_without_root_is_unsupported_not_failed():
    """A non-root user gets supported: false and a reason."""
    code = ('import sys, json; sys.path.insert(0, %r); '
            'from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts; '
            'print(json.dumps(auditfacts.gather()))' % os.path.join(ROOT, 'collections'))
    out = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', sys.executable, '-c', code],
                         capture_output=True, text=True, timeout=60)
    facts = json.loads(out.stdout)
    assert facts['supported'] is False and 'root' in facts['reason']


def test_in_a_user_namespace_is_unsupported_with_reason():
    """Like a container without audit: root inside, but the kernel refuses audit requests."""
    code = ('import sys, json, subprocess; sys.path.insert(0, %r); '
            'from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts; '
            'run = lambda argv: (lambda p: (p.returncode, p.stdout, p.stderr))('
            'subprocess.run(argv, capture_output=True, text=True)); '
            'print(json.dumps(auditfacts.gather(run_command=run, auditctl_path="/sbin/auditctl")))'
            % os.path.join(ROOT, 'collections'))
    out = subprocess.run(['unshare', '--user', '--map-root-user', sys.executable, '-c', code],
                         capture_output=True, text=True, timeout=60)
    facts = json.loads(out.stdout)
    assert facts['supported'] is False
    assert 'ECONNREFUSED' in facts['reason'] and 'auditctl' in facts['reason']
    assert facts['hz']['value'] > 0


def test_rule_added_shows_up_parsed_in_both_sources():
    key = 'auditgap-test-rule-%d' % os.getpid()
    with RestoreGuard(timeout_s=60) as guard:
        guard.push(delete_rules_by_key, key, description='delete rules keyed %s' % key)
        auditctl('-a', 'always,exit', '-F', 'arch=b64', '-S', 'getppid,getpgrp', '-F', 'pid=%d' % 2 ** 22,
                 '-F', 'auid!=-1', '-k', key)
        netlink = auditfacts.gather(source='netlink', consumer=False)
        via_auditctl = auditfacts.gather(source='auditctl', consumer=False,
                                         run_command=_run, auditctl_path='/sbin/auditctl')
        mine_nl = [rule for rule in netlink['rules'] if rule['key'] == key]
        mine_ctl = [rule for rule in via_auditctl['rules'] if rule['key'] == key]
        assert len(mine_nl) == 1 and len(mine_ctl) == 1
        assert netlink['rules_source'] == 'netlink' and via_auditctl['rules_source'] == 'auditctl'
        rule = mine_nl[0]
        assert rule['list'] == 'exit' and rule['action'] == 'always' and rule['arch'] == 'b64'
        assert rule['syscalls'] == ['getppid', 'getpgrp']
        assert {'name': 'pid', 'op': '=', 'value': str(2 ** 22)} in rule['fields']
        assert {'name': 'auid', 'op': '!=', 'value': '-1'} in rule['fields']
        assert mine_nl[0] == mine_ctl[0]
    assert not [rule for rule in auditnl.list_rules() if rule['key'] == key]
    assert guard.restore_errors == []


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def test_set_status_round_trip_and_refusals():
    with RestoreGuard(timeout_s=60) as guard:
        before = guard_status(guard, backlog_wait_time=200)
        assert auditnl.get_status()['backlog_wait_time'] == 200
        with pytest.raises(ValueError):
            auditnl.set_status(enabled=2)
        assert auditnl.get_status()['enabled'] == before['enabled']
        # the kernel refuses a wait time above 10 minutes of jiffies: nothing stays half-applied
        with pytest.raises(auditnl.AuditNetlinkError):
            auditnl.set_status(backlog_limit=before['backlog_limit'] + 1, backlog_wait_time=2 ** 31)
        now = auditnl.get_status()
        assert now['backlog_limit'] == before['backlog_limit']
        assert now['backlog_wait_time'] == 200
    assert auditnl.get_status()['backlog_wait_time'] == before['backlog_wait_time']


def test_consumer_identified_with_its_v1_cpu_cgroup():
    if not os.path.isdir(CPU_V1):
        pytest.skip('no cgroup v1 cpu controller at %s' % CPU_V1)
    wait_for_no_consumer()
    name = 'auditgap-test-consumer-%d' % os.getpid()
    path = os.path.join(CPU_V1, name)
    with RestoreGuard(timeout_s=90) as guard:
        os.mkdir(path)
        guard.push(rmdir_cgroup, path, description='remove cgroup %s' % path)
        consumer = Consumer(guard)
        with open(os.path.join(path, 'cgroup.procs'), 'w') as handle:
            handle.write(str(consumer.pid))
        facts = auditfacts.gather(source='netlink', rules=False)
        assert facts['status']['pid'] == consumer.pid
        who = facts['consumer']
        assert who['pid'] == consumer.pid and who['found'] is True
        assert who['exe'] == os.path.realpath(sys.executable)
        assert any(arg.endswith('audit_consumer.py') for arg in who['cmdline'])
        assert who['cgroups']['v1']['cpu'] == '/' + name
        assert who['container'] is None
        consumer.stop()
    assert not os.path.exists(path)
    assert auditnl.get_status()['pid'] != consumer.pid
    assert guard.restore_errors == []


LOADGEN = r'''
import os, sys, time
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    os.getppid(); n += 1
sys.stdout.write("%d\n" % n); sys.stdout.flush()
'''


def test_sample_sees_lost_and_wait_time_grow_during_a_stall():
    """The incident in small: a consumer that stops reading, a full backlog, an audited syscall."""
    wait_for_no_consumer()
    key = 'auditgap-test-stall-%d' % os.getpid()
    before = auditnl.get_status()
    with RestoreGuard(timeout_s=120) as guard:
        guard_status(guard, enabled=1, backlog_limit=64, backlog_wait_time=125)
        consumer = Consumer(guard, rcvbuf=4096)
        loadgen = subprocess.Popen([sys.executable, '-c', LOADGEN, '2.5'], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        guard.push(_kill, loadgen, description='stop the load generator')
        assert loadgen.stdout.readline().strip() == 'ready'
        guard.push(delete_rules_by_key, key, description='delete rules keyed %s' % key)
        auditctl('-a', 'always,exit', '-F', 'arch=b64', '-S', 'getppid', '-F', 'pid=%d' % loadgen.pid,
                 '-k', key)

        def stall():
            consumer.pause()
            loadgen.stdin.write('go\n')
            loadgen.stdin.flush()
            time.sleep(2.0)
            consumer.resume()

        driver = threading.Timer(0.3, stall)
        driver.start()
        facts = auditfacts.gather(source='netlink', rules=False, sample_seconds=3.5, sample_interval_ms=50)
        driver.join(10)
        calls = int(loadgen.stdout.readline().strip() or 0)
        sample = facts['sample']
        assert facts['consumer']['pid'] == consumer.pid
        assert sample['samples'] >= 20
        assert sample['backlog_peak'] >= 60, sample['backlog_peak']
        assert sample['backlog_peak_ratio'] >= 0.9
        assert sample['lost_delta'] >= 1, sample
        assert sample['lost_per_s'] > 0
        assert sample['backlog_wait_time_actual_delta_jiffies'] >= 100, sample
        assert sample['backlog_wait_time_actual_delta_ms'] == pytest.approx(
            sample['backlog_wait_time_actual_delta_jiffies'] * 1000.0 / facts['hz']['value'], abs=5e-4)
        assert calls > 0
    assert guard.restore_errors == []
    assert not [rule for rule in auditnl.list_rules() if rule['key'] == key]
    after = auditnl.get_status()
    assert after['pid'] != consumer.pid
    for name in ('enabled', 'backlog_limit', 'backlog_wait_time'):
        assert after[name] == before[name], name


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
