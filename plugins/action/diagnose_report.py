# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side step of diagnose.yml: read every diagnosed host's results
from hostvars, compute findings (module_utils/diagnosis.py), write the fleet
reports (docs/reports.md).

Runs entirely in the controller process (no module is shipped anywhere), so
one task writes the reports of one host or of thousands.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os

import jinja2
from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis, report, usercache

display = Display()
_ARGS = frozenset(('report_dir', 'base_dir', 'hosts', 'thresholds', 'timeline_svg', 'html_template', 'latest_link', 'formats',
                   'print_summary', 'stats', 'stats_findings'))
FORMATS = ('json', 'md', 'html', 'prom')


def host_entries(inputs, thresholds):
    """[entry] for (host, results) pairs with the same thresholds (benchmarks, tests), checked
    for the report as the action checks them (report.checked_entries)."""
    return report.checked_entries([diagnosis.safe_host_entry(host, results, dict(thresholds)) for host, results in inputs])


def raw_vars(hostvars, host):
    """A host's variables without templating them (HostVars.raw_get): the fan-out's registered
    result is the whole fleet's on every host, and templating it for each host would make the
    report step quadratic in the fleet size. Registered results are data, never templates."""
    raw_get = getattr(hostvars, 'raw_get', None)
    if raw_get is None:
        return hostvars.get(host) or {}
    value = raw_get(host)
    return value if hasattr(value, 'get') else {}


def fanout_result(raw, host):
    """This host's gather result from the fan-out (diagnose_fanout_result.results[host], registered
    on every host of the play by the one diagnose_fanout task), or None. Only the host's own entry
    is read (the registered value is the whole fleet's)."""
    try:
        fanned = raw.get('diagnose_fanout_result')
        results = fanned.get('results') if hasattr(fanned, 'get') else None
        return results.get(host) if hasattr(results, 'get') else None
    except Exception:  # an unusable value: as if the fan-out had not run
        return None


def host_results(host_vars, host, raw=None):
    """{result name: registered result} of one host: the diagnose role's registered results
    (diagnosis.RESULT_NAMES), the fan-out's entry for the host as its ``gather`` result
    (docs/scale.md). ``raw``: the host's untemplated variables (raw_vars), where the fan-out's
    result is read."""
    results = {}
    for name, var in zip(diagnosis.RESULT_ORDER, diagnosis.RESULT_NAMES):
        value = host_vars.get(var)
        if value is not None:
            results[name] = diagnosis.plain(value)
    gathered = fanout_result(host_vars if raw is None else raw, host)
    if gathered is not None:
        results['gather'] = diagnosis.plain(gathered)
    return results


RENDERERS = {'json': ('fleet.json', report.fleet_json_chunks), 'md': ('fleet.md', report.render_markdown),
             'html': ('fleet.html', report.render_html_chunks), 'prom': ('fleet.prom', report.render_prometheus)}


def write_reports(doc, report_dir, formats, timeline_svg=None, html_template=None):
    """<host>.json files, then the fleet formats; fleet.json last (its presence means complete).
    Each file is written through an O_EXCL temp file in report_dir (report.write_atomic)."""
    os.makedirs(report_dir, mode=0o750, exist_ok=True)
    files = []
    for entry in doc['hosts']:
        path = os.path.join(report_dir, entry.get('report_file') or report.safe_filename(entry['host']) + '.json')
        report.write_atomic(path, report.to_json_line(dict(entry, generated_at=doc['generated_at'],
                                                           auditgap_version=report.AUDITGAP_VERSION)) + '\n',
                            report.REPORT_MODE)
        files.append(path)
    for fmt in sorted(formats, key=lambda f: f == 'json'):
        name, render = RENDERERS[fmt]
        path = os.path.join(report_dir, name)
        text = render(doc, timeline_svg=timeline_svg, template=html_template) if fmt == 'html' else render(doc)
        report.write_atomic(path, text, report.FILE_MODES.get(name, report.REPORT_MODE))
        files.append(path)
    return files


def check_thresholds(thresholds):
    """AnsibleError for unusable report-wide thresholds: one clear error instead of every
    host failing on the same value."""
    bad = diagnosis.threshold_errors(thresholds) if isinstance(thresholds, dict) else ['thresholds must be a mapping']
    if bad:
        raise AnsibleError('diagnose_report: %s; no report written' % '; '.join(bad))


def run_stats(result, report_dir, formats, findings):
    """The custom stats of a diagnose run, returned as set_stats returns them (Ansible sets any
    result's ansible_stats): auditgap_report, and with ``findings`` remediate_findings, every finding
    of the fleet.json just written with its host (the remediation filter's reading of it). One task
    for the reports and their stats: each task is a worker process (docs/scale.md)."""
    data = {'auditgap_report': {'report_dir': result['report_dir'], 'summary': result['summary'],
                                'summary_lines': result['summary_lines']}}
    if findings and 'json' in formats:
        # imported only when asked for: the collection loader compiles a plugin's source each run
        from ansible_collections.auditgap.fleet.plugins.filter import remediation
        with open(os.path.join(report_dir, 'fleet.json')) as f:
            data['remediate_findings'] = remediation.auditgap_fleet_findings(json.load(f))
    return {'data': data, 'per_host': False, 'aggregate': False}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = _ARGS

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args  # unknown options: ActionBase.run refuses them (_VALID_ARGS)
        hostvars = task_vars.get('hostvars') or {}
        hosts = args.get('hosts')
        # each host's untemplated variables, read once (every read is the variable manager's
        # whole merge for the host: several a host made it a tenth of a fan-out host's CPU)
        raws = {}
        if hosts is None:
            for h in (task_vars.get('groups') or {}).get('all', []):
                if h in hostvars:
                    raws[h] = raw_vars(hostvars, h)
            hosts = [h for h, raw in raws.items() if any(n in raw for n in diagnosis.RESULT_NAMES[:2])
                     or fanout_result(raw, h) is not None]
        if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)):
            raise AnsibleError('diagnose_report: hosts must be a list of inventory host names')
        formats = args.get('formats') or list(FORMATS)
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise AnsibleError('diagnose_report: unknown format(s) %s (known: %s)' % (bad, ', '.join(FORMATS)))
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        report_dir = args.get('report_dir')
        latest = args.get('latest_link')
        if not report_dir:
            report_dir = report.default_report_dir(now, os.path.expanduser(to_text(args.get('base_dir') or 'reports')))
            latest = True if latest is None else latest
        report_dir = os.path.expanduser(to_text(report_dir))
        arg_thresholds = diagnosis.plain(args.get('thresholds') or {})
        check_thresholds(arg_thresholds)
        html_template = os.path.expanduser(to_text(args['html_template'])) if args.get('html_template') else None
        if 'html' in formats:
            try:  # a user's template that does not load fails here, once, not every host
                report.html_template(html_template, cache_dir=usercache.cache_dir())
                report.html_template(html_template, 'fleet_host.html.j2')
            except Exception as err:
                raise AnsibleError('diagnose_report: html_template %s: %s; no report written'
                                   % (html_template or report.HTML_TEMPLATE, to_text(err)))

        entries = []
        for host in hosts:
            hv = hostvars.get(host, {})
            results = host_results(hv, host, raws[host] if host in raws else raw_vars(hostvars, host))
            thresholds = diagnosis.thresholds_from_vars(hv)
            thresholds.update(arg_thresholds)
            entries.append(diagnosis.safe_host_entry(host, results, thresholds))

        timeline_svg = None
        svg_path = args.get('timeline_svg') or os.path.join(report_dir, 'lab-timeline.svg')
        if os.path.isfile(svg_path):
            timeline_svg, why = report.read_svg(svg_path)
            if why:
                display.warning('timeline SVG %s not embedded: %s' % (svg_path, why))
        generated_at = now.strftime('%Y-%m-%dT%H:%M:%SZ')
        entries = report.checked_entries(entries, html_template)
        doc = report.fleet_document(entries, generated_at, thresholds=arg_thresholds,
                                    report_dir=os.path.abspath(report_dir))
        try:
            files = write_reports(doc, report_dir, formats, timeline_svg, html_template)
        except (IOError, OSError, jinja2.TemplateError) as err:
            what = 'the fleet.html template failed in' if isinstance(err, jinja2.TemplateError) else 'cannot write the reports to'
            result.update({'failed': True, 'changed': False, 'msg': '%s %s: %s' % (what, report_dir, to_text(err))})
            return result
        if latest:
            result['latest'] = report.point_latest(report_dir)
        lines = report.summary_lines(doc)
        if boolean(args.get('print_summary', True), strict=False):
            display.display('\n'.join(lines))
        result.update({'changed': False, 'report_dir': os.path.abspath(report_dir), 'files': files,
                       'summary': doc['summary'], 'summary_lines': lines})
        if boolean(args.get('stats', False), strict=False):
            result['ansible_stats'] = run_stats(result, report_dir, formats,
                                                boolean(args.get('stats_findings', False), strict=False))
        return result
