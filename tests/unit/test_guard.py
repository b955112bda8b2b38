"""guard.write_value against a file that takes one word per write(2).

The kernel's tracefs list files (set_graph_function, set_ftrace_filter,
set_event) consume one word per write(2) and return a short count. The
function_graph tracer is not in this host's kernel, so os.write is replaced
here by a stand-in with that behaviour; tests/integration/test_ftrace_sample.py
checks the same on the real set_event, and the molecule `ftrace` scenario on
the real set_graph_function.
"""
import os

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod


def _one_word_per_write(calls):
    real = os.write

    def write(fd, data):
        data = bytes(data)
        calls.append(data)
        stripped = data.lstrip(b' ')
        space = stripped.find(b' ')
        if space < 0:
            return real(fd, data)
        consumed = len(data) - len(stripped) + space + 1
        real(fd, data[:consumed])
        return consumed
    return write


def test_write_value_writes_every_word(tmp_path, monkeypatch):
    target = tmp_path / 'set_graph_function'
    target.write_text('old\n')
    calls = []
    monkeypatch.setattr(guard_mod.os, 'write', _one_word_per_write(calls))
    guard_mod.write_value(str(target), '__x64_sys_accept4 syscall_exit_work')
    assert target.read_text() == '__x64_sys_accept4 syscall_exit_work'
    assert len(calls) == 2


def test_write_value_single_and_empty(tmp_path):
    target = tmp_path / 'tracing_on'
    target.write_text('1\n')
    guard_mod.write_value(str(target), '0')
    assert target.read_text() == '0'
    guard_mod.write_value(str(target), '')
    assert target.read_text() == ''


def test_write_value_no_progress_is_an_error(tmp_path, monkeypatch):
    target = tmp_path / 'cpu.max'
    target.write_text('')
    monkeypatch.setattr(guard_mod.os, 'write', lambda fd, data: 0)
    with pytest.raises(OSError, match='short write'):
        guard_mod.write_value(str(target), 'max 100000')


def test_restore_guard_restores_a_word_list(tmp_path, monkeypatch):
    target = tmp_path / 'set_ftrace_filter'
    target.write_text('a b c')
    monkeypatch.setattr(guard_mod.os, 'write', _one_word_per_write([]))
    with guard_mod.RestoreGuard(signals=False) as guard:
        guard.write_file(str(target), 'x y')
        assert target.read_text() == 'x y'
    assert target.read_text() == 'a b c' and guard.restore_errors == []


# -- the undo journal, the state directory, the host lock, signals during restore ---------

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(tmp_path):
    state = tmp_path / 'state'
    state.mkdir(mode=0o700)
    return str(state)


def test_journal_records_before_the_change_and_goes_when_restored(tmp_path):
    state = _state(tmp_path)
    target = tmp_path / 'tracing_thresh'
    target.write_text('0\n')
    seen = []
    with guard_mod.RestoreGuard(signals=False, journal=guard_mod.Journal('t', state_dir=state)) as guard:
        guard.write_file(str(target), '100000')
        (path,) = guard_mod.list_journals(state)
        seen = json.loads(open(path).read())['entries']
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert seen == [{'op': 'write_value', 'args': {'path': str(target), 'value': '0'},
                     'description': 'restore %s' % target}]
    assert target.read_text() == '0' and guard.ok and guard_mod.list_journals(state) == []


def test_commit_keeps_the_change_and_drops_the_journal(tmp_path):
    state = _state(tmp_path)
    target = tmp_path / 'cpu.max'
    target.write_text('1000 100000\n')
    with guard_mod.RestoreGuard(signals=False, journal=guard_mod.Journal('t', state_dir=state)) as guard:
        guard.write_file(str(target), '50000 100000')
        guard.commit()
    assert target.read_text() == '50000 100000' and guard_mod.list_journals(state) == []


def test_recover_replays_a_dead_owners_journal_only(tmp_path):
    state = _state(tmp_path)
    target = tmp_path / 'buffer_size_kb'
    target.write_text('1410')
    dead = guard_mod.Journal('ftrace_sample', state_dir=state, path=os.path.join(state, 'journal-ftrace_sample-1.json'))
    dead.data['owner'] = {'pid': 2 ** 22 + 3, 'starttime': 1, 'module': 'ftrace_sample'}
    dead.record('write_value', {'path': str(target), 'value': '1410'}, 'restore buffer')
    live = guard_mod.Journal('audit_tune', state_dir=state)  # our own pid: alive, left alone
    live.record('write_value', {'path': str(target), 'value': 'x'}, 'not ours to replay')
    target.write_text('4096')
    out = guard_mod.recover(state)
    assert [(r['module'], r['owner_pid'], r['undone'], r['errors']) for r in out] == [
        ('ftrace_sample', 2 ** 22 + 3, ['restore buffer'], [])]
    assert target.read_text() == '1410'
    assert guard_mod.list_journals(state) == [live.path]
    live.delete()


def test_failed_steps_stay_in_the_journal(tmp_path):
    state = _state(tmp_path)
    guard = guard_mod.RestoreGuard(signals=False, journal=guard_mod.Journal('t', state_dir=state))
    with guard:
        guard.push_op('write_value', 'bad', path=str(tmp_path / 'missing' / 'x'), value='0')
    assert not guard.ok and guard.restore_errors[0].startswith('bad: ')
    (path,) = guard_mod.list_journals(state)
    assert [e['description'] for e in json.loads(open(path).read())['entries']] == ['bad']


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match='unknown undo operation'):
        guard_mod.RestoreGuard(signals=False).push_op('shell', cmd='rm -rf /')


def test_state_dir_checks(tmp_path):
    loose = tmp_path / 'loose'
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(guard_mod.UnsafePath, match='mode 777'):
        guard_mod.ensure_state_dir(str(loose))
    link = tmp_path / 'link'
    link.symlink_to(_state(tmp_path))
    with pytest.raises(guard_mod.UnsafePath, match='not a directory'):
        guard_mod.ensure_state_dir(str(link))
    fresh = tmp_path / 'fresh'
    assert guard_mod.ensure_state_dir(str(fresh)) == str(fresh)
    assert os.stat(str(fresh)).st_mode & 0o777 == 0o700


def test_lock_file_symlink_is_refused_and_the_target_untouched(tmp_path):
    state = _state(tmp_path)
    victim = tmp_path / 'victim'
    victim.write_text('precious\n')
    os.symlink(str(victim), os.path.join(state, 'host.lock'))
    with pytest.raises(guard_mod.UnsafePath, match='symlink'):
        with guard_mod.HostLock('t', state_dir=state):
            pass
    assert victim.read_text() == 'precious\n'


def test_lock_file_with_loose_mode_is_refused(tmp_path):
    state = _state(tmp_path)
    path = os.path.join(state, 'host.lock')
    with open(path, 'w'):
        pass
    os.chmod(path, 0o666)
    with pytest.raises(guard_mod.UnsafePath, match='mode 666'):
        with guard_mod.HostLock('t', state_dir=state):
            pass


def test_busy_lock_names_its_live_holder_and_a_stale_record_is_replaced(tmp_path):
    state = _state(tmp_path)
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent('''
        import sys, time
        sys.path.insert(0, %r)
        from ansible_collections.auditgap.fleet.plugins.module_utils import guard
        with guard.HostLock('audit_tune', state_dir=%r):
            print('held', flush=True)
            time.sleep(30)
    ''' % (os.path.join(ROOT, 'collections'), state))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(guard_mod.LockBusy) as err:
            with guard_mod.HostLock('cpu_limit', wait_s=0.3, state_dir=state):
                pass
        assert 'held by auditgap audit_tune (pid %d' % holder.pid in str(err.value)
        assert 'after waiting 0.3s' in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # the holder died (SIGKILL): its record is stale, the lock is free and the record replaced
    with guard_mod.HostLock('cpu_limit', state_dir=state) as lock:
        assert lock.stale_holder['pid'] == holder.pid
        assert json.loads(open(lock.path).read())['pid'] == os.getpid()


SLOW_RESTORE = '''
import os, sys, time
sys.path.insert(0, %(collections)r)
from ansible_collections.auditgap.fleet.plugins.module_utils import guard

def step(i):
    time.sleep(0.3)
    with open(os.path.join(%(out)r, 'step%%d' %% i), 'w') as handle:
        handle.write('done')

outer = guard.RestoreGuard()
try:
    with outer:
        inner = guard.RestoreGuard(signals=False)   # as ftrace_sample's per-recipe guards
        with inner:
            for i in range(4):
                inner.push(step, i, description='step %%d' %% i)
            print('restoring', flush=True)
        print('not interrupted', flush=True)
except guard.GuardInterrupted:
    pass
print('inner', inner.ok, inner.restore_errors, inner.signals_during_restore, flush=True)
print('outer', outer.interrupted, flush=True)
'''


def test_two_sigterms_during_restore_do_not_cut_it_short(tmp_path):
    """Signals arriving while undo steps run are held off until every step has run,
    and then reported (today: the outer guard's handler raised inside a step)."""
    proc = subprocess.Popen([sys.executable, '-c', SLOW_RESTORE % {
        'collections': os.path.join(ROOT, 'collections'), 'out': str(tmp_path)}],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'restoring'
    import time
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['step0', 'step1', 'step2', 'step3'], (out, err)
    lines = out.splitlines()
    # the inner restore ran to the end, then the signal stopped the outer block
    assert lines == ["inner True [] ['SIGTERM']", 'outer SIGTERM'], (out, err)
    assert proc.returncode == 0


def test_lock_in_a_directory_we_cannot_create_is_a_clear_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(guard_mod.UnsafePath, match='cannot use the host lock'):
        with guard_mod.HostLock('t', state_dir=str(blocker / 'state')):
            pass


def test_timeout_paused_stops_the_clock_for_one_call_then_runs_on():
    """A tracefs instance's mkdir (minutes under emulation, no signal cuts it short) is not
    the sample's time: the hard timeout is paused around it and re-armed with what was left."""
    import time
    undone = []
    with pytest.raises(guard_mod.GuardInterrupted):
        with guard_mod.RestoreGuard(timeout_s=0.3) as g:
            g.push(lambda: undone.append('x'), description='x')
            with g.timeout_paused():
                time.sleep(0.5)  # longer than the whole timeout: not interrupted
            assert g.interrupted is None
            time.sleep(1)  # the rest of the 0.3 s runs out here
    assert g.interrupted == 'timeout' and undone == ['x']
    with guard_mod.RestoreGuard() as untimed, untimed.timeout_paused():  # no timeout: nothing to pause
        pass
