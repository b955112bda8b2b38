"""ftrace_sample on the real kernel: a real audit stall, tracefs before == after, SIGTERM, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import guard, tracefs, tracehist
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import write_value

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(ROOT, 'plugins', 'modules', 'ftrace_sample.py')
ANSIBLE = os.path.join(ROOT, '.venv', 'bin', 'ansible')
KEY = 'auditgap-test-ftrace'

pytestmark = pytest.mark.kernel


def _snapshot(root, syscalls=('accept4', 'read')):
    extra = []
    for name in syscalls:
        for prefix in ('sys_enter_', 'sys_exit_'):
            for rel in ('enable', 'filter'):
                extra.append('events/syscalls/%s%s/%s' % (prefix, name, rel))
    return tracefs.snapshot(root, extra)


def _module_proc(args, tmp_path):
    """Start the module's python directly (args JSON), like Ansible does."""
    path = tmp_path / 'args.json'
    path.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, 'collections'))
    return subprocess.Popen([sys.executable, MODULE, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)


def _run_module(args, tmp_path, timeout=120):
    proc = _module_proc(args, tmp_path)
    out, err = proc.communicate(timeout=timeout)
    try:
        return proc.returncode, json.loads(out.decode())
    except ValueError:
        raise AssertionError('module output is not JSON: %r %r' % (out[-2000:], err[-2000:])) from None


def _ansible(args):
    argv = [ANSIBLE, 'localhost', '-m', 'auditgap.fleet.ftrace_sample', '-a', json.dumps(args), '-o']
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
                          timeout=180, check=False)
    text = proc.stdout.decode()
    start = text.find('{')
    assert start >= 0, (text, proc.stderr.decode())
    return proc.returncode, json.loads(text[start:])


def test_stall_syscalls_and_offcpu_name_audit_log_start(tmp_path, tracefs_root):
    stall_mod = pytest.importorskip('tests.support.stall')
    root = tracefs_root
    before = _snapshot(root)
    try:
        with stall_mod.audit_stall(backlog_limit=64, backlog_wait_time=250, quota_us=1000, key=KEY) as stall:
            stall.wait_for(seconds=1, min_count=1, timeout_s=20)
            rc, res = _ansible({'mode': 'auto', 'pids': [stall.server_pid], 'duration_s': 5,
                                 'aggregation': 'auto'})
    except stall_mod.StallRefused as err:
        pytest.skip('cannot create a stall here: %s' % err)
    facts = res['ftrace_sample']
    assert rc == 0, res
    print('accept4: %s' % json.dumps({k: v for k, v in facts['syscalls'].get('accept4', {}).items() if k != 'slowest'}))
    print('offcpu: %s' % json.dumps([(g['stack_text'], g['count'], g['max_us']) for g in facts['offcpu'][:3]]))
    assert facts['supported'] and facts['modes'] == ['syscalls', 'offcpu']
    assert facts['function_graph_available'] is False  # this kernel: auto falls back
    # a stall makes few events: the text is read unless the ring buffer's records pay for naming the stacks
    assert facts['reader'] == 'raw' or 'fewer than' in facts['reader_fallback'], facts['reader_fallback']
    # the default 4 MiB a CPU holds the window: nothing was read beside the traced tasks
    assert facts['read_while_tracing_bytes'] == 0
    assert 'accept4' in facts['syscalls_traced'] and facts['syscalls_source'].startswith('audit_rules')
    if tracehist.available(root):  # in the kernel (the ftrace VM scenario checks that way live)
        assert facts['syscalls_aggregation'] == 'hist', facts['syscalls_aggregation_note']
    else:  # this host's kernel: no hist triggers, auto falls back to the events, and says why
        assert facts['syscalls_aggregation'] == 'events' and facts['syscalls_hist'] is None
        assert 'no hist triggers' in facts['syscalls_aggregation_note'], facts['syscalls_aggregation_note']
    acc = facts['syscalls']['accept4']
    assert acc['count'] > 10, acc
    # the stall: an idle loopback accept takes well under 1 ms, a wait on the full backlog up to
    # backlog_wait_time (250 jiffies: 1 s at HZ=250). How many fast accepts the consumer's quota
    # lets through between two waits varies with its cost per record, so over the same stall the
    # p99 read 0.3 to 100 ms while the slowest calls were 3-4 waits of 1 s and 4-5 of 100 ms:
    # the test counts the slow calls, not a quantile the fast ones dilute
    slow = [call['duration_us'] for call in acc['slowest'] if call['duration_us'] >= 50000]
    assert len(slow) >= 4, acc
    assert 50000 <= acc['max_us'] <= 1500000, acc
    assert acc['slowest'][0]['pid'] in facts['targets']['tids']
    stacks = [g['stack'] for g in facts['offcpu']]
    assert any('audit_log_start' in s for s in stacks), [g['stack_text'] for g in facts['offcpu'][:5]]
    assert facts['audit_wait_observed'] is True
    # offcpu_stacked_sleeps blocked (the default): only uninterruptible sleeps carry a stack; the server's
    # waits for the next connection (S) and preemptions are timed without one
    assert facts['offcpu_stacked_sleeps'] == 'blocked'
    assert not [g for g in facts['offcpu'] if set(g['states']) & {'S', 'R', 'R+'}], \
        [(g['stack_text'], g['states']) for g in facts['offcpu']]
    audit = [g for g in facts['offcpu'] if 'audit_log_start' in g['stack']][0]
    assert audit['stack'][0] == 'schedule_timeout' and stall.server_pid in audit['pids']
    assert facts['restored'] is True and facts['restore_errors'] == []
    assert facts['targets']['audit_consumer_pid'] not in facts['targets']['tids']
    assert _snapshot(root) == before


def test_busy_events_sample_reads_the_ring_buffer(tmp_path, tracefs_root):
    """A busy task (getppid in a loop, a 0.2 ms sleep every 500 calls) sampled into a 256 KiB
    buffer, so most events are overwritten: syscalls + offcpu read from trace_pipe_raw, decoded;
    counts, the sleeps and the restore as with the text."""
    root = tracefs_root
    before = _snapshot(root, syscalls=('getppid',))
    code = ('import os, time\nend = time.monotonic() + 30\nn = 0\nwhile time.monotonic() < end:\n'
            '    os.getppid()\n    n += 1\n    if n % 500 == 0:\n        time.sleep(0.0002)\n')
    busy = subprocess.Popen([sys.executable, '-c', code])
    try:
        time.sleep(0.5)
        # a small buffer fills within the window, so pages are read during it: raw whatever the load
        # offcpu_stacked_sleeps all: the nanosleeps (state S) carry a stack too
        rc, res = _run_module({'mode': 'auto', 'pids': [busy.pid], 'syscalls': ['getppid'], 'duration_s': 2,
                               'buffer_size_kb': 256, 'offcpu_stacked_sleeps': 'all'}, tmp_path)
    finally:
        busy.kill()
        busy.wait()
    facts = res['ftrace_sample']
    assert rc == 0, res
    print({k: facts[k] for k in ('reader', 'reader_fallback', 'events', 'lines', 'events_lost', 'window_s')})
    assert facts['reader'] == 'raw' and facts['reader_fallback'] is None
    # 256 KiB fill within the window: pages were read while it traced (whole pages of the raw buffer)
    assert facts['read_while_tracing_bytes'] > 0 and facts['read_while_tracing_bytes'] % 4096 == 0
    assert facts['offcpu_stacked_sleeps'] == 'all'
    calls = facts['syscalls']['getppid']
    assert calls['count'] > 5000 and calls['slowest'][0]['pid'] == busy.pid, calls
    assert facts['lines'] >= 2 * calls['count'] and 1.0 <= facts['window_s'] <= 4.0
    # getppid takes microseconds (17-28 us at most in runs here); paired across lost events it
    # took about the reads' interval (88-272 ms, before GAP records)
    assert calls['max_us'] < 100000, calls
    # Most events are lost (overwritten before they are read: events_lost says how many), so
    # only what lies between two losses pairs: an enter or a switch-out before lost events is
    # never paired with an exit or switch-in after them (tracering's GAP records). Every page
    # read still holds ~2 sleeps per 1000 calls, so the sleeps are found, in state S.
    assert facts['events_lost'] > calls['count'], facts['events_lost']
    sleeps = [g for g in facts['offcpu'] if 'do_nanosleep' in g['stack']]
    assert sleeps and set(sleeps[0]['pids']) == {busy.pid} and sleeps[0]['states'].get('S', 0) >= 1, \
        facts['offcpu'][:3]
    for group in facts['offcpu']:
        assert group['pids'] and set(group['pids']) <= {busy.pid}, group
    assert facts['restored'] is True and _snapshot(root, syscalls=('getppid',)) == before


def test_sigterm_mid_sample_restores_everything(tmp_path, tracefs_root):
    root = tracefs_root
    before = _snapshot(root)
    target = subprocess.Popen(['sleep', '60'])
    try:
        proc = _module_proc({'mode': 'auto', 'pids': [target.pid], 'duration_s': 20,
                             'syscalls': ['accept4', 'read']}, tmp_path)
        name = 'auditgap-%d' % proc.pid
        inst = os.path.join(root, 'instances', name)
        deadline = time.time() + 15
        # wait until the sample is live: its instance traces (sched_switch enabled)
        while time.time() < deadline:
            try:
                if open(os.path.join(inst, 'tracing_on')).read().strip() == '1':
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            proc.kill()
            raise AssertionError('the sample never started: %r' % (proc.communicate()[1][-2000:],))
        assert _snapshot(root) != before  # it did change tracefs
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=30)
    finally:
        target.kill()
        target.wait()
    res = json.loads(out.decode())
    assert proc.returncode != 0 and res['failed']
    assert 'SIGTERM' in res['msg'] and res['ftrace_sample']['interrupted'] == 'SIGTERM'
    assert res['ftrace_sample']['restored'] is True
    assert not os.path.exists(inst)
    assert _snapshot(root) == before


def test_stale_instance_of_dead_sample_is_removed(tmp_path, tracefs_root):
    root = tracefs_root
    dead = subprocess.Popen(['true'])
    dead.wait()
    stale = os.path.join(root, 'instances', 'auditgap-%d' % dead.pid)
    os.mkdir(stale)
    try:
        rc, res = _run_module({'mode': 'syscalls', 'pids': [os.getpid()], 'duration_s': 0.5,
                               'syscalls': ['read']}, tmp_path)
        assert rc == 0, res
        assert 'auditgap-%d' % dead.pid in res['ftrace_sample']['stale_instances_removed']
        assert not os.path.exists(stale)
        assert res['ftrace_sample']['syscalls']['read']['count'] >= 0  # present even when unseen
    finally:
        if os.path.isdir(stale):
            os.rmdir(stale)


@pytest.mark.parametrize('args,needle', [
    ({'pids': [2 ** 22 + 7]}, 'pid 4194311 not found'),
    ({'process_names': ['no-such-proc-xyz']}, 'process name(s) not found'),
    ({'mode': 'syscalls', 'syscalls': ['nosuchcall'], 'pids': [1]}, 'unknown syscall name'),
    ({'duration_s': 61}, 'duration_s'),
    ({'buffer_size_kb': 10 ** 7}, 'buffer_size_kb'),
])
def test_bad_input_fails_and_changes_nothing(tmp_path, args, needle, tracefs_root):
    root = tracefs_root
    before = _snapshot(root)
    rc, res = _run_module(dict({'duration_s': 1}, **args), tmp_path)
    assert rc != 0 and res['failed'] and needle in res['msg'], res
    assert _snapshot(root) == before


def test_hist_aggregation_where_the_kernel_has_it_else_refused(tmp_path, tracefs_root):
    """aggregation=hist: in the kernel where it can (the ftrace VM scenario checks the numbers),
    else the task fails before tracefs changes; the default (events) reports its mode."""
    root = tracefs_root
    before = _snapshot(root)
    rc, res = _run_module({'mode': 'syscalls', 'syscalls': ['read'], 'pids': [os.getpid()],
                           'duration_s': 0.5, 'aggregation': 'hist'}, tmp_path)
    if tracehist.available(root):
        assert rc == 0 and res['ftrace_sample']['syscalls_aggregation'] == 'hist', res
        assert res['ftrace_sample']['syscalls']['read']['count'] > 0
    else:
        assert rc != 0 and 'aggregation hist: the kernel has no hist triggers' in res['msg'], res
        assert res['msg'].endswith('nothing changed') and res['ftrace_sample']['restored'], res
    assert _snapshot(root) == before
    rc, res = _run_module({'mode': 'syscalls', 'syscalls': ['read'], 'pids': [os.getpid()],
                           'duration_s': 0.2}, tmp_path)
    facts = res['ftrace_sample']
    assert rc == 0 and facts['syscalls_aggregation'] == 'events' and facts['syscalls_aggregation_note'] is None, res
    assert _snapshot(root) == before


def test_function_graph_unavailable_here_is_unsupported(tmp_path, tracefs_root):
    root = tracefs_root
    if 'function_graph' in tracefs.available_tracers(root):
        pytest.skip('this kernel has function_graph (tested in the VM)')
    before = _snapshot(root)
    rc, res = _run_module({'mode': 'function_graph', 'duration_s': 1}, tmp_path)
    assert rc == 0 and res['ftrace_sample']['supported'] is False
    assert 'function_graph' in res['ftrace_sample']['reason']
    assert _snapshot(root) == before


def test_tracer_busy_and_lock_busy_refuse(tmp_path, tracefs_root):
    root = tracefs_root
    assert tracefs.current_tracer(root) == 'nop'
    tracer = os.path.join(root, 'current_tracer')
    try:
        write_value(tracer, 'blk')  # cheap tracer: does nothing without a blktrace device
        busy = _snapshot(root)
        rc, res = _run_module({'duration_s': 1, 'pids': [1]}, tmp_path)
        assert rc != 0 and 'tracer busy' in res['msg'], res
        assert _snapshot(root) == busy
    finally:
        write_value(tracer, 'nop')
    # (a tracer switch expands an unexpanded top-level buffer for good: compare from here)
    before = _snapshot(root)
    with guard.HostLock('test-holder'):  # the host lock, held by another auditgap run
        rc, res = _run_module({'duration_s': 1, 'pids': [1]}, tmp_path)
    assert rc != 0 and 'held by auditgap test-holder (pid %d' % os.getpid() in res['msg'], res
    assert _snapshot(root) == before


def test_list_files_get_every_word(tmp_path, tracefs_root):
    """set_event (like set_graph_function and set_ftrace_filter) takes one word per
    write(2): guard.write_value must write the whole list, here in a private instance."""
    from ansible_collections.auditgap.fleet.plugins.module_utils.guard import RestoreGuard
    root = tracefs_root
    with tracefs.Lock(), RestoreGuard(signals=False) as guard:
        inst = tracefs.create_instance(guard, root, tracefs.instance_name())
        write_value(os.path.join(inst, 'tracing_on'), '0')
        write_value(os.path.join(inst, 'set_event'), 'sched:sched_switch sched:sched_wakeup')
        enabled = tracefs.read(os.path.join(inst, 'set_event')).split()
        write_value(os.path.join(inst, 'set_event'), '')
    assert enabled == ['sched:sched_switch', 'sched:sched_wakeup']
    assert guard.restore_errors == []
    assert not os.path.isdir(inst)
