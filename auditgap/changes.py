"""Pure decisions of ``auditgap audit``: what a host's stored state is, what changed since
the previous runs (new and resolved findings, metrics worse than the host's baseline,
probable causes of a regression), coverage, and the run's outcome and exit status.

Inputs are fleet.json host entries (docs/reports.md) and history rows
(``auditgap.history.host_history``: newest first). No I/O here.
"""
import hashlib
import statistics

from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import fmt, num

# Exit status of ``auditgap audit``, by outcome (worst wins; usage errors are argparse's 2).
EXIT = {'ok': 0, 'findings': 1, 'partial': 3, 'regressions': 4, 'failed': 5}
EXIT_USAGE = 2
EXIT_LOCKED = 6
EXIT_LATE = 7
OUTCOME_ORDER = ('ok', 'findings', 'partial', 'regressions', 'failed')

# Compared with the host's baseline: the median of its last BASELINE_RUNS diagnosed runs.
# A value is worse when it exceeds the baseline by more than the margin AND by the factor,
# and reaches the floor: the level from which the metric says something about harm. A backlog
# peak of a fifth of a small backlog_limit (13 of 64 records) is load, not a regression; half the
# limit is on the way to audit_backlog_saturated (80%).
BASELINE_RUNS = 5
METRIC_RULES = {
    # metric: (absolute margin, factor, floor)
    'backlog_peak_ratio': (0.2, 1.5, 0.5),
    'throttled_ratio': (0.2, 1.5, 0.0),
    'lost_per_s': (1.0, 2.0, 0.0),
    'wait_accrued_s': (0.05, 2.0, 0.0),
}
BAD_SEVERITIES = ('warning', 'critical')
UNKNOWN_STATUSES = ('unreachable', 'failed')
COVERAGE_STATES = ('ok', 'regressed', 'unknown')


def rules_fingerprint(rules):
    """(hash, count) of the loaded audit rules (order-independent), or (None, None) when unknown."""
    if rules is None:
        return None, None
    texts = sorted(str(r.get('text') or r) for r in rules)
    return hashlib.sha256('\n'.join(texts).encode('utf-8', 'replace')).hexdigest()[:16], len(texts)


def _consumer_target(entry):
    for target in ((entry.get('facts') or {}).get('cgroup_throttle') or {}).get('targets') or []:
        if target.get('kind') == 'audit_consumer' and target.get('found'):
            return target
    return None


def host_state(entry):
    """The stored state of one fleet.json host entry (history.HOST_FIELDS, without state/regressed)."""
    metrics = entry.get('metrics') or {}
    audit = (entry.get('facts') or {}).get('audit_status') or {}
    consumer = audit.get('consumer') or {}
    target = _consumer_target(entry) or {}
    wait_ms = num(metrics.get('audit_wait_accrued_ms'))
    backlog_limit = num(metrics.get('audit_backlog_limit'))
    rules_hash, rules_count = rules_fingerprint(audit.get('rules') if audit.get('supported') else None)
    return {
        'host': entry['host'],
        'status': entry.get('status'),
        'severity': entry.get('severity'),
        'error': entry.get('error'),
        'backlog_peak_ratio': num(metrics.get('audit_backlog_peak_ratio')),
        'lost_per_s': num(metrics.get('audit_lost_per_s')),
        'wait_accrued_s': None if wait_ms is None else wait_ms / 1000.0,
        'throttled_ratio': num(metrics.get('consumer_throttled_ratio')),
        'limit_cores': num(metrics.get('consumer_limit_cores')),
        'usage_cores': num((target.get('sample') or {}).get('cpu_usage_cores')),
        'backlog_limit': None if backlog_limit is None else int(backlog_limit),
        'rules_hash': rules_hash,
        'rules_count': rules_count,
        'kernel': audit.get('kernel_release'),
        'consumer_exe': consumer.get('exe'),
        'consumer_version': consumer.get('exe_build'),
        'findings': [{'id': f['id'], 'severity': f['severity']} for f in entry.get('findings') or []],
    }


def diagnosed(row):
    return row.get('status') not in UNKNOWN_STATUSES and row.get('state') != 'unknown'


def is_bad(row):
    """A run in which the host had a warning/critical finding or was marked regressed."""
    return bool(row.get('regressed')) or any(f['severity'] in BAD_SEVERITIES for f in row.get('findings') or [])


def baseline(previous, metric, runs=BASELINE_RUNS):
    """Median of the metric over the host's last ``runs`` good runs (diagnosed, not bad), or None."""
    values = [num(r.get(metric)) for r in previous if diagnosed(r) and not is_bad(r)][:runs]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def worse_metrics(current, previous, rules=None):
    """[{metric, value, baseline}] for metrics worse than the host's recent baseline."""
    rules = rules or METRIC_RULES
    out = []
    for metric, (margin, factor, floor) in rules.items():
        value = num(current.get(metric))
        base = baseline(previous, metric)
        if value is None or base is None:
            continue
        if value > base + margin and value > base * factor and value >= floor:
            out.append({'metric': metric, 'value': value, 'baseline': base})
    return out


def compare(current, previous):
    """What changed for one host since its previous runs (``previous``: history rows, newest first).

    Returns {new_findings, resolved_findings, worse_metrics, regressed, first_run, causes}.
    A host is regressed when it was diagnosed before and now has a new warning/critical finding
    or a metric worse than its baseline (the median of its last good runs); it stays regressed
    while it still has a warning/critical finding. Unreachable/failed now: nothing is compared.
    """
    seen = [r for r in previous if diagnosed(r)]
    out = {'new_findings': [], 'resolved_findings': [], 'worse_metrics': [], 'regressed': False,
           'first_run': not seen, 'causes': []}
    if not diagnosed(current) or not seen:
        return out
    last = seen[0]
    before = {f['id']: f['severity'] for f in last.get('findings') or []}
    now = {f['id']: f['severity'] for f in current.get('findings') or []}
    out['new_findings'] = [{'id': fid, 'severity': sev} for fid, sev in sorted(now.items()) if fid not in before]
    out['resolved_findings'] = [{'id': fid, 'severity': sev} for fid, sev in sorted(before.items()) if fid not in now]
    out['worse_metrics'] = worse_metrics(current, seen)
    out['regressed'] = bool(out['worse_metrics']) or any(f['severity'] in BAD_SEVERITIES for f in out['new_findings'])
    # a regression stays until the host is good again (an alert on it must not resolve by itself)
    out['regressed'] = out['regressed'] or (bool(last.get('regressed')) and is_bad(current))
    if out['regressed']:
        good, first_bad = last_good_and_first_bad(current, seen)
        if good is not None:
            out['causes'] = probable_causes(good, first_bad, out['new_findings'], out['worse_metrics'])
            out['last_good_run'] = good.get('run_id')
            out['first_bad_run'] = first_bad.get('run_id')
    return out


def _before_streak(current, previous, ends):
    """The newest earlier run for which ``ends(row)`` holds and the run after it (``current`` when
    that is the first earlier run); (None, current) when none does."""
    after = current
    for row in previous:
        if ends(row):
            return row, after
        after = row
    return None, current


def last_good_and_first_bad(current, previous):
    """The run a regression is diffed from and the first bad run after it (``current`` when the streak starts now).

    The host's newest good run (no warning/critical finding); on a host that was never good (a
    standing warning, e.g. no audit consumer), the newest run before the regression began (the
    newest one not marked regressed). (None, current) when neither exists.
    """
    good, first_bad = _before_streak(current, previous, lambda row: not is_bad(row))
    if good is None:
        good, first_bad = _before_streak(current, previous, lambda row: not row.get('regressed'))
    return good, first_bad


# Why a change may cause what regressed: (change, base score, findings/metrics that make it likelier).
_STALL = ('audit_backlog_saturated', 'audit_events_lost', 'audit_wait_time_accrued', 'syscall_stall_observed',
          'backlog_peak_ratio', 'lost_per_s', 'wait_accrued_s')
CAUSE_WEIGHTS = {
    'cpu_limit_lowered': (3, ('audit_consumer_throttled', 'throttled_ratio') + _STALL),
    'cpu_limit_added': (3, ('audit_consumer_throttled', 'throttled_ratio') + _STALL),
    'rules_added': (3, ('audited_hot_syscall',) + _STALL),
    'rules_changed': (2, ('audited_hot_syscall',) + _STALL),
    'backlog_limit_lowered': (3, ('audit_backlog_saturated', 'audit_events_lost', 'backlog_peak_ratio', 'lost_per_s')),
    'consumer_changed': (2, ('audit_consumer_throttled', 'audit_consumer_missing', 'throttled_ratio') + _STALL),
    'kernel_changed': (2, _STALL),
    'cpu_limit_raised': (0, ()),
    'cpu_limit_removed': (0, ()),
    'backlog_limit_raised': (0, ()),
    'rules_removed': (1, ()),
}


def state_diff(good, bad):
    """[(change, text, before, after)] between two stored states of a host."""
    out = []
    lim_a, lim_b = num(good.get('limit_cores')), num(bad.get('limit_cores'))
    if lim_a != lim_b:
        if lim_a is None:
            out.append(('cpu_limit_added', 'consumer CPU limit added: %s cores' % _cores(lim_b), lim_a, lim_b))
        elif lim_b is None:
            out.append(('cpu_limit_removed', 'consumer CPU limit removed (was %s cores)' % _cores(lim_a), lim_a, lim_b))
        elif lim_b < lim_a:
            out.append(('cpu_limit_lowered', 'consumer CPU limit lowered %s -> %s cores' % (_cores(lim_a), _cores(lim_b)),
                        lim_a, lim_b))
        else:
            out.append(('cpu_limit_raised', 'consumer CPU limit raised %s -> %s cores' % (_cores(lim_a), _cores(lim_b)),
                        lim_a, lim_b))
    if good.get('rules_hash') != bad.get('rules_hash') and good.get('rules_hash') and bad.get('rules_hash'):
        n_a, n_b = good.get('rules_count') or 0, bad.get('rules_count') or 0
        if n_b > n_a:
            out.append(('rules_added', 'audit rules added: %d -> %d rules' % (n_a, n_b), n_a, n_b))
        elif n_b < n_a:
            out.append(('rules_removed', 'audit rules removed: %d -> %d rules' % (n_a, n_b), n_a, n_b))
        else:
            out.append(('rules_changed', 'audit rules changed (%d rules)' % n_b, good['rules_hash'], bad['rules_hash']))
    bl_a, bl_b = good.get('backlog_limit'), bad.get('backlog_limit')
    if bl_a is not None and bl_b is not None and bl_a != bl_b:
        change = 'backlog_limit_lowered' if bl_b < bl_a else 'backlog_limit_raised'
        out.append((change, 'backlog_limit %s %d -> %d' % (change.rsplit('_', 1)[1], bl_a, bl_b), bl_a, bl_b))
    if good.get('kernel') and bad.get('kernel') and good['kernel'] != bad['kernel']:
        out.append(('kernel_changed', 'kernel %s -> %s' % (good['kernel'], bad['kernel']), good['kernel'], bad['kernel']))
    exe_a, exe_b = good.get('consumer_exe'), bad.get('consumer_exe')
    ver_a, ver_b = good.get('consumer_version'), bad.get('consumer_version')
    if exe_a and exe_b and exe_a != exe_b:
        out.append(('consumer_changed', 'audit consumer %s -> %s' % (exe_a, exe_b), exe_a, exe_b))
    elif exe_a and exe_a == exe_b and ver_a and ver_b and ver_a != ver_b:
        out.append(('consumer_changed', 'audit consumer %s upgraded (build %s -> %s)' % (exe_b, ver_a, ver_b),
                    ver_a, ver_b))
    return out


def probable_causes(good, first_bad, new_findings, worse):
    """The state diff between the last good and the first bad run, ranked (most probable first)."""
    signals = {f['id'] for f in new_findings} | {m['metric'] for m in worse}
    signals |= {f['id'] for f in first_bad.get('findings') or [] if f['severity'] in BAD_SEVERITIES}
    ranked = []
    for change, text, before, after in state_diff(good, first_bad):
        base, related = CAUSE_WEIGHTS.get(change, (1, ()))
        score = base + 2 * len(signals.intersection(related))
        ranked.append({'change': change, 'text': text, 'before': before, 'after': after, 'score': score})
    ranked.sort(key=lambda c: (-c['score'], c['change']))
    for rank, cause in enumerate(ranked, 1):
        cause['rank'] = rank
    return ranked


def _cores(value):
    return fmt(value, 3, 'no limit')


def coverage(current_rows, last_seen_runs_ago=None, stale_after_runs=3, previous_state=None):
    """Every host's coverage state: ok, regressed or unknown (never healthy by default).

    ``current_rows``: {host: row with status, regressed} for the hosts of this run;
    ``last_seen_runs_ago``: {host: runs since last diagnosed} for hosts of earlier runs that this
    run did not cover; ``previous_state``: {host: last stored state} for those.
    Returns {host: {'state', 'reason'}}.
    """
    out = {}
    for host, row in current_rows.items():
        status = row.get('status')
        if status in UNKNOWN_STATUSES:
            out[host] = {'state': 'unknown', 'reason': status}
        elif row.get('regressed'):
            out[host] = {'state': 'regressed', 'reason': None}
        else:
            out[host] = {'state': 'ok', 'reason': None}
    for host, ago in (last_seen_runs_ago or {}).items():
        if host in out:
            continue
        if ago is None or ago >= stale_after_runs:
            out[host] = {'state': 'unknown', 'reason': 'not seen for %d runs' % stale_after_runs}
        else:
            state = (previous_state or {}).get(host) or 'unknown'
            out[host] = {'state': state, 'reason': 'not in this run (seen %d run(s) ago)' % (ago + 1)}
    return out


def coverage_ratio(states):
    """Share of hosts known (ok or regressed); 0.0 for no hosts."""
    if not states:
        return 0.0
    return sum(1 for s in states.values() if s['state'] != 'unknown') / float(len(states))


def outcome(failed, states, host_rows):
    """The run's outcome (OUTCOME_ORDER) from the coverage states and the host rows."""
    if failed:
        return 'failed'
    if any(s['state'] == 'regressed' for s in states.values()):
        return 'regressions'
    if any(s['state'] == 'unknown' for s in states.values()):
        return 'partial'
    if any(f['severity'] in BAD_SEVERITIES for r in host_rows for f in r.get('findings') or []):
        return 'findings'
    return 'ok'
