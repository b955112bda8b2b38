"""The Prometheus textfile of ``auditgap audit`` (node_exporter's textfile collector).

Conventions: every name starts with ``auditgap_``, base units (seconds, ratios 0..1,
cores), counters end in ``_total``, no timestamps on samples, labels only from bounded
sets (host, finding id, severity, coverage state, metric name, change kind, outcome;
never a run id). ``render`` is pure; ``write_atomic`` puts the file in place with a
temporary file in the same directory and a rename, so node_exporter never reads half a file.
"""
import os
import tempfile

from auditgap import changes

TEXTFILE_NAME = 'auditgap.prom'

# (history field, metric name, help)
HOST_GAUGES = (
    ('backlog_peak_ratio', 'auditgap_audit_backlog_peak_ratio', 'Peak audit backlog / backlog_limit in the sample window.'),
    ('lost_per_s', 'auditgap_audit_lost_per_second', 'Audit records lost per second in the sample window.'),
    ('wait_accrued_s', 'auditgap_audit_wait_accrued_seconds',
     'Time tasks slept waiting for audit backlog space during the sample window (seconds).'),
    ('throttled_ratio', 'auditgap_consumer_throttled_ratio', 'Share of CFS periods in which the audit consumer was throttled.'),
    ('limit_cores', 'auditgap_consumer_cpu_limit_cores', 'Tightest CPU limit of the audit consumer (cores; absent: no limit).'),
    ('usage_cores', 'auditgap_consumer_cpu_usage_cores', 'CPU used by the audit consumer in the sample window (cores).'),
    ('backlog_limit', 'auditgap_audit_backlog_limit', 'Audit backlog_limit (records).'),
)
SEVERITY_VALUE = {'ok': 0, 'info': 1, 'warning': 2, 'critical': 3}


def label(value):
    return str(value).replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


def value_text(value):
    number = float(value)
    if number == int(number) and abs(number) < 1e15:
        return '%d' % int(number)
    return repr(number)


def _labels(pairs):
    if not pairs:
        return ''
    return '{%s}' % ','.join('%s="%s"' % (k, label(v)) for k, v in pairs)


class _Out:
    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_text, samples):
        """samples: [(label pairs, value)]; families without samples are left out."""
        samples = [(pairs, v) for pairs, v in samples if v is not None]
        if not samples:
            return
        self.lines.append('# HELP %s %s' % (name, help_text))
        self.lines.append('# TYPE %s %s' % (name, kind))
        for pairs, value in samples:
            self.lines.append('%s%s %s' % (name, _labels(pairs), value_text(value)))


def render(run, hosts, states, run_counts, last_success_at=None, version=None):
    """The textfile.

    run: {'started_at', 'finished_at', 'outcome', 'coverage_ratio'} (Unix seconds);
    hosts: [history-style host row + 'changes' (changes.compare)] for hosts of this run;
    states: {host: {'state', 'reason'}} (changes.coverage) for every host;
    run_counts: {outcome: runs since the database was created}.
    """
    out = _Out()
    out.family('auditgap_build_info', 'gauge', 'auditgap version (always 1).', [((('version', version or '?'),), 1)])
    out.family('auditgap_last_run_timestamp_seconds', 'gauge', 'When the last audit run finished (Unix time).',
               [((), run.get('finished_at'))])
    out.family('auditgap_last_success_timestamp_seconds', 'gauge',
               'When the last audit run that produced a report finished (Unix time).', [((), last_success_at)])
    duration = None
    if run.get('finished_at') is not None and run.get('started_at') is not None:
        duration = round(run['finished_at'] - run['started_at'], 3)
    out.family('auditgap_run_duration_seconds', 'gauge', 'Wall time of the last audit run.', [((), duration)])
    out.family('auditgap_schedule_lateness_seconds', 'gauge',
               'How late the last run started: now - (previous run + the schedule interval); 0 on time.',
               [((), run.get('lateness_seconds'))])
    out.family('auditgap_last_run_outcome', 'gauge',
               'Outcome of the last audit run (1 for the outcome it had, 0 for the others).',
               [((('outcome', o),), 1 if run.get('outcome') == o else 0) for o in changes.OUTCOME_ORDER])
    out.family('auditgap_runs_total', 'counter', 'Audit runs by outcome since the history database was created.',
               [((('outcome', o),), run_counts.get(o, 0)) for o in changes.OUTCOME_ORDER])
    out.family('auditgap_scan_coverage_ratio', 'gauge',
               'Share of inventory hosts whose state is known (ok or regressed) after the last run; unknown is never healthy.',
               [((), run.get('coverage_ratio'))])
    counts = {s: 0 for s in changes.COVERAGE_STATES}
    for state in states.values():
        counts[state['state']] += 1
    out.family('auditgap_hosts', 'gauge', 'Hosts by coverage state (ok, regressed, unknown).',
               [((('state', s),), counts[s]) for s in changes.COVERAGE_STATES])
    out.family('auditgap_host_state', 'gauge', 'Coverage state of each host (1 for its state, 0 for the others).',
               [((('host', h), ('state', s)), 1 if states[h]['state'] == s else 0)
                for h in sorted(states) for s in changes.COVERAGE_STATES])
    ordered = sorted(hosts, key=lambda r: r['host'])
    out.family('auditgap_host_severity', 'gauge', 'Worst finding severity (0 ok, 1 info, 2 warning, 3 critical).',
               [((('host', r['host']),), SEVERITY_VALUE.get(r.get('severity'))) for r in ordered])
    for field, name, help_text in HOST_GAUGES:
        out.family(name, 'gauge', help_text, [((('host', r['host']),), r.get(field)) for r in ordered])
    out.family('auditgap_findings', 'gauge', 'Findings of the last run by host, id and severity.',
               [((('host', r['host']), ('id', f['id']), ('severity', f['severity'])), 1)
                for r in ordered for f in sorted(r.get('findings') or [], key=lambda f: f['id'])])
    out.family('auditgap_host_regressed', 'gauge', 'Host regressed since its previous runs (1) or not (0).',
               [((('host', r['host']),), 1 if (r.get('changes') or {}).get('regressed') else 0)
                for r in ordered if changes.diagnosed(r)])
    out.family('auditgap_finding_new', 'gauge', 'Finding present now and absent in the host\'s previous run.',
               [((('host', r['host']), ('id', f['id']), ('severity', f['severity'])), 1)
                for r in ordered for f in (r.get('changes') or {}).get('new_findings') or []])
    out.family('auditgap_finding_resolved', 'gauge', 'Finding present in the host\'s previous run and gone now.',
               [((('host', r['host']), ('id', f['id'])), 1)
                for r in ordered for f in (r.get('changes') or {}).get('resolved_findings') or []])
    out.family('auditgap_metric_regressed', 'gauge', 'Host metric worse than its recent baseline (value: the baseline).',
               [((('host', r['host']), ('metric', m['metric'])), m['baseline'])
                for r in ordered for m in (r.get('changes') or {}).get('worse_metrics') or []])
    out.family('auditgap_probable_cause_rank', 'gauge',
               'What changed on a regressed host between its last good and first bad run (1 = most probable cause).',
               [((('host', r['host']), ('change', c['change'])), c['rank'])
                for r in ordered for c in (r.get('changes') or {}).get('causes') or []])
    return '\n'.join(out.lines) + '\n'


def write_textfile(directory, text, name=TEXTFILE_NAME):
    """Write ``directory/name`` for the textfile collector; the directory must exist."""
    if not os.path.isdir(directory):
        raise OSError('the textfile directory %s does not exist' % directory)
    return write_atomic(os.path.join(directory, name), text)


def write_atomic(path, text, mode=0o644):
    """Write ``path`` through a temp file in the same directory (``.<name>.*.tmp``: the textfile
    collector reads ``*.prom`` only) and a rename; the temp file is removed on any error."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % name, suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
