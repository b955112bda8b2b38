# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small, self-contained inline SVG charts (no scripts, no external assets).

Pure functions returning an ``<svg>`` string, deterministic for the same
input, usable inside HTML reports or written to a ``.svg`` file:

- ``line_chart(series, title, y_label, ...)``: one or more series over x
  (e.g. backlog against its limit over a sample window, a lab timeline),
  with optional horizontal reference lines (``hlines``, e.g. the
  backlog_limit) and vertical markers (``vlines``, e.g. "quota applied").
- ``bar_chart(items, title, ...)``: horizontal bars, one per label.
- ``gauge(value, maximum, label, ...)``: one small "value of maximum" bar
  (backlog peak 64/64, throttled 97% of periods).

``series`` is a list of ``{'name': str, 'points': [(x, y), ...], 'color':
optional}`` (a dict ``{name: points}`` is accepted too). Points with a
``None`` y are gaps.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

PALETTE = ('#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd',
           '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf')
FONT = 'font-family="sans-serif"'


def esc(text):
    """Escape text for SVG/XML content and attribute values (None: empty)."""
    return (str('' if text is None else text).replace('&', '&amp;').replace('<', '&lt;')
            .replace('>', '&gt;').replace('"', '&quot;'))


def fmt_num(value):
    """Short human number: 0.5, 12, 1.2k, 3.4M."""
    if value is None:
        return '-'
    value = float(value)
    mag = abs(value)
    if mag >= 1e6:
        return '%.1fM' % (value / 1e6)
    if mag >= 1e4:
        return '%.1fk' % (value / 1e3)
    if mag == int(mag):
        return '%d' % int(value)
    if mag >= 100:
        return '%.0f' % value
    if mag >= 1:
        return ('%.2f' % value).rstrip('0').rstrip('.')
    return ('%.3f' % value).rstrip('0').rstrip('.')


def nice_ticks(lo, hi, count=5):
    """Round tick values covering [lo, hi] (about ``count`` of them)."""
    if hi is None or lo is None or hi <= lo:
        hi = (lo or 0) + 1
    span = float(hi - lo)
    raw = span / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        step = mult * mag
        if step >= raw:
            break
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _norm_series(series):
    if isinstance(series, dict):
        series = [{'name': k, 'points': v} for k, v in series.items()]
    out = []
    for index, item in enumerate(series or []):
        points = []
        for point in item.get('points') or []:
            x, y = point[0], point[1]
            if x is None:
                continue
            points.append((float(x), None if y is None else float(y)))
        out.append({'name': str(item.get('name', 'series %d' % (index + 1))),
                    'points': points,
                    'color': item.get('color') or PALETTE[index % len(PALETTE)],
                    'dash': item.get('dash')})
    return out


def _svg_open(width, height, title):
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'viewBox="0 0 %d %d" role="img" aria-label="%s">'
            '<title>%s</title><rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>'
            % (width, height, width, height, esc(title), esc(title), width, height))


def line_chart(series, title, y_label, width=640, height=240, y_max=None,
               hlines=None, vlines=None, x_label='t (s)', y_min=0, x_min=None, x_max=None):
    """Line chart of one or more series.

    ``hlines``: ``[{'y': 64, 'label': 'backlog_limit', 'color': optional}]``.
    ``vlines``: ``[{'x': 12.5, 'label': 'quota 1%', 'color': optional}]``.
    ``y_max``: top of the y axis (default: the largest value or hline, +5%).
    """
    data = _norm_series(series)
    hlines = list(hlines or [])
    vlines = list(vlines or [])
    xs = [p[0] for s in data for p in s['points']] + [float(v['x']) for v in vlines]
    ys = [p[1] for s in data for p in s['points'] if p[1] is not None]
    ys += [float(h['y']) for h in hlines]
    lo_x = float(x_min) if x_min is not None else (min(xs) if xs else 0.0)
    hi_x = float(x_max) if x_max is not None else (max(xs) if xs else 1.0)
    if hi_x <= lo_x:
        hi_x = lo_x + 1.0
    lo_y = float(y_min) if y_min is not None else (min(ys) if ys else 0.0)
    if y_max is not None:
        hi_y = float(y_max)
    else:
        hi_y = max(ys) * 1.05 if ys else 1.0
    if hi_y <= lo_y:
        hi_y = lo_y + 1.0
    yticks = [t for t in nice_ticks(lo_y, hi_y) if lo_y <= t <= hi_y * 1.0001] or [lo_y, hi_y]
    if y_max is None and yticks[-1] < hi_y:
        hi_y = max(hi_y, yticks[-1])
    xticks = [t for t in nice_ticks(lo_x, hi_x, 6) if lo_x - 1e-9 <= t <= hi_x + 1e-9]

    left, right, top = 56, 12, 30
    legend_h = 18 if data else 0
    bottom = 36 + legend_h
    plot_w = max(10, width - left - right)
    plot_h = max(10, height - top - bottom)

    def sx(x):
        return left + (x - lo_x) / (hi_x - lo_x) * plot_w

    def sy(y):
        y = min(max(y, lo_y), hi_y)
        return top + plot_h - (y - lo_y) / (hi_y - lo_y) * plot_h

    parts = [_svg_open(width, height, title)]
    parts.append('<text x="%d" y="18" %s font-size="13" font-weight="bold">%s</text>'
                 % (left, FONT, esc(title)))
    for tick in yticks:
        y = sy(tick)
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>'
                     % (left, y, left + plot_w, y))
        parts.append('<text x="%d" y="%.1f" %s font-size="10" text-anchor="end">%s</text>'
                     % (left - 4, y + 3, FONT, esc(fmt_num(tick))))
    for tick in xticks:
        x = sx(tick)
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>'
                     % (x, top + plot_h, x, top + plot_h + 4))
        parts.append('<text x="%.1f" y="%d" %s font-size="10" text-anchor="middle">%s</text>'
                     % (x, top + plot_h + 15, FONT, esc(fmt_num(tick))))
    parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>'
                 % (left, top, plot_w, plot_h))
    parts.append('<text x="%d" y="%d" %s font-size="10" text-anchor="end">%s</text>'
                 % (left + plot_w, top + plot_h + 28, FONT, esc(x_label)))
    parts.append('<text x="12" y="%d" %s font-size="10" text-anchor="middle" '
                 'transform="rotate(-90 12 %d)">%s</text>'
                 % (top + plot_h // 2, FONT, top + plot_h // 2, esc(y_label)))
    for hline in hlines:
        y = sy(float(hline['y']))
        color = hline.get('color') or '#d62728'
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" '
                     'stroke-dasharray="6 3"/>' % (left, y, left + plot_w, y, esc(color)))
        if hline.get('label'):
            parts.append('<text x="%d" y="%.1f" %s font-size="10" text-anchor="end" fill="%s">%s</text>'
                         % (left + plot_w - 3, y - 3, FONT, esc(color), esc(hline['label'])))
    for vline in vlines:
        x = sx(float(vline['x']))
        color = vline.get('color') or '#555555'
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" '
                     'stroke-dasharray="3 3"/>' % (x, top, x, top + plot_h, esc(color)))
        if vline.get('label'):
            parts.append('<text x="%.1f" y="%d" %s font-size="10" fill="%s">%s</text>'
                         % (x + 3, top + 11, FONT, esc(color), esc(vline['label'])))
    for item in data:
        segments, current = [], []
        for x, y in item['points']:
            if y is None:
                if current:
                    segments.append(current)
                current = []
                continue
            current.append('%.1f,%.1f' % (sx(x), sy(y)))
        if current:
            segments.append(current)
        dash = ' stroke-dasharray="%s"' % esc(item['dash']) if item.get('dash') else ''
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(',')
                parts.append('<circle cx="%s" cy="%s" r="2.5" fill="%s"/>' % (cx, cy, esc(item['color'])))
            else:
                parts.append('<polyline fill="none" stroke="%s" stroke-width="1.8"%s points="%s"/>'
                             % (esc(item['color']), dash, ' '.join(seg)))
    x = left
    legend_y = height - 8
    for item in data:
        parts.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/>'
                     % (x, legend_y - 9, esc(item['color'])))
        parts.append('<text x="%d" y="%d" %s font-size="11">%s</text>'
                     % (x + 14, legend_y, FONT, esc(item['name'])))
        x += 24 + 7 * len(item['name'])
    parts.append('</svg>')
    return ''.join(parts)


def bar_chart(items, title, x_max=None, unit='', width=640, bar_height=16, thresholds=None):
    """Horizontal bars: ``items`` = ``[(label, value)]`` or ``[{'label', 'value', 'color'}]``.

    ``thresholds``: ``[{'x': 0.8, 'label': '80%'}]`` vertical reference lines.
    """
    rows = []
    for index, item in enumerate(items or []):
        if isinstance(item, dict):
            label, value, color = item.get('label', ''), item.get('value'), item.get('color')
        else:
            label, value, color = item[0], item[1], None
        rows.append((str(label), None if value is None else float(value),
                     color or PALETTE[index % len(PALETTE)]))
    values = [row[1] for row in rows if row[1] is not None]
    top_x = float(x_max) if x_max is not None else (max(values) * 1.1 if values and max(values) > 0 else 1.0)
    label_w = min(220, 12 + 7 * max([len(r[0]) for r in rows] or [4]))
    left, right, top = label_w, 70, 28
    gap = 6
    height = top + len(rows) * (bar_height + gap) + 10
    plot_w = max(10, width - left - right)
    parts = [_svg_open(width, height, title)]
    parts.append('<text x="6" y="18" %s font-size="13" font-weight="bold">%s</text>'
                 % (FONT, esc(title)))
    for index, (label, value, color) in enumerate(rows):
        y = top + index * (bar_height + gap)
        parts.append('<text x="%d" y="%d" %s font-size="11" text-anchor="end">%s</text>'
                     % (left - 6, y + bar_height - 4, FONT, esc(label)))
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#f0f0f0"/>'
                     % (left, y, plot_w, bar_height))
        if value is not None:
            w = max(0.0, min(1.0, value / top_x)) * plot_w
            parts.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                         % (left, y, w, bar_height, esc(color)))
        parts.append('<text x="%d" y="%d" %s font-size="11">%s%s</text>'
                     % (left + plot_w + 6, y + bar_height - 4, FONT, esc(fmt_num(value)), esc(unit)))
    for thr in thresholds or []:
        x = left + max(0.0, min(1.0, float(thr['x']) / top_x)) * plot_w
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#d62728" stroke-dasharray="4 2"/>'
                     % (x, top - 4, x, height - 8))
        if thr.get('label'):
            parts.append('<text x="%.1f" y="%d" %s font-size="9" fill="#d62728">%s</text>'
                         % (x + 2, top - 6, FONT, esc(thr['label'])))
    parts.append('</svg>')
    return ''.join(parts)


def gauge(value, maximum, label, width=260, height=34, warn_ratio=None, text=None):
    """One bar showing ``value`` out of ``maximum`` (e.g. backlog 64/64).

    Red when the ratio reaches ``warn_ratio`` (when given), blue otherwise.
    ``text`` replaces the default ``"value / maximum"`` caption.
    """
    ratio = 0.0
    if value is not None and maximum:
        ratio = max(0.0, min(1.0, float(value) / float(maximum)))
    color = '#d62728' if warn_ratio is not None and ratio >= warn_ratio else '#1f77b4'
    caption = text if text is not None else '%s / %s' % (fmt_num(value), fmt_num(maximum))
    bar_w = width - 8
    parts = [_svg_open(width, height, '%s: %s' % (label, caption))]
    parts.append('<text x="4" y="12" %s font-size="11">%s: %s</text>'
                 % (FONT, esc(label), esc(caption)))
    parts.append('<rect x="4" y="17" width="%d" height="12" fill="#f0f0f0" stroke="#ccc"/>' % bar_w)
    parts.append('<rect x="4" y="17" width="%.1f" height="12" fill="%s"/>' % (ratio * bar_w, color))
    if warn_ratio is not None:
        x = 4 + warn_ratio * bar_w
        parts.append('<line x1="%.1f" y1="15" x2="%.1f" y2="31" stroke="#333" stroke-dasharray="2 2"/>' % (x, x))
    parts.append('</svg>')
    return ''.join(parts)
