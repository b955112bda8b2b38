# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: UP001, UP009, UP010, UP031
"""Fleet reports: pure functions from host summaries / the fleet document to
JSON, Markdown, self-contained HTML and a Prometheus textfile.

The fleet document (``fleet.json``, docs/reports.md) is built by
``fleet_document(hosts, ...)`` from the host summaries that the findings
filter (``auditgap_host_summary``) produces.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

AUDITGAP_VERSION = '0.1.0'
SCHEMA = 'auditgap.fleet/v1'
STATUS_ORDER = ('critical', 'warning', 'failed', 'unreachable', 'info', 'ok')
_STATUS_RANK = {s: i for i, s in enumerate(STATUS_ORDER)}
SEVERITIES = ('critical', 'warning', 'info')


def safe_filename(host):
    """A file name for ``<host>.json`` (no path separators, no leading dot)."""
    name = re.sub(r'[^A-Za-z0-9._@:+-]', '_', str(host)).lstrip('.')
    return name or '_'


def host_sort_key(entry):
    return (_STATUS_RANK.get(entry.get('status'), 99), str(entry.get('host')))


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
    """The fleet.json document: hosts sorted by severity (worst first)."""
    ordered = sorted(hosts, key=host_sort_key)
    doc = {'schema': SCHEMA, 'auditgap_version': AUDITGAP_VERSION, 'generated_at': generated_at,
           'report_dir': report_dir, 'thresholds': thresholds or {},
           'summary': fleet_summary(ordered), 'hosts': ordered}
    if extra:
        doc.update(extra)
    return doc


def to_json(data):
    return json.dumps(data, indent=2, sort_keys=True, default=str) + '\n'


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
            lines.append('%s %s: %s' % (entry['status'].upper(), entry['host'], _one_line(entry.get('error'))))
            continue
        ids = ', '.join('%s(%s)' % (f['id'], f['severity']) for f in entry.get('findings') or []
                        if f['severity'] != 'info')
        lines.append('%s %s: %s' % (entry['status'].upper(), entry['host'], ids))
        if entry.get('chain'):
            lines.append('  %s' % entry['chain'])
    if doc.get('report_dir'):
        lines.append('report: %s' % doc['report_dir'])
    return lines


def _one_line(text, width=300):
    text = ' '.join(str(text or '').split())
    return text if len(text) <= width else text[:width - 3] + '...'
