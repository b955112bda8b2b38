# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's HZ (jiffies per second), to turn audit's jiffies into ms.

Not USER_HZ (``getconf CLK_TCK`` is always 100 to user space): the audit
``backlog_wait_time*`` values are kernel jiffies, counted at CONFIG_HZ.

``detect_hz(root='/')`` tries, in order:
  1. ``/proc/config.gz`` (CONFIG_IKCONFIG_PROC)    source "/proc/config.gz"
  2. ``/boot/config-<release>``                    source "/boot/config-<release>"
  3. measured: the jiffies counter of ``/proc/timer_list`` (root) or the
     ``timestamp`` of ``/proc/schedstat`` against CLOCK_MONOTONIC over a
     short interval, snapped to the nearest standard HZ  source "measured"
  4. 250                                           source "assumed"
and returns ``{'value': int, 'source': str}``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time
import zlib

STANDARD_HZ = (100, 250, 300, 1000)
ASSUMED_HZ = 250
_CONFIG_HZ_RE = re.compile(r'^CONFIG_HZ=(\d+)\s*$', re.M)
_TIMER_LIST_JIFFIES_RE = re.compile(r'^jiffies: (\d+)\s*$', re.M)
_SCHEDSTAT_RE = re.compile(r'^timestamp (\d+)\s*$', re.M)


def parse_config_hz(text):
    """CONFIG_HZ from kernel config text, or None."""
    match = _CONFIG_HZ_RE.search(text or '')
    if match:
        value = int(match.group(1))
        if value > 0:
            return value
    return None


def parse_jiffies(text):
    """The jiffies counter from /proc/timer_list or /proc/schedstat text, or None."""
    for regex in (_TIMER_LIST_JIFFIES_RE, _SCHEDSTAT_RE):
        match = regex.search(text or '')
        if match:
            return int(match.group(1))
    return None


def snap_hz(rate, tolerance=0.08):
    """The standard HZ nearest to a measured rate, or None when none is within tolerance."""
    if not rate or rate <= 0:
        return None
    best = min(STANDARD_HZ, key=lambda hz: abs(hz - rate))
    if abs(best - rate) <= best * tolerance:
        return best
    return None


def jiffies_to_ms(jiffies, hz):
    """Jiffies to milliseconds (float, 3 decimals); None stays None."""
    if jiffies is None or not hz:
        return None
    return round(jiffies * 1000.0 / hz, 3)


def _read_text(path):
    if path.endswith('.gz'):
        # zlib, not gzip: importing gzip costs a fan-out host more than reading the file
        # (docs/scale.md); 16 + MAX_WBITS reads the gzip header and trailer
        with open(path, 'rb') as handle:
            return zlib.decompress(handle.read(), 16 + zlib.MAX_WBITS).decode('utf-8', 'replace')
    with open(path, 'r') as handle:
        return handle.read()


def measure_hz(root='/', interval_s=0.2, sleep=time.sleep, clock=time.monotonic):
    """Count jiffies over ``interval_s`` of CLOCK_MONOTONIC; snapped HZ or None."""
    for rel in ('proc/timer_list', 'proc/schedstat'):
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        try:
            t0 = clock()
            j0 = parse_jiffies(_read_text(path))
            if j0 is None:
                continue
            sleep(interval_s)
            t1 = clock()
            j1 = parse_jiffies(_read_text(path))
        except (IOError, OSError):
            continue
        if j1 is None or t1 <= t0:
            continue
        hz = snap_hz((j1 - j0) / (t1 - t0))
        if hz:
            return hz
    return None


def detect_hz(root='/', release=None, measure=True):
    """``{'value': HZ, 'source': how it was found}`` (see the module docstring)."""
    if release is None:
        release = os.uname()[2]
    candidates = (
        ('proc/config.gz', '/proc/config.gz'),
        ('boot/config-%s' % release, '/boot/config-%s' % release),
    )
    for rel, label in candidates:
        path = os.path.join(root, rel)
        try:
            hz = parse_config_hz(_read_text(path))
        except (IOError, OSError, EOFError, ValueError, zlib.error):
            continue
        if hz:
            return {'value': hz, 'source': label}
    if measure:
        hz = measure_hz(root)
        if hz:
            return {'value': hz, 'source': 'measured'}
    return {'value': ASSUMED_HZ, 'source': 'assumed'}
