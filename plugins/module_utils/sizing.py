# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sizing: the fixes' sizes from measurement, with the arithmetic shown (pure, controller side).

- ``cpu_limit(...)``: the CPU limit for a throttled audit consumer = its CPU seconds per record
  over the window x the peak record rate x headroom (docs/findings.md "Fixes sized from
  measurement");
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
CORES_STEP = 0.01


def round_up(value, step=CORES_STEP):
    """``value`` rounded up to a multiple of ``step`` (0.01 cores, the smallest limit agent_cpu takes)."""
    return round(math.ceil(value / step - 1e-9) * step, 2)


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


def peak_record_rate(record_rates, lost_per_s=None, backlog_growth_per_s=None):
    """The peak rate records were offered at: the most made within one second (their stamps) or
    the window's average plus what the backlog grew by and what was lost, whichever is higher.
    None when no record rates were read."""
    rates = record_rates if isinstance(record_rates, dict) else {}
    peak = num(rates.get('peak_records_per_s'))
    average = num(rates.get('records_per_s'))
    if peak is None and average is None:
        return None
    offered = (average or 0.0) + max(0.0, num(backlog_growth_per_s) or 0.0) + max(0.0, num(lost_per_s) or 0.0)
    return max(peak or 0.0, offered)


def cpu_limit(cpu_cores_used, records_per_s, peak_records_per_s, headroom, limit_cores, fallback, floor=0.01):
    """The CPU limit to suggest for a throttled consumer.

    ``cpu_cores_used``: the consumer's CPU over the window (cores, from its cgroup's usage);
    ``records_per_s``: records delivered to it over the same window; ``peak_records_per_s``:
    the peak offered rate (``peak_record_rate``); ``headroom``: factor (>= 1 keeps room);
    ``limit_cores``: its current limit; ``fallback``: the value when something is unmeasured;
    ``floor``: the smallest value suggested.

    cores = max(cpu_cores_used / records_per_s x peak_records_per_s x headroom, floor), rounded up to 0.01.
    A throttled consumer needs more than it has: a need (before rounding) at or below the current limit means the
    throttle capped the rate it saw (the demand was hidden), so the fallback is used instead.
    """
    used, rate, peak = num(cpu_cores_used), num(records_per_s), num(peak_records_per_s)
    headroom = num(headroom) or 1.0
    limit = num(limit_cores)
    inputs = {'cpu_cores_used': used, 'records_per_s': rate, 'peak_records_per_s': peak,
              'headroom': headroom, 'limit_cores': limit}
    if not used or not rate or not peak:
        return {'value': min(fallback, MAX_LIMIT_CORES), 'measured': False, 'inputs': inputs,
                'formula': 'not measured (consumer CPU %s, records/s %s, peak %s): fallback %s cores'
                           % (_g(used), _g(rate), _g(peak), _g(fallback))}
    per_record = used / rate
    raw = per_record * peak * headroom
    floor = num(floor) or 0.0
    value = round_up(min(max(raw, floor), MAX_LIMIT_CORES))
    inputs['cpu_seconds_per_record'] = round(per_record, 9)
    inputs['floor_cores'] = floor
    formula = ('%s CPU s/record (%s cores / %s records/s) x %s records/s peak x %s headroom = %s -> %s cores'
               % (_g(per_record), _g(used), _g(rate), _g(peak), _g(headroom), _g(raw), _g(value)))
    if raw < floor:
        formula += ' (the floor, consumer_min_cores)'
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
