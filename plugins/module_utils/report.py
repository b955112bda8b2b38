# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet reports: pure functions from host summaries / the fleet document to
JSON, Markdown, self-contained HTML and a Prometheus textfile.

The fleet document (``fleet.json``, docs/reports.md) is built by
``fleet_document(hosts, ...)`` from the host summaries that the findings
diagnosis (module_utils/diagnosis.py) produces.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile

from ansible_collections.auditgap.fleet.plugins.module_utils import svgchart
from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import STATUS_ORDER, STATUS_RANK, failed_entry, num, one_line, pct, plain


def collection_version(root=None):
    """The collection's version: MANIFEST.json's once installed (ansible-galaxy writes
    galaxy.yml's version there), galaxy.yml's in the tree; None when neither is readable."""
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        with open(os.path.join(root, 'MANIFEST.json')) as handle:
            return str(json.load(handle)['collection_info']['version'])
    except (IOError, OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(os.path.join(root, 'galaxy.yml')) as handle:
            match = re.search(r'^version:\s*["\']?([^"\'\s#]+)', handle.read(), re.M)
    except (IOError, OSError):
        return None
    return match.group(1) if match else None


AUDITGAP_VERSION = collection_version()
SCHEMA = 'auditgap.fleet/v1'
SEVERITIES = ('critical', 'warning', 'info')


# <host>.json names that are the fleet files' own
RESERVED_NAMES = frozenset(('fleet', 'remediation', 'latest', 'lab-timeline'))
NAME_MAX = 100  # characters of a host's file name before the suffix (file systems allow 255 bytes)


def safe_filename(host):
    """A unique, bounded file name stem for ``<host>.json``.

    A host name made only of ``A-Za-z0-9._@:+-`` (no leading dot, at most
    NAME_MAX characters, not a fleet file's name) is used as it is. Any other
    name is cleaned (other characters become ``_``), cut to NAME_MAX and given
    ``~`` and 10 hex digits of the sha256 of the real name: ``web/1`` ->
    ``web_1~<hash>``, which no host name used as is can be (``~`` is never kept),
    so two hosts never share a file.
    """
    raw = str(host)
    name = re.sub(r'[^A-Za-z0-9._@:+-]', '_', raw).lstrip('.')
    if name == raw and name and len(name) <= NAME_MAX and name.lower() not in RESERVED_NAMES:
        return name
    digest = hashlib.sha256(raw.encode('utf-8', 'surrogatepass')).hexdigest()[:10]
    return '%s~%s' % (name[:NAME_MAX] or '_', digest)


def checked_entries(entries):
    """Every entry, each one rendered alone in every format first (its JSON, Markdown, HTML
    section and Prometheus samples): a host whose entry cannot be rendered (a value no format
    can hold) becomes ``failed`` with the error, so one bad host never loses the report of
    the others."""
    out = []
    for entry in entries:
        try:
            single = fleet_document([entry], '1970-01-01T00:00:00Z')
            to_json_line(single['hosts'][0])
            render_markdown(single)
            if not (entry.get('status') == 'ok' and not entry.get('error')):
                _html_host(single['hosts'][0])  # healthy hosts are one table row of numbers
            render_prometheus(single)
        except Exception as err:  # noqa: BLE001 -- whatever a bad value raises, the host is reported
            host = entry.get('host') if isinstance(entry, dict) else entry
            entry = failed_entry(host, 'report failed: %s: %s' % (type(err).__name__, err),
                                 reachable=entry.get('reachable', True) if isinstance(entry, dict) else True)
        out.append(entry)
    return out


def host_sort_key(entry):
    return (STATUS_RANK.get(entry.get('status'), 99), str(entry.get('host')))


def fleet_summary(hosts):
    summary = {'hosts': len(hosts), 'reachable': 0, 'unreachable': 0, 'failed': 0,
               'by_status': {s: 0 for s in STATUS_ORDER},
               'by_severity': {s: 0 for s in SEVERITIES}, 'by_id': {},
               }
    for entry in hosts:
        status = entry.get('status') or 'ok'
        summary['by_status'][status] = summary['by_status'].get(status, 0) + 1
        if entry.get('reachable'):
            summary['reachable'] += 1
        else:
            summary['unreachable'] += 1
        if status == 'failed':
            summary['failed'] += 1
        for finding in entry.get('findings') or []:
            sev = finding.get('severity')
            summary['by_severity'][sev] = summary['by_severity'].get(sev, 0) + 1
            by_id = summary['by_id'].setdefault(finding['id'], {'critical': 0, 'warning': 0, 'info': 0, 'hosts': []})
            by_id[sev] = by_id.get(sev, 0) + 1
            if entry['host'] not in by_id['hosts']:
                by_id['hosts'].append(entry['host'])
    worst = 'ok'
    for status in STATUS_ORDER:
        if summary['by_status'].get(status):
            worst = status
            break
    summary['worst_status'] = worst
    return summary


def fleet_document(hosts, generated_at, thresholds=None, report_dir=None, extra=None):
    """The fleet.json document: hosts sorted by severity (worst first), each with the name of
    its ``<host>.json`` (``report_file``)."""
    ordered = [dict(e, report_file=e.get('report_file') or safe_filename(e['host']) + '.json')
               for e in sorted(hosts, key=host_sort_key)]
    doc = {'schema': SCHEMA, 'auditgap_version': AUDITGAP_VERSION, 'generated_at': generated_at,
           'report_dir': report_dir, 'thresholds': thresholds or {},
           'summary': fleet_summary(ordered), 'hosts': ordered}
    if extra:
        doc.update(extra)
    return doc


def to_json(data):
    """Strict JSON (no NaN/Infinity, which JSON parsers refuse)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False) + '\n'


def to_json_line(data):
    """Compact JSON (json's C encoder: indent=2 falls back to the slow pure-Python one)."""
    return json.dumps(data, sort_keys=True, default=str, allow_nan=False)


def fleet_json_chunks(doc):
    """fleet.json in pieces: the head indented, then one line per host (docs/scale.md).

    The same document as ``to_json(doc)`` for a JSON reader, written in time
    linear in the hosts with the C encoder, and without one string of it all.
    """
    head = to_json(dict((k, v) for k, v in doc.items() if k != 'hosts')).rstrip()
    hosts = doc.get('hosts') or []
    if not hosts:
        yield head[:-1].rstrip() + (',' if len(head) > 2 else '') + '\n  "hosts": []\n}\n'
        return
    yield head[:-1].rstrip() + (',' if len(head) > 2 else '') + '\n  "hosts": [\n    '
    for index, entry in enumerate(hosts):
        yield (',\n    ' if index else '') + to_json_line(entry)
    yield '\n  ]\n}\n'


# ---------------------------------------------------------------- files

# The reports carry the hosts' facts (the audit consumer's command line): owner and group
# only; fleet.prom goes to node_exporter's textfile collector and holds no command line.
REPORT_MODE = 0o640
FILE_MODES = {'fleet.prom': 0o644}
SVG_MAX_BYTES = 4 * 1024 * 1024


def read_svg(path):
    """(svg text or None, why not or None): an SVG file to embed, at most SVG_MAX_BYTES."""
    try:
        with open(path, 'rb') as handle:
            data = handle.read(SVG_MAX_BYTES + 1)
        if len(data) > SVG_MAX_BYTES:
            return None, 'larger than %d bytes' % SVG_MAX_BYTES
        text = data.decode('utf-8')
    except (IOError, OSError, UnicodeError) as err:
        return None, str(err)
    if not re.match(r'\s*(<\?xml[^>]*\?>\s*)?(<!--.*?-->\s*)*<svg[\s>]', text, re.DOTALL):
        return None, 'not an SVG document'
    return text, None


def write_atomic(path, text, mode=0o640):
    """Write ``path`` (``text``: a string or an iterable of strings, written as they come)
    through a temp file made with O_EXCL in the same directory (a planted file or symlink is
    never followed), then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path)[:60], suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            os.fchmod(handle.fileno(), mode)
            if isinstance(text, str):
                handle.write(text)
            else:
                handle.writelines(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def default_report_dir(now, base='reports'):
    """``<base>/<UTC timestamp>`` (``-2``, ``-3``, ... when taken): where a run's reports go."""
    stamp = now.strftime('%Y%m%dT%H%M%SZ')
    path = os.path.join(base, stamp)
    suffix = 1
    while os.path.lexists(path):
        suffix += 1
        path = os.path.join(base, '%s-%d' % (stamp, suffix))
    return path


def point_latest(report_dir):
    """<parent>/latest -> report_dir (relative), replaced atomically through a symlink
    made under a random name."""
    parent = os.path.dirname(os.path.abspath(report_dir))
    link = os.path.join(parent, 'latest')
    for _attempt in range(100):
        tmp = os.path.join(parent, '.latest.%s.tmp' % os.urandom(6).hex())
        try:
            os.symlink(os.path.basename(os.path.abspath(report_dir)), tmp)
            break
        except FileExistsError:
            continue
    else:
        raise OSError('cannot create a temporary symlink in %s' % parent)
    os.replace(tmp, link)
    return link


def summary_lines(doc, limit=20):
    """The short fleet summary printed at the end of the play."""
    summ = doc['summary']
    st = summ['by_status']
    lines = ['auditgap %s: %d host(s): %d critical, %d warning, %d info-only, %d ok, %d unreachable, %d failed'
             % (doc.get('generated_at'), summ['hosts'], st.get('critical', 0), st.get('warning', 0),
                st.get('info', 0), st.get('ok', 0), st.get('unreachable', 0), st.get('failed', 0))]
    shown = 0
    for entry in doc['hosts']:
        if entry.get('status') in ('ok', 'info'):
            continue
        if shown >= limit:
            lines.append('... and more: see fleet.md')
            break
        shown += 1
        if entry.get('status') in ('unreachable', 'failed'):
            lines.append('%s %s: %s' % (entry['status'].upper(), entry['host'], one_line(entry.get('error'))))
            continue
        ids = ', '.join('%s(%s)' % (f['id'], f['severity']) for f in entry.get('findings') or []
                        if f['severity'] != 'info')
        lines.append('%s %s: %s' % (entry['status'].upper(), entry['host'], ids))
        if entry.get('chain'):
            lines.append('  %s' % entry['chain'])
    if doc.get('report_dir'):
        lines.append('report: %s' % doc['report_dir'])
    return lines


# ---------------------------------------------------------------- helpers

def _fmt(value):
    return svgchart.fmt_num(num(value))


def _pct(ratio):
    return pct(ratio, '-')


def _vars_json(remediation):
    return json.dumps(remediation.get('vars') or {}, sort_keys=True)


def _status_counts_line(summ):
    st = summ['by_status']
    return ', '.join('%s %d' % (s, st.get(s, 0)) for s in STATUS_ORDER)


# ---------------------------------------------------------------- Markdown

# what Markdown (CommonMark/GFM) or inline HTML acts on inside a line; `_` only at a word's edge
_MD_SPECIAL = re.compile(r'([\\`*\[\]<>#|~+]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))')
_MD_LINE_START = re.compile(r'^([-=.]|\d+[.)])')


def md_text(text):
    """Text for Markdown: one line, every character Markdown or inline HTML acts on escaped
    (a host name or message can never make a link, an image, emphasis, a heading or a table cell)."""
    line = ' '.join(str('' if text is None else text).split())
    return _MD_SPECIAL.sub(r'\\\1', line)


def md_line(text):
    """md_text for text that starts a line (no list item, rule or setext heading either)."""
    return _MD_LINE_START.sub(lambda m: m.group(1)[:-1] + '\\' + m.group(1)[-1], md_text(text))


def md_code(text):
    """An inline code span holding ``text`` (one line; fenced with more backticks than it
    contains, so it cannot end early); ``|`` escaped for table cells."""
    line = ' '.join(str('' if text is None else text).split()).replace('|', '\\|')
    longest = max([len(run) for run in re.findall('`+', line)] + [0])
    fence = '`' * (longest + 1)
    return '%s %s %s' % (fence, line, fence) if longest else '`%s`' % line


def render_markdown(doc):
    summ = doc['summary']
    intro = 'Generated %s by auditgap %s. %d host(s): %s.' % (
        md_text(doc.get('generated_at')), md_text(doc.get('auditgap_version')), summ['hosts'],
        _status_counts_line(summ))
    out = ['# auditgap fleet report', '', intro, '']
    out += ['| status | hosts |', '|---|---|']
    out += ['| %s | %d |' % (s, summ['by_status'].get(s, 0)) for s in STATUS_ORDER]
    out.append('')
    if summ['by_id']:
        out += ['## Findings by id', '', '| id | critical | warning | info | hosts |', '|---|---|---|---|---|']
        for fid in sorted(summ['by_id']):
            row = summ['by_id'][fid]
            hosts = ', '.join(md_text(h) for h in row['hosts'][:10]) + (' ...' if len(row['hosts']) > 10 else '')
            out.append('| %s | %d | %d | %d | %s |' % (md_code(fid), row['critical'], row['warning'], row['info'], hosts))
        out.append('')
    out += since_last_run_markdown(doc.get('since_last_run'))
    out += ['## Hosts (worst first)', '']
    quiet = []
    for entry in doc['hosts']:
        status = entry.get('status')
        if status in ('ok',) and not entry.get('error'):
            quiet.append(str(entry['host']))
            continue
        out.append('### %s: %s' % (md_text(entry['host']), md_text(status.upper() if status else '?')))
        out.append('')
        if entry.get('error'):
            out += ['**Error:** %s' % md_code(entry['error']), '']
        if entry.get('chain'):
            out += ['**Chain:** %s' % md_text(entry['chain']), '']
        metrics = entry.get('metrics') or {}
        if metrics.get('audit_supported'):
            out += ['Backlog peak %s / limit %s (%s), lost %s (%s/s in window), wait accrued %s ms, '
                    'consumer pid %s throttled %s.' % (
                        _fmt(metrics.get('audit_backlog_peak')), _fmt(metrics.get('audit_backlog_limit')),
                        _pct(metrics.get('audit_backlog_peak_ratio')), _fmt(metrics.get('audit_lost')),
                        _fmt(metrics.get('audit_lost_per_s')), _fmt(metrics.get('audit_wait_accrued_ms')),
                        _fmt(metrics.get('audit_consumer_pid')), _pct(metrics.get('consumer_throttled_ratio'))), '']
        for finding in entry.get('findings') or []:
            out.append('- **%s** %s: %s' % (md_text(finding['severity']), md_code(finding['id']),
                                            md_text(finding['summary'])))
            if finding.get('remediation'):
                out.append('  - fix: role %s, vars %s' % (md_code(finding['remediation'].get('role')),
                                                          md_code(_vars_json(finding['remediation']))))
        out.append('')
    if quiet:
        out += ['## Healthy hosts (%d)' % len(quiet), '', md_line(', '.join(quiet)), '']
    return '\n'.join(out)


# ---------------------------------------------------------------- remediation.json / remediation.md

def remediation_document(records, generated_at, report_dir=None, applied=False):
    """remediation.json: the hosts' records (remediation filter ``auditgap_remediation_host``) with a summary."""
    records = plain(records) or []
    summary = {'hosts': len(records), 'fixed': 0, 'not_fixed': 0, 'new': 0, 'not_remediated': 0, 'failed_roles': 0}
    for rec in records:
        for f in rec.get('findings') or []:
            if f['status'] in summary:
                summary[f['status']] += 1
        summary['failed_roles'] += sum(1 for r in rec.get('remediations') or [] if r.get('failed'))
    return {'generated_at': generated_at, 'mode': 'applied' if applied else 'dry-run',
            'report_dir': report_dir, 'summary': summary, 'hosts': records}


def _md_cell(value):
    return md_text('' if value is None else value)


def remediation_markdown(doc):
    """remediation.md (host names and messages Markdown-escaped)."""
    doc = plain(doc) or {}
    s = doc.get('summary') or {}
    lines = ['# auditgap remediation (%s)' % doc.get('mode'), '',
             'Generated %s from the diagnosis in %s.' % (_md_cell(doc.get('generated_at')),
                                                         md_code(doc.get('report_dir'))), '',
             '%s host(s): %s fixed, %s not fixed, %s new, %s not remediated, %s failed role run(s).' % (
                 s.get('hosts', 0), s.get('fixed', 0), s.get('not_fixed', 0), s.get('new', 0),
                 s.get('not_remediated', 0), s.get('failed_roles', 0)), '']
    for rec in doc.get('hosts') or []:
        lines += ['## %s' % _md_cell(rec.get('host')), '']
        if rec.get('remediations'):
            lines += ['| role | changed | failed | vars | message |', '|---|---|---|---|---|']
            for r in rec['remediations']:
                lines.append('| %s | %s | %s | %s | %s |' % (
                    _md_cell(r['role']), r['changed'], r['failed'], md_code(r.get('vars')), _md_cell(r.get('msg'))))
            lines.append('')
        else:
            lines += ['No remediation named for this host.', '']
        if rec.get('after_error'):
            lines += ['After: %s' % rec['after_error'], '']
        if rec.get('findings'):
            lines += ['| finding | status | before | after |', '|---|---|---|---|']
            for f in rec['findings']:
                b = f.get('before') or {}
                a = f.get('after') or {}
                lines.append('| %s | **%s** | %s %s | %s %s |' % (
                    _md_cell(f['id']), _md_cell(f['status']), _md_cell(b.get('severity')), _md_cell(b.get('summary')),
                    _md_cell(a.get('severity')), _md_cell(a.get('summary'))))
            lines.append('')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------- since last run (auditgap audit)

def since_last_run_lines(since):
    """Plain lines of the ``since_last_run`` section (auditgap audit, docs/scheduled-audits.md)."""
    if not since:
        return []
    cov = since.get('coverage') or {}
    counts = cov.get('hosts') or {}
    lines = ['since %s: coverage %s (%d ok, %d regressed, %d unknown)' % (
        since.get('previous_run') or 'no earlier run', _pct(cov.get('ratio')), counts.get('ok', 0),
        counts.get('regressed', 0), counts.get('unknown', 0))]
    for host in since.get('hosts') or []:
        what = []
        if host.get('regressed'):
            what.append('REGRESSED')
        if host.get('new_findings'):
            what.append('new: ' + ', '.join('%s(%s)' % (f['id'], f['severity']) for f in host['new_findings']))
        if host.get('resolved_findings'):
            what.append('resolved: ' + ', '.join(f['id'] for f in host['resolved_findings']))
        for metric in host.get('worse_metrics') or []:
            what.append('%s %s (baseline %s)' % (metric['metric'], _fmt(metric['value']), _fmt(metric['baseline'])))
        if host.get('state') == 'unknown':
            what.append('UNKNOWN (%s)' % one_line(host.get('reason'), 120))
        if what:
            lines.append('%s: %s' % (host['host'], '; '.join(what)))
        for cause in (host.get('causes') or [])[:3]:
            lines.append('  probable cause %d: %s' % (cause['rank'], cause['text']))
    return lines


def since_last_run_markdown(since):
    if not since:
        return []
    lines = since_last_run_lines(since)
    out = ['## Since last run', '', md_text(lines[0]), '']
    out += ['- %s' % md_text(line.strip()) if not line.startswith('  ') else '  - %s' % md_text(line.strip())
            for line in lines[1:]]
    return out + ([''] if lines[1:] else [])


def since_last_run_html(since):
    if not since:
        return ''
    lines = since_last_run_lines(since)
    items = ''.join('<li class="%s">%s</li>' % ('cause' if line.startswith('  ') else 'change', svgchart.esc(line.strip()))
                    for line in lines[1:])
    return '<h2>Since last run</h2><section id="since-last-run"><p>%s</p>%s</section>' % (
        svgchart.esc(lines[0]), '<ul>%s</ul>' % items if items else '<p>No changes.</p>')


# ---------------------------------------------------------------- Prometheus

_PROM_GAUGES = (
    ('audit_supported', 'auditgap_audit_supported', 'Audit facts could be read (1) or not (0).'),
    ('audit_enabled', 'auditgap_audit_enabled', 'Audit status enabled (0 off, 1 on, 2 immutable).'),
    ('audit_consumer_pid', 'auditgap_audit_consumer_pid', 'PID of the registered audit consumer (0 none).'),
    ('audit_backlog', 'auditgap_audit_backlog', 'Audit backlog (records queued) at collection time.'),
    ('audit_backlog_limit', 'auditgap_audit_backlog_limit', 'Audit backlog_limit.'),
    ('audit_lost', 'auditgap_audit_lost', 'Audit records lost since boot (kernel counter).'),
    ('audit_backlog_wait_time_jiffies', 'auditgap_audit_backlog_wait_time_jiffies', 'Audit backlog_wait_time.'),
    ('audit_backlog_wait_time_actual_jiffies', 'auditgap_audit_backlog_wait_time_actual_jiffies',
     'Total time tasks waited for backlog space (kernel counter, jiffies).'),
    ('audit_lost_per_s', 'auditgap_audit_lost_per_second', 'Audit records lost per second during the sample window.'),
    ('audit_backlog_peak_ratio', 'auditgap_audit_backlog_peak_ratio', 'Peak backlog / backlog_limit in the window.'),
    ('audit_wait_accrued_ms', 'auditgap_audit_wait_accrued_milliseconds',
     'backlog_wait_time_actual growth during the sample window (ms tasks slept).'),
    ('audit_sample_seconds', 'auditgap_audit_sample_seconds', 'Length of the audit sample window.'),
    ('consumer_throttled_ratio', 'auditgap_consumer_throttled_ratio',
     'Share of CFS periods in which the audit consumer was throttled.'),
    ('consumer_limit_cores', 'auditgap_consumer_cpu_limit_cores', 'Tightest CPU limit of the audit consumer (cores).'),
)
_SEVERITY_VALUE = {'ok': 0, 'info': 1, 'warning': 2, 'critical': 3}


def _label(value):
    return str(value).replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


def _prom_value(value):
    number = float(value)
    if number == int(number) and abs(number) < 1e15:
        return '%d' % int(number)
    return repr(number)


def render_prometheus(doc, generated_epoch=None):
    """node_exporter textfile-collector format (one sample per host and metric)."""
    out = []

    def family(name, help_text, samples):
        if not samples:
            return
        out.append('# HELP %s %s' % (name, help_text))
        out.append('# TYPE %s gauge' % name)
        out.extend(samples)

    family('auditgap_host_reachable', 'Host answered the diagnose run (1) or not (0).',
           ['auditgap_host_reachable{host="%s"} %d' % (_label(e['host']), 1 if e.get('reachable') else 0)
            for e in doc['hosts']])
    family('auditgap_host_severity', 'Worst finding severity (0 ok, 1 info, 2 warning, 3 critical; -1 no data).',
           ['auditgap_host_severity{host="%s",status="%s"} %d' % (
               _label(e['host']), _label(e.get('status')), _SEVERITY_VALUE.get(e.get('severity'), -1))
            for e in doc['hosts']])
    for key, name, help_text in _PROM_GAUGES:
        samples = []
        for entry in doc['hosts']:
            value = num((entry.get('metrics') or {}).get(key))
            if value is not None:
                samples.append('%s{host="%s"} %s' % (name, _label(entry['host']), _prom_value(value)))
        family(name, help_text, samples)
    samples = []
    for entry in doc['hosts']:
        counts = {}
        for finding in entry.get('findings') or []:
            k = (finding['id'], finding['severity'])
            counts[k] = counts.get(k, 0) + 1
        for (fid, sev), count in sorted(counts.items()):
            samples.append('auditgap_findings{host="%s",id="%s",severity="%s"} %d'
                           % (_label(entry['host']), _label(fid), _label(sev), count))
    family('auditgap_findings', 'Findings by host, id and severity.', samples)
    family('auditgap_fleet_hosts', 'Hosts of the last diagnose run by status.',
           ['auditgap_fleet_hosts{status="%s"} %d' % (s, doc['summary']['by_status'].get(s, 0)) for s in STATUS_ORDER])
    if generated_epoch is None:
        generated_epoch = _epoch(doc.get('generated_at'))
    if generated_epoch is not None:
        family('auditgap_report_timestamp_seconds', 'When the report was generated (Unix time).',
               ['auditgap_report_timestamp_seconds %d' % generated_epoch])
    return '\n'.join(out) + '\n'


def _epoch(stamp):
    import calendar
    import time
    try:
        return calendar.timegm(time.strptime(str(stamp), '%Y-%m-%dT%H:%M:%SZ'))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{margin-bottom:.2em} .meta{color:#666;font-size:.9em}
.cards{display:flex;gap:.6em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em .9em;min-width:6em;text-align:center}
.card b{display:block;font-size:1.6em}
.critical{background:#fde2e1;border-color:#d62728}.warning{background:#fff3d6;border-color:#ff9f0e}
.info{background:#e8f1fb;border-color:#1f77b4}.ok{background:#e6f5e6;border-color:#2ca02c}
.unreachable,.failed{background:#eee;border-color:#555}
.badge{display:inline-block;padding:.1em .5em;border-radius:4px;font-size:.85em;border:1px solid #999}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
table.findings{table-layout:fixed;width:100%}table.findings col.sev{width:6em}table.findings col.id{width:14em}table.findings col.fix{width:22em}
section.host{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.chain{overflow-wrap:anywhere;font-family:monospace;background:#f6f6f6;padding:.5em;border-left:4px solid #d62728;white-space:pre-wrap}
.error{font-family:monospace;background:#f6f6f6;padding:.5em;border-left:4px solid #555;white-space:pre-wrap}
.charts{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}
pre{white-space:pre-wrap;font-size:.8em;max-height:30em;overflow:auto;background:#fafafa}
code{background:#f3f3f3}
details.host{border:1px solid #ccc;border-radius:6px;padding:.3em 1em;margin:.5em 0;content-visibility:auto;contain-intrinsic-size:auto 3em}
details.host>summary{cursor:pointer;font-weight:bold;padding:.2em 0}
details.host>summary .line{font-weight:normal;color:#444;font-family:monospace;font-size:.85em;margin-left:.5em}
#search{font-size:1em;padding:.3em .5em;width:28em;max-width:90%}
#worst td.line{font-family:monospace;font-size:.85em}#worst td:first-child,#worst td:nth-child(2){white-space:nowrap}
"""


# The page stays usable at 10,000 hosts (docs/scale.md): every host is listed, the first
# HTML_WORST in a table on the first screen, the first HTML_DETAILED with charts and
# evidence; the others with their findings and chain (the rest is in <host>.json).
HTML_WORST = 20
HTML_DETAILED = 200
HTML_TEXT_MAX = 4000
HTML_EVIDENCE_MAX = 20000

_SEARCH_JS = """
(function(){var q=document.getElementById('search');if(!q){return;}
var items=document.querySelectorAll('[data-host]'),count=document.getElementById('search-count'),
healthy=document.getElementById('healthy');
function run(){var v=q.value.trim().toLowerCase(),shown=0,shownHealthy=0;
for(var i=0;i<items.length;i++){var el=items[i];
var hit=!v||el.getAttribute('data-host').indexOf(v)>=0||(el.getAttribute('data-ids')||'').indexOf(v)>=0;
el.hidden=!hit;if(hit){shown++;if(el.tagName==='TR'&&el.parentNode.closest('#healthy')){shownHealthy++;}}
if(hit&&v&&el.tagName==='DETAILS'&&items.length<2000){el.open=true;}}
if(healthy&&v){healthy.open=shownHealthy>0;}
count.textContent=v?shown+' match(es)':'';}
q.addEventListener('input',run);if(q.value){run();}})();
"""


def _clip(text, limit=HTML_TEXT_MAX):
    text = str(text or '')
    return text if len(text) <= limit else text[:limit] + ' ... (%d more characters in <host>.json)' % (len(text) - limit)


def _host_ids(entry):
    return ' '.join(sorted(set(str(f.get('id')) for f in entry.get('findings') or [] if isinstance(f, dict))))


def _host_line(entry):
    if entry.get('error'):
        return one_line(entry['error'], 200)
    if entry.get('chain'):
        return one_line(entry['chain'], 200)
    return ', '.join('%s(%s)' % (f.get('id'), f.get('severity')) for f in entry.get('findings') or []
                     if isinstance(f, dict) and f.get('severity') != 'info') or '-'


def _worst_table(noisy):
    if not noisy:
        return '<p id="worst">No host has a warning or worse.</p>'
    rows = ['<table id="worst"><tr><th>host</th><th>status</th><th>findings</th><th>chain / error</th></tr>']
    for entry in noisy[:HTML_WORST]:
        status = entry.get('status') or 'ok'
        rows.append('<tr class="%s"><td><a href="#%s">%s</a></td><td>%s</td><td>%s</td><td class="line">%s</td></tr>' % (
            svgchart.esc(status), svgchart.esc('host-' + safe_filename(entry['host'])), svgchart.esc(entry['host']),
            svgchart.esc(status.upper()), svgchart.esc(_host_ids(entry) or '-'), svgchart.esc(_host_line(entry))))
    rows.append('</table>')
    if len(noisy) > HTML_WORST:
        rows.append('<p class="meta">%d more host(s) below, worst first.</p>' % (len(noisy) - HTML_WORST))
    return ''.join(rows)


def render_html(doc, timeline_svg=None, max_bars=40):
    """Self-contained HTML: inline CSS, SVG and script (the host search), no external assets."""
    return ''.join(render_html_chunks(doc, timeline_svg, max_bars))


def render_html_chunks(doc, timeline_svg=None, max_bars=40):
    """fleet.html in pieces (written as they come: a 10,000-host page is never one string)."""
    summ = doc['summary']
    hosts = doc['hosts']
    yield ''.join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<title>auditgap fleet report %s</title>' % svgchart.esc(doc.get('generated_at')),
        '<style>%s</style></head><body>' % _CSS,
        '<h1>auditgap fleet report</h1>',
        '<p class="meta">Generated %s by auditgap %s &middot; %d host(s) &middot; report dir %s</p>' % (
            svgchart.esc(doc.get('generated_at')), svgchart.esc(doc.get('auditgap_version')), summ['hosts'],
            svgchart.esc(doc.get('report_dir') or '-'))])
    parts = ['<h2>Fleet summary</h2><div class="cards">']
    for status in STATUS_ORDER:
        parts.append('<div class="card %s" id="count-%s"><b>%d</b>%s</div>'
                     % (status, status, summ['by_status'].get(status, 0), status))
    parts.append('</div>')
    noisy = [e for e in hosts if not (e.get('status') == 'ok' and not e.get('error'))]
    quiet = [e for e in hosts if e.get('status') == 'ok' and not e.get('error')]
    parts.append('<p><label>Find a host or finding id: <input id="search" type="search" placeholder="host name or finding id">'
                 '</label> <span id="search-count" class="meta"></span></p>')
    parts.append('<h2>Worst hosts</h2>')
    parts.append(_worst_table(noisy))
    if summ['by_id']:
        parts.append('<h2>Findings by id</h2><table id="by-id"><tr><th>finding</th><th>critical</th><th>warning</th>'
                     '<th>info</th><th>hosts</th><th>first hosts</th></tr>')
        for fid in sorted(summ['by_id'], key=lambda f: (-summ['by_id'][f]['critical'], -summ['by_id'][f]['warning'], f)):
            row = summ['by_id'][fid]
            parts.append('<tr><td><code>%s</code></td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%s</td></tr>' % (
                svgchart.esc(fid), row['critical'], row['warning'], row['info'], len(row['hosts']),
                svgchart.esc(', '.join(row['hosts'][:12]) + (' ...' if len(row['hosts']) > 12 else ''))))
        parts.append('</table>')
    yield ''.join(parts)
    reachable = [e for e in hosts if e.get('reachable') and (e.get('metrics') or {}).get('audit_supported')]
    backlog_items = sorted(((e['host'], (e.get('metrics') or {}).get('audit_backlog_peak_ratio')) for e in reachable),
                           key=lambda item: -(num(item[1]) or 0))[:max_bars]
    throttle_items = sorted(((e['host'], (e.get('metrics') or {}).get('consumer_throttled_ratio')) for e in reachable
                             if (e.get('metrics') or {}).get('consumer_throttled_ratio') is not None),
                            key=lambda item: -(num(item[1]) or 0))[:max_bars]
    thresholds = doc.get('thresholds') or {}
    backlog_thr = num(thresholds.get('backlog_saturated_ratio')) or 0.8
    throttle_thr = num(thresholds.get('throttled_ratio_warn')) or 0.2
    parts = ['<div class="charts">']
    if backlog_items:
        parts.append(svgchart.bar_chart(_colored(backlog_items, backlog_thr), 'Backlog peak / backlog_limit',
                                        x_max=1, width=520, thresholds=[{'x': backlog_thr, 'label': 'saturated'}]))
    if throttle_items:
        parts.append(svgchart.bar_chart(_colored(throttle_items, throttle_thr), 'Audit consumer throttled ratio',
                                        x_max=1, width=520, thresholds=[{'x': throttle_thr, 'label': 'warn'}]))
    parts.append('</div>')
    parts.append(since_last_run_html(doc.get('since_last_run')))
    if timeline_svg:
        parts.append('<h2>Incident lab timeline</h2><div class="timeline">%s</div>'
                     % svg_img(timeline_svg, 'incident lab timeline'))
    parts.append('<h2>Hosts (worst first)</h2>')
    yield ''.join(parts)
    for index, entry in enumerate(noisy):
        yield _html_host(entry, detailed=index < HTML_DETAILED, open_=index < HTML_WORST)
    if quiet:
        parts = ['<details id="healthy"><summary><h2 style="display:inline">Healthy hosts (%d)</h2></summary>'
                 '<table><tr><th>host</th><th>backlog peak</th><th>limit</th><th>consumer pid</th><th>throttled</th></tr>'
                 % len(quiet)]
        for index, entry in enumerate(quiet):
            m = entry.get('metrics') or {}
            parts.append('<tr data-host="%s"><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>' % (
                svgchart.esc(str(entry['host']).lower()), svgchart.esc(entry['host']), _fmt(m.get('audit_backlog_peak')),
                _fmt(m.get('audit_backlog_limit')), _fmt(m.get('audit_consumer_pid')),
                _pct(m.get('consumer_throttled_ratio'))))
            if index % 1000 == 999:
                yield ''.join(parts)
                parts = []
        parts.append('</table></details>')
        yield ''.join(parts)
    yield '<script>%s</script></body></html>\n' % _SEARCH_JS


def _timeline(entry):
    """The audit sample's timeline points that have a numeric time, in order (a point a host
    sent garbage in is left out of the charts; the facts keep it)."""
    sample = (((entry.get('facts') or {}).get('audit_status') or {}).get('sample') or {})
    points = sample.get('timeline') if isinstance(sample, dict) else None
    if not isinstance(points, list):
        return []
    return [dict(p, t_s=num(p.get('t_s'))) for p in points if isinstance(p, dict) and num(p.get('t_s')) is not None]


def _wait_series(entry, timeline):
    """[(t_s, ms slept since the window start)] when backlog_wait_time_actual grew, else []."""
    hz = num((((entry.get('facts') or {}).get('audit_status') or {}).get('hz') or {}).get('value'))
    values = [(num(p.get('t_s')), num(p.get('backlog_wait_time_actual_jiffies'))) for p in timeline]
    values = [(t, v) for t, v in values if t is not None and v is not None]
    if not hz or len(values) < 2 or values[-1][1] <= values[0][1]:
        return []
    start = values[0][1]
    return [(t, (v - start) * 1000.0 / hz) for t, v in values]


def _colored(items, threshold):
    return [{'label': label, 'value': value,
             'color': '#d62728' if (num(value) or 0) >= threshold else '#1f77b4'} for label, value in items]


def svg_img(svg, alt):
    """An SVG document as an ``<img>`` with a data: URI: the page stays self-contained, and a
    browser runs no script and loads nothing an SVG shown as an image holds."""
    data = base64.b64encode(svg.encode('utf-8')).decode('ascii')
    return '<img alt="%s" src="data:image/svg+xml;base64,%s">' % (svgchart.esc(alt), data)


def _html_host(entry, detailed=True, open_=True):
    """One host as a <details> section: open for the worst, charts and evidence when ``detailed``."""
    status = entry.get('status') or 'ok'
    host_id = 'host-' + safe_filename(entry['host'])
    parts = ['<details class="host" id="%s" data-host="%s" data-ids="%s"%s><summary>%s '
             '<span class="badge %s">%s</span><span class="line">%s</span></summary>'
             % (svgchart.esc(host_id), svgchart.esc(str(entry['host']).lower()), svgchart.esc(_host_ids(entry)),
                ' open' if open_ else '', svgchart.esc(entry['host']), svgchart.esc(status),
                svgchart.esc(status.upper()), '' if open_ else svgchart.esc(_host_line(entry)))]
    if entry.get('error'):
        parts.append('<div class="error">Error: %s</div>' % svgchart.esc(_clip(entry['error'])))
    if entry.get('chain'):
        parts.append('<p><b>Causal chain</b></p><div class="chain">%s</div>' % svgchart.esc(_clip(entry['chain'])))
    metrics = entry.get('metrics') or {}
    charts = []
    if not detailed:
        pass
    elif metrics.get('audit_supported'):
        charts.append(svgchart.gauge(metrics.get('audit_backlog_peak'), metrics.get('audit_backlog_limit'),
                                     'backlog peak / limit', warn_ratio=0.8))
        if metrics.get('consumer_throttled_ratio') is not None:
            charts.append(svgchart.gauge(metrics.get('consumer_throttled_ratio'), 1, 'consumer throttled',
                                         warn_ratio=0.2, text=_pct(metrics.get('consumer_throttled_ratio'))))
    timeline = _timeline(entry) if detailed else []
    if timeline and num(metrics.get('audit_backlog_limit')):
        limit = num(metrics.get('audit_backlog_limit'))
        lost0 = num(timeline[0].get('lost')) or 0
        series = [{'name': 'backlog', 'points': [(p['t_s'], num(p.get('backlog'))) for p in timeline
                                                 if num(p.get('backlog')) is not None]},
                  {'name': 'lost (since start)',
                   'points': [(p['t_s'], (num(p.get('lost')) or 0) - lost0) for p in timeline]}]
        top = max([limit * 1.1, 1] + [num(p.get('backlog')) or 0 for p in timeline])
        charts.append(svgchart.line_chart(series, 'Backlog against limit during the sample', 'records',
                                          width=460, height=200, y_max=top,
                                          hlines=[{'y': limit, 'label': 'backlog_limit %s' % _fmt(limit)}]))
    wait = _wait_series(entry, timeline)
    if wait:
        charts.append(svgchart.line_chart([{'name': 'slept in audit_log_start', 'points': wait, 'color': '#d62728'}],
                                          'Sleep accrued by audited syscalls', 'ms', width=460, height=200))
    if charts:
        parts.append('<div class="charts">%s</div>' % ''.join(charts))
    if entry.get('findings'):
        parts.append('<table class="findings"><col class="sev"><col class="id"><col><col class="fix">'
                     '<tr><th>severity</th><th>finding</th><th>summary</th><th>fix</th></tr>')
        for finding in entry['findings']:
            rem = finding.get('remediation')
            fix = ('role <code>%s</code><br><code>%s</code>' % (svgchart.esc(rem.get('role')), svgchart.esc(_vars_json(rem)))
                   if rem else '-')
            parts.append('<tr class="%s"><td>%s</td><td><b>%s</b><br><code>%s</code></td><td>%s</td><td>%s</td></tr>' % (
                svgchart.esc(finding['severity']), svgchart.esc(finding['severity']), svgchart.esc(finding.get('title') or finding['id']),
                svgchart.esc(finding['id']), svgchart.esc(_clip(finding['summary'])), fix))
        parts.append('</table>')
        if detailed:
            parts.append('<details><summary>Evidence</summary><pre>%s</pre></details>' % svgchart.esc(_clip(json.dumps(
                {f['id']: f.get('evidence') for f in entry['findings']}, indent=1, sort_keys=True, default=str),
                HTML_EVIDENCE_MAX)))
    if not detailed:
        parts.append('<p class="meta">Charts and evidence: %s</p>' % svgchart.esc(
            entry.get('report_file') or safe_filename(entry['host']) + '.json'))
    parts.append('</details>')
    return ''.join(parts)
