"""Pure parts of the incident lab (plugins/module_utils/labkit.py): no root."""
import json
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import labkit, labworkload


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


def test_parse_auditctl_status():
    text = ('enabled 1\nfailure 1\npid 4242\nrate_limit 0\nbacklog_limit 64\nlost 17\n'
            'backlog 65\nbacklog_wait_time 250\nbacklog_wait_time_actual 9000\n'
            'loginuid_immutable 0 unlocked\n')
    s = labkit.parse_auditctl_status(text)
    assert s['pid'] == 4242 and s['backlog_limit'] == 64 and s['backlog_wait_time'] == 250
    assert s['loginuid_immutable'] == 0


def test_rules_with_key_only_that_key():
    listing = '\n'.join([
        '-a always,exit -F arch=b64 -S bind,listen,accept4 -F success=1 -F key=auditgap-lab',
        '-a always,exit -F arch=b64 -S clone,fork,execve -F key=auditgap-lab',
        '-a always,exit -F arch=b64 -S accept4 -F key=someone-else',
        '-w /etc/passwd -p wa -k identity',
        '-a always,exit -F arch=b64 -S open -F key=auditgap-lab-other',
    ])
    found = labkit.rules_with_key(listing, 'auditgap-lab')
    assert found == [
        ['-d', 'always,exit', '-F', 'arch=b64', '-S', 'bind,listen,accept4', '-F', 'success=1',
         '-F', 'key=auditgap-lab'],
        ['-d', 'always,exit', '-F', 'arch=b64', '-S', 'clone,fork,execve', '-F', 'key=auditgap-lab'],
    ]
    assert labkit.rules_with_key('No rules', 'auditgap-lab') == []


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


def test_state_records_and_undo_order(tmp_path):
    path = str(tmp_path / 'lab' / 'state.json')
    state = labkit.LabState(path)
    state.record('path', path='/run/x')
    state.record('audit_status', saved={'backlog_limit': 64})
    state.record('cgroup', path='/sys/fs/cgroup/cpu/x', version='v1')
    state.record('unthrottle', path='/sys/fs/cgroup/cpu/x', version='v1')
    state.record('consumer', pid=1, starttime=2)
    state.record('rules', key='auditgap-lab')
    state.record('process', name='workload-client', pid=3)
    state.record('process', name='workload-server', pid=4)
    assert json.load(open(path))['entries'][0]['kind'] == 'path'
    order = [(e['kind'], e.get('name')) for e in labkit.undo_order(state.entries)]
    assert order == [('process', 'workload-server'), ('process', 'workload-client'),
                     ('rules', None), ('unthrottle', None), ('consumer', None),
                     ('audit_status', None), ('cgroup', None), ('path', None)]


def test_undo_state_keeps_failures_for_retry(tmp_path):
    path = str(tmp_path / 'state.json')
    state = labkit.LabState(path)
    state.record('rules', key='auditgap-lab')
    state.record('cgroup', path='/nonexistent', version='v1')
    calls = []

    def fail_rules(entry):
        calls.append(entry['kind'])
        raise RuntimeError('auditctl failed')

    def ok_cgroup(entry):
        calls.append(entry['kind'])

    undone, errors = labkit.undo_state(state, {'rules': fail_rules, 'cgroup': ok_cgroup})
    assert calls == ['rules', 'cgroup']
    assert undone == ['cgroup /nonexistent'] and len(errors) == 1
    again = labkit.LabState(path)
    assert [e['kind'] for e in again.entries] == ['rules']
    undone, errors = labkit.undo_state(again, {'rules': lambda e: None})
    assert errors == [] and not os.path.exists(path)
    # a second absent with no state is a no-op
    undone, errors = labkit.undo_state(labkit.LabState(path))
    assert undone == [] and errors == []


def test_undo_path_entry(tmp_path):
    d = tmp_path / 'work'
    (d / 'etc').mkdir(parents=True)
    (d / 'etc' / 'auditd.conf').write_text('x')
    state = labkit.LabState(str(tmp_path / 'state.json'))
    state.record('path', path=str(d))
    labkit.undo_state(state)
    assert not d.exists()


def test_snapshot_diff():
    a = {'audit_status': {'backlog_limit': 8192, 'pid': 0}, 'rules': ['r1'], 'cgroups': ['/a']}
    assert labkit.snapshot_diff(a, json.loads(json.dumps(a))) == []
    b = {'audit_status': {'backlog_limit': 64, 'pid': 0}, 'rules': ['r1', 'r2'], 'cgroups': []}
    diffs = labkit.snapshot_diff(a, b)
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
    assert labworkload.proc_starttime(os.getpid()) is not None
    assert labkit.process_alive(os.getpid())
    assert not labkit.process_alive(2 ** 22 + 1)


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


def test_lab_info_from_state(tmp_path):
    state = labkit.LabState(str(tmp_path / 'state.json'))
    assert labkit.lab_info(state) is None
    state.record('cgroup', path='/sys/fs/cgroup/cpu/auditgap-lab', version='v1')
    state.record('consumer', pid=os.getpid(), starttime=labworkload.proc_starttime(os.getpid()), backend='cgroup')
    state.record('rules', key='auditgap-lab')
    state.record('process', name='workload-server', pid=2 ** 22 + 3, starttime=1)
    info = labkit.lab_info(state)
    assert info['backend'] == 'cgroup' and info['consumer_pid'] == os.getpid()
    assert info['cgroup_path'] == '/sys/fs/cgroup/cpu/auditgap-lab' and info['key'] == 'auditgap-lab'
    assert info['server_pid'] == 2 ** 22 + 3 and info['alive'] is False


def test_present_undoes_a_broken_lab_with_the_backend_handlers(tmp_path, monkeypatch):
    """A dead docker lab found by present is undone with the handlers present was given."""
    path = str(tmp_path / 'lab' / 'state.json')
    state = labkit.LabState(path)
    state.record('container', name='auditgap-lab-auditd', id='c0ffee')
    state.record('consumer', pid=2 ** 22 + 5, starttime=1, backend='docker')
    monkeypatch.setattr(labkit, 'get_status', lambda: {'pid': 0, 'enabled': 1, 'backlog_limit': 8192,
                                                       'backlog_wait_time': 60000})

    class Stop(Exception):
        pass

    def stop(**fields):
        raise Stop(fields)

    monkeypatch.setattr(labkit, 'set_status', stop)
    undone = []
    with pytest.raises(Stop):  # the cleanup ran; the new lab's first kernel change is stopped here
        labkit.lab_present({'state_path': path}, handlers={'container': undone.append})
    assert [e['id'] for e in undone] == ['c0ffee']
    assert [e['kind'] for e in labkit.LabState(path).entries] == ['path', 'audit_status']


def test_spawn_entry_stops_the_daemon_by_its_command_line(tmp_path):
    """A daemon is recorded before it starts (its pid unknown): undo finds it by argv."""
    import subprocess
    import sys
    argv = [sys.executable, '-c', 'import time; time.sleep(60)', str(tmp_path)]
    proc = subprocess.Popen(argv)
    try:
        for _ in range(100):
            if labkit.pids_with_cmdline(argv):
                break
            import time
            time.sleep(0.02)
        assert labkit.pids_with_cmdline(argv) == [proc.pid]
        labkit.stop_spawned({'kind': 'spawn', 'name': 'x', 'argv': argv})
        assert proc.wait(timeout=10) == -15
        assert labkit.pids_with_cmdline(argv) == []
    finally:
        proc.kill()
        proc.wait()


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
