"""``auditgap history``: per host and per finding over time, from history.host_timeline rows
(oldest first). Pure functions: the summary (first seen, resolved, flapping), a text table,
and history.html (self-contained: inline CSS and SVG line charts, no script, no asset).
"""
import datetime

from ansible_collections.auditgap.fleet.plugins.module_utils import svgchart

from auditgap import changes

TREND_METRICS = (('backlog_peak_ratio', 'backlog peak ratio'), ('throttled_ratio', 'consumer throttled ratio'),
                 ('lost_per_s', 'lost/s'))
# A finding that came back at least this many times (episodes) in the runs shown is flapping.
FLAPPING_EPISODES = 3


def stamp(epoch):
    if epoch is None:
        return '-'
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def finding_history(rows):
    """[{id, severity, first_seen, last_seen, resolved, present, episodes, runs, flapping}] over ``rows``.

    Runs in which the host was unknown (unreachable, failed) neither continue nor end an episode.
    ``resolved``: the run in which the finding was last seen gone (None while present).
    """
    out = {}
    seen_runs = [r for r in rows if changes.diagnosed(r)]
    previous = set()
    for row in seen_runs:
        now = {}
        for finding in row.get('findings') or []:
            fid, sev = finding if isinstance(finding, (tuple, list)) else (finding['id'], finding['severity'])
            now[fid] = sev
        for fid, sev in now.items():
            item = out.setdefault(fid, {'id': fid, 'severity': sev, 'first_seen': row['run_id'], 'last_seen': None,
                                        'resolved': None, 'episodes': 0, 'runs': 0})
            item['severity'] = sev
            item['last_seen'] = row['run_id']
            item['runs'] += 1
            item['resolved'] = None
            if fid not in previous:
                item['episodes'] += 1
        for fid in previous - set(now):
            out[fid]['resolved'] = row['run_id']
        previous = set(now)
    for item in out.values():
        item['present'] = item['resolved'] is None
        item['flapping'] = item['episodes'] >= FLAPPING_EPISODES
    return sorted(out.values(), key=lambda i: (not i['present'], i['id']))


def host_summary(host, rows):
    """One host's history: runs, last state, finding history and the trend series."""
    last = rows[-1] if rows else {}
    return {
        'host': host,
        'runs': len(rows),
        'first_run': rows[0]['run_id'] if rows else None,
        'last_run': last.get('run_id'),
        'last_state': last.get('state'),
        'last_status': last.get('status'),
        'findings': finding_history(rows),
        'series': {
            'run_id': [r['run_id'] for r in rows],
            'started_at': [r['started_at'] for r in rows],
            'state': [r['state'] for r in rows],
            **{metric: [r.get(metric) for r in rows] for metric, _label in TREND_METRICS},
        },
    }


_STATE_RANK = {'regressed': 0, 'unknown': 1, 'ok': 2}


def worst_first(summaries):
    """Regressed hosts first, then unknown, then ok; by name within each."""
    return sorted(summaries, key=lambda s: (_STATE_RANK.get(s['last_state'], 1), s['host']))


def render_table(summaries):
    lines = []
    for summ in summaries:
        lines.append('%s: %d run(s) %s .. %s, last state %s (%s)' % (
            summ['host'], summ['runs'], summ['first_run'] or '-', summ['last_run'] or '-', summ['last_state'] or '-',
            summ['last_status'] or '-'))
        if not summ['findings']:
            lines.append('  no findings')
            continue
        lines.append('  %-28s %-9s %-18s %-18s %-18s %8s %s' % ('finding', 'severity', 'first seen', 'last seen',
                                                                'resolved', 'episodes', 'flapping'))
        for item in summ['findings']:
            lines.append('  %-28s %-9s %-18s %-18s %-18s %8d %s' % (
                item['id'], item['severity'], item['first_seen'], item['last_seen'],
                item['resolved'] or ('present' if item['present'] else '-'), item['episodes'],
                'yes' if item['flapping'] else 'no'))
    return '\n'.join(lines) + '\n'


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
.meta{color:#666;font-size:.9em}
section.host{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
.charts{display:flex;gap:1em;flex-wrap:wrap}
.present{background:#fde2e1}.flapping{font-weight:bold;color:#d62728}
.state-unknown{color:#555}.state-regressed{color:#d62728}.state-ok{color:#2ca02c}
"""


def render_html(summaries, generated_at, db_path=None):
    """history.html: a section per host with a trend line per metric over its runs and its findings."""
    esc = svgchart.esc
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             '<title>auditgap history %s</title><style>%s</style></head><body>' % (esc(generated_at), _CSS),
             '<h1>auditgap history</h1>',
             '<p class="meta">Generated %s &middot; %d host(s) &middot; history %s</p>' % (
                 esc(generated_at), len(summaries), esc(db_path or '-'))]
    for summ in summaries:
        parts.append('<section class="host" id="host-%s"><h2>%s <span class="state-%s">%s</span></h2>' % (
            esc(summ['host']), esc(summ['host']), esc(summ['last_state'] or 'unknown'), esc(summ['last_state'] or '-')))
        parts.append('<p>%d run(s), %s .. %s</p>' % (summ['runs'], esc(summ['first_run'] or '-'), esc(summ['last_run'] or '-')))
        series = summ['series']
        parts.append('<div class="charts">')
        for metric, label in TREND_METRICS:
            points = [(i + 1, v) for i, v in enumerate(series[metric])]
            if not any(v is not None for _i, v in points):
                continue
            parts.append(svgchart.line_chart([{'name': label, 'points': points}], '%s: %s' % (summ['host'], label),
                                             label, width=520, height=200, x_label='run', x_min=1,
                                             x_max=max(2, len(points)),
                                             y_max=1 if metric.endswith('_ratio') else None))
        parts.append('</div>')
        if summ['findings']:
            parts.append('<table class="findings"><tr><th>finding</th><th>severity</th><th>first seen</th>'
                         '<th>last seen</th><th>resolved</th><th>episodes</th><th>flapping</th></tr>')
            for item in summ['findings']:
                parts.append('<tr class="%s"><td><code>%s</code></td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>'
                             '<td>%d</td><td class="%s">%s</td></tr>' % (
                                 'present' if item['present'] else 'gone', esc(item['id']), esc(item['severity']),
                                 esc(item['first_seen']), esc(item['last_seen']),
                                 esc(item['resolved'] or ('present' if item['present'] else '-')), item['episodes'],
                                 'flapping' if item['flapping'] else '', 'yes' if item['flapping'] else 'no'))
            parts.append('</table>')
        else:
            parts.append('<p>No findings in these runs.</p>')
        parts.append('</section>')
    parts.append('</body></html>\n')
    return ''.join(parts)
