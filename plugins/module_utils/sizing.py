# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sizing: the fixes' sizes from measurement, with the arithmetic shown (pure, controller side).

- ``cpu_limit(...)``: the CPU limit for a throttled audit consumer = its CPU seconds per record
  over the window x how much more a record costs unthrottled x the record rate offered x headroom
  (docs/findings.md "Fixes sized from measurement");
- ``wakeup_cost(...)``: what one wake-up of the consumer costs in records' worth (k), measured from its
  history before the window against the window, else the threshold;
- ``unbatched_factor(...)``: that "how much more": throttled, the consumer reads the backlog in
  batches (many records per wake-up), unthrottled it wakes once per event;
- ``offered_record_rate(...)``: that rate seen through the stall (the demand a stall hides): the rate
  records were made at while they were being made (their stamps), or what the window made divided by
  the share of it the audited tasks were awake, bounded;
- ``backlog_limit(...)``: the backlog that holds the largest burst of records seen over the
  consumer's worst drain gap, x headroom.

Each returns ``{value, formula, inputs, measured}``: ``formula`` is the arithmetic as text (the
report and the remediation plan show it), ``measured`` false when an input was missing and the
fallback rule gave the value.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

MAX_LIMIT_CORES = 1024.0
MAX_BACKLOG_LIMIT = 1048576
# the sizing's limits are rounded up to this (a thousandth of a core: 100 us per 100 ms period; at the limits a
# throttled auditd needs, 0.015-0.05 cores, a hundredth alone added up to 1.3x)
CORES_STEP = 0.001
# the hidden demand is at most this many times what the stalled window made (consumer_hidden_demand_max)
HIDDEN_DEMAND_MAX = 10.0
# what one wake-up of the consumer costs, in records' worth of CPU (consumer_wakeup_cost_records): the
# fallback when the consumer's own history cannot measure it (wakeup_cost)
WAKEUP_COST_RECORDS = 6.0
# wakeup_cost's conditions for trusting the measure: the consumer's history before the window holds at
# least this many wake-ups, its records per wake-up differ from the window's by at least this factor (the
# two equations are far from parallel), and k comes out within [0, WAKEUP_COST_MAX]
WAKEUP_HISTORY_MIN = 1000
# ... and the consumer wrote at least this many bytes per record in the window (an audit record's shortest
# line, `type=EOE msg=audit(1764547200.123:4567): `, is about 40): fewer, its writes lag its reads (queued or
# buffered inside it) and its bytes written do not count its records
WRITE_CHARS_PER_RECORD_MIN = 40.0
WAKEUP_BATCH_CONTRAST_MIN = 2.0
# when the history's records are counted by their text (the window's writes lag its reads), they may weigh at
# most this share of the history's CPU (a x records / CPU): beyond it their count, not the wake-ups, decides k
WAKEUP_TEXT_WEIGHT_MAX = 0.5
WAKEUP_COST_MAX = 1000.0


def round_up(value, step=CORES_STEP):
    """``value`` rounded up to a multiple of ``step`` (CORES_STEP: a thousandth of a core)."""
    return round(math.ceil(value / step - 1e-6) * step, 6)


def num(value):
    """A finite float, else None (a string, NaN or infinity from a host is no measurement)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _g(value):
    """A number as the formula prints it: up to 4 significant digits."""
    number = num(value)
    if number is None:
        return '?'
    if number == int(number) and abs(number) < 1e9:
        return '%d' % number
    return '%.4g' % number


def sleep_window(timeline, seconds, wait_time_s=None):
    """The seconds the window's sleep in audit_log_start is divided by (pure).

    The kernel adds a sleep to backlog_wait_time_actual when it ends, so a task still asleep at the end
    of the window is not counted yet: the sleep is divided by the time from the window's start to the last
    sample where the counter grew (``timeline``: ``[{t_s, backlog_wait_time_actual_jiffies}]``), and at
    least by the window minus ``wait_time_s`` (backlog_wait_time: no sleep lasts longer). ``seconds``
    when the timeline shows no growth or is missing.
    """
    total = num(seconds)
    points = [(num(p.get('t_s')), num(p.get('backlog_wait_time_actual_jiffies')))
              for p in (timeline if isinstance(timeline, list) else []) if isinstance(p, dict)]
    points = [(t, j) for t, j in points if t is not None and j is not None]
    if total is None or total <= 0 or len(points) < 2:
        return total
    last = None
    for (t0, j0), (t1, j1) in zip(points, points[1:]):
        if j1 > j0:
            last = t1
    if last is None:
        return total
    until = last - points[0][0]
    wait = num(wait_time_s)
    if wait is not None and wait > 0:
        until = max(until, total - wait)
    return min(max(until, 0.0), total) or total


def offered_record_rate(record_rates, lost_per_s=None, backlog_growth_per_s=None, slept_s=None, window_s=None,
                        hidden_max=HIDDEN_DEMAND_MAX, sample_s=None):
    """The rate records will be offered at once the stall ends, seen through the stall: ``{value,
    formula, inputs}``, None when no record rates were read.

    made/s = delivered/s + backlog growth/s + lost/s: the records the audited tasks made in the window.
    A stall hides demand: tasks asleep in audit_log_start make no records. When they slept (``slept_s``,
    backlog_wait_time_actual accrued over the window, > 0), the rate offered is the rate records were made
    at while they were being made (``record_rates.active_records_per_s``: the records over the clock ticks
    that have stamps); without it, made/s / (1 - f), f = ``slept_s`` / ``window_s`` (``sleep_window``: the
    window up to the last wake; ``sample_s`` the whole window, shown when they differ): a task asleep a
    share f of the window made records in the rest of it only. Either is at least made/s and at most
    ``hidden_max`` x made/s (f at most 1 - 1/``hidden_max``: sparse records spread over many ticks, and
    several tasks asleep at once sum to more than the window). value = max(the stamps' peak, that rate).
    """
    rates = record_rates if isinstance(record_rates, dict) else {}
    peak = num(rates.get('peak_records_per_s'))
    delivered = num(rates.get('records_per_s'))
    if peak is None and delivered is None:
        return None
    growth = max(0.0, num(backlog_growth_per_s) or 0.0)
    lost = max(0.0, num(lost_per_s) or 0.0)
    made = (delivered or 0.0) + growth + lost
    slept, window, sample = num(slept_s), num(window_s), num(sample_s)
    active, active_ms = num(rates.get('active_records_per_s')), num(rates.get('active_ms'))
    hidden_max = max(1.0, num(hidden_max) or 1.0)
    bound = 1.0 - 1.0 / hidden_max
    slept = slept if slept is not None and slept > 0 else 0.0
    ratio = slept / window if (window and window > 0) else 0.0
    asleep = min(ratio, bound)
    made_text = ('%s made/s (%s delivered + %s backlog growth + %s lost)'
                 % (_g(made), _g(delivered), _g(growth), _g(lost)))
    if slept and (asleep > 0 or active):
        through_sleep = made / (1.0 - asleep)
        offered = min(max(active or through_sleep, made), made * hidden_max)
        until = ' (to the last wake of the %s s window)' % _g(sample) if sample and _g(sample) != _g(window) else ''
        if active:
            formula = ('%s; tasks slept %s s in audit_log_start over %s s%s: the rate while records were made, '
                       '%s records/s (over the %s ms of clock ticks with stamps)'
                       % (made_text, _g(slept), _g(window), until, _g(active), _g(active_ms)))
            if active > made * hidden_max:
                formula += ', bounded at %s x made = %s' % (_g(hidden_max), _g(offered))
        else:
            formula = ('%s / (1 - %s asleep in audit_log_start: %s s slept over %s s%s%s) = %s'
                       % (made_text, _g(asleep), _g(slept), _g(window), until,
                          ', bounded at 1 - 1/%s' % _g(hidden_max) if ratio > bound else '', _g(through_sleep)))
    else:
        offered = made
        formula = '%s, nothing slept' % made_text
    value = round(max(peak or 0.0, offered), 3)
    if peak is not None and peak > offered:
        formula += '; the stamps\' peak %s is higher' % _g(peak)
    inputs = {'peak_records_per_s': peak, 'delivered_per_s': delivered, 'backlog_growth_per_s': growth,
              'lost_per_s': lost, 'made_per_s': round(made, 3), 'slept_s': slept, 'window_s': window,
              'sample_s': sample, 'asleep_ratio': round(asleep, 4), 'active_records_per_s': active,
              'active_ms': active_ms, 'hidden_demand_max': hidden_max, 'offered_per_s': round(offered, 3)}
    return {'value': value, 'formula': formula, 'inputs': inputs}


def wakeup_cost(history, window, fallback=WAKEUP_COST_RECORDS):
    """What one wake-up of the consumer costs, in records' worth (k), measured where it can be (pure):
    ``{value, measured, formula, inputs}``; ``fallback`` (consumer_wakeup_cost_records) when not.

    The consumer's CPU = a x records + w x wake-ups holds over any stretch of its life, throttled or not.
    Two stretches give two equations: the sample window (``window``: ``cpu_seconds``, ``wakeups``,
    ``records``, ``write_chars``: per second or in total, the same scale for each; ``log_chars_per_record``:
    a record's length as auditd logs it, from the multicast records' text) and its history before the window
    (``history``: ``cpu_seconds``, ``wakeups``, ``write_chars`` since it started, read from /proc at the
    window's start: schedstat run time and voluntary switches of its tasks, /proc/PID/io wchar).
    The history's records are not counted anywhere; the consumer writes every record it reads (its log,
    its plugins), so they are its bytes written over the bytes it wrote per record in the window. When the
    window's writes lag its reads (fewer than WRITE_CHARS_PER_RECORD_MIN bytes per record: a throttled
    consumer queues what it read), over the records' own length (``log_chars_per_record``): at least what a
    consumer logging each record writes for it, so the history's records are at most that count and k at
    least; trusted only while those records weigh at most WAKEUP_TEXT_WEIGHT_MAX of the history's CPU (a
    history that woke once per event: its wake-ups decide k, the count of its records barely moves it).
    k = w / a. Measured when: both stretches have CPU and the history bytes written, the history wake-ups
    (the window may have none: it never emptied its socket); the history holds at least WAKEUP_HISTORY_MIN
    wake-ups (its start-up counts as wake-ups: fewer, the start-up decides k); the records per wake-up of
    the two differ by at least WAKEUP_BATCH_CONTRAST_MIN x (a throttled window reads in batches, a history
    that kept up woke once per event: without that difference the two equations say the same); a > 0 and
    0 <= k <= WAKEUP_COST_MAX. The history includes the consumer's start-up, which counts as wake-ups: k
    reads high, never low, for a consumer that started recently.
    """
    history = history if isinstance(history, dict) else {}
    window = window if isinstance(window, dict) else {}
    fallback = max(0.0, num(fallback) or 0.0)
    cpu_h, wake_h, chars_h = (num(history.get(n)) for n in ('cpu_seconds', 'wakeups', 'write_chars'))
    cpu_w, wake_w, rec_w, chars_w, log_chars = (num(window.get(n)) for n in (
        'cpu_seconds', 'wakeups', 'records', 'write_chars', 'log_chars_per_record'))
    inputs = {'history_cpu_seconds': cpu_h, 'history_wakeups': wake_h, 'history_write_chars': chars_h,
              'write_chars_per_record': None, 'log_chars_per_record': log_chars, 'history_records': None,
              'history_records_counted_by': None, 'history_records_per_wakeup': None,
              'wakeup_cost_source': 'consumer_wakeup_cost_records'}

    def fell_back(why):
        return {'value': fallback, 'measured': False, 'inputs': inputs,
                'formula': 'k = %s (consumer_wakeup_cost_records: %s)' % (_g(fallback), why)}
    if chars_w is None:
        return fell_back('the bytes the consumer wrote were not read')
    if not (cpu_w and rec_w) or min(cpu_w, rec_w) <= 0 or wake_w is None or wake_w < 0:
        return fell_back('the window has no records, wake-ups or CPU')
    lagging = chars_w < 0 or chars_w / rec_w < WRITE_CHARS_PER_RECORD_MIN
    if lagging and not (log_chars and log_chars >= WRITE_CHARS_PER_RECORD_MIN):
        if chars_w <= 0:
            return fell_back('the window has no bytes written')
        return fell_back('%s bytes written per record in the window, fewer than a record\'s %d: its writes lag '
                         'its reads' % (_g(chars_w / rec_w), WRITE_CHARS_PER_RECORD_MIN))
    if not (cpu_h and wake_h and chars_h) or min(cpu_h, wake_h, chars_h) <= 0:
        return fell_back('no history before the window')
    written = max(chars_w, 0.0) / rec_w
    per_record = log_chars if lagging else written
    rec_h = chars_h / per_record
    # a window without a wake-up (it never emptied its socket) is an endless batch: a alone
    batch_h, batch_w = rec_h / wake_h, (rec_w / wake_w if wake_w else float('inf'))
    inputs.update({'write_chars_per_record': round(written, 3), 'history_records': round(rec_h, 1),
                   'history_records_counted_by': 'log_chars_per_record' if lagging else 'write_chars_per_record',
                   'history_records_per_wakeup': round(batch_h, 3)})
    counted = ('%s bytes written / %s per record' % (_g(chars_h), _g(per_record)) if not lagging else
               '%s bytes written / %s per record logged (the records\' text; the window\'s writes lag its reads: '
               '%s bytes written per record)' % (_g(chars_h), _g(per_record), _g(written)))
    if wake_h < WAKEUP_HISTORY_MIN:
        return fell_back('%s wake-ups before the window, fewer than %d: its start-up would decide k'
                         % (_g(wake_h), WAKEUP_HISTORY_MIN))
    if not lagging:
        # each stretch's own CPU per record: unbatched_factor extrapolates from the one nearer once per event
        inputs.update({'history_cpu_seconds_per_record': round(cpu_h / rec_h, 12),
                       'window_cpu_seconds_per_record': round(cpu_w / rec_w, 12)})
    contrast = max(batch_h, batch_w) / min(batch_h, batch_w)
    if contrast < WAKEUP_BATCH_CONTRAST_MIN:
        return fell_back('%s records per wake-up before the window and %s in it, less than %s x apart'
                         % (_g(batch_h), _g(batch_w), _g(WAKEUP_BATCH_CONTRAST_MIN)))
    det = rec_h * wake_w - rec_w * wake_h
    a = (cpu_h * wake_w - cpu_w * wake_h) / det
    w = (rec_h * cpu_w - rec_w * cpu_h) / det
    k = w / a if a > 0 else None
    if k is None or not 0 <= k <= WAKEUP_COST_MAX:
        return fell_back('the two stretches give a = %s, w = %s' % (_g(a), _g(w)))
    weight = a * rec_h / cpu_h
    if lagging and weight > WAKEUP_TEXT_WEIGHT_MAX:
        why = ('the history\'s %s records, counted by their text (%s), would be %s of its CPU, more than %s: their '
               'count would decide k' % (_g(rec_h), counted, _g(round(weight, 3)), _g(WAKEUP_TEXT_WEIGHT_MAX)))
        return fell_back(why)
    inputs.update({'wakeup_cost_source': 'measured', 'cpu_seconds_per_record_alone': round(a, 12),
                   'cpu_seconds_per_wakeup': round(w, 12), 'history_records_cpu_ratio': round(weight, 4)})
    formula = ('k = w / a = %s s / %s s = %s measured: CPU = a x records + w x wake-ups over the history '
               '(%s CPU s, %s records: %s, %s wake-ups) and the window (per second: '
               '%s CPU s, %s records, %s wake-ups)'
               % (_g(w), _g(a), _g(k), _g(cpu_h), _g(rec_h), counted, _g(wake_h),
                  _g(cpu_w), _g(rec_w), _g(wake_w)))
    return {'value': k, 'measured': True, 'inputs': inputs, 'formula': formula}


def unbatched_factor(records_per_s, wakeups_per_s, records_per_event, wakeup_cost=WAKEUP_COST_RECORDS):
    """How much more CPU per record the consumer needs once unthrottled than it used throttled (pure):
    ``{value, formula, inputs}``.

    The consumer's CPU = a x records + k x a x wake-ups (a: one record's work; k = ``wakeup_cost``: one
    wake-up, sleeping and being woken, in records' worth). Throttled it reads the backlog in batches of
    b = ``records_per_s`` / ``wakeups_per_s`` records per wake-up (voluntary context switches of its tasks),
    so the CPU per record measured is a x (1 + k / b); unthrottled it keeps up and wakes once per event
    (kauditd hands it an event's records together): b = ``records_per_event`` (at least 1, at most the
    throttled batch). value = (1 + k / records_per_event) / (1 + k / b), at least 1. Without the wake-ups
    measured the throttled batch counts as endless (1 + k / records_per_event: the most it can be); without
    records per event, one record per wake-up. ``wakeup_cost``: k, a number or ``wakeup_cost``'s result
    (its inputs and formula are added).

    When k was not measured but ``wakeup_cost`` counted the history's records by the window's own bytes per
    record, and the history woke nearer once per event than the window (a consumer that kept up before the
    stall), the unthrottled cost is extrapolated from the history instead: value = its CPU per record x
    (1 + k / records_per_event) / (1 + k / its records per wake-up) / the window's CPU per record, at least 1.
    The threshold k then only bridges the history's batches to one event's (about 1x): a wrong k barely moves
    it. With k measured the two ways give the same (k fits both stretches).
    """
    rate, wakeups, per_event = num(records_per_s), num(wakeups_per_s), num(records_per_event)
    measure = wakeup_cost if isinstance(wakeup_cost, dict) else None
    cost = max(0.0, num(measure.get('value') if measure else wakeup_cost) or 0.0)
    batch = rate / wakeups if (rate and wakeups is not None and wakeups > 0) else None
    unbatched = max(1.0, per_event or 1.0)
    if batch is not None:
        unbatched = min(unbatched, max(batch, 1.0))
    throttled_part = 1.0 + cost / batch if batch else 1.0
    value = max(1.0, (1.0 + cost / unbatched) / throttled_part)
    if batch:
        formula = ('(1 + %s / %s records per event) / (1 + %s / %s records per wake-up throttled) = %s'
                   % (_g(cost), _g(unbatched), _g(cost), _g(batch), _g(value)))
    else:
        formula = ('1 + %s / %s records per event = %s (%s)'
                   % (_g(cost), _g(unbatched), _g(value),
                      'it never slept throttled' if wakeups == 0 else 'wake-ups not measured'))
    source = 'window'
    seen = (measure.get('inputs') or {}) if measure else {}
    per_h, per_w, batch_h = (num(seen.get(n)) for n in (
        'history_cpu_seconds_per_record', 'window_cpu_seconds_per_record', 'history_records_per_wakeup'))
    if (measure and not measure.get('measured') and per_h and per_w and batch_h and min(per_h, per_w, batch_h) > 0
            and wakeups is not None
            and abs(1.0 / batch_h - 1.0 / unbatched) < abs((1.0 / batch if batch else 0.0) - 1.0 / unbatched)):
        source = 'history'
        bridge = (1.0 + cost / unbatched) / (1.0 + cost / batch_h)
        value = max(1.0, per_h * bridge / per_w)
        formula = ('%s CPU s/record before the window x (1 + %s / %s records per event) / (1 + %s / %s records per '
                   'wake-up before it) / %s CPU s/record in it = %s (from the history: it woke nearer once per event '
                   'than the window%s)' % (_g(per_h), _g(cost), _g(unbatched), _g(cost), _g(batch_h), _g(per_w),
                                           _g(value), ', %s records per wake-up' % _g(batch) if batch else ''))
    inputs = {'wakeups_per_s': wakeups, 'records_per_wakeup': round(batch, 3) if batch else None,
              'records_per_event': per_event, 'wakeup_cost_records': round(cost, 4),
              'unbatched_factor': round(value, 4), 'unbatched_from': source}
    if measure:
        inputs.update(seen)
        if measure.get('formula'):
            formula += '; %s' % measure['formula']
    return {'value': value, 'formula': formula, 'inputs': inputs}


def cpu_limit(cpu_cores_used, records_per_s, peak_records_per_s, headroom, limit_cores, fallback, floor=0.01,
              offered=None, unbatched=None):
    """The CPU limit to suggest for a throttled consumer.

    ``cpu_cores_used``: the consumer's CPU over the window (cores, from its cgroup's usage);
    ``records_per_s``: records delivered to it over the same window; ``peak_records_per_s``:
    the rate records will be offered at (``offered_record_rate``'s value; ``offered``: that whole
    result, whose arithmetic and inputs are added); ``headroom``: factor (>= 1 keeps room);
    ``limit_cores``: its current limit; ``fallback``: the value when something is unmeasured;
    ``floor``: the smallest value suggested; ``unbatched``: ``unbatched_factor``'s result (the CPU per
    record once unthrottled over the CPU per record measured throttled; 1 without it).

    cores = max(cpu_cores_used / records_per_s x unbatched x peak_records_per_s x headroom, floor),
    rounded up to CORES_STEP (a thousandth of a core).
    A throttled consumer needs more than it has: a need (before rounding) at or below the current limit means the
    throttle capped the rate it saw (the demand was hidden), so the fallback is used instead.
    """
    used, rate, peak = num(cpu_cores_used), num(records_per_s), num(peak_records_per_s)
    headroom = num(headroom) or 1.0
    limit = num(limit_cores)
    inputs = {'cpu_cores_used': used, 'records_per_s': rate, 'offered_records_per_s': peak,
              'headroom': headroom, 'limit_cores': limit}
    shown = ''
    if isinstance(offered, dict):
        inputs.update(offered.get('inputs') or {})
        shown = '; offered = %s' % offered.get('formula') if offered.get('formula') else ''
    if not used or not rate or not peak:
        return {'value': min(fallback, MAX_LIMIT_CORES), 'measured': False, 'inputs': inputs,
                'formula': 'not measured (consumer CPU %s, records/s %s, offered %s): fallback %s cores'
                           % (_g(used), _g(rate), _g(peak), _g(fallback))}
    per_record = used / rate
    unbatched = unbatched if isinstance(unbatched, dict) else {}
    factor = num(unbatched.get('value'))
    factor = factor if factor is not None and factor >= 1.0 else 1.0
    raw = per_record * factor * peak * headroom
    floor = num(floor) or 0.0
    value = round_up(min(max(raw, floor), MAX_LIMIT_CORES))
    inputs['cpu_seconds_per_record'] = round(per_record, 9)
    inputs['floor_cores'] = floor
    formula = '%s CPU s/record (%s cores / %s records/s)' % (_g(per_record), _g(used), _g(rate))
    if unbatched:
        inputs.update(unbatched.get('inputs') or {})
        inputs['cpu_seconds_per_record_unbatched'] = round(per_record * factor, 9)
        formula += ' x %s unbatched = %s CPU s/record unthrottled' % (_g(factor), _g(per_record * factor))
    formula += (' x %s records/s offered x %s headroom = %s -> %s cores'
                % (_g(peak), _g(headroom), _g(raw), _g(value)))
    if raw < floor:
        formula += ' (the floor, consumer_min_cores)'
    if unbatched.get('formula'):
        formula += '; unbatched = %s' % unbatched['formula']
    formula += shown
    if limit is not None and raw <= limit:
        return {'value': min(fallback, MAX_LIMIT_CORES), 'measured': False, 'inputs': inputs,
                'formula': '%s: not above the current limit %s (the throttle capped the rate seen): '
                           'fallback %s cores' % (formula, _g(limit), _g(fallback))}
    return {'value': value, 'measured': True, 'inputs': inputs, 'formula': formula}


def backlog_limit(burst_records, drain_gap_ms, headroom, current_limit, fallback, floor=0):
    """The backlog_limit that holds the largest burst over the consumer's worst drain gap.

    limit = burst_records x headroom, rounded up, never below the current limit (a backlog that
    already holds the burst is not the fix: the consumer is) nor ``floor``; ``fallback`` when no
    gap or burst was measured.
    """
    burst, gap = num(burst_records), num(drain_gap_ms)
    headroom = num(headroom) or 1.0
    current = num(current_limit)
    inputs = {'burst_records': burst, 'drain_gap_ms': gap, 'headroom': headroom, 'backlog_limit': current}
    if not burst or not gap:
        return {'value': int(min(fallback, MAX_BACKLOG_LIMIT)), 'measured': False, 'inputs': inputs,
                'formula': 'no drain gap measured: fallback %s' % _g(fallback)}
    raw = burst * headroom
    floor = num(floor) or 0
    value = int(min(max(math.ceil(raw - 1e-9), current or 0, floor), MAX_BACKLOG_LIMIT))
    inputs['floor'] = floor
    formula = ('%s records made within the worst drain gap of %s ms x %s headroom = %s -> %d'
               % (_g(burst), _g(gap), _g(headroom), _g(raw), value))
    if current is not None and value == current and raw <= current:
        formula += ' (the current limit already holds it)'
    elif floor and value == floor and raw < floor:
        formula += ' (the floor, backlog_limit_suggested)'
    return {'value': value, 'measured': True, 'inputs': inputs, 'formula': formula}
