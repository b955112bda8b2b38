"""Fixes sized from measurement (module_utils/sizing.py): the arithmetic at its boundaries."""
from ansible_collections.auditgap.fleet.plugins.filter import findings
from ansible_collections.auditgap.fleet.plugins.filter import remediation as rem
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as F
from ansible_collections.auditgap.fleet.plugins.module_utils import sizing as S


def test_cpu_limit_is_cpu_per_record_times_peak_rate_times_headroom():
    # 0.004 cores for 40 records/s = 0.0001 s/record; peak 3000 records/s x 2 = 0.6 cores
    out = S.cpu_limit(0.004, 40.0, 3000.0, 2.0, 0.004, fallback=0.5)
    assert out['measured'] and out['value'] == 0.6
    assert out['inputs']['cpu_seconds_per_record'] == 0.0001
    assert out['formula'] == ('0.0001 CPU s/record (0.004 cores / 40 records/s) x 3000 records/s offered x 2 headroom'
                              ' = 0.6 -> 0.6 cores')


def test_cpu_limit_rounds_up_to_a_thousandth_of_a_core():
    assert S.cpu_limit(0.001, 100.0, 1001.0, 1.0, 0.001, 0.5)['value'] == 0.011   # 0.01001 -> 0.011
    assert S.cpu_limit(0.01, 100.0, 1000.0, 1.0, 0.01, 0.5)['value'] == 0.1       # exactly 0.1 stays
    assert S.round_up(0.10000000001) == 0.1 and S.round_up(0.1001) == 0.101
    assert S.round_up(0.0326) == 0.033 and S.round_up(1.2341) == 1.235
    assert S.round_up(0.1001, 0.05) == 0.15


def test_cpu_limit_falls_back_when_unmeasured_or_capped_by_the_throttle():
    for used, rate, peak in ((None, 40.0, 100.0), (0.004, 0, 100.0), (0.004, 40.0, None)):
        out = S.cpu_limit(used, rate, peak, 2.0, 0.01, fallback=0.5)
        assert (out['value'], out['measured']) == (0.5, False) and 'fallback 0.5 cores' in out['formula']
    # at or below the current limit: the throttle capped the rate seen
    out = S.cpu_limit(0.01, 100.0, 100.0, 1.0, 0.01, fallback=0.5)
    assert (out['value'], out['measured']) == (0.5, False) and 'not above the current limit 0.01' in out['formula']
    assert S.cpu_limit(0.01, 100.0, 1e12, 2.0, 0.01, 0.5)['value'] == 1024.0      # within what agent_cpu takes


def test_unbatched_factor_is_the_cost_of_waking_once_per_event_over_the_batches_measured():
    # 600 records/s over 30 wake-ups/s: 20 records per wake-up throttled; unthrottled one per event of 4
    # records; a wake-up costs 6 records: (1 + 6/4) / (1 + 6/20) = 2.5 / 1.3
    out = S.unbatched_factor(600.0, 30.0, 4.0, 6.0)
    assert abs(out['value'] - 2.5 / 1.3) < 1e-12
    assert out['formula'] == '(1 + 6 / 4 records per event) / (1 + 6 / 20 records per wake-up throttled) = 1.923'
    assert out['inputs'] == {'wakeups_per_s': 30.0, 'records_per_wakeup': 20.0, 'records_per_event': 4.0,
                             'wakeup_cost_records': 6.0, 'unbatched_factor': 1.9231, 'unbatched_from': 'window'}
    # no cost per wake-up: the CPU per record measured throttled (the sizing of before)
    assert S.unbatched_factor(600.0, 30.0, 4.0, 0)['value'] == 1.0
    # already waking more often than once per event (batches of 2 < 4 records per event): nothing to add
    assert S.unbatched_factor(100.0, 50.0, 4.0, 6.0)['value'] == 1.0
    # never less than one record per wake-up, and never below 1
    assert S.unbatched_factor(100.0, 400.0, 4.0, 6.0)['value'] == 1.0
    # wake-ups not measured (facts of an older auditgap) or none (it never slept): the batch counts as
    # endless, the most the factor can be
    for wakeups, why in ((None, 'wake-ups not measured'), (0.0, 'it never slept throttled'),
                         (float('nan'), 'wake-ups not measured'), ('x', 'wake-ups not measured')):
        out = S.unbatched_factor(600.0, wakeups, 4.0, 6.0)
        assert out['value'] == 2.5 and out['formula'] == '1 + 6 / 4 records per event = 2.5 (%s)' % why
    # records per event unknown: one record per wake-up
    assert abs(S.unbatched_factor(600.0, 30.0, None, 6.0)['value'] - 7 / 1.3) < 1e-12
    assert S.unbatched_factor(None, None, None, 6.0)['value'] == 7.0


# the incident lab on this host (2026-12-01, 1000 connections/s): auditd ran 2 s unthrottled under the load,
# then 2 s at 1 ms per 250 ms, then a 3.03 s window at that limit; the counters read from /proc at the
# window's start (its history) and over the window (records from the multicast group)
LAB_HISTORY = {'cpu_seconds': 0.514361, 'wakeups': 11960, 'write_chars': 11021045}
LAB_WINDOW = {'cpu_seconds': 0.009438, 'wakeups': 98, 'records': 1768, 'write_chars': 334018}
# the same consumer unthrottled right after: 0.1066 CPU s for 12048 records (4 records per event)
LAB_UNTHROTTLED_CPU_PER_RECORD = 0.10659597 / 12048


def test_wakeup_cost_measured_from_the_consumers_history_against_the_window():
    out = S.wakeup_cost(LAB_HISTORY, LAB_WINDOW, 6.0)
    assert out['measured'] and out['inputs']['wakeup_cost_source'] == 'measured'
    # 188.9 bytes per record: 58344 records before the window at 4.88 per wake-up, 18.04 in the window
    assert out['inputs']['write_chars_per_record'] == 188.924
    assert out['inputs']['history_records_per_wakeup'] == 4.878
    assert 5.5 < out['value'] < 6.0
    assert out['formula'].startswith('k = w / a = 2.3')
    # per second or in total: the same k
    per_s = dict((name, value / 3.0347) for name, value in LAB_WINDOW.items())
    assert abs(S.wakeup_cost(LAB_HISTORY, per_s)['value'] - out['value']) < 1e-6
    # with it the CPU per record once unthrottled is within 1.2x of what the consumer then used
    unbatched = S.unbatched_factor(1768, 98, 3.98, out)
    estimate = 0.009438 / 1768 * unbatched['value']
    assert 0.9 < estimate / LAB_UNTHROTTLED_CPU_PER_RECORD < 1.2
    assert unbatched['inputs']['wakeup_cost_source'] == 'measured' and '; k = w / a = ' in unbatched['formula']


def test_wakeup_cost_falls_back_to_the_threshold_when_the_measure_cannot_be_trusted():
    def why(history, window=LAB_WINDOW):
        out = S.wakeup_cost(history, window, 6.0)
        assert (out['value'], out['measured'], out['inputs']['wakeup_cost_source']) == (
            6.0, False, 'consumer_wakeup_cost_records')
        return out['formula']
    assert why(None) == 'k = 6 (consumer_wakeup_cost_records: no history before the window)'
    assert 'bytes the consumer wrote were not read' in why(LAB_HISTORY, dict(LAB_WINDOW, write_chars=None))
    assert 'the window has no bytes written' in why(LAB_HISTORY, dict(LAB_WINDOW, write_chars=0))
    assert 'the window has no records' in why(LAB_HISTORY, dict(LAB_WINDOW, records=0))
    assert ('999 wake-ups before the window, fewer than 1000: its start-up would decide k'
            in why(dict(LAB_HISTORY, wakeups=999)))
    # a consumer throttled since it started (the lab's fresh auditd): history batched like the window
    assert 'less than 2 x apart' in why({'cpu_seconds': 0.12, 'wakeups': 1490, 'write_chars': 5080000})
    # noise that makes the wake-up cost negative
    assert 'the two stretches give a = ' in why(dict(LAB_HISTORY, cpu_seconds=0.01))
    for bad in ('x', float('nan'), -5, True):
        assert not S.wakeup_cost(dict(LAB_HISTORY, wakeups=bad), LAB_WINDOW)['measured']
    # the VM (molecule default, 2026-12-01): Debian 12's auditd.service throttled at 1 ms per 250 ms wrote 750
    # bytes/s for 80.76 records/s (its log writes lag its reads), since boot 149 wake-ups for 1.64 CPU s
    vm_history = {'cpu_seconds': 1.638898, 'wakeups': 149, 'write_chars': 55638}
    vm_window = {'cpu_seconds': 0.015721 / 3.633, 'wakeups': 0.0, 'records': 80.76, 'write_chars': 749.795}
    assert why(vm_history, vm_window) == ('k = 6 (consumer_wakeup_cost_records: 9.284 bytes written per record in '
                                          'the window, fewer than a record\'s 40: its writes lag its reads)')
    # with the records' own length from the multicast group the writes' lag no longer matters, but 149 wake-ups
    # since boot are its start-up under emulation (11 ms of CPU per wake-up, k would read about 200)
    assert why(vm_history, dict(vm_window, log_chars_per_record=150.0)) == (
        'k = 6 (consumer_wakeup_cost_records: 149 wake-ups before the window, fewer than 1000: its start-up would '
        'decide k)')


# the VM's auditd with a history: the lab's load ran unthrottled before the throttle (its wake-ups dominate its
# CPU), then a throttled window whose writes lag its reads and that never woke (numbers of that shape: the
# start-up's 1.6 CPU s, 2650 wake-ups, 11000 records of 150 bytes; the window as recorded)
VM_HISTORY = {'cpu_seconds': 6.6, 'wakeups': 2650, 'write_chars': 1650000}
VM_WINDOW = {'cpu_seconds': 0.015721 / 3.633, 'wakeups': 0.0, 'records': 80.76, 'write_chars': 749.795,
             'log_chars_per_record': 150.0}


def test_wakeup_cost_counts_the_history_by_the_records_text_when_the_windows_writes_lag():
    out = S.wakeup_cost(VM_HISTORY, VM_WINDOW, 6.0)
    assert out['measured'], out['formula']
    inputs = out['inputs']
    assert inputs['history_records_counted_by'] == 'log_chars_per_record' and inputs['history_records'] == 11000
    # a = 4.327e-03 / 80.76 = 5.358e-05 s (the window never woke); w = (6.6 - a x 11000) / 2650 = 2.268e-03 s
    a = 0.015721 / 3.633 / 80.76
    w = (6.6 - a * 11000) / 2650
    assert abs(out['value'] - w / a) < 1e-6 and 42 < out['value'] < 43
    assert inputs['history_records_cpu_ratio'] == round(a * 11000 / 6.6, 4)
    assert ('11000 records: 1650000 bytes written / 150 per record logged (the records\' text; the window\'s '
            'writes lag its reads: 9.284 bytes written per record)') in out['formula']
    # the same window with bytes that keep up counts by what it wrote
    kept = S.wakeup_cost(VM_HISTORY, dict(VM_WINDOW, write_chars=80.76 * 150.0), 6.0)
    assert kept['inputs']['history_records_counted_by'] == 'write_chars_per_record'
    assert abs(kept['value'] - out['value']) < 1e-6
    # a window that wrote nothing at all: counted by the text too
    assert S.wakeup_cost(VM_HISTORY, dict(VM_WINDOW, write_chars=0), 6.0)['measured']
    # counted by the text, the records may not decide k: here 40 bytes each would be 60% of the history's CPU
    heavy = S.wakeup_cost(dict(VM_HISTORY, write_chars=2956000), dict(VM_WINDOW, log_chars_per_record=40.0), 6.0)
    assert not heavy['measured'] and 'counted by their text' in heavy['formula'] and 'more than 0.5' in heavy['formula']
    # text shorter than any record: not a count
    assert not S.wakeup_cost(VM_HISTORY, dict(VM_WINDOW, log_chars_per_record=12.0), 6.0)['measured']


def test_wakeup_cost_from_a_window_without_wakeups_is_the_record_cost_alone():
    # throttled, it never emptied its socket: the window gives a, the history w
    out = S.wakeup_cost({'cpu_seconds': 0.05, 'wakeups': 1000, 'write_chars': 800000},
                        {'cpu_seconds': 0.004, 'wakeups': 0, 'records': 1000, 'write_chars': 200000})
    # a = 4e-06 s; 4000 records before the window: w = (0.05 - 0.016) / 1000 = 3.4e-05 s, k = 8.5
    assert out['measured'] and abs(out['value'] - 8.5) < 1e-9
    assert out['inputs']['cpu_seconds_per_wakeup'] == 3.4e-05


# a quiet host (2026-12-02): auditd kept up before the stall (4 records per wake-up, one per event), and the
# throttle barely batched it (7.2 per wake-up): under 2x apart, k cannot be measured
QUIET_HISTORY = {'cpu_seconds': 0.5, 'wakeups': 25000, 'write_chars': 20000000}           # 100000 records
QUIET_WINDOW = {'cpu_seconds': 0.0036, 'wakeups': 100, 'records': 720, 'write_chars': 144000}


def test_without_k_measured_the_unthrottled_cost_comes_from_the_history_that_kept_up():
    cost = S.wakeup_cost(QUIET_HISTORY, QUIET_WINDOW, 6.0)
    assert not cost['measured'] and 'less than 2 x apart' in cost['formula']
    assert cost['inputs']['history_cpu_seconds_per_record'] == 5e-06
    assert cost['inputs']['window_cpu_seconds_per_record'] == 5e-06
    out = S.unbatched_factor(720.0, 100.0, 4.0, cost)
    # the history woke once per event at 5e-06 s a record: that is the unthrottled cost, whatever k is; the
    # window's batches with the threshold's k would have said (1 + 6/4) / (1 + 6/7.2) = 1.364
    assert out['value'] == 1.0 and out['inputs']['unbatched_from'] == 'history'
    assert out['formula'].startswith(
        '5e-06 CPU s/record before the window x (1 + 6 / 4 records per event) / (1 + 6 / 4 records per wake-up '
        'before it) / 5e-06 CPU s/record in it = 1 (from the history: it woke nearer once per event than the '
        'window, 7.2 records per wake-up); k = 6 (consumer_wakeup_cost_records: 4 records per wake-up before')
    # a record cost 1.2x more before the window: 1.2x once unthrottled
    dearer = dict(QUIET_HISTORY, cpu_seconds=0.6)
    assert abs(S.unbatched_factor(720.0, 100.0, 4.0, S.wakeup_cost(dearer, QUIET_WINDOW, 6.0))['value'] - 1.2) < 1e-9
    # never below 1: a record costs at least what it cost throttled
    cheaper = dict(QUIET_HISTORY, cpu_seconds=0.3)
    assert S.unbatched_factor(720.0, 100.0, 4.0, S.wakeup_cost(cheaper, QUIET_WINDOW, 6.0))['value'] == 1.0
    # the history batched more than the window (throttled since it started): the window is nearer once per event
    batched = dict(QUIET_HISTORY, wakeups=10000)                                       # 10 per wake-up
    out = S.unbatched_factor(720.0, 100.0, 4.0, S.wakeup_cost(batched, QUIET_WINDOW, 6.0))
    assert out['inputs']['unbatched_from'] == 'window' and abs(out['value'] - 2.5 / (1 + 6 / 7.2)) < 1e-9
    # the history's records counted by their text (the window's writes lag): not trusted for a cost per record
    lagging = dict(QUIET_WINDOW, write_chars=7200, log_chars_per_record=200.0)
    cost = S.wakeup_cost(QUIET_HISTORY, lagging, 6.0)
    assert 'history_cpu_seconds_per_record' not in cost['inputs']
    assert S.unbatched_factor(720.0, 100.0, 4.0, cost)['inputs']['unbatched_from'] == 'window'
    # too short a history (its start-up would decide): the window and the threshold
    short = {'cpu_seconds': 0.005, 'wakeups': 250, 'write_chars': 200000}
    assert S.unbatched_factor(720.0, 100.0, 4.0, S.wakeup_cost(short, QUIET_WINDOW, 6.0))['inputs'][
        'unbatched_from'] == 'window'
    # k measured: the line through both stretches, the window's arithmetic (the history's gives the same)
    out = S.unbatched_factor(LAB_WINDOW['records'], LAB_WINDOW['wakeups'], 4.0, S.wakeup_cost(LAB_HISTORY, LAB_WINDOW))
    assert out['inputs']['unbatched_from'] == 'window'
    inputs = out['inputs']
    via_history = (inputs['history_cpu_seconds_per_record'] * (1 + out['inputs']['wakeup_cost_records'] / 4.0)
                   / (1 + inputs['wakeup_cost_records'] / inputs['history_records_per_wakeup'])
                   / inputs['window_cpu_seconds_per_record'])
    assert abs(via_history - out['value']) < 1e-3


def test_cpu_limit_with_the_unbatched_cost():
    unbatched = S.unbatched_factor(40.0, 2.0, 4.0, 6.0)      # 20 per wake-up, 4 per event: 1.923
    out = S.cpu_limit(0.004, 40.0, 3000.0, 1.5, 0.004, fallback=0.5, unbatched=unbatched)
    # 0.0001 s/record x 1.923 x 3000 x 1.5 = 0.8654 -> 0.866
    assert out['measured'] and out['value'] == 0.866
    assert out['inputs']['cpu_seconds_per_record'] == 0.0001
    assert out['inputs']['cpu_seconds_per_record_unbatched'] == 0.000192308
    assert out['inputs']['records_per_wakeup'] == 20.0 and out['inputs']['unbatched_factor'] == 1.9231
    assert out['formula'] == (
        '0.0001 CPU s/record (0.004 cores / 40 records/s) x 1.923 unbatched = 0.0001923 CPU s/record unthrottled'
        ' x 3000 records/s offered x 1.5 headroom = 0.8654 -> 0.866 cores; unbatched = (1 + 6 / 4 records per event)'
        ' / (1 + 6 / 20 records per wake-up throttled) = 1.923')
    # the floor, then the unbatched arithmetic
    out = S.cpu_limit(0.004, 40.0, 3000.0, 1.5, 0.004, fallback=0.5, floor=1.0, unbatched=unbatched)
    assert out['value'] == 1.0 and '-> 1 cores (the floor, consumer_min_cores); unbatched = (1 + 6' in out['formula']
    # a factor below 1 or malformed counts as 1
    assert S.cpu_limit(0.004, 40.0, 3000.0, 1.5, 0.004, 0.5, unbatched={'value': 0.2})['value'] == 0.45
    assert S.cpu_limit(0.004, 40.0, 3000.0, 1.5, 0.004, 0.5, unbatched={'value': 'x'})['value'] == 0.45


def peak_record_rate(record_rates, lost_per_s=None, backlog_growth_per_s=None):
    """offered_record_rate's value when nothing slept (no hidden demand)."""
    offered = S.offered_record_rate(record_rates, lost_per_s, backlog_growth_per_s)
    return offered['value'] if offered else None


def test_peak_record_rate_takes_the_stamps_peak_or_what_was_offered():
    assert peak_record_rate(None) is None and peak_record_rate({}) is None
    assert peak_record_rate({'peak_records_per_s': 900, 'records_per_s': 500}) == 900
    # the average plus what the backlog grew by and what was lost, when that is higher
    assert peak_record_rate({'peak_records_per_s': 900, 'records_per_s': 500}, 300, 200) == 1000
    assert peak_record_rate({'records_per_s': 500}, None, -100) == 500       # a draining backlog adds nothing


def test_offered_rate_sees_through_the_sleep_in_audit_log_start():
    # 100 delivered + 20 backlog growth + 30 lost = 150 made/s; asleep 2.4 s of 3: awake a fifth, 5x
    out = S.offered_record_rate({'records_per_s': 100.0, 'peak_records_per_s': 130}, 30, 20, 2.4, 3.0, 8)
    assert out['value'] == 750.0
    assert out['inputs']['made_per_s'] == 150.0 and out['inputs']['asleep_ratio'] == 0.8
    assert out['formula'] == ('150 made/s (100 delivered + 20 backlog growth + 30 lost) / (1 - 0.8 asleep in '
                              'audit_log_start: 2.4 s slept over 3 s) = 750')
    # the rate while records were made (stamps), when higher
    out = S.offered_record_rate({'records_per_s': 100.0, 'active_records_per_s': 900.0, 'active_ms': 400}, 30, 20,
                                2.4, 3.0, 8)
    assert out['value'] == 900.0 and out['formula'] == (
        '150 made/s (100 delivered + 20 backlog growth + 30 lost); tasks slept 2.4 s in audit_log_start over 3 s: '
        'the rate while records were made, 900 records/s (over the 400 ms of clock ticks with stamps)')
    # the stamps' rate is the measure when there is one (the sleep counter counts short or long at the edges),
    # never below what was made
    assert S.offered_record_rate({'records_per_s': 100.0, 'active_records_per_s': 300.0}, 30, 20, 2.4, 3.0, 8)[
        'value'] == 300.0
    assert S.offered_record_rate({'records_per_s': 100.0, 'active_records_per_s': 50.0}, 30, 20, 2.4, 3.0, 8)[
        'value'] == 150.0
    # nothing slept: nothing hidden, whatever the stamps' active rate says
    assert S.offered_record_rate({'records_per_s': 100.0, 'active_records_per_s': 900.0}, 0, 0, 0, 3.0)['value'] == 100
    # nothing slept: what was made, or the stamps' peak when that is higher
    out = S.offered_record_rate({'records_per_s': 100.0, 'peak_records_per_s': 130}, 0, 0, 0, 3.0, 8)
    assert out['value'] == 130 and out['formula'].endswith("nothing slept; the stamps' peak 130 is higher")
    assert S.offered_record_rate(None, 1, 1, 2.0, 3.0) is None
    assert S.offered_record_rate({'records_per_s': 0.0}, 0, 0, 2.0, 3.0)['value'] == 0.0


def test_offered_rate_is_bounded_when_the_sleep_fills_the_window():
    rates = {'records_per_s': 100.0}
    # at the bound 1 - 1/8 exactly, and beyond it (sleeps that began before the window count in full
    # when they end, and several tasks asleep at once sum to more than the window): at most 8x
    assert S.offered_record_rate(rates, 0, 0, 2.625, 3.0, 8)['value'] == 800.0
    # the rate while records were made is bounded the same way (sparse records over many ticks)
    out = S.offered_record_rate(dict(rates, active_records_per_s=5000.0, active_ms=80), 0, 0, 1.0, 3.0, 8)
    assert out['value'] == 800.0 and out['formula'].endswith('with stamps), bounded at 8 x made = 800')
    for slept in (2.7, 3.0, 3.4, 1e9):
        out = S.offered_record_rate(rates, 0, 0, slept, 3.0, 8)
        assert out['value'] == 800.0 and out['inputs']['asleep_ratio'] == 0.875
        assert out['formula'].endswith('slept over 3 s, bounded at 1 - 1/8) = 800')
    assert S.offered_record_rate(rates, 0, 0, 2.9, 3.0, 1)['value'] == 100.0      # hidden_demand_max 1: no hidden demand
    assert S.offered_record_rate(rates, 0, 0, 2.9, 3.0, 0.5)['value'] == 100.0    # below 1 means 1
    # no window or no sleep measured, or a counter that went back: nothing hidden
    for slept, window in ((2.0, 0), (2.0, None), (None, 3.0), (float('nan'), 3.0), (-5.0, 3.0), ('x', 3.0)):
        assert S.offered_record_rate(rates, 0, 0, slept, window, 8)['value'] == 100.0


def test_backlog_limit_holds_the_burst_over_the_worst_drain_gap():
    out = S.backlog_limit(3000, 240, 2.0, 64, fallback=8192)
    assert (out['value'], out['measured']) == (6000, True)
    assert out['formula'] == '3000 records made within the worst drain gap of 240 ms x 2 headroom = 6000 -> 6000'
    held = S.backlog_limit(100, 50, 2.0, 8192, fallback=8192)
    assert held['value'] == 8192 and held['formula'].endswith('(the current limit already holds it)')
    assert S.backlog_limit(None, None, 2.0, 64, 8192)['value'] == 8192
    assert S.backlog_limit(2, 10, 1.5, None, 8192)['value'] == 3
    assert S.backlog_limit(10 ** 9, 10, 2.0, 64, 8192)['value'] == 1048576


def test_the_sleep_is_divided_by_the_window_up_to_the_last_wake():
    def timeline(*points):
        return [{'t_s': t, 'backlog_wait_time_actual_jiffies': j} for t, j in points]
    grew_at_2 = timeline((0.0, 100), (1.0, 350), (2.0, 600), (3.0, 600))
    # a task still asleep at the end is not in the counter yet: up to the last growth (2 s) ...
    assert S.sleep_window(grew_at_2, 3.0, 1.0) == 2.0
    # ... but at least the window minus backlog_wait_time (no sleep lasts longer)
    assert S.sleep_window(timeline((10.0, 0), (10.5, 250), (13.0, 250)), 3.0, 1.0) == 2.0
    assert S.sleep_window(timeline((10.0, 0), (10.5, 250), (13.0, 250)), 3.0, None) == 0.5
    assert S.sleep_window(timeline((0.0, 5), (3.0, 9)), 3.0, 1.0) == 3.0            # grew in the last sample
    # nothing grew, no timeline, no window: the window as it is
    assert S.sleep_window(timeline((0.0, 5), (3.0, 5)), 3.0, 1.0) == 3.0
    assert S.sleep_window(None, 3.0, 1.0) == 3.0 and S.sleep_window([], 3.0) == 3.0
    assert S.sleep_window(grew_at_2, None, 1.0) is None and S.sleep_window(grew_at_2, 0, 1.0) == 0
    # malformed points are skipped
    assert S.sleep_window([None, {'t_s': 'x'}] + grew_at_2 + [{'t_s': 4.0}], 3.0, 1.0) == 2.0
    out = S.offered_record_rate({'records_per_s': 100.0}, 0, 0, 1.5, 2.0, 8, sample_s=3.0)
    assert out['value'] == 400.0
    assert '1.5 s slept over 2 s (to the last wake of the 3 s window)' in out['formula']


def throttled_facts(records_per_s=40.0, peak=3000.0, usage=0.004, limit=0.004, slept_ms=0.0, wakeups_per_s=2.0):
    return {
        'audit_status': {'supported': True, 'status': {'enabled': 1, 'pid': 900, 'backlog_limit': 64, 'lost': 5,
                                                       'backlog': 64},
                         'rules': [], 'consumer': {'pid': 900, 'comm': 'auditd'},
                         'consumer_activity': {'pid': 900, 'found': True, 'seconds': 3.0,
                                               'wakeups_per_s': wakeups_per_s},
                         'sample': {'seconds': 3.0, 'backlog_peak': 65, 'backlog_peak_ratio': 1.0, 'lost_delta': 3,
                                    'lost_per_s': 1.0, 'backlog_wait_time_actual_delta_ms': slept_ms,
                                    'timeline': [{'t_s': 0, 'backlog': 64}, {'t_s': 3.0, 'backlog': 64}],
                                    'record_rates': {'seconds': 3.0, 'records_per_s': records_per_s,
                                                     'records_per_event': 4.0,
                                                     'peak_records_per_s': peak, 'burst_records': 700,
                                                     'drain_gap_max_ms': 245}}},
        'cgroup_throttle': {'supported': True, 'targets': [{
            'kind': 'audit_consumer', 'found': True, 'pids': [900], 'cgroup_path': '/lab', 'limited_by': '/lab',
            'limit_cores': limit, 'sample': {'throttled_ratio': 1.0, 'nr_periods_delta': 12,
                                             'cpu_usage_cores': usage, 'limit_cores': limit}}]}}


def test_throttled_consumer_gets_the_measured_limit_and_the_arithmetic():
    findings, chain = F.evaluate(throttled_facts(), 'h')
    throttled = [f for f in findings if f['id'] == 'audit_consumer_throttled'][0]
    sizing = throttled['evidence']['sizing']
    # 0.0001 s/record x (1 + 6/4) / (1 + 6/20) unbatched x max(3000, 40 + 0 + 1) records/s x 1.5 = 0.8654
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 0.866 and sizing['measured']
    assert sizing['inputs']['peak_records_per_s'] == 3000.0 and sizing['inputs']['wakeups_per_s'] == 2.0
    assert 'limit sized: 0.0001 CPU s/record' in throttled['summary']
    assert 'agent_cpu_limit_cores=0.866' in chain
    # consumer_wakeup_cost_records 0: the sizing of before (the CPU per record measured throttled)
    before = [f for f in F.evaluate(throttled_facts(), 'h', dict(NO_FLOOR, consumer_wakeup_cost_records=0))[0]
              if f['id'] == 'audit_consumer_throttled'][0]
    assert before['remediation']['vars']['agent_cpu_limit_cores'] == 0.45       # 0.0001 x 3000 x 1.5


def test_throttled_consumer_without_record_rates_keeps_the_old_rule():
    facts = throttled_facts()
    del facts['audit_status']['sample']['record_rates']
    throttled = [f for f in findings.auditgap_findings(facts, 'h') if f['id'] == 'audit_consumer_throttled'][0]
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 0.5      # consumer_unmeasured_cores
    assert throttled['evidence']['sizing']['measured'] is False


def test_backlog_fix_sized_from_the_burst_when_the_consumer_is_not_the_cause():
    facts = throttled_facts()
    del facts['cgroup_throttle']
    saturated = [f for f in findings.auditgap_findings(facts, 'h') if f['id'] == 'audit_backlog_saturated'][0]
    # 700 x 2 = 1400, under the floor backlog_limit_suggested (8192)
    assert saturated['remediation'] == {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 8192}}
    assert saturated['evidence']['sizing']['inputs']['drain_gap_ms'] == 245
    assert ('backlog_limit sized: 700 records made within the worst drain gap of 245 ms x 2 headroom = 1400 -> 8192 '
            '(the floor, backlog_limit_suggested)') in saturated['summary']
    saturated = [f for f in findings.auditgap_findings(facts, 'h', {'backlog_limit_suggested': 0})
                 if f['id'] == 'audit_backlog_saturated'][0]
    assert saturated['remediation']['vars']['audit_backlog_limit'] == 1400


def test_the_cpu_floor_applies_to_the_measured_limit():
    # 0.0001 s/record x 1.923 x 3000 x 1.5 = 0.8654, under a floor of 2 cores
    throttled = [f for f in findings.auditgap_findings(throttled_facts(), 'h', {'consumer_min_cores': 2})
                 if f['id'] == 'audit_consumer_throttled'][0]
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 2.0
    assert '-> 2 cores (the floor, consumer_min_cores); unbatched = ' in throttled['evidence']['sizing']['formula']
    assert S.backlog_limit(100, 50, 2.0, 64, 8192, floor=8192)['value'] == 8192


def test_a_stalled_window_is_sized_from_the_demand_it_hid():
    # the incident lab at 1000 connections/s (4000 records/s offered): 509 records/s delivered for 0.0028 cores,
    # the server asleep in audit_log_start; while it made records it made them at 3516/s (their stamps);
    # auditd read them in batches of 18.18 records per wake-up (28 wake-ups/s), 4 records per event
    facts = stalled_lab_facts()
    throttled = [f for f in findings.auditgap_findings(facts, 'h', NO_FLOOR) if f['id'] == 'audit_consumer_throttled'][0]
    sizing = throttled['evidence']['sizing']
    # 5.501e-06 s/record x (1 + 6/4) / (1 + 6/18.18) = 1.88 x 3516 records/s x 1.5 = 0.05453 -> 0.055
    assert sizing['measured'] and throttled['remediation']['vars']['agent_cpu_limit_cores'] == 0.055
    assert sizing['inputs']['offered_records_per_s'] == 3516.0 and sizing['inputs']['asleep_ratio'] == 0.754
    assert sizing['inputs']['slept_s'] == 2.262 and sizing['inputs']['window_s'] == 3.0
    assert sizing['inputs']['floor_cores'] == 0.01 and sizing['inputs']['records_per_wakeup'] == 18.179
    assert sizing['formula'] == (
        '5.501e-06 CPU s/record (0.0028 cores / 509 records/s) x 1.88 unbatched = 1.034e-05 CPU s/record '
        'unthrottled x 3516 records/s offered x 1.5 headroom = 0.05453 -> 0.055 cores; unbatched = (1 + 6 / 4 '
        'records per event) / (1 + 6 / 18.18 records per wake-up throttled) = 1.88; k = 6 '
        '(consumer_wakeup_cost_records: the bytes the consumer wrote were not read); offered = 509 made/s (509 '
        'delivered + 0 backlog growth + 0 lost); tasks slept 2.262 s in audit_log_start over 3 s: the rate while '
        'records were made, 3516 records/s (over the 436 ms of clock ticks with stamps)')
    # without the stamps' active rate: made / (1 - asleep)
    del facts['audit_status']['sample']['record_rates']['active_records_per_s']
    throttled = [f for f in findings.auditgap_findings(facts, 'h', NO_FLOOR) if f['id'] == 'audit_consumer_throttled'][0]
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 0.033   # 5.501e-06 x 1.88 x 2069 x 1.5 = 0.0321
    # consumer_hidden_demand_max 1: the window's own rates, the stamps' peak
    bare = [f for f in findings.auditgap_findings(stalled_lab_facts(), 'h', dict(NO_FLOOR, consumer_hidden_demand_max=1))
            if f['id'] == 'audit_consumer_throttled'][0]
    assert bare['remediation']['vars']['agent_cpu_limit_cores'] == 0.01        # 5.501e-06 x 1.88 x 640 x 1.5 = 0.00993: the floor


# the sizing alone, under the default floor (consumer_min_cores 0.5)
NO_FLOOR = {'consumer_min_cores': 0.01}


def stalled_lab_facts():
    facts = throttled_facts(records_per_s=509.0, peak=640.0, usage=0.0028, slept_ms=2262.0, wakeups_per_s=28.0)
    facts['audit_status']['sample']['lost_per_s'] = 0.0
    facts['audit_status']['sample']['record_rates'].update(active_records_per_s=3516.0, active_ms=436)
    return facts


def test_the_remediation_plan_carries_the_sizing_of_the_finding_that_set_its_vars():
    facts = stalled_lab_facts()
    found = findings.auditgap_findings(facts, 'h')
    throttled = [f for f in found if f['id'] == 'audit_consumer_throttled'][0]
    plan = rem.auditgap_remediation_plan(found, 'h')
    entry = plan['agent_cpu']
    assert entry['vars']['agent_cpu_limit_cores'] == throttled['remediation']['vars']['agent_cpu_limit_cores']
    assert entry['sizing'] == {'formula': throttled['evidence']['sizing']['formula'], 'measured': True,
                               'inputs': throttled['evidence']['sizing']['inputs']}
    assert entry['sizing']['inputs']['offered_records_per_s'] > entry['sizing']['inputs']['made_per_s']
    # the backlog fix's own sizing (when the consumer is not throttled, audit_backlog is planned)
    del facts['cgroup_throttle']
    backlog = rem.auditgap_remediation_plan(findings.auditgap_findings(facts, 'h'), 'h')['audit_backlog']
    assert backlog['sizing']['formula'].startswith('700 records made within the worst drain gap of 245 ms')
    # a finding without sizing (written by hand, or by an older auditgap): no sizing key, nothing made up
    plain = {'id': 'audit_consumer_throttled', 'severity': 'critical', 'host': 'h', 'summary': 's', 'evidence': {},
             'remediation': {'role': 'agent_cpu', 'vars': {'agent_cpu_limit_cores': 1.0}}}
    assert 'sizing' not in rem.auditgap_remediation_plan([plain], 'h')['agent_cpu']
    # remediation.json's remediations carry it as planned (null when none)
    record = rem.auditgap_remediation_host(found, plan, {}, None, 'h')
    assert [r['sizing'] for r in record['remediations'] if r['role'] == 'agent_cpu'] == [entry['sizing']]
    record = rem.auditgap_remediation_host([plain], rem.auditgap_remediation_plan([plain], 'h'), {}, None, 'h')
    assert record['remediations'][0]['sizing'] is None


def test_the_diagnosis_sizes_with_the_wakeup_cost_measured_and_says_so():
    facts = throttled_facts(records_per_s=1768 / 3.0, usage=0.009438 / 3.0, wakeups_per_s=98 / 3.0)
    facts['audit_status']['consumer_activity'].update({'cpu_seconds': 0.009438, 'wchar_per_s': 334018 / 3.0,
                                                       'history': LAB_HISTORY})
    throttled = [f for f in F.evaluate(facts, 'h')[0] if f['id'] == 'audit_consumer_throttled'][0]
    inputs = throttled['evidence']['sizing']['inputs']
    assert inputs['wakeup_cost_source'] == 'measured' and 5.5 < inputs['wakeup_cost_records'] < 6.0
    assert inputs['history_wakeups'] == 11960 and inputs['write_chars_per_record'] == 188.924
    assert '; k = w / a = ' in throttled['evidence']['sizing']['formula']
    # without its history: the threshold, and the formula says which
    del facts['audit_status']['consumer_activity']['history']
    throttled = [f for f in F.evaluate(facts, 'h', {'consumer_wakeup_cost_records': 9})[0]
                 if f['id'] == 'audit_consumer_throttled'][0]
    assert throttled['evidence']['sizing']['inputs']['wakeup_cost_source'] == 'consumer_wakeup_cost_records'
    assert throttled['evidence']['sizing']['inputs']['wakeup_cost_records'] == 9
    assert 'k = 9 (consumer_wakeup_cost_records: no history before the window)' in throttled['summary']
