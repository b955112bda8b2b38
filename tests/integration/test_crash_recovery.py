"""Fault injection on the real kernel: every changing module SIGKILLed between two of its
changes, then the next auditgap run puts the host back as it was and says so.

The kill comes from the test-only hook AUDITGAP_TEST_KILL_AT=N (guard.Journal): the
module kills itself with SIGKILL once N changes are made, right before the next one (or
before its restore/commit). Each test raises N until the module finishes, so every step
between two changes is covered without counting them here. The recovering run is
audit_tune asked for the values already set (it changes nothing itself), or
ftrace_sample: "any auditgap module that changes the kernel".

Also here: the defects these guarantees fixed (narrowing kept watches, the lock file
planted as a symlink, controllers waiting for the host lock) and two SIGTERMs during a
restore. function_graph is not built into this kernel: its undo journal is driven on the
top-level files it changes that exist here (ftrace_sample._top_guarded, as the recipes
call it).

VM-only (marked vm: they run only with AUDITGAP_VM=1, in a VM through scripts/vm-bundle
--tests): cpu_limit's systemd backend (drop-in, daemon-reload, runtime CPUQuota; systemd
as PID 1, cgroup v2), and a live function_graph sample (the VM kernel has the tracer).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, dockerctl, dropins, guard, labkit, tracefs
from ansible_collections.auditgap.fleet.plugins.module_utils import tracehist
from ansible_collections.auditgap.fleet.plugins.modules import cpu_limit
from tests.support.forkrun import ModuleForks
from tests.support.kernel import rmdir_cgroup
from tests.support.labsnapshot import delete_rules_by_key, host_snapshot, snapshot_diff

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = os.path.join(ROOT, 'plugins', 'modules')
COLLECTIONS = os.path.join(ROOT, 'collections')
KEY = 'auditgap-test-crash'
OTHER = 'auditgap-test-other'  # not containing KEY (auditctl -D -k matched by substring)
CPU_V1 = '/sys/fs/cgroup/cpu'

pytestmark = pytest.mark.kernel


def start(module, args, tmp_path, env=None):
    path = tmp_path / ('args-%s-%d.json' % (module, time.monotonic_ns()))
    path.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    # the collection first; what else is on the path stays (in a VM: the bundle's packages)
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (COLLECTIONS, os.environ.get('PYTHONPATH')) if p))
    full_env.pop('AUDITGAP_TEST_KILL_AT', None)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, os.path.join(MODULES, module + '.py'), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=ROOT)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode == -signal.SIGKILL:
        return proc.returncode, None
    try:
        return proc.returncode, json.loads(out.decode())
    except ValueError:
        raise AssertionError('module output is not JSON: %r %r' % (out[-2000:], err[-2000:])) from None


def run(module, args, tmp_path, env=None, start=start):
    return finish(start(module, args, tmp_path, env))


def audit_settings():
    out = subprocess.run(['auditctl', '-s'], capture_output=True, text=True, check=True).stdout
    status = audit.parse_status(out)
    return {k: status[k] for k in ('enabled', 'failure', 'rate_limit', 'backlog_limit', 'backlog_wait_time')}


def loaded():
    out = subprocess.run(['auditctl', '-l'], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip() and line.strip() != 'No rules']


def recover_with_audit_tune(tmp_path, start=start):
    """Any auditgap module: audit_tune asked for the backlog limit already set (changes nothing)."""
    current = audit_settings()['backlog_limit']
    rc, res = run('audit_tune', {'backlog_limit': current, 'persistent': False}, tmp_path, start=start)
    assert rc == 0, res
    assert res['changed'] is False
    return res['audit_tune']['recovered_from_crash']


def recover_with_ftrace_sample(tmp_path):
    """Any auditgap module: a short syscalls sample of this test process."""
    rc, res = run('ftrace_sample', {'mode': 'syscalls', 'pids': [os.getpid()], 'syscalls': ['getppid'],
                                    'duration_s': 0.2}, tmp_path)
    assert rc == 0, res
    return res['ftrace_sample']['recovered_from_crash']


def differences(before, after, where=''):
    """Where two snapshots differ: ['key/sub: before -> after', ...]."""
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and len(before) == len(after) \
            and any(isinstance(x, (dict, list, tuple)) for x in before):
        before, after = dict(enumerate(before)), dict(enumerate(after))
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after), key=str):
            if before.get(key) != after.get(key):
                out.extend(differences(before.get(key), after.get(key), '%s/%s' % (where, key)))
        return out
    return ['%s: %r -> %r' % (where or '/', before, after)]


def kill_at_each_step(module, args, tmp_path, snapshot, recover=None, max_steps=20, start=start):
    """SIGKILL ``module`` after 1, 2, ... changes until it finishes; after each kill the
    recovering run (``recover(tmp_path)``; by default audit_tune, started like the killed
    runs) must leave ``snapshot()`` as it was and report the dead run's journal.
    ``start``: how a run starts (a new process, or a fork of one that imported the module).
    Returns (kills, the finishing run's (rc, result))."""
    if recover is None:
        def recover(tmp):
            return recover_with_audit_tune(tmp, start=start)
    before = snapshot()
    kills = 0
    for n in range(1, max_steps):
        proc = start(module, args, tmp_path, env={guard.KILL_AT_ENV: str(n)})
        rc, res = finish(proc)
        if rc != -signal.SIGKILL:
            return kills, (rc, res)
        kills += 1
        recovered = recover(tmp_path)
        mine = [r for r in recovered if r['owner_pid'] == proc.pid]
        assert len(mine) == 1 and mine[0]['module'] == module and mine[0]['errors'] == [], (n, recovered)
        assert mine[0]['undone'], (n, recovered)
        after = snapshot()
        assert after == before, 'after a SIGKILL at step %d and recovery: %s' % (n, differences(before, after))
        assert not [p for p in guard.list_journals() if p.endswith('-%d.json' % proc.pid)]
    raise AssertionError('%s never finished' % module)


# -- ftrace_sample ------------------------------------------------------------------------

def tracefs_state(root, syscalls=('getppid',)):
    extra = ['events/syscalls/%s%s/%s' % (prefix, name, rel)
             for name in syscalls for prefix in ('sys_enter_', 'sys_exit_') for rel in ('enable', 'filter', 'trigger')]
    return tracefs.snapshot(root, extra)


@pytest.mark.parametrize('mode', ['syscalls', 'offcpu'])
def test_ftrace_sample_killed_at_each_step_is_recovered(tmp_path, tracefs_root, mode):
    args = {'mode': mode, 'pids': [os.getpid()], 'syscalls': ['getppid'] if mode == 'syscalls' else None,
            'duration_s': 0.2}
    kills, (rc, res) = kill_at_each_step('ftrace_sample', args, tmp_path, lambda: tracefs_state(tracefs_root))
    assert kills >= 3
    assert rc == 0 and res['ftrace_sample']['restored'], res


# the audit path and the exit work (the diagnose role's filter, without the 4.x word):
# the tracer patches a few functions, not ~46k (seconds each way under emulation)
GRAPH_FILTER = ['*audit*', 'schedule_timeout', 'syscall_exit_to_user_mode_prepare']


@pytest.mark.vm('function_graph: this machine\'s kernel lacks the tracer')
def test_vm_function_graph_sample_killed_at_each_step_is_recovered(tmp_path, tracefs_root):
    """A live function_graph sample (both recipes) SIGKILLed after each top-level change:
    the next run (audit_tune: any module that changes the kernel) puts current_tracer,
    tracing_thresh, set_ftrace_pid, set_ftrace_filter, buffer_size_kb and the options back,
    and the next sample runs (each iteration's is one: never refused as tracer busy).

    The runs are forks of this process (tests/support/forkrun.py): under QEMU emulation
    a new module process spends 20-40 s importing, and this test runs one per step. The
    recovery is audit_tune, not a syscalls sample: a sample creates a tracefs instance,
    which on the VM's 6.1 kernel (no eventfs) creates ~2,000 event directories, 20 s to
    minutes under emulation; audit_tune's lock replays the same journals."""
    args = {'mode': 'function_graph', 'pids': [os.getpid()], 'duration_s': 1, 'tracing_thresh_us': 2000,
            'function_filter': GRAPH_FILTER}
    forks = ModuleForks('ftrace_sample', 'audit_tune')
    kills, (rc, res) = kill_at_each_step(
        'ftrace_sample', args, tmp_path, lambda: tracefs_state(tracefs_root), max_steps=40, start=forks.start)
    facts = res['ftrace_sample']
    assert rc == 0 and facts['modes'] == ['function_graph'] and facts['restored'], res
    # every change of both recipes, and before each recipe's restore
    assert kills >= 16, kills


# what a hist sample of two syscalls changes: instance, synthetic event, histogram, and each
# syscall's enter and exit triggers
HIST_CHANGES = 7


def _accept_and_getppid(rounds):
    """Loopback accept4 calls and getppid calls of this process (what the hist counts)."""
    import socket
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(8)
    try:
        for _ in range(rounds):
            cli = socket.create_connection(srv.getsockname())
            conn, _addr = srv.accept()
            conn.close()
            cli.close()
            os.getppid()
    finally:
        srv.close()


def _getppid_cpu_us(calls=4000, rounds=5):
    """Median CPU microseconds per getppid() of this process and of a forked child (another
    pid: what a task outside the sample's filter pays), ``rounds`` alternations."""
    import statistics

    def loop():
        start = time.process_time()
        for _ in range(calls):
            os.getppid()
        return (time.process_time() - start) / calls * 1e6
    own, other = [], []
    for _ in range(rounds):
        own.append(loop())
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(write_fd, repr(loop()).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        other.append(float(os.read(read_fd, 64).decode()))
        os.close(read_fd)
        os.waitpid(pid, 0)
    return {'traced_us': round(statistics.median(own), 2), 'other_pid_us': round(statistics.median(other), 2)}


def _events_getppid_cpu_us(root):
    """The same with events mode's set-up instead (sys_enter/sys_exit_getppid filtered to this
    process, top level: a throwaway VM), undone after."""
    paths = ['events/syscalls/%s_getppid/%s' % (kind, rel) for kind in ('sys_enter', 'sys_exit')
             for rel in ('filter', 'enable')]
    try:
        for rel in paths:
            guard.write_value(os.path.join(root, rel), 'common_pid == %d' % os.getpid() if rel.endswith('filter') else '1')
        return _getppid_cpu_us()
    finally:
        for rel in reversed(paths):
            guard.write_value(os.path.join(root, rel), '0')
        guard.write_value(os.path.join(root, 'trace'), '')


@pytest.mark.vm('hist triggers: this machine\'s kernel has no CONFIG_HIST_TRIGGERS')
def test_vm_hist_sample_killed_is_recovered_by_journal_and_by_stale_cleanup(tmp_path, tracefs_root):
    """A live syscalls sample with aggregation=hist SIGKILLed once everything is in place
    (instance, synthetic event, the histogram, each syscall's enter and exit triggers) leaves the kernel counting: its
    histogram is read here (and recorded for the unit tests' fixture when
    AUDITGAP_HIST_RECORD names a file). The next auditgap run (audit_tune) replays the
    journal: no instance, no synthetic event, no trigger. Killed again with its journal
    deleted, the next sample's stale cleanup (tracefs.remove_stale_instances) removes the
    same. Forks of this process (a module start costs 20-40 s of imports under emulation).
    With AUDITGAP_HIST_COST naming a file, the CPU a getppid() costs with the hist triggers in
    place, with events mode's set-up and with neither is written there (JSON; printed, never
    asserted: the evidence for aggregation's default, docs/ftrace_sample.md)."""
    root = tracefs_root
    before = tracefs_state(root, ('accept4', 'getppid'))
    args = {'mode': 'syscalls', 'syscalls': ['accept4', 'getppid'], 'pids': [os.getpid()], 'duration_s': 0.5,
            'aggregation': 'hist'}
    forks = ModuleForks('ftrace_sample', 'audit_tune')
    for journal_lost in (False, True):
        proc = forks.start('ftrace_sample', args, tmp_path, env={guard.KILL_AT_ENV: str(HIST_CHANGES)})
        rc, _res = finish(proc, timeout=600)
        assert rc == -signal.SIGKILL, (rc, _res)
        inst = os.path.join(root, 'instances', 'auditgap-%d' % proc.pid)
        synth = tracehist.synth_name(proc.pid)
        assert synth in tracehist.synthetic_names(tracefs.read(os.path.join(root, 'synthetic_events')))
        for name in ('accept4', 'getppid'):
            exit_trigger = tracefs.read(os.path.join(inst, 'events/syscalls/sys_exit_%s/trigger' % name))
            assert 'onmatch(syscalls.sys_enter_%s).trace(%s' % (name, synth) in exit_trigger, exit_trigger
        # the sample stopped its instance's ring buffer before it was killed; the triggers read
        # common_timestamp, so the kernel reserves each event there: on again to count
        guard.write_value(os.path.join(inst, 'tracing_on'), '1')
        _accept_and_getppid(50)
        text = tracefs.read(os.path.join(inst, 'events/synthetic', synth, 'hist'))
        parsed = tracehist.parse_hist(text)
        result = tracehist.syscalls_from_hist(parsed, ['accept4', 'getppid'])
        assert result['accept4']['count'] >= 50 and result['getppid']['count'] >= 50, text
        record = os.environ.get('AUDITGAP_HIST_RECORD')
        if record and not journal_lost:
            with open(record, 'w') as handle:
                handle.write(text)
        cost_file = os.environ.get('AUDITGAP_HIST_COST')
        if cost_file and not journal_lost:
            cost = {'hist': _getppid_cpu_us()}
        if journal_lost:
            journal = [p for p in guard.list_journals() if p.endswith('-%d.json' % proc.pid)]
            assert len(journal) == 1, journal
            os.unlink(journal[0])
            removed = tracefs.remove_stale_instances(root)
            assert removed == ['auditgap-%d' % proc.pid], removed
        else:
            # audit_tune asked for the backlog limit already set (changes nothing); its replay
            # removes the instance (rmdir: tens of seconds under emulation)
            rc, res = finish(forks.start('audit_tune', {'backlog_limit': audit_settings()['backlog_limit'],
                                                        'persistent': False}, tmp_path), timeout=600)
            assert rc == 0 and res['changed'] is False, res
            recovered = res['audit_tune']['recovered_from_crash']
            mine = [r for r in recovered if r['owner_pid'] == proc.pid]
            assert len(mine) == 1 and mine[0]['errors'] == [], recovered
            assert any(synth in step for step in mine[0]['undone']), mine
        after = tracefs_state(root, ('accept4', 'getppid'))
        assert after == before, 'journal lost %s: %s' % (journal_lost, differences(before, after))
        if cost_file and not journal_lost:
            cost['none'] = _getppid_cpu_us()
            cost['events'] = _events_getppid_cpu_us(root)
            assert tracefs_state(root, ('accept4', 'getppid')) == before
            with open(cost_file, 'w') as handle:
                json.dump(cost, handle)
            print('getppid CPU us: %s' % json.dumps(cost))


FUNCTION_GRAPH_FILES = '''
import sys
from ansible_collections.auditgap.fleet.plugins.module_utils import guard, tracefs
from ansible_collections.auditgap.fleet.plugins.modules import ftrace_sample as fs
root = sys.argv[1]
with tracefs.Lock() as lock:
    g = guard.RestoreGuard(journal=guard.Journal('ftrace_sample', state_dir=lock.state_dir))
    with g:
        restore = tracefs.top_level_restore_values(root)
        fs._top_guarded(g, root, restore, 'tracing_thresh', '100000')
        fs._top_guarded(g, root, restore, 'buffer_size_kb', '2048')
        fs._top_guarded(g, root, restore, 'current_tracer', 'nop')
print('restored' if g.ok else g.restore_errors)
'''


def restored_top_level(before, after):
    """``after`` with the top-level buffer_size_kb read as ``before``'s when it is the restore of a
    buffer never expanded since boot (``7 (expanded: 1408)`` before, ``1408`` after, which the
    kernel rounds up to whole pages: 1410): the documented restore (docs/ftrace_sample.md), since
    a write to buffer_size_kb expands the top level for good. Anything else stays as read."""
    first_use = tracefs.unexpanded_buffer_kb(before.get('buffer_size_kb'))
    text = (after.get('buffer_size_kb') or '').strip()
    if first_use is not None and text.isdigit() and first_use <= int(text) < first_use + 64:
        return dict(after, buffer_size_kb=before['buffer_size_kb'])
    return after


def test_function_graph_top_level_files_killed_at_each_step_are_recovered(tmp_path, tracefs_root):
    """The recipes' own _top_guarded on the real top-level tracing_thresh, buffer_size_kb and
    current_tracer; the next ftrace_sample replays the journal (no tracer busy after). On a
    freshly booted host the top-level buffer was never expanded: its restore is the size it
    grows to on first use (restored_top_level)."""
    root = tracefs_root
    before = tracefs_state(root)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    kills = 0
    for n in range(1, 10):
        env[guard.KILL_AT_ENV] = str(n)
        proc = subprocess.Popen([sys.executable, '-c', FUNCTION_GRAPH_FILES, root], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        out, err = proc.communicate(timeout=60)
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0 and out.strip() == 'restored', err
            break
        kills += 1
        recovered = recover_with_ftrace_sample(tmp_path)
        assert [r['owner_pid'] for r in recovered] == [proc.pid], recovered
        assert len(recovered) == 1 and recovered[0]['errors'] == [] and recovered[0]['undone'], recovered
        after = restored_top_level(before, tracefs_state(root))
        assert after == before, 'after a SIGKILL at step %d: %s' % (n, differences(before, after))
    assert kills == 3


def test_two_sigterms_during_a_sample_restore_everything(tmp_path, tracefs_root):
    root = tracefs_root
    before = tracefs_state(root, ('getppid', 'read'))
    proc = start('ftrace_sample', {'mode': 'syscalls', 'pids': [os.getpid()], 'syscalls': ['getppid', 'read'],
                                   'duration_s': 20}, tmp_path)
    instance = os.path.join(root, 'instances', 'auditgap-%d' % proc.pid)
    deadline = time.time() + 30
    while time.time() < deadline and not os.path.exists(os.path.join(instance, 'events/syscalls/sys_exit_read/enable')):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc, res = finish(proc)
    facts = res['ftrace_sample']
    assert rc != 0 and facts['interrupted'] == 'SIGTERM', res
    assert facts['restored'] is True and facts['restore_errors'] == [], res
    assert tracefs_state(root, ('getppid', 'read')) == before
    assert guard.list_journals() == [] or all(not p.endswith('-%d.json' % proc.pid) for p in guard.list_journals())


# -- audit_tune ---------------------------------------------------------------------------

@pytest.fixture
def audit_settings_back():
    before = audit_settings()
    if before['enabled'] == 2:
        pytest.skip('audit is immutable on this host')
    yield before
    labkit.set_status(**{k: before[k] for k in ('rate_limit', 'backlog_limit', 'backlog_wait_time')})
    assert audit_settings() == before


def test_audit_tune_killed_at_each_step_is_recovered(tmp_path, audit_settings_back, tracefs_root):
    before = audit_settings_back
    rules_dir = tmp_path / 'rules.d'
    rules_dir.mkdir()
    rules_file = rules_dir / '99-auditgap-test.rules'
    args = {'backlog_limit': before['backlog_limit'] + 1,
            'backlog_wait_time_jiffies': 250 if before['backlog_wait_time'] != 250 else 251,
            'rate_limit': before['rate_limit'] + 100000,
            'rules_file': str(rules_file), 'augenrules_check': False}

    def snapshot():
        return audit_settings(), rules_file.exists() and rules_file.read_text()
    kills, (rc, res) = kill_at_each_step('audit_tune', args, tmp_path, snapshot, recover=recover_with_ftrace_sample)
    assert kills == 4  # the file, three settings (the 4th kill: before the commit)
    assert rc == 0 and res['changed'], res
    assert audit_settings()['backlog_limit'] == before['backlog_limit'] + 1


def test_audit_tune_waits_for_the_host_lock_then_fails_clearly(tmp_path, audit_settings_back):
    before = audit_settings_back
    with guard.HostLock('test-holder'):
        rc, res = run('audit_tune', {'backlog_limit': before['backlog_limit'] + 1, 'persistent': False},
                      tmp_path, env={guard.LOCK_WAIT_ENV: '1'})
    assert rc != 0 and 'held by auditgap test-holder (pid %d' % os.getpid() in res['msg'], res
    assert 'after waiting 1s' in res['msg'] and 'nothing changed' in res['msg']
    assert audit_settings() == before


# -- cpu_limit (cgroup backend) ----------------------------------------------------------

@pytest.fixture
def throttled_group():
    if not os.path.exists(os.path.join(CPU_V1, 'cpu.cfs_quota_us')):
        pytest.skip('no cgroup v1 cpu hierarchy here')  # this project's machines have one
    name = 'auditgap-test-crash-%d' % os.getpid()
    path = os.path.join(CPU_V1, name)
    os.mkdir(path)
    try:
        guard.write_value(os.path.join(path, 'cpu.cfs_quota_us'), '1000')
        yield '/' + name, path
    finally:
        rmdir_cgroup(path)


def test_cpu_limit_killed_at_each_step_is_recovered(tmp_path, throttled_group):
    name, path = throttled_group
    args = {'backend': 'cgroup', 'target': {'cgroup_path': name}, 'limit_cores': 0.5, 'period_us': 50000}

    def snapshot():
        return [open(os.path.join(path, f)).read() for f in ('cpu.cfs_quota_us', 'cpu.cfs_period_us')]
    assert snapshot() == ['1000\n', '100000\n']
    kills, (rc, res) = kill_at_each_step('cpu_limit', args, tmp_path, snapshot)
    assert kills == 1  # one undo step covers the quota and period writes (killed before the commit)
    assert rc == 0 and res['changed'] and snapshot() == ['25000\n', '50000\n'], res


# -- cpu_limit (docker backend, the real dockerd) ------------------------------------------

def container_limit(ref):
    """A container's CPU limit as cpu_limit reads it and as its cgroup enforces it. A quota
    that is not set reads 0 before and -1 after a lifted one (the same: no quota)."""
    info = dockerctl.container_by_name_or_id(ref)
    directory = labkit.cgroup_of_pid(info['pid'])
    files = ['cpu.max'] if os.path.exists(os.path.join(directory, 'cpu.max')) else ['cpu.cfs_quota_us', 'cpu.cfs_period_us']
    enforced = []
    for name in files:
        with open(os.path.join(directory, name)) as handle:
            enforced.append(handle.read())
    limit = cpu_limit.docker_limit(info)
    return {'limit_cores': limit['limit_cores'], 'nano_cpus': info['nano_cpus'], 'cpu_period_us': info['cpu_period_us'],
            'quota_set': info['cpu_quota_us'] > 0, 'enforced': enforced, 'running': info['running']}


@pytest.mark.kernel
@pytest.mark.docker
@pytest.mark.parametrize('cpus', [0.05, None], ids=['cpus', 'unlimited'])
def test_cpu_limit_docker_killed_at_each_step_is_recovered(tmp_path, docker_engine, cpus):
    """docker update SIGKILLed before its commit: the next auditgap run puts the container's
    limit back (--cpus as it was; an unlimited container unlimited again)."""
    name = 'auditgap-test-crash-%d' % os.getpid()
    docker_engine.run(['sh', '-c', 'while :; do sleep 1; done'], name=name, cpus=cpus)
    try:
        before = container_limit(name)
        assert before['limit_cores'] == cpus and before['running'], before
        args = {'backend': 'docker', 'target': {'container': name}, 'limit_cores': 0.5, 'force': cpus is None}
        kills, (rc, res) = kill_at_each_step('cpu_limit', args, tmp_path, lambda: container_limit(name))
        assert kills == 1  # the update (killed before the commit)
        assert rc == 0 and res['changed'] and res['cpu_limit']['after']['limit_cores'] == 0.5, res
        assert container_limit(name)['limit_cores'] == 0.5
    finally:
        docker_engine.remove(name)


# -- cpu_limit (systemd backend, VM-only: systemd as PID 1) -------------------------------

def unit_dropin_dirs(unit):
    """Where a unit's drop-ins can come from in these tests: cpu_limit's (the default
    systemd_dropin_dir) and the two set-property --runtime writes (dropins.runtime_dropin)."""
    return [os.path.join(base, unit + '.d') for base in
            ('/etc/systemd/system', dropins.RUNTIME_CONTROL_DIR, dropins.TRANSIENT_DIR)]


def unit_state(unit):
    """What a unit's CPU limit is made of: DropInPaths with each file's text, the effective
    CPUQuotaPerSecUSec, its cgroup's cpu.max, and which drop-in directories exist."""
    out = subprocess.run(['systemctl', 'show', unit, '-p', 'DropInPaths', '-p', 'CPUQuotaPerSecUSec',
                          '-p', 'ControlGroup'], capture_output=True, text=True, check=True).stdout
    props = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
    texts = {}
    for path in props['DropInPaths'].split():
        with open(path) as handle:
            texts[path] = handle.read()
    with open('/sys/fs/cgroup%s/cpu.max' % props['ControlGroup']) as handle:
        cpu_max = handle.read()
    dirs = [d for d in unit_dropin_dirs(unit) if os.path.isdir(d)]
    return {'dropins': texts, 'quota': props['CPUQuotaPerSecUSec'], 'cpu.max': cpu_max, 'dirs': dirs}


UNIT_FILE = """[Service]
ExecStart=/bin/sleep infinity
CPUQuota=5%
"""


@pytest.fixture(params=['unit_file', 'transient'])
def limited_unit(request):
    """A running unit at CPUQuota=5%: one from a unit file (a service such as auditd.service:
    set-property --runtime writes to system.control) or a transient one (systemd-run, like a
    scope: its runtime settings live in /run/systemd/transient)."""
    unit = 'auditgap-test-crash-%s.service' % request.param.replace('_', '-')
    unit_path = '/run/systemd/system/%s' % unit
    if request.param == 'unit_file':
        with open(unit_path, 'w') as handle:
            handle.write(UNIT_FILE)
        subprocess.run(['systemctl', 'daemon-reload'], check=True)
        subprocess.run(['systemctl', 'start', unit], check=True, capture_output=True)
    else:
        subprocess.run(['systemd-run', '--unit', unit, '-p', 'CPUQuota=5%', 'sleep', 'infinity'], check=True,
                       capture_output=True)
    try:
        yield unit
    finally:
        subprocess.run(['systemctl', 'stop', unit], capture_output=True, check=False)
        for directory in unit_dropin_dirs(unit):
            for name in ('50-auditgap-cpu.conf', '50-CPUQuota.conf'):
                if os.path.exists(os.path.join(directory, name)):
                    os.unlink(os.path.join(directory, name))
            if os.path.isdir(directory):
                os.rmdir(directory)
        if os.path.exists(unit_path):
            os.unlink(unit_path)
        subprocess.run(['systemctl', 'daemon-reload'], check=True)


@pytest.mark.vm('needs systemd as PID 1')
def test_vm_cpu_limit_systemd_killed_at_each_step_is_recovered(tmp_path, limited_unit):
    """Drop-in + daemon-reload + runtime CPUQuota (cgroup v2), SIGKILLed after each change:
    the next auditgap run leaves the unit's drop-ins, effective CPUQuota and cpu.max as before,
    for a unit from a unit file and for a transient one. The runs are forks of this process
    (tests/support/forkrun.py), as in the function_graph test: each new module process would
    spend 20-40 s importing under QEMU emulation."""
    before = unit_state(limited_unit)
    assert before['quota'] == '50ms' and before['dirs'] == [], before
    args = {'backend': 'systemd', 'target': {'systemd_unit': limited_unit}, 'limit_cores': 0.5}
    forks = ModuleForks('cpu_limit', 'audit_tune')
    kills, (rc, res) = kill_at_each_step('cpu_limit', args, tmp_path, lambda: unit_state(limited_unit),
                                         start=forks.start)
    # the drop-in directory, the drop-in (+ reload), the runtime property, (before the commit)
    assert kills == 3, kills
    assert rc == 0 and res['changed'] and res['cpu_limit']['after']['limit_cores'] == 0.5, res
    after = unit_state(limited_unit)
    assert after['quota'] == '500ms' and after['cpu.max'].split()[0] == '50000', after


def test_cpu_limit_waits_for_the_host_lock_then_fails_clearly(tmp_path, throttled_group):
    name, path = throttled_group
    with guard.HostLock('test-holder'):
        rc, res = run('cpu_limit', {'backend': 'cgroup', 'target': {'cgroup_path': name}, 'limit_cores': 0.5},
                      tmp_path, env={guard.LOCK_WAIT_ENV: '0.5'})
    assert rc != 0 and 'held by auditgap test-holder' in res['msg'] and 'nothing changed' in res['msg'], res
    assert open(os.path.join(path, 'cpu.cfs_quota_us')).read() == '1000\n'


# -- audit_rule_narrow ---------------------------------------------------------------------

FILE_RULES = ('-a always,exit -F arch=b64 -S clone,fork,execve -k %s\n'
              '-a always,exit -F arch=b64 -S bind,listen,accept4 -F success=1 -k %s\n' % (KEY, KEY))


@pytest.fixture
def keyed_rules_and_watch(tmp_path):
    """A watch with the test key, the file's two rules, and a rule of another key after them."""
    if audit_settings()['enabled'] == 2:
        pytest.skip('audit is immutable on this host')
    rules_dir = tmp_path / 'rules.d'
    rules_dir.mkdir()
    (rules_dir / '50-test.rules').write_text(FILE_RULES)
    watched = tmp_path / 'watched'
    watched.write_text('')
    try:
        subprocess.run(['auditctl', '-w', str(watched), '-p', 'wa', '-k', KEY], check=True, capture_output=True)
        for line in FILE_RULES.splitlines():
            subprocess.run(['auditctl'] + line.split(), check=True, capture_output=True)
        subprocess.run(['auditctl', '-a', 'always,exit', '-F', 'arch=b64', '-S', 'getppid', '-k', OTHER],
                       check=True, capture_output=True)
        yield rules_dir, str(watched)
    finally:
        subprocess.run(['auditctl', '-W', str(watched), '-p', 'wa', '-k', KEY], capture_output=True, check=False)
        for key in (KEY, OTHER):
            delete_rules_by_key(key)
        assert not [r for r in loaded() if KEY in r]


def test_narrowing_keeps_watches_and_other_rules(tmp_path, keyed_rules_and_watch):
    """Today's -D -k KEY deleted the watch carrying KEY; exact -d leaves it."""
    rules_dir, watched = keyed_rules_and_watch
    before = loaded()
    rc, res = run('audit_rule_narrow', {'narrow': [{'syscall': 'accept4', 'key': KEY}], 'rules_dir': str(rules_dir)},
                  tmp_path)
    assert rc == 0 and res['changed'], res
    after = loaded()
    assert [r for r in after if r.startswith('-w')] == [r for r in before if r.startswith('-w')]
    assert any(watched in r for r in after)
    assert [r for r in after if OTHER in r] == [r for r in before if OTHER in r]
    assert '-a always,exit -F arch=b64 -S bind,listen -F success=1 -F key=%s' % KEY in after
    assert res['audit_rule_narrow']['loaded_equals_intended'] is True
    assert res['audit_rule_narrow']['live_method'] == ['exact']


def test_audit_rule_narrow_killed_at_each_step_is_recovered(tmp_path, keyed_rules_and_watch):
    rules_dir, _watched = keyed_rules_and_watch
    rules_file = rules_dir / '50-test.rules'
    args = {'narrow': [{'syscall': 'accept4'}], 'rules_dir': str(rules_dir), 'backup': False}

    def snapshot():
        return loaded(), rules_file.read_text()
    kills, (rc, res) = kill_at_each_step('audit_rule_narrow', args, tmp_path, snapshot)
    assert kills == 4  # file, delete, add, (before the commit)
    assert rc == 0 and res['changed'], res


def test_audit_rule_narrow_waits_for_the_host_lock_then_fails_clearly(tmp_path, keyed_rules_and_watch):
    rules_dir, _watched = keyed_rules_and_watch
    before = loaded(), (rules_dir / '50-test.rules').read_text()
    with guard.HostLock('test-holder'):
        rc, res = run('audit_rule_narrow', {'narrow': [{'syscall': 'accept4'}], 'rules_dir': str(rules_dir)},
                      tmp_path, env={guard.LOCK_WAIT_ENV: '0.5'})
    assert rc != 0 and 'held by auditgap test-holder' in res['msg'] and 'nothing changed' in res['msg'], res
    assert (loaded(), (rules_dir / '50-test.rules').read_text()) == before


# -- the lock file -------------------------------------------------------------------------

def test_a_symlink_planted_as_the_lock_file_is_refused_and_its_target_untouched(tmp_path, tracefs_root):
    """Today the lock under /run/lock was opened following symlinks: root truncated the target."""
    victim = tmp_path / 'victim'
    victim.write_text('precious\n')
    lock_path = tracefs.LOCK_PATH
    guard.ensure_state_dir(os.path.dirname(lock_path))
    held = None
    if os.path.lexists(lock_path):
        held = guard.HostLock('test-planting')  # nobody else holds it while the symlink is there
        held.__enter__()
        os.unlink(lock_path)
    try:
        os.symlink(str(victim), lock_path)
        rc, res = run('ftrace_sample', {'mode': 'syscalls', 'pids': [os.getpid()], 'syscalls': ['getppid'],
                                        'duration_s': 0.2}, tmp_path)
    finally:
        os.unlink(lock_path)
        if held is not None:
            held.__exit__()
    assert victim.read_text() == 'precious\n'
    assert rc != 0 and 'symlink' in res['msg'] and 'Traceback' not in res['msg'], res


# -- incident_lab ----------------------------------------------------------------------------

def test_incident_lab_killed_at_each_step_is_recovered(tmp_path, tracefs_root):
    """state=present SIGKILLed after each journaled lab change (the lab dir, audit settings,
    the cgroup, the consumer, its quota, each rule, the workload, the kept state file):
    the next auditgap run removes the half-made lab; absent removes the complete one."""
    if not labkit.find_auditd():
        pytest.skip('auditd is not installed (make test installs it)')
    if labkit.get_status().get('pid'):
        pytest.skip('another audit consumer is registered')
    state_path = str(tmp_path / 'lab' / 'state.json')
    args = {'state': 'present', 'backend': 'cgroup', 'key': 'auditgap-test-lab-crash', 'period_us': 100000,
            'state_path': state_path}

    def snapshot():
        return host_snapshot(daemons=('auditd',))
    before = snapshot()
    try:
        kills, (rc, res) = kill_at_each_step('incident_lab', args, tmp_path, snapshot,
                                             recover=recover_with_ftrace_sample)
        assert kills >= 8  # lab dir, audit settings, cgroup, auditd, quota, 2 rules, workload, the commit
        assert rc == 0 and res['incident_lab']['state'] == 'present' and res['incident_lab']['server_pid'], res
        assert guard.list_journals() == [] or not any('incident_lab' in p for p in guard.list_journals())
        # a complete lab is not a crash: the next auditgap run leaves it alone
        assert not [r for r in recover_with_ftrace_sample(tmp_path) if r['module'] == 'incident_lab']
        assert labkit.lab_info(state_path)['alive']
        # absent killed half-way (it adopted the lab's journal): the rest is the next auditgap run's
        rc, res = run('incident_lab', {'state': 'absent', 'state_path': state_path}, tmp_path,
                      env={guard.KILL_AT_ENV: '2'})
        assert rc == -signal.SIGKILL and not os.path.exists(state_path)
        recovered = [r for r in recover_with_ftrace_sample(tmp_path) if r['module'] == 'incident_lab']
        assert len(recovered) == 1 and recovered[0]['undone'] and recovered[0]['errors'] == [], recovered
    finally:
        rc, res = run('incident_lab', {'state': 'absent', 'state_path': state_path}, tmp_path)
    assert rc == 0 and not res['changed'], res
    assert snapshot_diff(before, snapshot()) == []


@pytest.mark.docker
def test_incident_lab_docker_killed_at_each_step_is_recovered(tmp_path, tracefs_root):
    """The docker backend SIGKILLed after each journaled change (dockerd when the lab starts
    it, the image, the container, its auditd, its quota, the rules): the next auditgap run
    removes the container, the image and the dockerd the lab started."""
    from tests.support.labsnapshot import list_lab_containers
    if not labkit.find_auditd() or not (os.path.exists('/usr/sbin/dockerd') or os.path.exists('/usr/bin/dockerd')):
        pytest.skip('auditd or docker.io is not installed (make test installs them)')
    if labkit.get_status().get('pid'):
        pytest.skip('another audit consumer is registered')
    state_path = str(tmp_path / 'lab' / 'state.json')
    args = {'state': 'present', 'backend': 'docker', 'workload': False, 'key': 'auditgap-test-lab-crash',
            'period_us': 100000, 'state_path': state_path}

    def snapshot():
        snap = host_snapshot(daemons=('auditd', 'dockerd'), docker=list_lab_containers())
        return dict(snap, containers=[c for c in snap['containers'] or [] if 'auditgap-lab' in c])
    before = snapshot()
    try:
        kills, (rc, res) = kill_at_each_step('incident_lab', args, tmp_path, snapshot,
                                             recover=recover_with_ftrace_sample)
        assert kills >= 6  # lab dir, audit settings, image, container, auditd, quota, rules
        assert rc == 0 and res['incident_lab']['container_id'], res
    finally:
        rc, res = run('incident_lab', {'state': 'absent', 'state_path': state_path}, tmp_path)
    assert rc == 0, res
    assert snapshot_diff(before, snapshot()) == []
