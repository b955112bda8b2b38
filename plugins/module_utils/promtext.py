# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text format for node_exporter's textfile collector: the one writer of auditgap's
metric files, ``fleet.prom`` (the report step, module_utils/report.py) and ``auditgap.prom``
(``auditgap audit``, auditgap/promfile.py).

Conventions (``promtool check metrics`` clean): every name starts with ``auditgap_``, base
units (seconds, ratios 0..1, cores), counters end in ``_total``, no timestamps on samples,
labels only from bounded sets. A metric name means one thing in both files: its type and
help are in METRICS, once.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SEVERITY_VALUE = {'ok': 0, 'info': 1, 'warning': 2, 'critical': 3}

METRICS = {
    # per host, both files
    'auditgap_host_severity': ('gauge', 'Worst finding severity (0 ok, 1 info, 2 warning, 3 critical; -1 no data).'),
    'auditgap_findings': ('gauge', 'Findings by host, id and severity.'),
    'auditgap_audit_backlog_limit': ('gauge', 'Audit backlog_limit (records).'),
    'auditgap_audit_backlog_peak_ratio': ('gauge', 'Peak audit backlog / backlog_limit in the sample window.'),
    'auditgap_audit_lost_per_second': ('gauge', 'Audit records lost per second in the sample window.'),
    'auditgap_audit_wait_accrued_seconds': (
        'gauge', 'Time tasks slept waiting for audit backlog space during the sample window (backlog_wait_time_actual growth).'),
    'auditgap_consumer_throttled_ratio': ('gauge', 'Share of CFS periods in which the audit consumer was throttled.'),
    'auditgap_consumer_cpu_limit_cores': ('gauge', 'Tightest CPU limit of the audit consumer (cores; absent: no limit).'),
    # fleet.prom: one diagnose run
    'auditgap_host_reachable': ('gauge', 'Host answered the diagnose run (1) or not (0).'),
    'auditgap_audit_supported': ('gauge', 'Audit facts could be read (1) or not (0).'),
    'auditgap_audit_enabled': ('gauge', 'Audit status enabled (0 off, 1 on, 2 immutable).'),
    'auditgap_audit_consumer_pid': ('gauge', 'PID of the registered audit consumer (0 none).'),
    'auditgap_audit_backlog': ('gauge', 'Audit backlog (records queued) at collection time.'),
    'auditgap_audit_lost_total': ('counter', 'Audit records lost since boot (kernel counter).'),
    'auditgap_audit_backlog_wait_time_seconds': (
        'gauge', 'Audit backlog_wait_time: how long a task sleeps when the backlog is full.'),
    'auditgap_audit_backlog_wait_time_actual_seconds_total': (
        'counter', 'Time tasks waited for audit backlog space since boot (kernel counter backlog_wait_time_actual).'),
    'auditgap_audit_sample_seconds': ('gauge', 'Length of the audit sample window.'),
    'auditgap_fleet_hosts': ('gauge', 'Hosts of the last diagnose run by status.'),
    'auditgap_report_timestamp_seconds': ('gauge', 'When the report was generated (Unix time).'),
    # auditgap.prom: the scheduled audit
    'auditgap_build_info': ('gauge', 'auditgap version (always 1).'),
    'auditgap_last_run_timestamp_seconds': ('gauge', 'When the last audit run finished (Unix time).'),
    'auditgap_last_success_timestamp_seconds': ('gauge', 'When the last audit run that produced a report finished (Unix time).'),
    'auditgap_run_duration_seconds': ('gauge', 'Wall time of the last audit run.'),
    'auditgap_schedule_lateness_seconds': (
        'gauge', 'How late the last run started: now - (previous run + the schedule interval); 0 on time.'),
    'auditgap_last_run_outcome': ('gauge', 'Outcome of the last audit run (1 for the outcome it had, 0 for the others).'),
    'auditgap_runs_total': ('counter', 'Audit runs by outcome since the history database was created.'),
    'auditgap_scan_coverage_ratio': (
        'gauge', 'Share of inventory hosts whose state is known (ok or regressed) after the last run; unknown is never healthy.'),
    'auditgap_hosts': ('gauge', 'Hosts by coverage state (ok, regressed, unknown).'),
    'auditgap_host_state': ('gauge', 'Coverage state of each host (1 for its state, 0 for the others).'),
    'auditgap_consumer_cpu_usage_cores': ('gauge', 'CPU used by the audit consumer in the sample window (cores).'),
    'auditgap_host_regressed': ('gauge', 'Host regressed since its previous runs (1) or not (0).'),
    'auditgap_finding_new': ('gauge', 'Finding present now and absent in the host\'s previous run.'),
    'auditgap_finding_resolved': ('gauge', 'Finding present in the host\'s previous run and gone now.'),
    'auditgap_metric_regressed': ('gauge', 'Host metric worse than its recent baseline (value: the baseline).'),
    'auditgap_probable_cause_rank': (
        'gauge', 'What changed on a regressed host between its last good and first bad run (1 = most probable cause).'),
}


def label(value):
    return str(value).replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


def labels_text(pairs):
    """``{k="v",...}`` (empty without labels), values escaped."""
    return '{%s}' % ','.join('%s="%s"' % (k, label(v)) for k, v in pairs) if pairs else ''


def value_text(value):
    number = float(value)
    if number == int(number) and abs(number) < 1e15:
        return '%d' % int(number)
    return repr(number)


class Textfile:
    """Metric families in the text format, in the order they are added."""

    def __init__(self):
        self.lines = []

    def family(self, name, samples):
        """``samples``: [(labels, value)], labels as pairs ``(('host', 'web-01'),)`` or as text
        already made (``labels_text``); samples without a value, and a family left without
        samples, are left out."""
        lines = self.lines
        head = len(lines)
        for pairs, value in samples:
            if value is None:
                continue
            if len(lines) == head:
                kind, help_text = METRICS[name]
                lines.append('# HELP %s %s' % (name, help_text))
                lines.append('# TYPE %s %s' % (name, kind))
            lines.append('%s%s %s' % (name, pairs if isinstance(pairs, str) else labels_text(pairs), value_text(value)))

    def text(self):
        return '\n'.join(self.lines) + '\n'
