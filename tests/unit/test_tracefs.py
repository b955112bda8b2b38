"""tracefs helpers and ftrace_sample decisions that need no root."""
import os
import shutil

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, auditnl, tracefs
from ansible_collections.auditgap.fleet.plugins.modules import ftrace_sample

MOUNTS = """sysfs /sys sysfs rw 0 0
debugfs /sys/kernel/debug debugfs rw 0 0
tracefs /sys/kernel/debug/tracing tracefs rw 0 0
tracefs /sys/kernel/tracing tracefs rw 0 0
"""


def test_find_tracefs_prefers_sys_kernel_tracing():
    assert tracefs.find_tracefs(MOUNTS, isfile=lambda p: True) == '/sys/kernel/tracing'


def test_find_tracefs_debugfs_fallback_and_none():
    only_debug = 'debugfs /sys/kernel/debug debugfs rw 0 0\n'
    assert tracefs.find_tracefs(only_debug, isfile=lambda p: True) == '/sys/kernel/debug/tracing'
    assert tracefs.find_tracefs(only_debug, isfile=lambda p: False) is None
    assert tracefs.find_tracefs('', isfile=lambda p: True) is None


def test_parsers():
    assert tracefs.parse_buffer_size_kb('7 (expanded: 1408)') == 1408
    assert tracefs.parse_buffer_size_kb('1410\n') == 1410
    assert tracefs.parse_buffer_size_kb('X\n') is None
    assert tracefs.parse_pid_file('no pid\n') == []
    assert tracefs.parse_pid_file('12\n34\n') == [12, 34]
    assert tracefs.parse_function_list('#### all functions enabled ####\n') == []
    assert tracefs.parse_function_list('do_syscall_64\nfoo [mod]\n') == ['do_syscall_64', 'foo']
    text = '# Available triggers:\n# traceon traceoff\nstacktrace:unlimited if prev_pid == 1\n'
    assert tracefs.parse_triggers(text) == ['stacktrace:unlimited if prev_pid == 1']
    assert tracefs.command_trigger_removal('stacktrace:unlimited if prev_pid == 1') == '!stacktrace if prev_pid == 1'
    assert tracefs.command_trigger_removal('stacktrace if prev_pid == 1') == '!stacktrace if prev_pid == 1'


def test_filters_are_built_from_ints_only():
    assert tracefs.pid_filter(['common_pid'], [1, 2]) == 'common_pid == 1 || common_pid == 2'
    assert tracefs.pid_filter(['prev_pid', 'next_pid'], [5]) == 'prev_pid == 5 || next_pid == 5'
    assert tracefs.pid_filter(['prev_pid'], [], [7, 8]) == 'prev_pid != 7 && prev_pid != 8'
    assert tracefs.pid_filter(['common_pid'], []) == ''
    with pytest.raises(ValueError):
        tracefs.pid_filter(['common_pid'], ['1 || 1'])
    assert tracefs.offcpu_trigger([3]) == 'stacktrace if (prev_pid == 3) && prev_state & 2'
    assert tracefs.offcpu_trigger([3, 4]) == 'stacktrace if (prev_pid == 3 || prev_pid == 4) && prev_state & 2'
    assert tracefs.offcpu_trigger([3], stacked_sleeps='all') == 'stacktrace if prev_pid == 3'
    assert tracefs.offcpu_trigger([], [9]) == 'stacktrace if prev_state & 2 && prev_pid != 9'
    assert tracefs.offcpu_trigger([], [9], stacked_sleeps='all') == 'stacktrace if prev_state & 2 && prev_pid != 9'
    with pytest.raises(tracefs.TracefsError):
        tracefs.offcpu_trigger([3], stacked_sleeps='some')
    # the journal removes what it added by the command; the filter does not matter to the kernel
    assert tracefs.command_trigger_removal('stacktrace:unlimited if (prev_pid == 3) && prev_state & 2') == \
        '!stacktrace if (prev_pid == 3) && prev_state & 2'
    assert len(tracefs.pid_filter(['common_pid'], range(1, 500)).split('||')) == tracefs.MAX_FILTER_PIDS


def test_events_plan_is_what_an_events_sample_writes_in_order():
    # targets: each syscall's enter and exit filtered then enabled; sched_switch filtered, its trigger, enabled
    assert tracefs.events_plan(['syscalls', 'offcpu'], ['accept4'], [42]) == [
        ('events/syscalls/sys_enter_accept4/filter', 'common_pid == 42', '0'),
        ('events/syscalls/sys_enter_accept4/enable', '1', '0'),
        ('events/syscalls/sys_exit_accept4/filter', 'common_pid == 42', '0'),
        ('events/syscalls/sys_exit_accept4/enable', '1', '0'),
        ('events/sched/sched_switch/filter', 'prev_pid == 42 || next_pid == 42', '0'),
        ('events/sched/sched_switch/trigger', 'stacktrace if (prev_pid == 42) && prev_state & 2', None),
        ('events/sched/sched_switch/enable', '1', '0'),
    ]
    # every task but the excluded ones: the exclusion filters both parts
    assert tracefs.events_plan(['offcpu'], [], [], [7], 'all') == [
        ('events/sched/sched_switch/filter', 'prev_pid != 7', '0'),
        ('events/sched/sched_switch/trigger', 'stacktrace if prev_state & 2 && prev_pid != 7', None),
        ('events/sched/sched_switch/enable', '1', '0'),
    ]
    # every task: no filter at all
    assert tracefs.events_plan(['syscalls'], ['getppid'], []) == [
        ('events/syscalls/sys_enter_getppid/enable', '1', '0'), ('events/syscalls/sys_exit_getppid/enable', '1', '0')]
    assert tracefs.events_plan(['syscalls'], ['read', 'write'], [1], [9])[0] == (
        'events/syscalls/sys_enter_read/filter', 'common_pid == 1', '0')
    with pytest.raises(tracefs.TracefsError):
        tracefs.events_plan(['syscalls'], ['accept4/../../x'], [1])


def test_name_validation():
    assert tracefs.is_symbol('do_syscall_64') and tracefs.is_symbol('do_execveat_common.isra.0')
    for bad in ('', 'a b', 'x;rm', '*', 'foo\n', '!foo', 'a:mod:b'):
        assert not tracefs.is_symbol(bad)
    assert tracefs.is_syscall_name('accept4')
    for bad in ('Accept4', 'accept4 ', '../x', 'a*', ''):
        assert not tracefs.is_syscall_name(bad)


def test_stale_instances():
    names = ['auditgap-1', 'auditgap-2', 'auditgap-99', 'other', 'auditgap-x']
    alive = {1}.__contains__
    assert tracefs.stale_instances(names, alive, own_pid=99) == ['auditgap-2']
    with pytest.raises(tracefs.TracefsError):
        tracefs.remove_instance('/nonexistent', 'someone-else')


def test_syscalls_from_rules():
    rules = [{'syscalls': ['bind', 'listen', 'accept4']}, {'syscalls': ['all']},
             {'syscalls': ['clone', 'accept4']}, {}]
    assert tracefs.syscalls_from_rules(rules) == ['bind', 'listen', 'accept4', 'clone']
    with open(os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'ftrace', 'auditctl-l.seed-rules.txt')) as h:
        text = h.read()
    assert tracefs.syscalls_from_rules(audit.parse_rules(text)) == ['bind', 'listen', 'accept4', 'clone', 'fork', 'execve',
                                                                       'adjtimex', 'settimeofday']


def test_validate_pids(tmp_path):
    (tmp_path / '12').mkdir()
    assert tracefs.validate_pids([12, '12'], str(tmp_path)) == [12]
    with pytest.raises(tracefs.TracefsError, match='pid 13 not found'):
        tracefs.validate_pids([13], str(tmp_path))
    with pytest.raises(tracefs.TracefsError, match='not an integer'):
        tracefs.validate_pids(['1; x'], str(tmp_path))


def _params(**kw):
    params = {name: spec.get('default') for name, spec in ftrace_sample.ARGUMENT_SPEC.items()}
    params.update(kw)
    return params


def test_module_param_validation():
    assert ftrace_sample.validate_params(_params()) == []
    errors = ftrace_sample.validate_params(_params(duration_s=61, buffer_size_kb=1, top=0,
                                                   graph_function='do_sys;x', syscalls=['ACCEPT']))
    assert len(errors) == 5
    with pytest.raises(ftrace_sample.SampleError, match='duration_s'):
        ftrace_sample.run_sample(_params(duration_s=0))


def test_module_not_root_is_unsupported():
    facts = ftrace_sample.run_sample(_params(), geteuid=lambda: 1000)
    assert facts['supported'] is False and 'root' in facts['reason']


def test_choose_modes():
    assert ftrace_sample.choose_modes('auto', True) == ['function_graph']
    assert ftrace_sample.choose_modes('auto', False) == ['syscalls', 'offcpu']
    assert ftrace_sample.choose_modes('offcpu', False) == ['offcpu']
    with pytest.raises(ftrace_sample.Unsupported):
        ftrace_sample.choose_modes('function_graph', False)


def test_resolve_targets_excludes_consumer(tmp_path):
    for pid in (10, 20):
        (tmp_path / str(pid) / 'task' / str(pid)).mkdir(parents=True)
    (tmp_path / '10' / 'task' / '11').mkdir()
    targets = ftrace_sample.resolve_targets(_params(pids=[10, 20]), 20, 999, str(tmp_path))
    assert targets['resolved_pids'] == [10] and targets['excluded'] == [20]
    assert targets['tids'] == [10, 11]
    both = ftrace_sample.resolve_targets(_params(pids=[10, 20], include_audit_consumer=True), 20, 999,
                                         str(tmp_path))
    assert both['resolved_pids'] == [10, 20]
    with pytest.raises(ftrace_sample.SampleError, match='no target left'):
        ftrace_sample.resolve_targets(_params(pids=[20]), 20, 999, str(tmp_path))
    with pytest.raises(ftrace_sample.SampleError, match='not found'):
        ftrace_sample.resolve_targets(_params(pids=[30]), 20, 999, str(tmp_path))
    everyone = ftrace_sample.resolve_targets(_params(), 20, 999, str(tmp_path))
    assert everyone['all_tasks'] and everyone['excluded'] == [999, 20] and everyone['tids'] == []


class NoAudit:
    def __init__(self, *args, **kwargs):
        raise auditnl.AuditNetlinkError('the kernel has no audit support', 93)


@pytest.mark.parametrize('stdout,rc,expected', [
    ('enabled 1\nfailure 1\npid 6398\nrate_limit 0\n', 0, 6398),
    ('AUDIT_STATUS: enabled=1 flag=1 pid=812 rate_limit=0 backlog_limit=320 lost=0 backlog=0\n', 0, 812),
    ('enabled 0\npid 0\n', 0, None),
    ('Error sending status request (Operation not permitted)\n', 0, None),
    ('', 1, None),
])
def test_audit_consumer_pid_falls_back_to_auditctl(monkeypatch, stdout, rc, expected):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    monkeypatch.setattr(shutil, 'which', lambda name: '/sbin/' + name)
    calls = []

    def run(argv):
        calls.append(argv)
        return rc, stdout, ''
    assert ftrace_sample.audit_consumer_pid(run_command=run) == expected
    assert calls == [['/sbin/auditctl', '-s']]


def test_audit_consumer_pid_without_audit_or_auditctl(monkeypatch):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    monkeypatch.setattr(shutil, 'which', lambda name: None)
    assert ftrace_sample.audit_consumer_pid() is None


def test_run_command_reports_what_cannot_start():
    rc, out, err = audit.run_command(['/nonexistent/auditgap-no-such-binary'])
    assert rc == 127 and out == '' and 'No such file' in err


def _fake_tracefs(tmp_path):
    """A directory shaped like tracefs (regular files) with the seed traces as trace_pipe."""
    files = {'tracing_on': '1\n', 'current_tracer': 'nop\n', 'buffer_size_kb': '7 (expanded: 1408)\n',
             'tracing_thresh': '0\n', 'set_ftrace_pid': 'no pid\n', 'set_ftrace_notrace_pid': 'no pid\n',
             'set_graph_function': '#### all functions enabled ####\n', 'max_graph_depth': '0\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    fix = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'ftrace')
    trace = ''
    for name in ('seed-function-graph.slow-calls.trace', 'seed-function-graph.depth2.trace'):
        with open(os.path.join(fix, name)) as handle:
            trace += handle.read()
    (tmp_path / 'trace_pipe').write_text(trace)
    return files


@pytest.mark.parametrize('targets,pid_file,pid_value', [
    ({'tids': [4242, 4243]}, 'set_ftrace_pid', '4242 4243'),
    ({'tids': [], 'excluded': [5, 6]}, 'set_ftrace_notrace_pid', '5 6'),
])
def test_function_graph_path_on_fake_tracefs_restores_every_file(tmp_path, monkeypatch, targets, pid_file, pid_value):
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
    _fake_tracefs(tmp_path)
    written = _spy_writes(monkeypatch, tmp_path)
    with guard_mod.RestoreGuard(signals=False) as guard:
        graph = ftrace_sample.sample_function_graph(
            guard, str(tmp_path), targets,
            _params(duration_s=1, tracing_thresh_us=1000000, max_graph_depth=2))
    assert guard.restore_errors == []
    chains = [c['chain'] for c in graph['slow_calls']]
    assert ['do_syscall_64', 'syscall_slow_exit_work', '__audit_syscall_exit', 'audit_log_exit',
            'audit_log_start', 'schedule_timeout'] in chains
    assert graph['syscall_exits'][0]['syscall'] == 'accept4'
    assert graph['syscall_exits'][0]['exit_work_us'] > 2e6
    # what was set during the sample (the seed's recipes)
    state = {}
    for name in ('tracing_thresh', pid_file, 'set_graph_function', 'max_graph_depth'):
        state[name] = [v for n, v in written if n == name]
    assert '1000000' in state['tracing_thresh'] and pid_value in state[pid_file]
    assert 'do_syscall_64' in state['set_graph_function'] and '2' in state['max_graph_depth']
    # ... and everything is back (in tracefs' write format)
    after = {p.name: p.read_text() for p in tmp_path.iterdir() if p.name != 'trace_pipe'}
    expected = {'tracing_on': '1', 'current_tracer': 'nop', 'buffer_size_kb': '1408', 'tracing_thresh': '0',
                'set_ftrace_pid': 'no pid\n', 'set_ftrace_notrace_pid': 'no pid\n', 'set_graph_function': '',
                'max_graph_depth': '0'}
    expected[pid_file] = ''  # written during the sample, emptied after ("no pid" when read back)
    assert after == expected


def test_cpu_stats_and_buffer_filling(tmp_path):
    text = ('entries: 10\noverrun: 3\ncommit overrun: 0\nbytes: 700000\noldest event ts:  1.000000\n'
            'now ts:  2.000000\ndropped events: 2\nread events: 5\n')
    stats = tracefs.parse_cpu_stats(text)
    assert stats['bytes'] == 700000 and stats['overrun'] == 3 and stats['dropped_events'] == 2
    for cpu, body in (('cpu0', text), ('cpu1', text.replace('bytes: 700000', 'bytes: 0'))):
        (tmp_path / 'per_cpu' / cpu).mkdir(parents=True)
        (tmp_path / 'per_cpu' / cpu / 'stats').write_text(body)
    assert tracefs.events_lost(str(tmp_path)) == 10
    assert tracefs.buffer_filling(str(tmp_path), 1024) is True       # 700000 > 512 KiB
    assert tracefs.buffer_filling(str(tmp_path), 4096) is False
    assert tracefs.buffer_filling(str(tmp_path / 'missing'), 64) is False


def test_function_traceable(tmp_path):
    (tmp_path / 'available_filter_functions').write_text('do_syscall_64\nx64_sys_call\nfoo_bar [mymod]\n')
    found, _unmatched = tracefs.filter_functions(str(tmp_path), ['do_syscall_64', 'foo_bar', 'do_syscall', 'do_sys*'])
    assert 'do_syscall_64' in found
    assert 'foo_bar' in found
    assert 'do_syscall' not in found
    assert 'do_sys*' not in found
    with pytest.raises(tracefs.TracefsError, match='cannot read'):
        tracefs.filter_functions(str(tmp_path / 'missing'), ['do_syscall_64'])


def test_run_sample_function_graph_end_to_end_on_fake_tracefs(tmp_path, monkeypatch):
    _fake_tracefs(tmp_path)
    (tmp_path / 'available_tracers').write_text('blk function_graph function nop\n')
    (tmp_path / 'available_filter_functions').write_text('do_syscall_64\nschedule_timeout\n')
    (tmp_path / 'set_event').write_text('')
    (tmp_path / 'instances').mkdir()
    before = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr(tracefs, 'locate', lambda proc_root='/proc': str(tmp_path))
    lock = str(tmp_path / 'ftrace.lock')
    monkeypatch.setattr(tracefs, 'Lock', lambda: tracefs_lock(lock))
    monkeypatch.setattr(ftrace_sample, 'audit_consumer_pid', lambda: None)
    facts = ftrace_sample.run_sample(_params(mode='auto', pids=[1], duration_s=1), geteuid=lambda: 0)
    assert facts['supported'] and facts['modes'] == ['function_graph'] and facts['restored']
    assert facts['audit_wait_observed'] is True
    assert facts['function_graph']['syscall_exits'][0]['syscall'] == 'accept4'
    after = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file() and p.name != 'ftrace.lock'}
    # every file back (in write format: "no pid"/banners read back as empty, the buffer as its size in use)
    before.update({'set_ftrace_pid': '', 'set_graph_function': '', 'buffer_size_kb': '1408',
                   'tracing_on': '1', 'current_tracer': 'nop', 'tracing_thresh': '0', 'max_graph_depth': '0'})
    assert after == before


def test_run_sample_refuses_busy_tracer_on_fake_tracefs(tmp_path, monkeypatch):
    _fake_tracefs(tmp_path)
    (tmp_path / 'available_tracers').write_text('function_graph nop\n')
    (tmp_path / 'current_tracer').write_text('function_graph\n')
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    monkeypatch.setattr(tracefs, 'locate', lambda proc_root='/proc': str(tmp_path))
    monkeypatch.setattr(tracefs, 'Lock', lambda: tracefs_lock(str(tmp_path / 'ftrace.lock')))
    with pytest.raises(ftrace_sample.SampleError, match='tracer busy'):
        ftrace_sample.run_sample(_params(pids=[os.getpid()], duration_s=1), geteuid=lambda: 0)
    after = {p.name: p.read_text() for p in tmp_path.iterdir() if p.name != 'ftrace.lock'}
    assert after == before


def _spy_writes(monkeypatch, tmp_path):
    """Record every guarded write as (path relative to the fake tracefs, value), then write it."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
    written = []
    real = guard_mod.write_value

    def spy(path, value):
        written.append((os.path.relpath(path, str(tmp_path)), value))
        real(path, value)

    monkeypatch.setattr(guard_mod, 'write_value', spy)
    return written


_REAL_LOCK = tracefs.Lock


def tracefs_lock(path):
    """The real host lock, in a private state directory of its own (mkdtemp: 0700) beside
    the test's fake tracefs (so in nothing the test compares), inside pytest's per-test base
    directory, which pytest removes like tmp_path; its journals go there too."""
    import tempfile
    parent = os.path.dirname(os.path.dirname(path))
    return _REAL_LOCK(os.path.join(tempfile.mkdtemp(prefix='auditgap-state-', dir=parent), 'host.lock'))


def test_plan_graph_roots():
    plan = tracefs.plan_graph_roots
    assert plan('do_syscall_64', ['accept4'], {'do_syscall_64'}) == (['do_syscall_64'], None)
    roots, note = plan('do_syscall_64', ['accept4', 'bind'],
                       {'__x64_sys_accept4', '__x64_sys_bind', 'syscall_exit_work', 'x64_sys_call'})
    assert roots == ['__x64_sys_accept4', '__x64_sys_bind', 'syscall_exit_work'] and 'noinstr' in note
    assert plan('do_syscall_64', ['accept4'], {'SyS_accept4', 'syscall_slow_exit_work'})[0] == [
        'SyS_accept4', 'syscall_slow_exit_work']
    assert plan('do_syscall_64', [], {'x64_sys_call', 'syscall_exit_work'})[0] == ['x64_sys_call', 'syscall_exit_work']
    assert plan('do_syscall_64', ['accept4'], {'__x64_sys_accept4'})[0] == []
    roots, note = plan('my_func', ['accept4'], {'__x64_sys_accept4', 'syscall_exit_work'})
    assert roots == [] and 'not traceable' in note
    names = tracefs.graph_candidates('do_syscall_64', ['accept4'])
    assert '__x64_sys_accept4' in names and 'syscall_exit_work' in names and all(tracefs.is_symbol(n) for n in names)


def test_traceable_functions(tmp_path):
    (tmp_path / 'available_filter_functions').write_text('a_fn\nb_fn [mod]\nc_fn\n')
    assert tracefs.filter_functions(str(tmp_path), ['a_fn', 'b_fn', 'zz', 'bad name']) == ({'a_fn', 'b_fn'}, [])
    # names and globs in the same pass
    assert tracefs.filter_functions(str(tmp_path), ['a_fn'], ['c_*', 'd_*', 'b_fn']) == ({'a_fn'}, ['d_*'])


def test_match_functions_reads_only_what_it_needs():
    listed = iter(['a_fn', 'b_fn', 'c_fn', 'd_fn'])
    assert tracefs.match_functions(listed, ['a_fn'], ['b_*']) == ({'a_fn'}, [])
    assert next(listed) == 'd_fn'  # both answers known after b_fn: c_fn was the last one read


def test_run_sample_function_graph_noinstr_fallback_on_fake_tracefs(tmp_path, monkeypatch):
    _fake_tracefs(tmp_path)
    (tmp_path / 'available_tracers').write_text('function_graph function nop\n')
    (tmp_path / 'available_filter_functions').write_text('__x64_sys_accept4\nsyscall_exit_work\n')
    (tmp_path / 'set_event').write_text('')
    (tmp_path / 'options').mkdir()
    (tmp_path / 'options' / 'funcgraph-proc').write_text('0\n')
    monkeypatch.setattr(tracefs, 'locate', lambda proc_root='/proc': str(tmp_path))
    monkeypatch.setattr(tracefs, 'Lock', lambda: tracefs_lock(str(tmp_path / 'ftrace.lock')))
    monkeypatch.setattr(ftrace_sample, 'audit_consumer_pid', lambda: None)
    written = _spy_writes(monkeypatch, tmp_path)
    facts = ftrace_sample.run_sample(_params(mode='function_graph', pids=[1], duration_s=1, syscalls=['accept4']),
                                     geteuid=lambda: 0)
    graph = facts['function_graph']
    assert graph['graph_functions'] == ['__x64_sys_accept4', 'syscall_exit_work'] and 'noinstr' in graph['note']
    assert ('set_graph_function', '__x64_sys_accept4 syscall_exit_work') in written
    assert ('options/funcgraph-proc', '1') in written
    assert (tmp_path / 'options' / 'funcgraph-proc').read_text() == '0'
    assert (tmp_path / 'set_graph_function').read_text() == '' and facts['restored']


def test_function_graph_interrupted_mid_window_restores(tmp_path, monkeypatch):
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
    _fake_tracefs(tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    calls = []

    def window(reader, seconds, on_text, base, kb):
        calls.append(seconds)
        if len(calls) == 2:  # SIGTERM during the second recipe's window
            raise guard_mod.GuardInterrupted('interrupted by SIGTERM')

    monkeypatch.setattr(ftrace_sample, '_window', window)
    guard = guard_mod.RestoreGuard(signals=False)
    with pytest.raises(guard_mod.GuardInterrupted):
        with guard:
            ftrace_sample.sample_function_graph(guard, str(tmp_path), {'tids': [7]}, _params(duration_s=1))
    after = {p.name: p.read_text() for p in tmp_path.iterdir()}
    before.update({'set_ftrace_pid': '', 'set_ftrace_notrace_pid': 'no pid\n', 'set_graph_function': '',
                   'buffer_size_kb': '1408', 'tracing_on': '1', 'current_tracer': 'nop', 'tracing_thresh': '0',
                   'max_graph_depth': '0'})
    assert guard.restore_errors == [] and after == before


def test_function_filter_words():
    assert tracefs.is_filter_glob('*audit*') and tracefs.is_filter_glob('schedule_timeout')
    assert tracefs.is_filter_glob('syscall_exit?work') and tracefs.is_filter_glob('check_spread.isra.0')
    for bad in ('*', '**', '', 'a b', '!foo', 'foo:mod:bar', 'a\nb', 'x' * 129, None):
        assert not tracefs.is_filter_glob(bad)
    names = ['audit_log_start', 'schedule_timeout', '__x64_sys_accept4']
    assert tracefs.match_functions(iter(names), (), ['*audit*', 'schedule_timeout', 'nope', 'sys_*',
                                                     '__x64_sys_acc?pt4'])[1] == ['nope', 'sys_*']
    assert tracefs.match_functions(names, (), [])[1] == []
    assert ftrace_sample.recipe_filter([], 'syscall_exits', ['a']) == []
    assert ftrace_sample.recipe_filter(['*audit*'], 'slow_calls', ['a']) == ['*audit*']
    assert ftrace_sample.recipe_filter(['*audit*', 'a'], 'syscall_exits', ['a', 'b']) == ['*audit*', 'a', 'b']
    errors = ftrace_sample.validate_params(_params(function_filter=['ok_fn', 'bad word']))
    assert errors == ["function_filter word 'bad word' is not a function name or glob (letters, digits, _ . * ?)"]


def _fake_filter_tracefs(tmp_path, monkeypatch, current_filter='#### all functions enabled ####\n'):
    _fake_tracefs(tmp_path)
    (tmp_path / 'available_tracers').write_text('function_graph function nop\n')
    (tmp_path / 'available_filter_functions').write_text(
        'do_syscall_64\naudit_log_start\naudit_log_exit\nschedule_timeout\n')
    (tmp_path / 'set_event').write_text('')
    (tmp_path / 'set_ftrace_filter').write_text(current_filter)
    monkeypatch.setattr(tracefs, 'locate', lambda proc_root='/proc': str(tmp_path))
    monkeypatch.setattr(tracefs, 'Lock', lambda: tracefs_lock(str(tmp_path / 'ftrace.lock')))
    monkeypatch.setattr(ftrace_sample, 'audit_consumer_pid', lambda: None)


def test_function_filter_bounds_both_recipes_and_is_cleared(tmp_path, monkeypatch):
    _fake_filter_tracefs(tmp_path, monkeypatch)
    written = _spy_writes(monkeypatch, tmp_path)
    facts = ftrace_sample.run_sample(
        _params(mode='function_graph', pids=[1], duration_s=1, function_filter=['*audit*', 'schedule_timeout']),
        geteuid=lambda: 0)
    assert facts['restored'] and facts['function_graph']['function_filter'] == ['*audit*', 'schedule_timeout']
    filters = [(i, v) for i, (name, v) in enumerate(written) if name == 'set_ftrace_filter']
    tracers = [i for i, (name, v) in enumerate(written) if name == 'current_tracer' and v == 'function_graph']
    # per recipe: the filter first, then the tracer; the second recipe adds its root; cleared after each
    assert [v for _i, v in filters] == ['*audit* schedule_timeout', '', '*audit* schedule_timeout do_syscall_64', '']
    assert filters[0][0] < tracers[0] < filters[1][0] < filters[2][0] < tracers[1] < filters[3][0]
    assert (tmp_path / 'set_ftrace_filter').read_text() == ''


@pytest.mark.parametrize('current,words,needle', [
    ('schedule_timeout\n', ['*audit*'], 'already holds 1 function'),
    ('#### all functions enabled ####\n', ['no_such_fn', 'zz*'], r"matches 'no_such_fn', 'zz\*'"),
])
def test_function_filter_refusals_change_nothing(tmp_path, monkeypatch, current, words, needle):
    _fake_filter_tracefs(tmp_path, monkeypatch, current_filter=current)
    before = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ftrace_sample.SampleError, match=needle):
        ftrace_sample.run_sample(_params(mode='function_graph', pids=[1], duration_s=1, function_filter=words),
                                 geteuid=lambda: 0)
    after = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file() and p.name != 'ftrace.lock'}
    assert after == before


def test_function_filter_leaves_out_words_this_kernel_lacks(tmp_path, monkeypatch):
    _fake_filter_tracefs(tmp_path, monkeypatch)
    facts = ftrace_sample.run_sample(
        _params(mode='function_graph', pids=[1], duration_s=1,
                function_filter=['*audit*', 'syscall_slow_exit_work', 'schedule_timeout']),
        geteuid=lambda: 0)
    graph = facts['function_graph']
    assert graph['function_filter'] == ['*audit*', 'schedule_timeout']
    assert graph['function_filter_unmatched'] == ['syscall_slow_exit_work'] and facts['restored']


def test_available_filter_functions_read_once_per_sample(tmp_path, monkeypatch):
    """The graph roots and the function_filter words are checked in one pass over the list."""
    import builtins
    _fake_filter_tracefs(tmp_path, monkeypatch)
    (tmp_path / 'available_filter_functions').write_text(
        'do_syscall_64\nx64_sys_call\naudit_log_start\nschedule_timeout\n')
    opened = []
    real_open = builtins.open

    def counting_open(path, *args, **kwargs):
        opened.append(os.path.basename(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(tracefs, 'open', counting_open, raising=False)
    written = _spy_writes(monkeypatch, tmp_path)
    facts = ftrace_sample.run_sample(
        _params(mode='function_graph', pids=[1], duration_s=1, function_filter=['*audit*', 'nope']),
        geteuid=lambda: 0)
    assert opened.count('available_filter_functions') == 1
    graph = facts['function_graph']
    assert graph['function_filter'] == ['*audit*'] and graph['function_filter_unmatched'] == ['nope']
    # do_syscall_64 dispatching through x64_sys_call (6.9+): one level more
    assert graph['max_graph_depth_used'] == 3 and ('max_graph_depth', '3') in written


def test_pipe_reader_hands_out_text_of_whole_lines(tmp_path):
    pipe = tmp_path / 'trace_pipe'
    pipe.write_bytes('a-1 [000] x\nnode-é [001] y\n\nlast without newline'.encode())
    chunks = []
    reader = tracefs.PipeReader(str(pipe), chunk=5)  # lines and 'é' split across reads
    try:
        reader.read_available(chunks.append)
        assert ''.join(chunks) == 'a-1 [000] x\nnode-é [001] y\n\n'
        assert all(chunk.endswith('\n') for chunk in chunks)
        reader.drain(chunks.append)
    finally:
        reader.close()
    assert chunks[-1] == 'last without newline' and reader.bytes == pipe.stat().st_size


def test_any_error_reports_the_real_restore_result(tmp_path, monkeypatch):
    """An error that is not the module's own (here a ValueError in the window) still
    returns the facts with what the guard could not put back: restored false, the failed
    step named (today: empty facts saying restored true)."""
    _fake_tracefs(tmp_path)
    (tmp_path / 'available_tracers').write_text('function_graph nop\n')
    (tmp_path / 'available_filter_functions').write_text('do_syscall_64\n')
    (tmp_path / 'set_event').write_text('')
    monkeypatch.setattr(tracefs, 'locate', lambda proc_root='/proc': str(tmp_path))
    monkeypatch.setattr(tracefs, 'Lock', lambda: tracefs_lock(str(tmp_path / 'ftrace.lock')))
    monkeypatch.setattr(ftrace_sample, 'audit_consumer_pid', lambda: None)

    def window(reader, seconds, on_text, base, kb):
        (tmp_path / 'tracing_thresh').unlink()  # its undo step will fail
        os.mkdir(str(tmp_path / 'tracing_thresh'))
        raise ValueError('parser broke')
    monkeypatch.setattr(ftrace_sample, '_window', window)
    with pytest.raises(ftrace_sample.SampleError) as err:
        ftrace_sample.run_sample(_params(mode='function_graph', pids=[1], duration_s=1), geteuid=lambda: 0)
    facts = err.value.facts
    assert 'ValueError: parser broke' in str(err.value) and 'NOT fully restored' in str(err.value)
    assert facts['restored'] is False
    assert [e for e in facts['restore_errors'] if 'tracing_thresh' in e]
    assert (tmp_path / 'current_tracer').read_text() == 'nop'  # every other step still ran


def test_unexpanded_buffer_kb():
    assert tracefs.unexpanded_buffer_kb('7 (expanded: 1408)\n') == 1408
    assert tracefs.unexpanded_buffer_kb('1408\n') is None
    assert tracefs.unexpanded_buffer_kb('X') is None and tracefs.unexpanded_buffer_kb(None) is None


@pytest.mark.parametrize('global_flag,top_after,expanded', [
    (True, '1408', 1408),                   # 6.1: the instance's write set the one global flag
    (False, '7 (expanded: 1408)', None),    # 6.7+: the flag is per instance, the top level untouched
])
def test_sizing_an_instance_buffer_never_leaves_the_top_level_at_its_boot_size(tmp_path, monkeypatch, global_flag,
                                                                                top_after, expanded):
    """A kernel's first use of tracing since boot: tmp_path plays tracefs, the patched write plays the kernel."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
    top = tmp_path / 'buffer_size_kb'
    top.write_text('7 (expanded: 1408)\n')
    inst = tmp_path / 'instances' / 'auditgap-1'
    inst.mkdir(parents=True)
    (inst / 'buffer_size_kb').write_text('7\n')
    real = tracefs.write_value

    def kernel_write(path, value):
        real(path, value)
        if global_flag and path == str(inst / 'buffer_size_kb'):
            top.write_text('7\n')           # __tracing_resize_ring_buffer: flag set, top level not grown

    monkeypatch.setattr(tracefs, 'write_value', kernel_write)
    monkeypatch.setattr(guard_mod, 'write_value', kernel_write)
    with guard_mod.RestoreGuard(signals=False) as guard:
        assert tracefs.size_instance_buffer(guard, str(tmp_path), str(inst), 4096) == expanded
        assert (inst / 'buffer_size_kb').read_text() == '4096'
    assert top.read_text().strip() == top_after


@pytest.mark.parametrize('text,after', [
    ('7\n', '1408'),                             # the flag set, the top level not grown: grow it
    ('7 (expanded: 1408)\n', '7 (expanded: 1408)'),  # nothing flipped (6.7+): left alone
    ('1408\n', '1408'),                          # already grown
    ('2048\n', '2048'),                          # a size someone chose
])
def test_the_top_buffer_undo_step_grows_only_a_flipped_boot_size(tmp_path, text, after):
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
    top = tmp_path / 'buffer_size_kb'
    top.write_text(text)
    guard_mod.run_op('grow_top_buffer', {'path': str(top), 'boot_kb': 7, 'size_kb': 1408})
    assert top.read_text().strip() == after


def test_a_run_dying_between_the_instance_write_and_the_top_level_write_still_grows_it(tmp_path, monkeypatch):
    """The undo step is journaled before the instance's write: a run that dies right after that write
    (here: the write raises once the 6.1 kernel has set its flag) leaves the top level grown, by its
    restore or, after a SIGKILL, by the next run's replay of the same journaled step."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod
    top = tmp_path / 'buffer_size_kb'
    top.write_text('7 (expanded: 1408)\n')
    inst = tmp_path / 'instances' / 'auditgap-1'
    inst.mkdir(parents=True)
    (inst / 'buffer_size_kb').write_text('7\n')

    def kernel_write_then_die(path, value):
        if path == str(inst / 'buffer_size_kb'):
            top.write_text('7\n')
            raise KeyboardInterrupt('killed after the instance write')
        guard_mod.write_value(path, value)

    monkeypatch.setattr(tracefs, 'write_value', kernel_write_then_die)
    with pytest.raises(KeyboardInterrupt):
        with guard_mod.RestoreGuard(signals=False) as guard:
            tracefs.size_instance_buffer(guard, str(tmp_path), str(inst), 4096)
    assert top.read_text().strip() == '1408'


class FakeClock:
    """time.monotonic and time.sleep for read_until: sleeping advances the clock."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps += 1
        self.now += seconds


def _window(monkeypatch, wakes, got, seconds=5.0):
    """read_until over a ``seconds`` window with a kernel wait that wakes at the times in ``wakes``;
    each read gets ``got`` bytes. -> (reads, filling checks, waits, timed sleeps)."""
    clock = FakeClock()
    monkeypatch.setattr(tracefs, 'time', clock)
    calls = {'read': 0, 'check': 0, 'wait': 0}
    pending = list(wakes)

    def wait(timeout_s):
        calls['wait'] += 1
        if pending and pending[0] <= clock.now + timeout_s:
            clock.now = max(clock.now, pending.pop(0))
            return True
        clock.now += timeout_s
        return False

    def read():
        calls['read'] += 1
        return got

    def filling():
        calls['check'] += 1
        return False

    tracefs.read_until(seconds, read, 0.25, filling, wait=wait, woken_least=1000)
    return calls['read'], calls['check'], calls['wait'], clock.sleeps


def test_a_quiet_window_sleeps_in_the_kernel_and_checks_once_a_second(monkeypatch):
    # nothing reaches the watermark: one check a WATERMARK_WAIT_MAX_S, no timed wake-ups (20 at 0.25 s)
    assert _window(monkeypatch, [], 0) == (0, 5, 5, 0)


def test_a_wake_up_at_the_watermark_reads_and_waits_again(monkeypatch):
    assert _window(monkeypatch, [0.5, 2.2], 4096) == (2, 4, 6, 0)


def test_a_kernel_that_wakes_below_the_watermark_gets_the_timed_loop(monkeypatch):
    # woken with less than woken_least to read (poll ignores buffer_percent): every 0.25 s from then on
    reads, checks, waits, sleeps = _window(monkeypatch, [0.5], 10)
    assert (reads, waits) == (1, 1) and sleeps == checks == 18


def test_without_a_kernel_wait_the_timed_loop(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(tracefs, 'time', clock)
    reads = []
    tracefs.read_until(1.0, lambda: reads.append(clock.now), 0.25)
    assert reads == [0.25, 0.5, 0.75, 1.0] and clock.sleeps == 4
