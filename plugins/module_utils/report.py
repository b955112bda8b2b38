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

from ansible_collections.auditgap.fleet.plugins.module_utils import promtext, svgchart, usercache
from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import (DEFAULT_THRESHOLDS, STATUS_ORDER, STATUS_RANK, failed_entry, num,
                                                                               one_line, pct, plain)


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


def checked_entries(entries, html_template=None):
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
                html_host(single['hosts'][0], html_template)  # healthy hosts are one table row of numbers
            render_prometheus(single)
        except Exception as err:  # whatever a bad value raises, the host is reported
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
HTML_TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             'roles', 'report', 'templates', 'fleet.html.j2')
_TEMPLATES = {}


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


def write_atomic(path, text, mode=0o640, sync=False):
    """Write ``path`` (``text``: a string or an iterable of strings, written as they come)
    through a temp file made with O_EXCL in the same directory (a planted file or symlink is
    never followed; ``.<name>.*.tmp``, which node_exporter's textfile collector skips), then
    rename it over ``path``; ``sync``: on disk before the rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path)[:60], suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            os.fchmod(handle.fileno(), mode)
            if isinstance(text, str):
                handle.write(text)
            else:
                handle.writelines(text)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
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
            sized = ['- %s sized: %s' % (_md_cell(r['role']), _md_cell(r['sizing']['formula']))
                     for r in rec['remediations'] if isinstance(r.get('sizing'), dict) and r['sizing'].get('formula')]
            if sized:
                lines += sized + ['']
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


# ---------------------------------------------------------------- Prometheus

# (host metrics key, metric name, divisor to the base unit); names and help: promtext.METRICS
_PROM_GAUGES = (
    ('audit_supported', 'auditgap_audit_supported', 1),
    ('audit_enabled', 'auditgap_audit_enabled', 1),
    ('audit_consumer_pid', 'auditgap_audit_consumer_pid', 1),
    ('audit_backlog', 'auditgap_audit_backlog', 1),
    ('audit_backlog_limit', 'auditgap_audit_backlog_limit', 1),
    ('audit_lost', 'auditgap_audit_lost_total', 1),
    ('audit_lost_per_s', 'auditgap_audit_lost_per_second', 1),
    ('audit_backlog_peak_ratio', 'auditgap_audit_backlog_peak_ratio', 1),
    ('audit_wait_accrued_ms', 'auditgap_audit_wait_accrued_seconds', 1000.0),
    ('audit_sample_seconds', 'auditgap_audit_sample_seconds', 1),
    ('consumer_throttled_ratio', 'auditgap_consumer_throttled_ratio', 1),
    ('consumer_limit_cores', 'auditgap_consumer_cpu_limit_cores', 1),
)
# (audit status key in ms, metric name in seconds): the kernel's wait time and its counter
_PROM_STATUS_MS = (('backlog_wait_time_ms', 'auditgap_audit_backlog_wait_time_seconds'),
                   ('backlog_wait_time_actual_ms', 'auditgap_audit_backlog_wait_time_actual_seconds_total'))


def _audit_status(entry):
    facts = entry.get('facts')
    audit = facts.get('audit_status') if isinstance(facts, dict) else None
    status = audit.get('status') if isinstance(audit, dict) else None
    return status if isinstance(status, dict) else {}


def _scaled(value, divisor):
    number = num(value)
    return None if number is None else (number / divisor if divisor != 1 else number)


def render_prometheus(doc, generated_epoch=None):
    """fleet.prom: one sample per host and metric, base units (module_utils/promtext.py)."""
    out = promtext.Textfile()
    hosts = doc['hosts']
    labels = [promtext.labels_text((('host', e['host']),)) for e in hosts]
    out.family('auditgap_host_reachable', [(lab, 1 if e.get('reachable') else 0) for lab, e in zip(labels, hosts)])
    out.family('auditgap_host_severity', [((('host', e['host']), ('status', e.get('status'))),
                                           promtext.SEVERITY_VALUE.get(e.get('severity'), -1)) for e in hosts])
    metrics = [e.get('metrics') or {} for e in hosts]
    for key, name, divisor in _PROM_GAUGES:
        out.family(name, [(lab, _scaled(m.get(key), divisor)) for lab, m in zip(labels, metrics)])
    statuses = [_audit_status(e) for e in hosts]
    for key, name in _PROM_STATUS_MS:
        out.family(name, [(lab, _scaled(st.get(key), 1000.0)) for lab, st in zip(labels, statuses)])
    samples = []
    for entry in hosts:
        counts = {}
        for finding in entry.get('findings') or []:
            k = (finding['id'], finding['severity'])
            counts[k] = counts.get(k, 0) + 1
        samples += [((('host', entry['host']), ('id', fid), ('severity', sev)), count)
                    for (fid, sev), count in sorted(counts.items())]
    out.family('auditgap_findings', samples)
    out.family('auditgap_fleet_hosts', [((('status', s),), doc['summary']['by_status'].get(s, 0)) for s in STATUS_ORDER])
    if generated_epoch is None:
        generated_epoch = _epoch(doc.get('generated_at'))
    out.family('auditgap_report_timestamp_seconds', [((), generated_epoch)])
    return out.text()


def _epoch(stamp):
    import calendar
    import time
    try:
        return calendar.timegm(time.strptime(str(stamp), '%Y-%m-%dT%H:%M:%SZ'))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- HTML

# fleet.html: a Jinja2 template, autoescaped (roles/report/templates/fleet.html.j2; a user's copy
# through report_html_template). The page stays usable at 10,000 hosts (docs/scale.md): every host is listed, the first
# HTML_WORST in a table on the first screen, the first HTML_DETAILED with charts and
# evidence; the others with their findings and chain (the rest is in <host>.json).
HTML_WORST = 20
HTML_DETAILED = 200
HTML_TEXT_MAX = 4000
HTML_EVIDENCE_MAX = 20000


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


def _bytecode_cache(directory):
    """Jinja's compiled templates kept in ``directory`` (``usercache.private_dir`` only): the report
    step compiles fleet.html's two templates once, not on every run (docs/scale.md). Jinja names
    each file by the template and reloads when the source's checksum differs; a cache that
    cannot be written is left alone (the template was compiled all the same)."""
    import jinja2

    class Cache(jinja2.FileSystemBytecodeCache):
        def dump_bytecode(self, bucket):
            try:
                super(Cache, self).dump_bytecode(bucket)
            except (IOError, OSError):
                pass

    return Cache(directory, 'report-jinja-%s.cache')


def html_template(path=None, name=None, cache_dir=None):
    """A template of fleet.html (Jinja2, autoescaped): ``path`` (a user's copy, which may extend
    ``fleet.html.j2``; templates beside it are found first), else the role report's own;
    ``name``: another template of the same directories (``fleet_host.html.j2``). ``cache_dir``
    (the first call for a ``path`` decides): a directory for the compiled templates, used when
    it is private to this user (the controller's usercache.cache_dir(); host mode keeps none)."""
    path = os.path.abspath(path or HTML_TEMPLATE)
    if path not in _TEMPLATES:
        import jinja2
        loader = jinja2.FileSystemLoader([os.path.dirname(path), os.path.dirname(HTML_TEMPLATE)])
        cache = _bytecode_cache(cache_dir) if cache_dir and usercache.make_private_dir(cache_dir) else None
        _TEMPLATES[path] = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                              keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
                                              bytecode_cache=cache)
    return _TEMPLATES[path].get_template(name or os.path.basename(path))


def render_html(doc, timeline_svg=None, max_bars=40, template=None):
    """Self-contained HTML: inline CSS, SVG and script (the host search), no external assets."""
    return ''.join(render_html_chunks(doc, timeline_svg, max_bars, template))


def _worst_row(entry):
    return {'status': entry.get('status') or 'ok', 'anchor': 'host-' + safe_filename(entry['host']), 'host': entry['host'],
            'ids': _host_ids(entry), 'line': _host_line(entry)}


def _quiet_row(entry):
    m = entry.get('metrics') or {}
    return {'host_lower': str(entry['host']).lower(), 'host': entry['host'], 'peak': _fmt(m.get('audit_backlog_peak')),
            'limit': _fmt(m.get('audit_backlog_limit')), 'pid': _fmt(m.get('audit_consumer_pid')),
            'throttled': _pct(m.get('consumer_throttled_ratio'))}


def render_html_chunks(doc, timeline_svg=None, max_bars=40, template=None):
    """fleet.html in pieces, rendered by the template (html_template) as it is written: a
    10,000-host page is never one string."""
    summ = doc['summary']
    hosts = doc['hosts']
    noisy = [e for e in hosts if not (e.get('status') == 'ok' and not e.get('error'))]
    quiet = [e for e in hosts if e.get('status') == 'ok' and not e.get('error')]
    by_id = [dict(summ['by_id'][fid], id=fid, hosts=len(summ['by_id'][fid]['hosts']),
                  first=', '.join(summ['by_id'][fid]['hosts'][:12]) + (' ...' if len(summ['by_id'][fid]['hosts']) > 12 else ''))
             for fid in sorted(summ['by_id'], key=lambda f: (-summ['by_id'][f]['critical'], -summ['by_id'][f]['warning'], f))]
    since = None
    if doc.get('since_last_run'):
        lines = since_last_run_lines(doc['since_last_run'])
        since = {'first': lines[0], 'changes': [('cause' if line.startswith('  ') else 'change', line.strip()) for line in lines[1:]]}
    context = {
        'generated_at': doc.get('generated_at'), 'version': doc.get('auditgap_version'), 'host_count': summ['hosts'],
        'report_dir': doc.get('report_dir'), 'cards': [(s, summ['by_status'].get(s, 0)) for s in STATUS_ORDER],
        'worst': [_worst_row(e) for e in noisy[:HTML_WORST]], 'more_noisy': max(0, len(noisy) - HTML_WORST),
        'by_id': by_id, 'charts': _fleet_charts(doc, max_bars), 'since': since,
        'timeline_img': svg_img(timeline_svg, 'incident lab timeline') if timeline_svg else None,
        'hosts': (_host_view(e, detailed=i < HTML_DETAILED, open_=i < HTML_WORST) for i, e in enumerate(noisy)),
        'quiet_count': len(quiet), 'quiet': (_quiet_row(e) for e in quiet)}
    return html_template(template).generate(context)


def _fleet_charts(doc, max_bars):
    reachable = [e for e in doc['hosts'] if e.get('reachable') and (e.get('metrics') or {}).get('audit_supported')]
    backlog_items = sorted(((e['host'], (e.get('metrics') or {}).get('audit_backlog_peak_ratio')) for e in reachable),
                           key=lambda item: -(num(item[1]) or 0))[:max_bars]
    throttle_items = sorted(((e['host'], (e.get('metrics') or {}).get('consumer_throttled_ratio')) for e in reachable
                             if (e.get('metrics') or {}).get('consumer_throttled_ratio') is not None),
                            key=lambda item: -(num(item[1]) or 0))[:max_bars]
    thresholds = doc.get('thresholds') or {}
    backlog_thr = num(thresholds.get('backlog_saturated_ratio')) or DEFAULT_THRESHOLDS['backlog_saturated_ratio']
    throttle_thr = num(thresholds.get('throttled_ratio_warn')) or DEFAULT_THRESHOLDS['throttled_ratio_warn']
    charts = []
    if backlog_items:
        charts.append(svgchart.bar_chart(_colored(backlog_items, backlog_thr), 'Backlog peak / backlog_limit',
                                         x_max=1, width=520, thresholds=[{'x': backlog_thr, 'label': 'saturated'}]))
    if throttle_items:
        charts.append(svgchart.bar_chart(_colored(throttle_items, throttle_thr), 'Audit consumer throttled ratio',
                                         x_max=1, width=520, thresholds=[{'x': throttle_thr, 'label': 'warn'}]))
    return charts


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


def _host_view(entry, detailed=True, open_=True):
    """One host's section of fleet.html (the template's host_section): open for the worst,
    charts and evidence when ``detailed``."""
    metrics = entry.get('metrics') or {}
    charts = []
    if detailed and metrics.get('audit_supported'):
        charts.append(svgchart.gauge(metrics.get('audit_backlog_peak'), metrics.get('audit_backlog_limit'),
                                     'backlog peak / limit', warn_ratio=DEFAULT_THRESHOLDS['backlog_saturated_ratio']))
        if metrics.get('consumer_throttled_ratio') is not None:
            charts.append(svgchart.gauge(metrics.get('consumer_throttled_ratio'), 1, 'consumer throttled',
                                         warn_ratio=DEFAULT_THRESHOLDS['throttled_ratio_warn'], text=_pct(metrics.get('consumer_throttled_ratio'))))
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
    findings = [{'severity': f['severity'], 'title': f.get('title') or f['id'], 'id': f['id'], 'summary': _clip(f['summary']),
                 'role': (f.get('remediation') or {}).get('role'),
                 'vars': _vars_json(f['remediation']) if f.get('remediation') else None}
                for f in entry.get('findings') or []]
    evidence = None
    if detailed and findings:
        evidence = _clip(json.dumps({f['id']: f.get('evidence') for f in entry['findings']}, indent=1, sort_keys=True,
                                    default=str), HTML_EVIDENCE_MAX)
    return {'anchor': 'host-' + safe_filename(entry['host']), 'host': entry['host'], 'host_lower': str(entry['host']).lower(),
            'ids': _host_ids(entry), 'open': open_, 'status': entry.get('status') or 'ok', 'line': _host_line(entry),
            'error': _clip(entry['error']) if entry.get('error') else None,
            'chain': _clip(entry['chain']) if entry.get('chain') else None,
            'charts': charts, 'findings': findings, 'evidence': evidence, 'detailed': detailed,
            'report_file': entry.get('report_file') or safe_filename(entry['host']) + '.json'}


def html_host(entry, template=None):
    """One host's section alone (checked_entries: a value the page cannot hold fails that host only)."""
    return html_template(template, 'fleet_host.html.j2').module.host_section(_host_view(entry))
