"""Pure parts of the incident lab (plugins/module_utils/labkit.py): no root."""
import json
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import guard, labkit, labworkload


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert labworkload.percentile(values, 50) == 50
    assert labworkload.percentile(values, 99) == 99
    assert labworkload.percentile(values, 100) == 100
    assert labworkload.percentile([7], 99) == 7
    assert labworkload.percentile([], 50) is None


def test_summarize():
    s = labworkload.summarize([5.0, 1.0, 3.0, 700.0])
    assert s == {'count': 4, 'p50_ms': 3.0, 'p99_ms': 700.0, 'max_ms': 700.0}
    assert labworkload.summarize([])['count'] == 0


def test_histogram_close_to_exact():
    hist = labworkload.LogHistogram()
    values = [0.05 + i * 0.01 for i in range(990)] + [200.0 + i for i in range(10)]
    for v in values:
        hist.add(v)
    exact = labworkload.summarize(values)
    s = hist.summary()
    assert s['count'] == 1000
    assert s['max_ms'] == exact['max_ms']
    for key in ('p50_ms', 'p99_ms'):
        assert exact[key] <= s[key] <= exact[key] * 1.011


def test_window_summary_weights_by_count():
    records = [{'t': 1, 'count': 1000, 'p50_ms': 0.1, 'p99_ms': 1.0, 'max_ms': 2.0},
               {'t': 2, 'count': 10, 'p50_ms': 300.0, 'p99_ms': 700.0, 'max_ms': 900.0},
               {'t': 3, 'count': 0, 'p50_ms': None, 'p99_ms': None, 'max_ms': None}]
    w = labworkload.window_summary(records)
    assert w['count'] == 1010 and w['seconds'] == 2 and w['max_ms'] == 900.0
    assert w['p50_ms'] == 0.1
    assert labworkload.window_summary(records, since=2)['p99_ms'] == 700.0
    assert labworkload.window_summary([], since=2)['count'] == 0


def test_read_jsonl_skips_torn_line(tmp_path):
    path = tmp_path / 'latency.jsonl'
    path.write_text('{"t": 1, "count": 2}\n{"t": 2, "cou')
    assert labworkload.read_jsonl(str(path)) == [{'t': 1, 'count': 2}]
    assert labworkload.read_jsonl(str(tmp_path / 'missing')) == []


def test_rule_args_validates_key():
    assert labkit.rule_args(labkit.ACCEPT_RULE, 'auditgap-lab')[-2:] == ['-k', 'auditgap-lab']
    for bad in ('', 'a b', 'x;rm'):
        with pytest.raises(ValueError):
            labkit.rule_args(labkit.ACCEPT_RULE, bad)


def test_consumer_check():
    assert labkit.consumer_check({'pid': 0, 'enabled': 0}) is None
    assert 'already registered' in labkit.consumer_check({'pid': 77, 'enabled': 1})
    assert labkit.consumer_check({'pid': 77, 'enabled': 1}, allow_existing=True) is None
    assert 'immutable' in labkit.consumer_check({'pid': 0, 'enabled': 2})


def test_cpu_stat_and_throttled_ratio():
    before = labworkload.parse_cpu_stat('nr_periods 100\nnr_throttled 10\nthrottled_time 5\n')
    after = labworkload.parse_cpu_stat('nr_periods 110\nnr_throttled 19\nthrottled_time 50\n')
    assert labworkload.throttled_ratio(before, after) == 0.9
    assert labworkload.throttled_ratio(after, after) is None


def test_snapshot_diff():
    from tests.support.labsnapshot import snapshot_diff
    a = {'audit_status': {'backlog_limit': 8192, 'pid': 0}, 'rules': ['r1'], 'cgroups': ['/a']}
    assert snapshot_diff(a, json.loads(json.dumps(a))) == []
    b = {'audit_status': {'backlog_limit': 64, 'pid': 0}, 'rules': ['r1', 'r2'], 'cgroups': []}
    diffs = snapshot_diff(a, b)
    assert 'audit_status.backlog_limit: 8192 -> 64' in diffs
    assert "rules: new 'r2'" in diffs
    assert "cgroups: gone '/a'" in diffs


def test_auditd_config_stays_in_workdir(tmp_path):
    conf = labkit.write_auditd_config(str(tmp_path / 'etc'), str(tmp_path))
    text = open(conf).read()
    assert 'log_file = %s/audit.log' % tmp_path in text
    assert 'plugin_dir = %s/plugins.d' % tmp_path in text
    assert '/etc/audit' not in text and '/var/log' not in text
    assert (tmp_path / 'plugins.d').is_dir()


def test_recorder_writes_per_second_records(tmp_path):
    rec = labworkload.Recorder(str(tmp_path), timeline=False)
    for v in (1.0, 2.0, 300.0):
        rec.add(v)
    rec.add(None)
    rec.flush(1000)
    rec.add(4.0)
    rec.flush(1001)
    lines = labworkload.read_jsonl(str(tmp_path / 'latency.jsonl'))
    assert lines[0] == {'t': 1000, 'count': 3, 'p50_ms': 2.0, 'p99_ms': 300.0, 'max_ms': 300.0, 'errors': 1}
    assert lines[1]['count'] == 1
    summary = json.load(open(str(tmp_path / 'latency.summary.json')))
    assert summary['count'] == 4 and summary['max_ms'] == 300.0


def test_proc_starttime_of_self_and_missing():
    assert labworkload.proc_starttime(os.getpid()) == guard.proc_starttime(os.getpid())
    assert labworkload.proc_starttime(2 ** 22 + 1) is None
    assert guard.process_alive(os.getpid(), guard.proc_starttime(os.getpid()))
    assert not guard.process_alive(os.getpid(), -1) and not guard.process_alive(2 ** 22 + 1)


def test_timeline_svg_from_points():
    from ansible_collections.auditgap.fleet.plugins.module_utils import labchart
    points = [{'t': 100 + i, 'p99_ms': 0.5 if i < 3 else 300.0, 'backlog': 1, 'backlog_peak': 60,
               'backlog_limit': 64, 'lost': i, 'backlog_wait_time_actual': 100 * i * i,
               'throttled_ratio': 0.0 if i < 3 else 1.0} for i in range(8)]
    p99, backlog, throttled, lost, waited, limit, t0 = labchart.timeline_series(points, hz=250)
    assert t0 == 100 and limit == 64
    assert p99[0] == (0, 0.5) and throttled[-1] == (7, 100.0)
    assert backlog[0] == (0, 60) and lost[0] == (1, 1) and waited[0] == (1, 400.0)  # 100 jiffies at HZ 250
    svg = labchart.timeline_svg(points, [{'t': 99, 'label': 'quota <1000>'}])
    assert svg.startswith('<svg') and svg.rstrip().endswith('</svg>')
    assert 'quota &lt;1000&gt;' in svg and 'backlog_limit 64' in svg
    assert labchart.timeline_series([])[0] == []


def test_timeline_missing_samples_are_gaps_not_zeros():
    from ansible_collections.auditgap.fleet.plugins.module_utils import labchart
    points = [{'t': 100, 'p99_ms': 1.0, 'backlog_peak': 64, 'backlog_samples': 20, 'lost': 0,
               'backlog_wait_time_actual': 0},
              {'t': 101, 'p99_ms': 500.0, 'backlog_peak': None, 'backlog': 0, 'backlog_samples': 0,
               'lost': 4, 'backlog_wait_time_actual': 100},           # the sampler got nothing this second
              # 102..103 missing: the workload wrote no point
              {'t': 104, 'p99_ms': 400.0, 'backlog_peak': 70, 'backlog_samples': 3, 'lost': 10,
               'backlog_wait_time_actual': 400}]
    p99, backlog, _throttled, lost, waited, _limit, _t0 = labchart.timeline_series(points, hz=100)
    assert backlog == [(0, 64), (1, None), (2, None), (4, 70)]
    assert p99 == [(0, 1.0), (1, 500.0), (2, None), (4, 400.0)]
    assert lost == [(1, 4.0), (2, None), (4, 2.0)]                   # 6 over 3 s
    assert waited == [(1, 1000.0), (2, None), (4, 1000.0)]           # ms/s: 300 jiffies over 3 s at HZ 100
    svg = labchart.timeline_svg(points, hz=100)
    assert 'ms/s' in svg and 'jiffies/s' not in svg


def test_write_timeline_svg_and_points(tmp_path):
    from ansible_collections.auditgap.fleet.plugins.module_utils import labchart
    points = [{'t': 100, 'p99_ms': 0.5}, {'t': 101, 'p99_ms': 300.0}]
    path = labchart.write_timeline(str(tmp_path / 'lab' / 'timeline.svg'), points, title='t <1>')
    with open(path) as handle:
        assert handle.read() == labchart.timeline_svg(points, title='t <1>')
    assert labworkload.read_jsonl(str(tmp_path / 'lab' / 'timeline.jsonl')) == points


def test_validate_lab_params():
    p = labkit.validate_lab_params({'backend': 'docker', 'quota_us': '2000', 'state_path': None})
    assert p['backend'] == 'docker' and p['quota_us'] == 2000 and p['state_path'] == labkit.STATE_FILE
    bad = [{'backend': 'vm'}, {'quota_us': 10}, {'period_us': 2000000}, {'quota_us': 'x'},
           {'key': 'bad key'}, {'rules': 'all'}, {'state_path': 'relative/state.json'},
           {'backlog_wait_time_jiffies': 0}]
    for params in bad:
        try:
            labkit.validate_lab_params(params)
        except ValueError:
            continue
        raise AssertionError('accepted %r' % params)


def test_lab_absent_without_state_is_a_noop(tmp_path):
    changed, result = labkit.lab_absent(str(tmp_path / 'state.json'))
    assert not changed and result['undone'] == [] and result['errors'] == []


class FakeGuard:
    """What the lab journals, in order (no kernel changes: the change functions are stubbed)."""

    def __init__(self):
        self.ops = []

    def push_op(self, op, description=None, **args):
        self.ops.append((op, args))

    def checkpoint(self):
        self.ops.append(('checkpoint', {}))


def test_lab_journals_each_change_so_that_newest_first_is_the_undo_order(tmp_path, monkeypatch):
    """The undo order comes from the order of the changes: the workload, the rules, the
    quota lifted (the consumer drains), the consumer stopped, its group, the audit
    settings, the lab's files."""
    workdir = tmp_path / 'lab'
    cg = tmp_path / 'cpu'
    cg.mkdir()
    monkeypatch.setattr(labkit, 'cpu_cgroup', lambda: (1, str(cg)))
    monkeypatch.setattr(labkit, 'find_auditd', lambda: '/usr/sbin/auditd')
    monkeypatch.setattr(labkit, 'set_status', lambda **fields: None)
    added = []
    monkeypatch.setattr(labkit.audit.Audit, 'add_rules', lambda self, rules, exists_ok=False: added.extend(rules))
    monkeypatch.setattr(labkit, 'wait_registered', lambda pid: True)
    monkeypatch.setattr(labkit.guard, 'set_cgroup_limit', lambda *args: None)

    def spawn(argv, log_path, cgroup_procs=None):
        if '--dir' in argv:
            (workdir / 'workload.json').write_text(json.dumps({'server_pid': 11, 'server_starttime': 1, 'client_pid': 12,
                                                               'client_starttime': 2, 'port': 80}))
        return 10, 3
    monkeypatch.setattr(labkit, 'spawn_daemon', spawn)
    p = labkit.validate_lab_params({'state_path': str(workdir / 'state.json')})
    g = FakeGuard()
    result, processes = labkit._build(g, p, {'pid': 0, 'enabled': 0, 'backlog_limit': 8192, 'backlog_wait_time': 60000})
    undo = [op for op, _args in reversed(g.ops) if op != 'checkpoint']
    assert undo == ['stop_process', 'audit_rule_delete', 'audit_rule_delete', 'cgroup_limit', 'stop_process',
                    'cgroup_remove', 'audit_set', 'remove_files']
    args = dict((op, a) for op, a in g.ops)
    assert args['audit_set'] == {'fields': {'enabled': 0, 'backlog_limit': 8192, 'backlog_wait_time': 60000}}
    assert args['cgroup_limit']['quota_us'] is None and args['cgroup_remove'] == {'path': str(cg / 'auditgap-lab')}
    assert [a['argv'][-2:] for op, a in g.ops if op == 'audit_rule_delete'] == [['-k', 'auditgap-lab']] * 2
    assert added == [a['argv'] for op, a in g.ops if op == 'audit_rule_delete']  # through the audit client
    assert ('checkpoint', {}) in g.ops  # enabled 0 -> 1 is undone by audit_set
    assert result['server_pid'] == 11 and processes == [[10, 3], [11, 1], [12, 2]]


def _kept_lab(path, entries, processes=((2 ** 22 + 5, 1),)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    guard.write_journal(path, {'version': 1, 'module': 'incident_lab', 'owner': None, 'entries': entries,
                               'lab': {'backend': 'cgroup', 'consumer_pid': 2 ** 22 + 5}, 'processes': list(processes)})


def test_lab_absent_adopts_the_kept_journal_and_keeps_failures_for_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setattr(labkit, 'JOURNAL_DIR', str(tmp_path / 'run'))
    state = str(tmp_path / 'lab' / 'state.json')
    first, second = tmp_path / 'first', tmp_path / 'second'
    first.write_text('changed')
    second.write_text('changed')
    entries = [{'op': 'write_value', 'args': {'path': str(first), 'value': 'old'}, 'description': 'first back'},
               {'op': 'write_value', 'args': {'path': str(tmp_path / 'gone' / 'x'), 'value': '1'}, 'description': 'fails'},
               {'op': 'write_value', 'args': {'path': str(second), 'value': 'old'}, 'description': 'second back'}]
    _kept_lab(state, entries)
    assert labkit.lab_info(state)['alive'] is False
    changed, result = labkit.lab_absent(state, check_mode=True)
    assert changed and result['undone'] == ['second back', 'fails', 'first back'] and os.path.exists(state)
    changed, result = labkit.lab_absent(state)
    assert changed and result['undone'] == ['second back', 'first back'] and len(result['errors']) == 1
    assert first.read_text() == 'old' and second.read_text() == 'old' and not os.path.exists(state)
    left = guard.list_journals(str(tmp_path / 'run'))
    assert len(left) == 1 and [e['description'] for e in guard.read_journal(left[0])['entries']] == ['fails']
    assert labkit.lab_absent(state)[0] is False


def test_present_undoes_a_broken_lab_first(tmp_path, monkeypatch):
    """A lab whose processes died is undone from its kept journal before a new one is made."""
    monkeypatch.setattr(labkit, 'JOURNAL_DIR', str(tmp_path / 'run'))
    state = str(tmp_path / 'lab' / 'state.json')
    marker = tmp_path / 'marker'
    marker.write_text('lab')
    _kept_lab(state, [{'op': 'write_value', 'args': {'path': str(marker), 'value': 'host'}, 'description': 'm'}])
    monkeypatch.setattr(labkit, 'get_status', lambda: {'pid': 0, 'enabled': 1, 'backlog_limit': 8192,
                                                       'backlog_wait_time': 60000})

    class Stop(Exception):
        pass

    def stop(**fields):
        raise Stop(fields)

    monkeypatch.setattr(labkit, 'set_status', stop)
    # the undo puts the (fake) saved audit settings back: recorded, never sent to this host's kernel
    restored = []
    monkeypatch.setitem(guard.OPS, 'audit_set', lambda fields: restored.append(fields))
    with pytest.raises(labkit.LabFailed, match='everything it changed is undone'):
        labkit.lab_present({'state_path': state, 'workload': False})
    assert marker.read_text() == 'host' and not os.path.exists(state)
    assert restored and all(fields.get('backlog_limit') in (None, 8192) for fields in restored)
    assert guard.list_journals(str(tmp_path / 'run')) == []


def test_stop_process_op_stops_a_daemon_by_its_command_line(tmp_path):
    """A daemon is journaled before it starts (its pid unknown): the undo finds it by argv."""
    import subprocess
    import sys
    import time
    argv = [sys.executable, '-c', 'import time; time.sleep(60)', str(tmp_path)]
    proc = subprocess.Popen(argv)
    try:
        for _ in range(100):
            if guard.pids_with_cmdline(argv):
                break
            time.sleep(0.02)
        assert guard.pids_with_cmdline(argv) == [proc.pid]
        leases = tmp_path / 'leases'
        leases.mkdir()
        (leases / str(os.getppid())).write_text('')  # another live process uses it: left running
        guard.run_op('stop_process', {'argv': argv, 'unless_leased': str(leases)})
        assert proc.poll() is None
        guard.run_op('stop_process', {'argv': argv})
        assert proc.wait(timeout=10) == -15
        assert guard.pids_with_cmdline(argv) == []
    finally:
        proc.kill()
        proc.wait()


def test_remove_files_op_removes_only_the_named_files(tmp_path):
    d = tmp_path / 'work'
    (d / 'etc').mkdir(parents=True)
    (d / 'etc' / 'auditd.conf').write_text('x')
    (d / 'latency.jsonl').write_text('x')
    (d / 'stall-1').mkdir()
    guard.run_op('remove_files', {'directory': str(d), 'names': list(labkit.LAB_FILES)})
    assert sorted(os.listdir(str(d))) == ['stall-1']
    os.rmdir(str(d / 'stall-1'))
    guard.run_op('remove_files', {'directory': str(d), 'names': list(labkit.LAB_FILES)})
    assert not d.exists()


def test_workload_script_stands_alone(tmp_path):
    """labworkload.py runs from a copy outside the tree, with no project import path."""
    import shutil
    import subprocess
    import sys
    script = shutil.copy(labworkload.__file__, str(tmp_path / labworkload.SCRIPT_NAME))
    proc = subprocess.run([sys.executable, '-I', script, '--help'], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=30)
    assert proc.returncode == 0 and '--dir' in proc.stdout, proc.stderr
    assert 'ansible' not in open(script).read().split('"""', 2)[2]
