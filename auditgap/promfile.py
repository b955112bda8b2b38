"""The Prometheus textfile of ``auditgap audit`` (node_exporter's textfile collector),
written with the collection's one metrics writer (module_utils/promtext.py: its conventions,
names and help). ``render`` is pure; ``write_textfile`` puts the file in place atomically
(report.write_atomic, synced), so node_exporter never reads half a file.
"""
import os

from ansible_collections.auditgap.fleet.plugins.module_utils import promtext, report

from auditgap import changes

TEXTFILE_NAME = 'auditgap.prom'

# (history field, metric name)
HOST_GAUGES = (
    ('backlog_peak_ratio', 'auditgap_audit_backlog_peak_ratio'),
    ('lost_per_s', 'auditgap_audit_lost_per_second'),
    ('wait_accrued_s', 'auditgap_audit_wait_accrued_seconds'),
    ('throttled_ratio', 'auditgap_consumer_throttled_ratio'),
    ('limit_cores', 'auditgap_consumer_cpu_limit_cores'),
    ('usage_cores', 'auditgap_consumer_cpu_usage_cores'),
    ('backlog_limit', 'auditgap_audit_backlog_limit'),
)


def render(run, hosts, states, run_counts, last_success_at=None, version=None):
    """The textfile.

    run: {'started_at', 'finished_at', 'outcome', 'coverage_ratio'} (Unix seconds);
    hosts: [history-style host row + 'changes' (changes.compare)] for hosts of this run;
    states: {host: {'state', 'reason'}} (changes.coverage) for every host;
    run_counts: {outcome: runs since the database was created}.
    """
    out = promtext.Textfile()
    out.family('auditgap_build_info', [((('version', version or '?'),), 1)])
    out.family('auditgap_last_run_timestamp_seconds', [((), run.get('finished_at'))])
    out.family('auditgap_last_success_timestamp_seconds', [((), last_success_at)])
    duration = None
    if run.get('finished_at') is not None and run.get('started_at') is not None:
        duration = round(run['finished_at'] - run['started_at'], 3)
    out.family('auditgap_run_duration_seconds', [((), duration)])
    out.family('auditgap_schedule_lateness_seconds', [((), run.get('lateness_seconds'))])
    out.family('auditgap_last_run_outcome', [((('outcome', o),), 1 if run.get('outcome') == o else 0) for o in changes.OUTCOME_ORDER])
    out.family('auditgap_runs_total', [((('outcome', o),), run_counts.get(o, 0)) for o in changes.OUTCOME_ORDER])
    out.family('auditgap_scan_coverage_ratio', [((), run.get('coverage_ratio'))])
    counts = {s: 0 for s in changes.COVERAGE_STATES}
    for state in states.values():
        counts[state['state']] += 1
    out.family('auditgap_hosts', [((('state', s),), counts[s]) for s in changes.COVERAGE_STATES])
    out.family('auditgap_host_state', [((('host', h), ('state', s)), 1 if states[h]['state'] == s else 0)
                for h in sorted(states) for s in changes.COVERAGE_STATES])
    ordered = sorted(hosts, key=lambda r: r['host'])
    out.family('auditgap_host_severity', [((('host', r['host']),), promtext.SEVERITY_VALUE.get(r.get('severity'))) for r in ordered])
    for field, name in HOST_GAUGES:
        out.family(name, [((('host', r['host']),), r.get(field)) for r in ordered])
    out.family('auditgap_findings', [((('host', r['host']), ('id', f['id']), ('severity', f['severity'])), 1)
                for r in ordered for f in sorted(r.get('findings') or [], key=lambda f: f['id'])])
    out.family('auditgap_host_regressed', [((('host', r['host']),), 1 if (r.get('changes') or {}).get('regressed') else 0)
                for r in ordered if changes.diagnosed(r)])
    out.family('auditgap_finding_new', [((('host', r['host']), ('id', f['id']), ('severity', f['severity'])), 1)
                for r in ordered for f in (r.get('changes') or {}).get('new_findings') or []])
    out.family('auditgap_finding_resolved', [((('host', r['host']), ('id', f['id'])), 1)
                for r in ordered for f in (r.get('changes') or {}).get('resolved_findings') or []])
    out.family('auditgap_metric_regressed', [((('host', r['host']), ('metric', m['metric'])), m['baseline'])
                for r in ordered for m in (r.get('changes') or {}).get('worse_metrics') or []])
    out.family('auditgap_probable_cause_rank', [((('host', r['host']), ('change', c['change'])), c['rank'])
                for r in ordered for c in (r.get('changes') or {}).get('causes') or []])
    return out.text()


def write_textfile(directory, text, name=TEXTFILE_NAME):
    """Write ``directory/name`` for the textfile collector (mode 0644); the directory must exist."""
    if not os.path.isdir(directory):
        raise OSError('the textfile directory %s does not exist' % directory)
    return write_atomic(os.path.join(directory, name), text)


def write_atomic(path, text):
    report.write_atomic(path, text, 0o644, sync=True)
    return path
