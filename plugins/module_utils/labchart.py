# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab timeline as one SVG picture (four stacked svgchart line charts).

Input: the lab's timeline.jsonl points ``{t, p99_ms, max_ms, backlog, backlog_peak, backlog_samples,
backlog_limit, lost, backlog_wait_time_actual, throttled_ratio}`` (one per second, written by the workload) and
optional markers ``[{'t': unix_s, 'label': 'quota lifted'}]``. Output: a
self-contained ``<svg>`` string the HTML report can inline or link
(``write_timeline`` also writes it to a file, the points beside it).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.auditgap.fleet.plugins.module_utils import kernelhz, svgchart


def timeline_series(points, t0=None, hz=None):
    """Chart series from timeline points; x in seconds since ``t0`` (default: the first point).

    Returns (p99, backlog peak, throttled %, lost per s, ms waited per s, backlog_limit, t0).
    A second without a point (the workload missed it), or a point whose backlog sampler got
    no reading, is a gap (``None``), never a zero. Rates divide by the seconds between points;
    the wait (``backlog_wait_time_actual``, jiffies) is converted to ms with ``hz``
    (default: the points' ``hz``, else this kernel's).
    """
    points = sorted((p for p in points if p.get('t') is not None), key=lambda p: p['t'])
    if not points:
        return [], [], [], [], [], None, t0
    t0 = points[0]['t'] if t0 is None else t0
    hz = hz or points[0].get('hz') or kernelhz.detect_hz('/')['value']
    p99, backlog, throttled, lost, waited = [], [], [], [], []
    limit = None
    prev = None
    for p in points:
        x = p['t'] - t0
        dt = p['t'] - prev['t'] if prev is not None else None
        if dt is not None and dt > 1.5:  # seconds without a point: a gap in every series
            for series in (p99, backlog, throttled, lost, waited):
                series.append((prev['t'] - t0 + 1, None))
        p99.append((x, p.get('p99_ms')))
        if p.get('backlog_samples') == 0:
            peak = None
        else:
            peak = p.get('backlog_peak') if p.get('backlog_peak') is not None else p.get('backlog')
        backlog.append((x, peak))
        ratio = p.get('throttled_ratio')
        throttled.append((x, None if ratio is None else ratio * 100.0))
        if dt:
            lost.append((x, _rate(prev.get('lost'), p.get('lost'), dt)))
            jiffies = _rate(prev.get('backlog_wait_time_actual'), p.get('backlog_wait_time_actual'), dt)
            waited.append((x, None if jiffies is None else round(jiffies * 1000.0 / hz, 3)))
        limit = p.get('backlog_limit') or limit
        prev = p
    return p99, backlog, throttled, lost, waited, limit, t0


def _rate(before, after, seconds):
    """Growth per second of a counter between two points (None when either is unknown)."""
    if before is None or after is None:
        return None
    return max(0, after - before) / float(seconds)


def timeline_svg(points, markers=None, title='auditgap incident lab', width=760, hz=None):
    """Stacked charts: accept p99 (ms), audit backlog peak (+limit, lost/s), ms waited/s,
    consumer throttled %. Missing samples are gaps in the lines."""
    starts = [p['t'] for p in points if p.get('t') is not None] + [m['t'] for m in (markers or [])]
    p99, backlog, throttled, lost, waited, limit, t0 = timeline_series(points, min(starts) if starts else None,
                                                                       hz=hz)
    vlines = [{'x': m['t'] - (t0 or m['t']), 'label': m.get('label', '')} for m in (markers or [])]
    x_max = max([point[0] for point in p99] + [v['x'] for v in vlines] + [1])
    heights = (220, 200, 180, 180)
    charts = [
        svgchart.line_chart([{'name': 'accept p99 (ms)', 'points': p99, 'color': '#d62728'}],
                            '%s: accept latency p99 per second' % title, 'ms', width=width,
                            height=heights[0], vlines=vlines, x_min=0, x_max=x_max),
        svgchart.line_chart([{'name': 'audit backlog peak', 'points': backlog, 'color': '#1f77b4'},
                             {'name': 'records lost per s', 'points': lost, 'color': '#7f7f7f'}],
                            'audit backlog (peak of ~20 samples per second; no sample: gap) and records lost',
                            'records',
                            width=width, height=heights[1], x_min=0, x_max=x_max, vlines=vlines,
                            hlines=[{'y': limit, 'label': 'backlog_limit %d' % limit}] if limit else None),
        svgchart.line_chart([{'name': 'ms slept per second (all tasks)', 'points': waited,
                              'color': '#9467bd'}],
                            'kernel: time tasks slept in audit_log_start (backlog_wait_time_actual)',
                            'ms/s', width=width, height=heights[2], x_min=0, x_max=x_max, vlines=vlines),
        svgchart.line_chart([{'name': 'consumer throttled periods (%)', 'points': throttled,
                              'color': '#ff7f0e'}],
                            'audit consumer CFS throttling (nr_throttled / nr_periods)', '%',
                            width=width, height=heights[3], y_max=100, x_min=0, x_max=x_max, vlines=vlines),
    ]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">'
           % (width, sum(heights), width, sum(heights)),
           '<title>%s</title>' % svgchart.esc(title)]
    y = 0
    for chart, height in zip(charts, heights):
        out.append('<g transform="translate(0,%d)">%s</g>' % (y, chart))
        y += height
    out.append('</svg>')
    return '\n'.join(out)


def write_timeline(path, points, markers=None, title='auditgap incident lab', hz=None):
    """The timeline picture at ``path`` (.svg) and its points beside it (.jsonl)."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory)
    with open(path, 'w') as handle:
        handle.write(timeline_svg(points, markers, title=title, hz=hz))
    with open(os.path.splitext(path)[0] + '.jsonl', 'w') as handle:
        for point in points:
            handle.write(json.dumps(point, sort_keys=True) + '\n')
    return path
