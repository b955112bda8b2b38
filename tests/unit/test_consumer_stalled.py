"""audit_consumer_stalled on recorded facts: each cause its own evidence line and fix,
and the activity measurement's pure parts (procinfo, auditfacts)."""
import copy
import json
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts, procinfo

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings')

IDLE = {'pid': 6398, 'found': True, 'seconds': 5.0, 'samples': 50,
        'state_ratios': {'T': 0.0, 'D': 0.0, 'R': 0.02, 'S': 0.98}, 'frozen': False,
        'cpu_cores': 0.01, 'busiest_thread_cores': 0.01, 'run_delay_ms_per_s': 0.4, 'nice': 0, 'threads': 2,
        'write_bytes_per_s': 4096.0, 'syscw_per_s': 10.0, 'syscr_per_s': 10.0, 'wchan': [], 'd_state_stack': None}
AUDITD_CONF = {'path': '/etc/audit/auditd.conf', 'flush': 'INCREMENTAL_ASYNC', 'freq': '50',
               'disk_full_action': 'SUSPEND', 'priority_boost': '4', 'log_file': '/var/log/audit/audit.log',
               'log_device': 'vda', 'log_free_ratio': 0.5, 'plugins': []}


def facts(throttled=False, **activity):
    """The recorded lab stall (backlog at limit, lost, wait accrued) with the consumer's activity."""
    with open(os.path.join(FIX, 'lab_stall.json')) as handle:
        data = json.load(handle)
    if not throttled:
        target = data['cgroup_throttle']['targets'][0]
        target.update(limit_cores=None, limited_by=None, throttled_ratio_total=0.0)
        target['sample'].update(throttled_ratio=0.0, nr_throttled_delta=0, nr_periods_delta=0, limit_cores=None)
    data['audit_status']['consumer']['auditd_config'] = dict(AUDITD_CONF)
    data['audit_status']['consumer']['systemd_unit'] = 'auditd.service'
    data['audit_status']['consumer_activity'] = dict(copy.deepcopy(IDLE), **activity)
    return data


def stalled(data):
    findings, chain = D.evaluate(data, 'h1')
    found = {f['id']: f for f in findings}
    return found.get('audit_consumer_stalled'), found, chain


def test_stopped():
    finding, found, chain = stalled(facts(state_ratios={'T': 1.0, 'D': 0.0, 'R': 0.0, 'S': 0.0}, cpu_cores=0.0))
    assert finding['evidence']['cause'] == 'stopped' and finding['severity'] == 'critical'
    assert finding['remediation'] is None
    assert chain.endswith('<- consumer auditd pid 6398 stopped (state T in 100% of 50 samples, 0 CPU) '
                          '-> resume it (kill -CONT 6398) or restart it (systemctl restart auditd.service)')
    assert found['audit_backlog_saturated']['remediation'] is None


def test_frozen_cgroup_counts_as_stopped():
    finding, _found, chain = stalled(facts(frozen=True, state_ratios={'T': 0.0, 'D': 1.0, 'R': 0, 'S': 0}))
    assert finding['evidence']['cause'] == 'stopped'
    assert 'its cgroup frozen' in chain and '-> thaw it' in chain


def test_blocked_on_io_names_device_and_setting():
    conf = dict(AUDITD_CONF, flush='SYNC')
    data = facts(state_ratios={'T': 0, 'D': 0.8, 'R': 0.05, 'S': 0.15},
                 wchan=[{'function': 'jbd2_log_wait_commit', 'samples': 40}], write_bytes_per_s=16384.0)
    data['audit_status']['consumer']['auditd_config'] = conf
    finding, _found, chain = stalled(data)
    assert finding['evidence']['cause'] == 'io_blocked'
    assert ('consumer auditd pid 6398 blocked on disk I/O (state D in 80% of 50 samples, in jbd2_log_wait_commit, '
            'writes 16 KB/s, flush = SYNC, log on vda)') in chain
    assert chain.endswith('-> set flush = incremental_async in /etc/audit/auditd.conf '
                          '(now SYNC: every record waits for vda)')


def test_blocked_on_a_full_disk():
    conf = dict(AUDITD_CONF, log_free_ratio=0.001)
    data = facts(state_ratios={'T': 0, 'D': 0.5, 'R': 0, 'S': 0.5})
    data['audit_status']['consumer']['auditd_config'] = conf
    _finding, _found, chain = stalled(data)
    assert '-> free space on vda (0% free; disk_full_action = SUSPEND in /etc/audit/auditd.conf)' in chain


def test_cpu_contended_without_quota():
    finding, _found, chain = stalled(facts(state_ratios={'T': 0, 'D': 0, 'R': 0.9, 'S': 0.1},
                                           run_delay_ms_per_s=850.0, cpu_cores=0.05))
    assert finding['evidence']['cause'] == 'cpu_contended'
    assert 'consumer auditd pid 6398 waits for a CPU (run delay 850 ms/s, 94% of its runnable time, uses 0.05 CPU' \
        in chain
    assert finding['evidence']['cpu_wait_share'] == 0.944
    assert chain.endswith('-> raise its CPU priority or weight, not a quota (priority_boost in '
                          '/etc/audit/auditd.conf (now 4) or CPUWeight= on auditd.service)')


def test_a_starved_consumer_is_cpu_contended_though_it_mostly_sleeps():
    # weight 2 beside busy loops: it waits for a CPU nearly every time it has work, and sleeps
    # between (the producers it stalled sleep too): little run delay per second of wall
    starved = {'state_ratios': {'T': 0, 'D': 0, 'R': 0.5, 'S': 0.5}, 'run_delay_ms_per_s': 158.0,
               'cpu_cores': 0.0, 'cpu_seconds': 0.01}
    finding, _found, chain = stalled(facts(**starved))
    assert finding['evidence']['cause'] == 'cpu_contended' and finding['evidence']['cpu_wait_share'] == 0.988
    assert 'waits for a CPU (run delay 158 ms/s, 99% of its runnable time, uses 0 CPU' in chain
    # the same delay beside real work is not starvation
    assert stalled(facts(**dict(starved, cpu_cores=0.5, cpu_seconds=2.5)))[0] is None
    # run time from clock ticks when schedstat's is not read
    assert D.cpu_wait_share({'run_delay_ms_per_s': 100.0, 'seconds': 2.0, 'cpu_cores': 0.2}) == 0.333
    assert D.cpu_wait_share({'run_delay_ms_per_s': None, 'seconds': 2.0, 'cpu_cores': 0.2}) is None
    assert D.cpu_wait_share({'run_delay_ms_per_s': 0.0, 'seconds': 2.0, 'cpu_cores': 0.0}) is None


def test_core_saturated_narrows_rules():
    finding, found, chain = stalled(facts(state_ratios={'T': 0, 'D': 0, 'R': 1.0, 'S': 0},
                                          cpu_cores=1.0, busiest_thread_cores=0.98, run_delay_ms_per_s=5.0))
    assert finding['evidence']['cause'] == 'core_saturated'
    assert finding['remediation']['role'] == 'audit_rules'
    assert 'saturates its core (busiest thread 0.98 CPU)' in chain
    assert '-> fewer records, not more CPU: narrow the audit rules (role audit_rules' in chain
    assert found['audit_wait_time_accrued']['remediation']['role'] == 'audit_rules'


def test_throttled_consumer_keeps_the_throttled_chain():
    finding, found, chain = stalled(facts(throttled=True, state_ratios={'T': 0, 'D': 0, 'R': 0.9, 'S': 0.1},
                                          run_delay_ms_per_s=900.0))
    assert finding is None
    assert 'audit_consumer_throttled' in found
    assert '-> raise its CPU limit (role agent_cpu' in chain


def test_idle_consumer_or_no_stall_gives_nothing():
    assert stalled(facts())[0] is None
    with open(os.path.join(FIX, 'healthy.json')) as handle:
        healthy = json.load(handle)
    healthy['audit_status']['consumer_activity'] = dict(IDLE, state_ratios={'T': 1.0, 'D': 0, 'R': 0, 'S': 0})
    findings, chain = D.evaluate(healthy, 'h1')
    assert 'audit_consumer_stalled' not in {f['id'] for f in findings} and chain is None


@pytest.mark.parametrize('key,value', [('consumer_stopped_ratio', 0.6), ('consumer_io_blocked_ratio', 0.6),
                                       ('consumer_run_delay_ms_per_s', 300),
                                       ('consumer_starved_run_delay_ms_per_s', 100),
                                       ('consumer_starved_wait_share', 0.95)])
def test_thresholds_are_boundaries(key, value):
    starved = {'run_delay_ms_per_s': 100.0, 'cpu_cores': 0.0, 'cpu_seconds': 0.5 / 19, 'seconds': 5.0}
    activity = {'consumer_stopped_ratio': {'state_ratios': {'T': 0.6, 'D': 0, 'R': 0, 'S': 0.4}},
                'consumer_io_blocked_ratio': {'state_ratios': {'T': 0, 'D': 0.6, 'R': 0, 'S': 0.4}},
                'consumer_run_delay_ms_per_s': {'run_delay_ms_per_s': 300.0, 'cpu_cores': 0.5},  # not starved
                'consumer_starved_run_delay_ms_per_s': starved,     # waited 0.5 s, ran 0.5/19 s: share 0.95
                'consumer_starved_wait_share': starved}[key]
    assert D.evaluate(facts(**activity), 'h1', {key: value})[0][0]  # at the threshold: found
    findings = D.evaluate(facts(**activity), 'h1', {key: value + 0.01})[0]
    assert 'audit_consumer_stalled' not in {f['id'] for f in findings}


# ---------------------------------------------------------------- measurement (pure parts)

STAT = '6398 (audit d) S 1 6398 6398 0 -1 4194624 300 0 0 0 120 45 0 0 16 -4 2 0 900 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n'


def test_parse_stat_schedstat_io_stack():
    stat = procinfo.parse_stat(STAT)
    assert stat['state'] == 'S' and stat['utime_ticks'] == 120 and stat['stime_ticks'] == 45
    assert stat['nice'] == -4 and stat['num_threads'] == 2
    assert procinfo.parse_stat('garbage') is None
    assert procinfo.parse_schedstat('87815 3555621 2\n') == {'run_ns': 87815, 'run_delay_ns': 3555621, 'timeslices': 2}
    assert procinfo.parse_schedstat('') is None
    assert procinfo.parse_io('rchar: 5\nwrite_bytes: 4096\n') == {'rchar': 5, 'write_bytes': 4096}
    stack = '[<0>] jbd2_log_wait_commit+0xa/0x10\n[<0>] ext4_sync_file+0x1/0x2\n'
    assert procinfo.parse_stack(stack) == ['jbd2_log_wait_commit', 'ext4_sync_file']
    assert procinfo.process_state(['S', 'T']) == 'T' and procinfo.process_state(['S', 'D', 'R']) == 'D'
    assert procinfo.process_state(['I', 'S']) == 'S' and procinfo.process_state([]) is None


def test_summarize_activity_rates():
    first = {'stat': {'utime_ticks': 100, 'stime_ticks': 0, 'nice': 0, 'num_threads': 2},
             'io': {'write_bytes': 0, 'syscw': 0, 'syscr': 0},
             'tasks': {1: {'ticks': 100, 'run_delay_ns': 0}, 2: {'ticks': 0, 'run_delay_ns': 0}}}
    last = {'stat': {'utime_ticks': 250, 'stime_ticks': 50, 'nice': 0, 'num_threads': 2},
            'io': {'write_bytes': 8192, 'syscw': 4, 'syscr': 400},
            'tasks': {1: {'ticks': 290, 'run_delay_ns': 1_000_000_000}, 2: {'ticks': 10, 'run_delay_ns': 0}}}
    ticks = [{'state': 'R', 'wchans': [], 'stacks': []}, {'state': 'D', 'wchans': ['io_schedule'],
                                                           'stacks': [['io_schedule', 'folio_wait_bit']]}]
    out = procinfo.summarize_activity(7, first, last, ticks, 2.0, 100, False)
    assert out['cpu_cores'] == 1.0 and out['busiest_thread_cores'] == 0.95
    assert out['run_delay_ms_per_s'] == 500.0 and out['write_bytes_per_s'] == 4096.0 and out['syscr_per_s'] == 200.0
    assert out['state_ratios'] == {'T': 0.0, 'D': 0.5, 'R': 0.5, 'S': 0.0}
    assert out['wchan'] == [{'function': 'io_schedule', 'samples': 1}]
    assert out['d_state_stack'] == 'io_schedule <- folio_wait_bit'
    assert procinfo.summarize_activity(7, None, None, [], 2.0, 100, None)['found'] is False
    assert out['cpu_seconds'] is None      # schedstat run time not read: unknown, not 0


def test_a_wait_for_a_cpu_still_under_way_at_the_windows_end_counts():
    # schedstat books a wait when the task gets the CPU: a task queued through the whole
    # window shows no run_delay growth; the sampler adds the wait it saw under way
    runnable = {'state': 'R', 'run_ns': 5_000, 'timeslices': 9}
    queued = procinfo.track_queued({}, {1: dict(runnable), 2: {'state': 'S', 'run_ns': 1, 'timeslices': 1}}, 10.0)
    assert queued == {1: {'since': 10.0, 'run_ns': 5_000, 'timeslices': 9}}
    # still runnable and unrun at the next poll: the wait is dated from when it was first seen
    queued = procinfo.track_queued(queued, {1: dict(runnable)}, 10.1)
    assert queued[1]['since'] == 10.0
    assert procinfo.queued_waits_ns(queued, {1: dict(runnable)}, 11.5) == {1: 1_500_000_000}
    # it ran at the end (run time or timeslices moved), slept, or is gone: nothing pending
    for last in ({1: dict(runnable, run_ns=6_000)}, {1: dict(runnable, timeslices=10)},
                 {1: dict(runnable, state='S')}, {}):
        assert procinfo.queued_waits_ns(queued, last, 11.5) == {}
    # it ran between two polls and is runnable again: a new wait, dated from this poll
    assert procinfo.track_queued(queued, {1: dict(runnable, timeslices=10)}, 10.2)[1]['since'] == 10.2
    # no schedstat: not tracked
    assert procinfo.track_queued({}, {1: {'state': 'R', 'run_ns': None, 'timeslices': None}}, 10.0) == {}
    first = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 1}, 'io': {},
             'tasks': {1: {'ticks': 0, 'run_delay_ns': 0}}}
    out = procinfo.summarize_activity(7, first, first, [], 2.0, 100, False, pending_ns={1: 1_500_000_000})
    assert out['run_delay_ms_per_s'] == 750.0
    # a wait booked in the window that began before it counts the window at most, per task
    last = dict(first, tasks={1: {'ticks': 0, 'run_delay_ns': 2_500_000_000}, 2: {'ticks': 0, 'run_delay_ns': 0}})
    out = procinfo.summarize_activity(7, first, last, [], 2.0, 100, False, pending_ns={2: 500_000_000})
    assert out['run_delay_ms_per_s'] == 1250.0


def test_summarize_activity_cpu_seconds_from_schedstat_run_time():
    first = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 2}, 'io': {},
             'tasks': {1: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 1_000}, 2: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 0}}}
    last = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 3}, 'io': {},
            'tasks': {1: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 3_001_000}, 2: {'ticks': 0, 'run_delay_ns': 0,
                                                                                     'run_ns': 1_500_000},
                      3: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 500_000}}}   # a thread born in the window
    out = procinfo.summarize_activity(7, first, last, [], 1.0, 100, False)
    # 3 ms + 1.5 ms + 0.5 ms: finer than clock ticks (cpu_cores is 0 here)
    assert out['cpu_seconds'] == 0.005 and out['cpu_cores'] == 0.0
    assert out['wakeups_per_s'] is None    # voluntary switches not read: unknown, not 0


def test_summarize_activity_wakeups_from_voluntary_context_switches():
    status = 'Name:\tauditd\nvoluntary_ctxt_switches:\t4210\nnonvoluntary_ctxt_switches:\t17\n'
    assert procinfo.parse_voluntary_switches(status) == 4210
    assert procinfo.parse_voluntary_switches('Name:\tx\n') is None
    assert procinfo.parse_voluntary_switches('voluntary_ctxt_switches:\tmany\n') is None
    first = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 2}, 'io': {},
             'tasks': {1: {'ticks': 0, 'run_delay_ns': 0, 'wakeups': 100}, 2: {'ticks': 0, 'run_delay_ns': 0,
                                                                                 'wakeups': 7}}}
    last = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 3}, 'io': {},
            'tasks': {1: {'ticks': 0, 'run_delay_ns': 0, 'wakeups': 700}, 2: {'ticks': 0, 'run_delay_ns': 0,
                                                                                'wakeups': 7},
                      3: {'ticks': 0, 'run_delay_ns': 0, 'wakeups': 50}}}   # a thread born in the window
    # (600 + 0 + 50) over 2 s: the times its tasks slept and were woken
    assert procinfo.summarize_activity(7, first, last, [], 2.0, 100, False)['wakeups_per_s'] == 325.0


def test_auditd_config_read_through_the_consumers_root(tmp_path):
    proc = tmp_path / 'proc'
    conf = proc / '42' / 'root' / 'etc' / 'auditd'
    conf.mkdir(parents=True)
    (conf / 'auditd.conf').write_text('# c\nflush = SYNC\nfreq=0\nlog_file = /log/audit.log\n'
                                      'plugin_dir = /plug\npriority_boost = 4\n')
    (proc / '42' / 'root' / 'log').mkdir()
    (proc / '42' / 'root' / 'plug').mkdir()
    (proc / '42' / 'root' / 'plug' / 'af_unix.conf').write_text('active = yes\n')
    (proc / '42' / 'root' / 'plug' / 'syslog.conf').write_text('active = no\n')
    consumer = {'pid': 42, 'comm': 'auditd', 'cmdline': ['/usr/sbin/auditd', '-c', '/etc/auditd']}
    out = auditfacts.read_auditd_config(consumer, str(proc))
    assert out['path'] == '/etc/auditd/auditd.conf' and out['flush'] == 'SYNC' and out['freq'] == '0'
    assert out['priority_boost'] == '4' and out['plugins'] == ['af_unix']
    assert 0 <= out['log_free_ratio'] <= 1
    assert auditfacts.read_auditd_config({'pid': 42, 'comm': 'ids-agent'}, str(proc)) is None
    missing = auditfacts.read_auditd_config({'pid': 43, 'comm': 'auditd'}, str(proc))
    assert missing['path'] == '/etc/audit/auditd.conf' and 'error' in missing


def test_summarize_activity_history_is_the_consumers_life_before_the_window():
    first = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 2}, 'io': {'wchar': 5000},
             'tasks': {1: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 2_000_000, 'wakeups': 100},
                       2: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 500_000, 'wakeups': 7}}}
    last = {'stat': {'utime_ticks': 0, 'stime_ticks': 0, 'nice': 0, 'num_threads': 2}, 'io': {'wchar': 9000},
            'tasks': {1: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 3_000_000, 'wakeups': 140},
                      2: {'ticks': 0, 'run_delay_ns': 0, 'run_ns': 500_000, 'wakeups': 7}}}
    out = procinfo.summarize_activity(7, first, last, [], 2.0, 100, False)
    assert out['history'] == {'cpu_seconds': 0.0025, 'wakeups': 107, 'write_chars': 5000}
    assert out['wchar_per_s'] == 2000.0
    # a task whose switches were not read: unknown, not a smaller count
    first['tasks'][2]['wakeups'] = None
    assert procinfo.summarize_activity(7, first, last, [], 2.0, 100, False)['history']['wakeups'] is None
