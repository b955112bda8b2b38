# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: UP001, UP009, UP010, UP031
"""The lab timeline as one SVG picture (four stacked svgchart line charts).

Input: the lab's timeline.jsonl points ``{t, p99_ms, backlog, backlog_peak,
backlog_limit, lost, backlog_wait_time_actual, throttled_ratio}`` (one per second, written by the workload) and
optional markers ``[{'t': unix_s, 'label': 'quota lifted'}]``. Output: a
self-contained ``<svg>`` string the HTML report can inline or link
(``write_timeline`` also writes it to a file, the points beside it).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.auditgap.fleet.plugins.module_utils import svgchart


def timeline_series(points, t0=None):
    """Chart series from timeline points; x in seconds since ``t0`` (default: the first point)."""
    # returns (p99, backlog peak, throttled %, lost per s, wait jiffies per s, backlog_limit, t0)
    points = sorted((p for p in points if p.get('t') is not None), key=lambda p: p['t'])
    if not points:
        return [], [], [], [], [], None, t0
    t0 = points[0]['t'] if t0 is None else t0
    p99, backlog, throttled, lost, waited = [], [], [], [], []
    limit = None
    prev_lost = None
    prev_wait = None
    for p in points:
        wait = p.get('backlog_wait_time_actual')
        if wait is not None and prev_wait is not None:
            waited.append((p['t'] - t0, max(0, wait - prev_wait)))
        prev_wait = wait
        x = p['t'] - t0
        p99.append((x, p.get('p99_ms')))
        backlog.append((x, p.get('backlog_peak') if p.get('backlog_peak') is not None else p.get('backlog')))
        ratio = p.get('throttled_ratio')
        throttled.append((x, None if ratio is None else ratio * 100.0))
        if p.get('lost') is not None and prev_lost is not None:
            lost.append((x, max(0, p['lost'] - prev_lost)))
        prev_lost = p.get('lost')
        limit = p.get('backlog_limit') or limit
    return p99, backlog, throttled, lost, waited, limit, t0


def timeline_svg(points, markers=None, title='auditgap incident lab', width=760):
    """Stacked charts: accept p99 (ms), audit backlog peak (+limit, lost/s), jiffies waited/s,
    consumer throttled %."""
    starts = [p['t'] for p in points if p.get('t') is not None] + [m['t'] for m in (markers or [])]
    p99, backlog, throttled, lost, waited, limit, t0 = timeline_series(points, min(starts) if starts else None)
    vlines = [{'x': m['t'] - (t0 or m['t']), 'label': m.get('label', '')} for m in (markers or [])]
    x_max = max([point[0] for point in p99] + [v['x'] for v in vlines] + [1])
    heights = (220, 200, 180, 180)
    charts = [
        svgchart.line_chart([{'name': 'accept p99 (ms)', 'points': p99, 'color': '#d62728'}],
                            '%s: accept latency p99 per second' % title, 'ms', width=width,
                            height=heights[0], vlines=vlines, x_min=0, x_max=x_max),
        svgchart.line_chart([{'name': 'audit backlog peak', 'points': backlog, 'color': '#1f77b4'},
                             {'name': 'records lost per s', 'points': lost, 'color': '#7f7f7f'}],
                            'audit backlog (peak of 20 samples per second) and records lost', 'records',
                            width=width, height=heights[1], x_min=0, x_max=x_max, vlines=vlines,
                            hlines=[{'y': limit, 'label': 'backlog_limit %d' % limit}] if limit else None),
        svgchart.line_chart([{'name': 'jiffies waited per second (all tasks)', 'points': waited,
                              'color': '#9467bd'}],
                            'kernel: time tasks slept in audit_log_start (backlog_wait_time_actual)',
                            'jiffies/s', width=width, height=heights[2], x_min=0, x_max=x_max, vlines=vlines),
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


def write_timeline(path, points, markers=None, title='auditgap incident lab'):
    """The timeline picture at ``path`` (.svg) and its points beside it (.jsonl)."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory)
    with open(path, 'w') as handle:
        handle.write(timeline_svg(points, markers, title=title))
    with open(os.path.splitext(path)[0] + '.jsonl', 'w') as handle:
        for point in points:
            handle.write(json.dumps(point, sort_keys=True) + '\n')
    return path
