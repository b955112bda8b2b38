# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The diagnosis, controller side: one host's facts in, findings out.

Every caller goes through here: the report action (diagnose_report), the
findings and remediation filters, remediate.yml's before/after record and the
``auditgap`` CLI. Pure Python, no I/O; each rule is one small function.

- ``facts_from_results(results)``: the facts (audit_status, cgroup_throttle,
  ftrace_sample) in the diagnose role's registered results (RESULT_NAMES)
- ``thresholds_from_vars(variables)``: ``diagnose_<key>`` variables as thresholds
- ``evaluate(host_facts, hostname, thresholds)`` -> (findings, chain);
  ``host_summary(...)`` -> one host's entry of fleet.json;
  ``host_entry(host, results, thresholds)`` -> the same from registered results

A finding (docs/contracts.md):
``{id, severity: critical|warning|info, host, summary, evidence, remediation:
null | {role, vars}}``. Ids are stable; docs/findings.md documents each one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


from ansible.module_utils.common.text.converters import to_text
from ansible_collections.auditgap.fleet.plugins.module_utils import sizing

SEVERITIES = ('critical', 'warning', 'info')
SEVERITY_RANK = {'critical': 0, 'warning': 1, 'info': 2, 'ok': 3}
# a host's status in fleet.json, worst first (the order of the reports)
STATUS_ORDER = ('critical', 'warning', 'failed', 'unreachable', 'info', 'ok')
STATUS_RANK = {s: i for i, s in enumerate(STATUS_ORDER)}
GATHERED = ('audit_status', 'cgroup_throttle', 'ftrace_sample')
# The diagnose role's registered results (hostvars diagnose_<name>_result; docs/contracts.md)
# -> the fact keys each one carries, in the order they are read.
RESULT_FACTS = {'gather': ('audit_status', 'cgroup_throttle'), 'audit_status': ('audit_status',),
                'cgroup_throttle': ('cgroup_throttle',), 'ftrace_sample': ('ftrace_sample',)}
RESULT_ORDER = ('gather', 'audit_status', 'cgroup_throttle', 'ftrace_sample')
RESULT_NAMES = tuple('diagnose_%s_result' % name for name in RESULT_ORDER)

DEFAULT_THRESHOLDS = {
    # backlog peak / backlog_limit at or above which the backlog is "saturated"
    'backlog_saturated_ratio': 0.8,
    # consumer throttled ratio (nr_throttled / nr_periods) for a warning / critical
    'throttled_ratio_warn': 0.2,
    'throttled_ratio_crit': 0.5,
    # an audited syscall is "hot" at this many calls per second in the trace ...
    'hot_syscall_per_s': 50.0,
    # ... or when its p99 latency reaches this many ms
    'slow_syscall_p99_ms': 10.0,
    # Measured harm (docs/findings.md "Severity from measured harm"): critical means users feel
    # it or records are lost. Latency of audited syscalls in the trace (p99, max, ms) ...
    'harm_crit_p99_ms': 100.0,
    'harm_crit_max_ms': 1000.0,
    'harm_warn_p99_ms': 10.0,
    'harm_warn_max_ms': 100.0,
    # ... time tasks slept in audit_log_start per second of wall (ms/s) ...
    'harm_crit_wait_ms_per_s': 100.0,
    'harm_warn_wait_ms_per_s': 10.0,
    # ... and records lost per second: critical above this (0: any loss is critical)
    'harm_crit_lost_per_s': 0.0,
    # Fixes sized from measurement (docs/findings.md): the CPU limit for a throttled consumer is its
    # CPU seconds per record unthrottled x the record rate offered x this headroom ...
    'consumer_cpu_headroom': 1.5,
    # ... the CPU per record unthrottled: the one measured throttled (in batches) x the cost of
    # waking once per event, one wake-up costing this many records' worth of CPU ...
    'consumer_wakeup_cost_records': sizing.WAKEUP_COST_RECORDS,
    # ... the rate offered seen through the stall (the rate records were made at while they were
    # being made, or made / (1 - share of the window asleep)), at most this many times what was made ...
    'consumer_hidden_demand_max': sizing.HIDDEN_DEMAND_MAX,
    # ... never below this many cores ...
    'consumer_min_cores': 0.5,
    # ... and without that measurement at least this many (or 4x the limit, 2x the usage)
    'consumer_unmeasured_cores': 0.5,
    # the backlog_limit holds the largest burst over the worst drain gap x this headroom ...
    'backlog_headroom': 2.0,
    # ... and is at least this (without that measurement max(this, 4x the limit))
    'backlog_limit_suggested': 8192,
    # audit_consumer_stalled (consumer_activity over the sample window): share of samples the
    # consumer was stopped (T, or its cgroup frozen) / blocked in disk I/O (D) ...
    'consumer_stopped_ratio': 0.5,
    'consumer_io_blocked_ratio': 0.3,
    # ... ms per second of wall it waited for a CPU (schedstat run_delay), without a CPU limit, or
    # from this many ms/s when the waiting was at least this share of its runnable time (a starved
    # consumer runs little, and sleeps while the producers it stalled sleep) ...
    'consumer_run_delay_ms_per_s': 200.0,
    'consumer_starved_run_delay_ms_per_s': 50.0,
    'consumer_starved_wait_share': 0.9,
    # ... CPU its busiest thread used (cores): a consumer saturating its own core
    'consumer_core_saturated_cores': 0.9,
}

# The largest values the remediation roles take (agent_cpu_limit_cores, audit_backlog_limit).
MAX_LIMIT_CORES = 1024.0
MAX_BACKLOG_LIMIT = 1048576

# Syscalls a busy service makes per request/IO: auditing them on every call is
# what turns a slow consumer into user-visible latency.
HOT_SYSCALLS = frozenset((
    'accept', 'accept4', 'connect', 'read', 'write', 'readv', 'writev',
    'pread64', 'pwrite64', 'recvfrom', 'sendto', 'recvmsg', 'sendmsg',
    'recvmmsg', 'sendmmsg', 'open', 'openat', 'openat2', 'close', 'stat',
    'fstat', 'lstat', 'newfstatat', 'statx', 'poll', 'ppoll', 'epoll_wait',
    'epoll_pwait', 'select', 'pselect6', 'futex', 'mmap', 'munmap', 'brk',
    'clone', 'clone3', 'fork', 'vfork', 'execve', 'socket', 'getdents64',
    'lseek', 'fcntl', 'ioctl', 'nanosleep', 'clock_nanosleep', 'sendfile',
    'splice', 'io_uring_enter', 'all',
))
# Syscalls between "connection established" and "request handled".
REQUEST_PATH_SYSCALLS = frozenset((
    'accept', 'accept4', 'connect', 'read', 'write', 'readv', 'writev', 'recvfrom', 'sendto',
    'recvmsg', 'sendmsg', 'recvmmsg', 'sendmmsg', 'pread64', 'pwrite64', 'sendfile', 'all',
))
# Rule fields that already narrow a rule to some processes or objects.
NARROWING_FIELDS = frozenset(('exe', 'pid', 'ppid', 'uid', 'euid', 'auid', 'gid',
                              'egid', 'path', 'dir', 'subj_type', 'obj_type',
                              'subj_user', 'subj_role', 'comm', 'key_exe'))

FINDING_TITLES = {
    'audit_backlog_saturated': 'Audit backlog saturated',
    'audit_events_lost': 'Audit events lost',
    'audit_wait_time_accrued': 'Audited syscalls slept (backlog wait time accrued)',
    'audit_consumer_throttled': 'Audit consumer CPU-throttled',
    'audit_consumer_missing': 'Audit enabled without a consumer',
    'audit_consumer_stalled': 'Audit consumer not draining (stopped, blocked on I/O, starved or saturated)',
    'audited_hot_syscall': 'Hot syscall audited',
    'syscall_stall_observed': 'Syscall stall observed in audit_log_start',
    'audit_immutable': 'Audit configuration immutable',
    'audit_unsupported': 'Audit facts unavailable',
}


# ---------------------------------------------------------------- helpers

def _d(value):
    return value if isinstance(value, dict) else {}


def _l(value):
    return value if isinstance(value, list) else []


num = sizing.num


def fmt(value, digits=2, missing='?'):
    """A number in words: integers without a point, else at most ``digits`` decimals."""
    number = num(value)
    if number is None:
        return missing
    if number == int(number):
        return '%d' % int(number)
    return ('%.*f' % (digits, number)).rstrip('0').rstrip('.')


def pct(ratio, missing='?'):
    number = num(ratio)
    return missing if number is None else '%d%%' % round(number * 100)


def _ms(us):
    """Microseconds as milliseconds (None when not a number)."""
    number = num(us)
    return None if number is None else number / 1000.0


def plain(value):
    """Builtin types only (hostvars and filters hand out lazy/tagged containers)."""
    if isinstance(value, dict) or hasattr(value, 'items'):
        return {to_text(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return to_text(value)


def threshold_errors(thresholds):
    """Why some known thresholds are unusable (each must be a finite number >= 0), else []."""
    errors = []
    for key, value in sorted(_d(thresholds).items()):
        if key not in DEFAULT_THRESHOLDS or value is None or value == '':
            continue
        number = num(value)
        if number is None or number < 0:
            errors.append('threshold %s: %r is not a number >= 0' % (key, value))
    return errors


def merge_thresholds(thresholds=None):
    """The defaults with the overrides given; ValueError naming the bad ones."""
    errors = threshold_errors(thresholds)
    if errors:
        raise ValueError('; '.join(errors))
    merged = dict(DEFAULT_THRESHOLDS)
    for key, value in _d(thresholds).items():
        if value is not None and value != '':
            merged[key] = float(value) if key in DEFAULT_THRESHOLDS else value
    return merged


def thresholds_from_vars(variables, prefixes=('diagnose_',)):
    """The thresholds set as variables ``<prefix><key>`` (inventory, group_vars, -e; the
    first prefix that has a key wins): {key: value}, the defaults left out."""
    found = {}
    for key in DEFAULT_THRESHOLDS:
        for prefix in prefixes:
            try:
                value = variables.get(prefix + key)
            except Exception:  # an unrenderable variable keeps the default
                value = None
            if value is not None:
                found[key] = plain(value)
                break
    return found


def _finding(fid, severity, host, summary, evidence, remediation=None):
    return {'id': fid, 'severity': severity, 'host': host, 'title': FINDING_TITLES.get(fid, fid),
            'summary': summary, 'evidence': evidence, 'remediation': remediation}


class _View:
    """Read-only accessors over one host's facts (missing parts are None)."""

    def __init__(self, facts):
        facts = _d(facts)
        self.audit = _d(facts.get('audit_status'))
        self.cgroup = _d(facts.get('cgroup_throttle'))
        self.trace = _d(facts.get('ftrace_sample'))
        self.audit_ok = bool(self.audit.get('supported'))
        self.status = _d(self.audit.get('status')) if self.audit_ok else {}
        self.sample = _d(self.audit.get('sample')) if self.audit_ok else {}
        self.consumer = self.audit.get('consumer') if self.audit_ok else None
        self.activity = _d(self.audit.get('consumer_activity')) if self.audit_ok else {}
        self.trace_ok = bool(self.trace.get('supported'))

    @property
    def enabled(self):
        return num(self.status.get('enabled'))

    @property
    def backlog_limit(self):
        return num(self.status.get('backlog_limit'))

    def backlog_peak(self):
        """(peak, ratio, source): sampled peak when there is a sample, else now."""
        limit = self.backlog_limit
        if self.sample and num(self.sample.get('backlog_peak')) is not None:
            peak = num(self.sample.get('backlog_peak'))
            ratio = num(self.sample.get('backlog_peak_ratio'))
            source = 'sample'
        else:
            peak = num(self.status.get('backlog'))
            ratio = None
            source = 'status'
        if ratio is None and peak is not None and limit:
            ratio = peak / limit
        return peak, ratio, source

    def consumer_target(self):
        """The cgroup_throttle target describing the audit consumer, or None."""
        if not self.cgroup.get('supported'):
            return None
        for target in self.cgroup.get('targets') or []:
            if isinstance(target, dict) and target.get('kind') == 'audit_consumer' and target.get('found'):
                return target
        pid = _d(self.consumer).get('pid')
        for target in self.cgroup.get('targets') or []:
            if isinstance(target, dict) and target.get('found') and pid is not None \
                    and pid in (target.get('pids') or []):
                return target
        return None

    def throttle(self):
        """(ratio, source, target) of the consumer: sampled ratio, else since creation."""
        target = self.consumer_target()
        if target is None:
            return None, None, None
        sample = _d(target.get('sample'))
        if num(sample.get('throttled_ratio')) is not None and num(sample.get('nr_periods_delta')):
            return num(sample.get('throttled_ratio')), 'sample', target
        if num(target.get('throttled_ratio_total')) is not None:
            return num(target.get('throttled_ratio_total')), 'total', target
        return None, None, target

    def audited_syscall_rules(self):
        """{syscall: [rule, ...]} for exit/entry rules that record it (not `never`)."""
        out = {}
        if not self.audit_ok:
            return out
        for rule in self.audit.get('rules') or []:
            if not isinstance(rule, dict):
                continue
            if rule.get('action') not in (None, 'always'):
                continue
            if rule.get('list') not in (None, 'exit', 'entry'):
                continue
            for name in rule.get('syscalls') or []:
                out.setdefault(str(name), []).append(rule)
        return out

    def trace_syscalls(self):
        return _d(self.trace.get('syscalls')) if self.trace_ok else {}


def container_display(container):
    """A container as people name it: namespace/pod/container for a pod, its name, else its short id."""
    container = _d(container)
    kube = _d(container.get('kubernetes'))
    if kube.get('pod'):
        return '/'.join(str(kube.get(k)) for k in ('namespace', 'pod', 'container') if kube.get(k))
    if container.get('name'):
        return str(container['name'])
    return str(container.get('id') or '?')[:12]


def _consumer_label(view, target=None):
    consumer = _d(view.consumer)
    name = consumer.get('comm') or (os_basename(consumer.get('exe')) if consumer.get('exe') else None)
    pid = consumer.get('pid') or _d(view.status).get('pid')
    label = 'consumer %s pid %s' % (name or '?', fmt(pid))
    container = _d(_d(target).get('container'))
    if not container.get('name') and not container.get('kubernetes'):
        container = _d(consumer.get('container')) or container
    if container.get('id'):
        label += ' in container %s' % container_display(container)
    if target:
        path = target.get('limited_by') or target.get('cgroup_path')
        if path:
            label += ' in cgroup %s' % path
    return label


def os_basename(path):
    return str(path).rstrip('/').rsplit('/', 1)[-1]


# ---------------------------------------------------------------- remediations

def _round_up(value, step=0.05):
    return sizing.round_up(value, step)


def _backlog_growth_per_s(view):
    """How fast the backlog grew over the window (records/s; first to last sample)."""
    timeline = [p for p in _l(view.sample.get('timeline')) if isinstance(p, dict)]
    seconds = num(view.sample.get('seconds'))
    if len(timeline) < 2 or not seconds:
        return None
    first, last = num(timeline[0].get('backlog')), num(timeline[-1].get('backlog'))
    return (last - first) / seconds if first is not None and last is not None else None


def cpu_sizing(view, target, thresholds):
    """The CPU limit for the throttled consumer's target, sized from measurement (sizing.cpu_limit)."""
    target = _d(target)
    sample = _d(target.get('sample'))
    limit = num(target.get('limit_cores')) or num(sample.get('limit_cores')) or 0.0
    usage = num(sample.get('cpu_usage_cores'))
    rates = _d(view.sample.get('record_rates')) if view.sample else {}
    if usage is None:
        seconds = num(view.activity.get('seconds'))
        cpu_s = num(view.activity.get('cpu_seconds'))
        usage = cpu_s / seconds if (cpu_s is not None and seconds) else None
    window = view.sample or {}
    slept_ms = num(window.get('backlog_wait_time_actual_delta_ms'))
    wait_ms = num(view.status.get('backlog_wait_time_ms'))
    window_s = num(window.get('seconds'))
    offered = sizing.offered_record_rate(rates, num(window.get('lost_per_s')),
                                         _backlog_growth_per_s(view) if view.sample else None,
                                         slept_ms / 1000.0 if slept_ms is not None else None,
                                         sizing.sleep_window(window.get('timeline'), window_s,
                                                             wait_ms / 1000.0 if wait_ms is not None else None),
                                         thresholds['consumer_hidden_demand_max'], sample_s=window_s)
    fallback = _round_up(min(max(float(thresholds['consumer_unmeasured_cores']), float(thresholds['consumer_min_cores']),
                                 4 * limit, 2 * (usage or 0.0)), MAX_LIMIT_CORES))
    act_s = num(view.activity.get('seconds'))
    act_cpu = num(view.activity.get('cpu_seconds'))
    cost = sizing.wakeup_cost(view.activity.get('history'), {
        'cpu_seconds': act_cpu / act_s if (act_cpu is not None and act_s) else None,
        'wakeups': view.activity.get('wakeups_per_s'), 'records': rates.get('records_per_s'),
        'write_chars': view.activity.get('wchar_per_s'), 'log_chars_per_record': rates.get('log_chars_per_record')},
        thresholds['consumer_wakeup_cost_records'])
    unbatched = sizing.unbatched_factor(rates.get('records_per_s'), view.activity.get('wakeups_per_s'),
                                        rates.get('records_per_event'), cost)
    return sizing.cpu_limit(usage, num(rates.get('records_per_s')), offered['value'] if offered else None,
                            thresholds['consumer_cpu_headroom'], limit or None, fallback,
                            floor=thresholds['consumer_min_cores'], offered=offered, unbatched=unbatched)


def backlog_sizing(view, thresholds):
    """The backlog_limit sized from the burst over the worst drain gap (sizing.backlog_limit)."""
    limit = view.backlog_limit or 0
    rates = _d(view.sample.get('record_rates')) if view.sample else {}
    fallback = int(min(max(float(thresholds['backlog_limit_suggested']), 4 * limit), MAX_BACKLOG_LIMIT))
    return sizing.backlog_limit(num(rates.get('burst_records')), num(rates.get('drain_gap_max_ms')),
                                thresholds['backlog_headroom'], limit or None, fallback,
                                floor=thresholds['backlog_limit_suggested'])


def agent_cpu_remediation(target, thresholds, view=None):
    """(agent_cpu role vars raising the consumer's CPU limit, how it was sized): sized from
    measurement when ``view`` has the record rates and the consumer's CPU."""
    target = _d(target)
    size = cpu_sizing(view or _View({}), target, thresholds)
    container = _d(target.get('container'))
    if container.get('id') and container.get('runtime') == 'docker':
        # the name when known (unique on a Docker host), else the full id
        backend, tgt = 'docker', {'container': container.get('name') or container.get('id')}
    elif target.get('systemd_unit') and not container:
        backend, tgt = 'systemd', {'systemd_unit': target.get('systemd_unit')}
    elif target.get('limited_by') or target.get('cgroup_path'):
        backend, tgt = 'cgroup', {'cgroup_path': target.get('limited_by') or target.get('cgroup_path')}
    else:
        pids = target.get('pids') or []
        backend, tgt = 'auto', {'pid': pids[0] if pids else None}
    return {'role': 'agent_cpu', 'vars': {'agent_cpu_backend': backend, 'agent_cpu_target': tgt,
                                          'agent_cpu_limit_cores': max(size['value'], 0.01)}}, size


def _backlog_family_remediation(view, thr, ctx, own=None):
    """A stall finding's fix: the stalled consumer's (a bigger backlog in front of a consumer
    that does not drain only delays the stall), else ``own``, else the root cause's or a bigger backlog."""
    if ctx.get('stalled'):
        return ctx['stalled']['remediation']
    if own is not None:
        return own
    return ctx.get('cause_remediation') or audit_backlog_remediation(view, thr)


def audit_backlog_remediation(view, thresholds):
    return {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': max(1, backlog_sizing(view, thresholds)['value'])}}


def _backlog_sizing_text(view, thr, evidence, remediation):
    """Adds the backlog sizing to a finding whose fix is audit_backlog: evidence and summary text."""
    if not remediation or remediation.get('role') != 'audit_backlog':
        return ''
    size = backlog_sizing(view, thr)
    evidence['sizing'] = size
    return '; backlog_limit sized: %s' % size['formula']


def _fix_text(remediation):
    if not remediation:
        return None
    role = remediation.get('role')
    variables = remediation.get('vars') or {}
    what = {'agent_cpu': 'raise its CPU limit', 'audit_backlog': 'raise the audit backlog limit',
            'audit_rules': 'narrow the audit rules'}.get(role, 'apply')
    rendered = ', '.join('%s=%s' % (k, _compact(v)) for k, v in sorted(variables.items()))
    return '%s (role %s, vars %s)' % (what, role, rendered)


def _compact(value):
    if isinstance(value, dict):
        return '{%s}' % ', '.join('%s: %s' % (k, _compact(v)) for k, v in sorted(value.items()))
    if isinstance(value, list):
        return '[%s]' % ', '.join(_compact(v) for v in value)
    return str(value)


# ---------------------------------------------------------------- harm

HARM_LEVELS = ('critical', 'warning', 'low', 'none')


def _worst_audited_syscall(view):
    """(name, p99_ms, max_ms) of the audited syscall with the worst p99 in the trace, or Nones."""
    audited = view.audited_syscall_rules()
    worst = (None, None, None)
    for name, stats in view.trace_syscalls().items():
        p99 = _ms(_d(stats).get('p99_us'))
        if name in audited and p99 is not None and (worst[1] is None or p99 > worst[1]):
            worst = (name, p99, _ms(_d(stats).get('max_us')))
    return worst


def _audit_sleeps(view):
    """(off-CPU stacks, function_graph slow calls) of the trace that pass through audit_log_start."""
    if not view.trace_ok:
        return [], []
    stacks = [st for st in view.trace.get('offcpu') or []
              if 'audit_log_start' in (st.get('stack') or []) or 'audit_log_start' in str(st.get('stack_text', ''))]
    slow_calls = [c for c in _d(view.trace.get('function_graph')).get('slow_calls') or []
                  if 'audit_log_start' in (c.get('chain') or [])]
    return stacks, slow_calls


def _audit_sleep_max_ms(view):
    """Longest sleep in audit_log_start the trace saw (off-CPU stacks, slow chains), or None."""
    stacks, slow_calls = _audit_sleeps(view)
    values = [num(st.get('max_us')) for st in stacks] + [num(c.get('duration_us')) for c in slow_calls]
    values = [v for v in values if v is not None]
    return max(values) / 1000.0 if values else None


def measure_harm(view, thr):
    """How much the stall hurts, measured: {level, p99_ms, max_ms, syscall, wait_ms_per_s, lost_per_s, reasons}.

    level: ``critical`` (users feel it or records are lost), ``warning``, ``low`` (measurable,
    below the warning thresholds), ``none`` (nothing measured: no sample, no trace).
    """
    syscall, p99_ms, max_ms = _worst_audited_syscall(view)
    sleep_ms = _audit_sleep_max_ms(view)
    if sleep_ms is not None and (max_ms is None or sleep_ms > max_ms):
        max_ms = sleep_ms
    sample = view.sample
    seconds = num(sample.get('seconds')) if sample else None
    wait_ms = num(sample.get('backlog_wait_time_actual_delta_ms')) if sample else None
    wait_per_s = round(wait_ms / seconds, 3) if (wait_ms is not None and seconds) else None
    lost_per_s = num(sample.get('lost_per_s')) if sample else None
    if lost_per_s is None and sample and num(sample.get('lost_delta')) and seconds:
        lost_per_s = num(sample.get('lost_delta')) / seconds
    crit, warn = [], []
    if lost_per_s is not None and lost_per_s > thr['harm_crit_lost_per_s']:
        crit.append('%s records lost/s' % fmt(lost_per_s, 2))
    for value, key, label in ((p99_ms, 'p99_ms', '%s p99' % (syscall or 'syscall')),
                              (max_ms, 'max_ms', 'max'), (wait_per_s, 'wait_ms_per_s', 'slept')):
        if value is None:
            continue
        unit = ' ms/s' if key == 'wait_ms_per_s' else ' ms'
        if value >= thr['harm_crit_' + key]:
            crit.append('%s %s%s >= %s' % (label, fmt(value), unit, fmt(thr['harm_crit_' + key])))
        elif value >= thr['harm_warn_' + key]:
            warn.append('%s %s%s >= %s' % (label, fmt(value), unit, fmt(thr['harm_warn_' + key])))
    measured = [v for v in (p99_ms, max_ms, wait_per_s, lost_per_s) if v is not None]
    if crit:
        level = 'critical'
    elif warn:
        level = 'warning'
    elif measured:
        level = 'low'
    else:
        level = 'none'
    return {'level': level, 'syscall': syscall, 'p99_ms': p99_ms, 'max_ms': max_ms,
            'wait_ms_per_s': wait_per_s, 'lost_per_s': lost_per_s, 'reasons': crit or warn}


def _harm_severity(ctx, floor='warning'):
    """critical only when the measured harm is; otherwise ``floor`` (warning or info)."""
    level = _d(ctx.get('harm')).get('level')
    if level == 'critical':
        return 'critical'
    if level == 'warning':
        return 'warning'
    return floor


# ---------------------------------------------------------------- rules

def rule_unsupported(view, host, thr, ctx):
    if view.audit_ok:
        return []
    reason = view.audit.get('reason') if view.audit else 'audit_status was not gathered'
    return [_finding('audit_unsupported', 'info', host,
                     'Audit facts unavailable: %s' % (reason or 'unsupported'),
                     {'reason': reason})]


def rule_backlog_saturated(view, host, thr, ctx):
    if not view.audit_ok or not view.enabled:
        return []
    peak, ratio, source = view.backlog_peak()
    limit = view.backlog_limit
    if ratio is None or ratio < thr['backlog_saturated_ratio']:
        return []
    severity = _harm_severity(ctx)
    ctx['backlog'] = '%s (%s/%s)' % ('audit backlog at limit' if ratio >= 1.0 else 'audit backlog near limit',
                                     fmt(peak), fmt(limit))
    evidence = {'backlog_peak': peak, 'backlog_limit': limit, 'backlog_peak_ratio': round(ratio, 4),
                'source': source, 'threshold_ratio': thr['backlog_saturated_ratio'], 'harm': ctx.get('harm')}
    remediation = _backlog_family_remediation(view, thr, ctx, audit_backlog_remediation(view, thr))
    summary = 'Audit backlog peaked at %s of %s (%s, threshold %s)' % (
        fmt(peak), fmt(limit), pct(ratio), pct(thr['backlog_saturated_ratio']))
    summary += _backlog_sizing_text(view, thr, evidence, remediation)
    return [_finding('audit_backlog_saturated', severity, host, summary, evidence, remediation)]


def rule_events_lost(view, host, thr, ctx):
    if not view.audit_ok:
        return []
    lost = num(view.status.get('lost'))
    delta = num(view.sample.get('lost_delta')) if view.sample else None
    if delta is not None:
        if delta <= 0:
            return []
        ctx['lost'] = 'lost +%s' % fmt(delta)
        evidence = {'lost_delta': delta, 'lost_per_s': view.sample.get('lost_per_s'), 'lost': lost,
                    'sample_seconds': view.sample.get('seconds'), 'harm': ctx.get('harm')}
        summary = 'Audit lost %s records in %ss (%s/s)' % (
            fmt(delta), fmt(view.sample.get('seconds')), fmt(view.sample.get('lost_per_s')))
        remediation = _backlog_family_remediation(view, thr, ctx, audit_backlog_remediation(view, thr))
        summary += _backlog_sizing_text(view, thr, evidence, remediation)
        return [_finding('audit_events_lost', _harm_severity(ctx), host, summary, evidence, remediation)]
    if lost:
        return [_finding('audit_events_lost', 'info', host,
                         'Audit lost %s records since boot (no sample window: growth unknown)' % fmt(lost),
                         {'lost': lost, 'lost_delta': None})]
    return []


def rule_wait_time_accrued(view, host, thr, ctx):
    if not view.audit_ok:
        return []
    actual_ms = view.status.get('backlog_wait_time_actual_ms')
    delta_j = num(view.sample.get('backlog_wait_time_actual_delta_jiffies')) if view.sample else None
    if delta_j is not None:
        if delta_j <= 0:
            return []
        delta_ms = num(view.sample.get('backlog_wait_time_actual_delta_ms'))
        severity = _harm_severity(ctx, floor='info')
        ctx['wait'] = 'tasks slept %s ms in audit_log_start during %ss' % (
            fmt(delta_ms, 0), fmt(view.sample.get('seconds')))
        evidence = {'backlog_wait_time_actual_delta_jiffies': delta_j,
                    'backlog_wait_time_actual_delta_ms': delta_ms,
                    'backlog_wait_time_ms': view.status.get('backlog_wait_time_ms'),
                    'sample_seconds': view.sample.get('seconds'),
                    'hz': _d(view.audit.get('hz')).get('value'), 'harm': ctx.get('harm')}
        return [_finding('audit_wait_time_accrued', severity, host,
                         'Audited syscalls slept %s ms in audit_log_start in a %ss window '
                         '(backlog_wait_time_actual +%s jiffies)'
                         % (fmt(delta_ms, 0), fmt(view.sample.get('seconds')), fmt(delta_j)),
                         evidence, _backlog_family_remediation(view, thr, ctx))]
    total = num(view.status.get('backlog_wait_time_actual_jiffies'))
    if total:
        return [_finding('audit_wait_time_accrued', 'info', host,
                         'Audited syscalls have slept %s ms in audit_log_start since boot '
                         '(no sample window: growth unknown)' % fmt(actual_ms, 0),
                         {'backlog_wait_time_actual_jiffies': total,
                          'backlog_wait_time_actual_ms': actual_ms})]
    return []


def rule_consumer_throttled(view, host, thr, ctx):
    ratio, source, target = view.throttle()
    if ratio is None or ratio < thr['throttled_ratio_warn']:
        return []
    stalling = bool(ctx.get('stall_signs'))
    severity = 'critical' if (ratio >= thr['throttled_ratio_crit'] and stalling
                              and _harm_severity(ctx) == 'critical') else 'warning'
    limit = target.get('limit_cores')
    sample = _d(target.get('sample'))
    label = _consumer_label(view, target)
    limit_text = 'limit %s CPU' % fmt(limit, 3) if num(limit) is not None else 'no CPU limit found'
    ctx['consumer'] = '%s throttled %s of periods (%s)' % (label, pct(ratio), limit_text)
    evidence = {'throttled_ratio': round(ratio, 4), 'source': source,
                'cgroup_path': target.get('cgroup_path'), 'limited_by': target.get('limited_by'),
                'limit_cores': limit, 'cpu_usage_cores': sample.get('cpu_usage_cores'),
                'nr_periods_delta': sample.get('nr_periods_delta'),
                'nr_throttled_delta': sample.get('nr_throttled_delta'),
                'container': target.get('container'), 'systemd_unit': target.get('systemd_unit'),
                'pids': target.get('pids'), 'threshold_ratio': thr['throttled_ratio_warn'],
                'probable_cause_of': list(ctx.get('stall_signs') or []), 'harm': ctx.get('harm'),
                'sizing': ctx.get('cpu_sizing')}
    summary = '%s: throttled in %s of CFS periods%s (%s)' % (
        label, pct(ratio), '' if source == 'sample' else ' since cgroup creation', limit_text)
    if stalling:
        summary += '; probable cause of %s' % ', '.join(ctx['stall_signs'])
    if ctx.get('cpu_sizing'):
        summary += '; limit sized: %s' % ctx['cpu_sizing']['formula']
    return [_finding('audit_consumer_throttled', severity, host, summary, evidence, ctx['cause_remediation'])]


def rule_consumer_missing(view, host, thr, ctx):
    if not view.audit_ok or not view.enabled:
        return []
    pid = num(view.status.get('pid'))
    if pid:
        return []
    _peak, ratio, _source = view.backlog_peak()
    ctx['consumer'] = 'no audit consumer registered (pid 0)'
    return [_finding('audit_consumer_missing', 'warning', host,
                     'Audit is enabled (enabled=%s) but no consumer is registered (pid 0): records go '
                     'to the kernel log, rate-limited, or are lost' % fmt(view.enabled),
                     {'enabled': view.enabled, 'pid': 0, 'backlog': view.status.get('backlog'),
                      'backlog_limit': view.backlog_limit, 'backlog_peak_ratio': ratio})]


# ---------------------------------------------------------------- a consumer that does not drain

def _restart_command(view, target):
    """How to restart the consumer, named: its container, its unit, else its executable."""
    consumer = _d(view.consumer)
    container = _d(_d(target).get('container')) or _d(consumer.get('container'))
    unit = _d(target).get('systemd_unit') or consumer.get('systemd_unit')
    if container.get('id') and container.get('runtime') == 'docker':
        return 'docker restart %s' % (container.get('name') or container['id'][:12])
    if container.get('id'):
        return 'restart container %s' % (container.get('name') or container['id'][:12])
    if unit and unit.endswith('.service'):
        return 'systemctl restart %s' % unit
    return 'restart %s' % (consumer.get('exe') or consumer.get('comm') or 'the consumer')


def _weight_knob(view, target):
    """Where the consumer's CPU weight is set (not a quota)."""
    consumer = _d(view.consumer)
    target = _d(target)
    container = _d(target.get('container')) or _d(consumer.get('container'))
    unit = target.get('systemd_unit') or consumer.get('systemd_unit')
    if container.get('id') and container.get('runtime') == 'docker':
        return 'docker update --cpu-shares on %s' % (container.get('name') or container['id'][:12])
    if unit and not container:
        return 'CPUWeight= on %s' % unit
    path = target.get('cgroup_path')
    knob = 'cpu.weight' if target.get('cgroup_version') == 2 else 'cpu.shares'
    return '%s of cgroup %s' % (knob, path) if path else 'its cgroup cpu.shares/cpu.weight'


def _narrow_remediation(view):
    """audit_rules vars narrowing the broad rules on hot syscalls (None when there are none)."""
    items = []
    for name, rules in sorted(view.audited_syscall_rules().items()):
        if name not in HOT_SYSCALLS:
            continue
        broad = [r for r in rules if not any(_d(f).get('name') in NARROWING_FIELDS for f in r.get('fields') or [])]
        if broad:
            item = {'syscall': name}
            keys = sorted({str(r.get('key')) for r in broad if r.get('key')})
            if keys:
                item['key'] = keys[0]
            items.append(item)
    return {'role': 'audit_rules', 'vars': {'audit_rules_narrow': items}} if items else None


def cpu_wait_share(activity):
    """Share of the consumer's runnable time it waited for a CPU: run delay / (run delay + run time)
    over the window (run time from schedstat, else clock ticks); None when not measured."""
    act = _d(activity)
    delay, seconds, cores = num(act.get('run_delay_ms_per_s')), num(act.get('seconds')), num(act.get('cpu_cores'))
    run = num(act.get('cpu_seconds'))
    if run is None and cores is not None and seconds is not None:
        run = cores * seconds
    if delay is None or seconds is None or run is None:
        return None
    waited = delay * seconds / 1000.0
    return round(waited / (waited + run), 3) if waited + run > 0 else None


def consumer_stall_cause(view, thr, stall_signs):
    """Why a registered, unthrottled consumer does not drain, from ``consumer_activity``.

    Returns None (no stall, no measurement, or the consumer is CPU-throttled: that
    chain is audit_consumer_throttled's) or ``{cause, line, fix, remediation, evidence}``
    with cause ``stopped``, ``io_blocked``, ``cpu_contended`` or ``core_saturated``.
    """
    act = view.activity
    if not stall_signs or not act or not act.get('found') or not num(view.status.get('pid')):
        return None
    ratio, _source, target = view.throttle()
    if ratio is not None and ratio >= thr['throttled_ratio_warn']:
        return None
    states = _d(act.get('state_ratios'))
    conf = _d(_d(view.consumer).get('auditd_config'))
    pid = _d(view.consumer).get('pid') or view.status.get('pid')
    label = _consumer_label(view)
    samples = act.get('samples')
    stopped = num(states.get('T')) or 0.0
    blocked = num(states.get('D')) or 0.0
    delay = num(act.get('run_delay_ms_per_s'))
    busiest = num(act.get('busiest_thread_cores'))
    cpu = num(act.get('cpu_cores'))
    share = cpu_wait_share(act)
    evidence = {'pid': pid, 'state_ratios': states, 'frozen': act.get('frozen'), 'cpu_cores': cpu,
                'busiest_thread_cores': busiest, 'run_delay_ms_per_s': delay, 'cpu_wait_share': share,
                'nice': act.get('nice'),
                'write_bytes_per_s': act.get('write_bytes_per_s'), 'wchan': act.get('wchan'),
                'd_state_stack': act.get('d_state_stack'), 'samples': samples, 'seconds': act.get('seconds'),
                'auditd_config': conf or None, 'container': _d(view.consumer).get('container'),
                'systemd_unit': _d(view.consumer).get('systemd_unit')}
    if act.get('frozen') or stopped >= thr['consumer_stopped_ratio']:
        how = 'its cgroup frozen' if act.get('frozen') else 'state T in %s of %s samples' % (pct(stopped), samples)
        line = '%s stopped (%s, %s CPU)' % (label, how, fmt(cpu, 3))
        fix = ('thaw it (%s) or %s' % ('docker unpause' if _d(evidence['container']).get('runtime') == 'docker'
                                       else 'its freezer cgroup: THAWED', _restart_command(view, target))
               if act.get('frozen') else
               'resume it (kill -CONT %s) or restart it (%s)' % (fmt(pid), _restart_command(view, target)))
        return {'cause': 'stopped', 'line': line, 'fix': fix, 'remediation': None, 'evidence': evidence}
    if blocked >= thr['consumer_io_blocked_ratio']:
        where = (act.get('wchan') or [{}])[0].get('function') or (act.get('d_state_stack') or '?').split(' <- ')[0]
        device = conf.get('log_device')
        detail = ['in %s' % where]
        if act.get('write_bytes_per_s') is not None:
            detail.append('writes %s KB/s' % fmt(num(act['write_bytes_per_s']) / 1024.0, 1))
        if conf.get('flush'):
            detail.append('flush = %s' % conf['flush'])
        if device:
            detail.append('log on %s' % device)
        line = '%s blocked on disk I/O (state D in %s of %s samples, %s)' % (
            label, pct(blocked), samples, ', '.join(detail))
        free = num(conf.get('log_free_ratio'))
        flush = str(conf.get('flush') or '').lower()
        if free is not None and free < 0.05:
            fix = 'free space on %s (%s free; disk_full_action = %s in %s)' % (
                device or 'the log device', pct(free), conf.get('disk_full_action'), conf.get('path'))
        elif flush in ('sync', 'data'):
            fix = 'set flush = incremental_async in %s (now %s: every record waits for %s)' % (
                conf.get('path'), conf.get('flush'), device or 'the disk')
        else:
            fix = 'give its log writes a faster device than %s (log_file %s)' % (
                device or 'the current one', conf.get('log_file') or '?')
        return {'cause': 'io_blocked', 'line': line, 'fix': fix, 'remediation': None, 'evidence': evidence}
    starved = share is not None and share >= thr['consumer_starved_wait_share']
    if delay is not None and (delay >= thr['consumer_run_delay_ms_per_s']
                              or (starved and delay >= thr['consumer_starved_run_delay_ms_per_s'])):
        line = '%s waits for a CPU (run delay %s ms/s, %s of its runnable time, uses %s CPU, ' \
            'no CPU limit throttles it)' % (label, fmt(delay, 0), pct(share), fmt(cpu, 3))
        knobs = []
        if conf:
            knobs.append('priority_boost in %s (now %s)' % (conf.get('path'), conf.get('priority_boost')))
        knobs.append(_weight_knob(view, target))
        fix = 'raise its CPU priority or weight, not a quota (%s)' % ' or '.join(knobs)
        return {'cause': 'cpu_contended', 'line': line, 'fix': fix, 'remediation': None, 'evidence': evidence}
    if busiest is not None and busiest >= thr['consumer_core_saturated_cores']:
        line = '%s saturates its core (busiest thread %s CPU)' % (label, fmt(busiest, 2))
        remediation = _narrow_remediation(view)
        fix = 'fewer records, not more CPU: narrow the audit rules'
        if remediation:
            fix = 'fewer records, not more CPU: %s' % _fix_text(remediation)
        return {'cause': 'core_saturated', 'line': line, 'fix': fix, 'remediation': remediation,
                'evidence': evidence}
    return None


def rule_consumer_stalled(view, host, thr, ctx):
    stalled = ctx.get('stalled')
    if not stalled:
        return []
    ctx['consumer'] = stalled['line']
    evidence = dict(stalled['evidence'], cause=stalled['cause'], fix=stalled['fix'],
                    probable_cause_of=list(ctx['stall_signs']), harm=ctx.get('harm'))
    return [_finding('audit_consumer_stalled', _harm_severity(ctx), host,
                     '%s; probable cause of %s -> %s' % (stalled['line'], ', '.join(ctx['stall_signs']),
                                                         stalled['fix']),
                     evidence, stalled['remediation'])]


def _measured_syscalls(view):
    """{syscall: {events_per_s, records_per_s, share, keys: [...], exes: [...]}} from the sample's
    record rates (the audit multicast group over the window), {} when not measured."""
    rates = _d(view.sample.get('record_rates')) if view.sample else {}
    out = {}
    for row in _l(rates.get('by_syscall')):
        row = _d(row)
        if row.get('syscall'):
            out[str(row['syscall'])] = {'events_per_s': num(_rate(row, 'events', rates)),
                                        'records_per_s': num(row.get('records_per_s')),
                                        'share': num(row.get('share')), 'keys': [], 'exes': []}
    for talker in _l(rates.get('top_talkers')):
        talker = _d(talker)
        entry = out.get(str(talker.get('syscall')))
        if entry is None:
            continue
        for field, values in (('key', entry['keys']), ('exe', entry['exes'])):
            value = talker.get(field)
            if value and str(value) not in values:
                values.append(str(value))
    return out


def _rate(row, field, rates):
    seconds = num(_d(rates).get('seconds'))
    count = num(row.get(field))
    return round(count / seconds, 2) if (count is not None and seconds) else None


def rule_audited_hot_syscall(view, host, thr, ctx):
    """One finding per host listing the hot syscalls that rules audit: grounded on the measured
    record rates (audit multicast group over the sample window), the trace only where it ran."""
    if not view.audit_ok or not view.enabled:
        return []
    audited = view.audited_syscall_rules()
    traced = view.trace_syscalls()
    measured = _measured_syscalls(view)
    duration = num(view.trace.get('duration_s')) or 0.0
    entries, narrow, texts = [], {}, []
    severity = 'info'
    for name in sorted(audited):
        rate = measured.get(name) or {}
        measured_hot = (rate.get('events_per_s') or 0) >= thr['hot_syscall_per_s']
        broad = [r for r in audited[name]
                 if not any(_d(f).get('name') in NARROWING_FIELDS for f in r.get('fields') or [])]
        # a broad rule on a syscall services make per request, or any rule the records show hot
        rules = audited[name] if measured_hot else (broad if name in HOT_SYSCALLS else [])
        if not rules:
            continue
        stats = _d(traced.get(name))
        count = num(stats.get('count'))
        trace_per_s = (count / duration) if (count is not None and duration > 0) else None
        per_s = rate.get('events_per_s') if rate else trace_per_s
        source = 'record_rates' if rate else ('trace' if trace_per_s is not None else None)
        p99_ms = _ms(stats.get('p99_us'))
        max_ms = _ms(stats.get('max_us'))
        frequent = per_s is not None and per_s >= thr['hot_syscall_per_s']
        slow = p99_ms is not None and p99_ms >= thr['slow_syscall_p99_ms']
        # a stall is on and this syscall is on a request path: it pays the wait even untraced
        on_path = name in REQUEST_PATH_SYSCALLS and bool(ctx.get('stall_signs'))
        if frequent or slow or on_path:
            severity = 'warning'
        if slow:
            ctx.setdefault('symptoms', []).append('%s stalls (p99 %s ms, max %s ms)' % (name, fmt(p99_ms), fmt(max_ms)))
        keys = sorted({str(r.get('key')) for r in rules if r.get('key')})
        item = {'syscall': name}
        if keys:
            item['key'] = keys[0]
        narrow[name] = item
        for rule in rules:
            if rule.get('text') not in texts:
                texts.append(rule.get('text'))
        detail = []
        if per_s is not None:
            detail.append('%s/s%s' % (fmt(per_s, 1), ' measured' if source == 'record_rates' else ' traced'))
        if rate.get('records_per_s') is not None:
            detail.append('%s records/s, %s of all' % (fmt(rate['records_per_s'], 1), pct(rate.get('share'))))
        if rate.get('exes'):
            detail.append('by %s' % ', '.join(rate['exes'][:2]))
        if p99_ms is not None:
            detail.append('p99 %s ms' % fmt(p99_ms))
        entries.append({'syscall': name, 'trace_count': count,
                        'calls_per_s': round(per_s, 2) if per_s is not None else None,
                        'rate_source': source,
                        'records_per_s': rate.get('records_per_s'), 'share': rate.get('share'),
                        'keys': rate.get('keys') or keys, 'exes': rate.get('exes') or [],
                        'trace_calls_per_s': round(trace_per_s, 2) if trace_per_s is not None else None,
                        'p99_ms': p99_ms, 'max_ms': max_ms, 'frequent': frequent, 'slow': slow,
                        'label': '%s%s' % (name, ' (%s)' % ', '.join(detail) if detail else '')})
    if not entries:
        return []
    # the ones that matter first: slow or frequent, the busiest, request paths
    entries.sort(key=lambda e: (not (e['slow'] or e['frequent']), -(e['calls_per_s'] or 0),
                                e['syscall'] not in REQUEST_PATH_SYSCALLS, e['syscall']))
    evidence = {'syscalls': entries, 'rules': texts, 'trace_seconds': duration or None,
                'record_rates_seconds': num(_d(view.sample.get('record_rates')).get('seconds')) if view.sample else None,
                'hot_syscall_per_s': thr['hot_syscall_per_s'], 'slow_syscall_p99_ms': thr['slow_syscall_p99_ms']}
    return [_finding('audited_hot_syscall', severity, host,
                     'Rules audit every call of %s: each call queues a record and sleeps when the backlog is full'
                     % ', '.join(e['label'] for e in entries),
                     evidence, {'role': 'audit_rules', 'vars': {'audit_rules_narrow': [narrow[e['syscall']] for e in entries]}})]


def rule_syscall_stall_observed(view, host, thr, ctx):
    if not view.trace_ok or not view.trace.get('audit_wait_observed'):
        return []
    stacks, slow_calls = _audit_sleeps(view)
    worst, p99_ms, max_ms = _worst_audited_syscall(view)
    max_sleep_ms = _audit_sleep_max_ms(view) or 0.0
    evidence = {'offcpu_stacks': [{'stack_text': s.get('stack_text') or ' <- '.join(s.get('stack') or []),
                                   'count': s.get('count'), 'total_us': s.get('total_us'), 'max_us': s.get('max_us'),
                                   'pids': s.get('pids')} for s in stacks[:3]],
                'slow_calls': slow_calls[:3], 'modes': view.trace.get('modes'),
                'duration_s': view.trace.get('duration_s'), 'max_sleep_ms': round(max_sleep_ms, 3),
                'harm': ctx.get('harm')}
    if worst:
        evidence.update({'syscall': worst, 'p99_ms': p99_ms, 'max_ms': max_ms or 0.0})
        ctx.setdefault('symptoms', []).insert(0, '%s stalls (p99 %s ms, max %s ms)' % (
            worst, fmt(evidence['p99_ms']), fmt(evidence['max_ms'])))
    else:
        ctx.setdefault('symptoms', []).insert(0, 'audited syscalls sleep in audit_log_start (max %s ms)'
                                                 % fmt(evidence['max_sleep_ms']))
    summary = 'Trace saw tasks sleeping in audit_log_start (schedule_timeout) for up to %s ms' % fmt(evidence['max_sleep_ms'])
    if worst:
        summary += '; %s p99 %s ms' % (worst, fmt(evidence['p99_ms']))
    return [_finding('syscall_stall_observed', _harm_severity(ctx), host, summary, evidence,
                     _backlog_family_remediation(view, thr, ctx))]


def rule_immutable(view, host, thr, ctx):
    if not view.audit_ok or view.enabled != 2:
        return []
    return [_finding('audit_immutable', 'info', host,
                     'Audit configuration is locked (enabled=2): rule and backlog changes need a reboot',
                     {'enabled': 2})]


RULES = (rule_unsupported, rule_backlog_saturated, rule_events_lost, rule_wait_time_accrued,
         rule_consumer_missing, rule_consumer_throttled, rule_consumer_stalled, rule_audited_hot_syscall,
         rule_syscall_stall_observed, rule_immutable)


def _stall_signs(view, thr):
    """Which stall symptoms the audit facts show (names of the finding ids)."""
    signs = []
    if not view.audit_ok or not view.enabled:
        return signs
    _peak, ratio, _src = view.backlog_peak()
    if ratio is not None and ratio >= thr['backlog_saturated_ratio']:
        signs.append('audit_backlog_saturated')
    if view.sample and (num(view.sample.get('lost_delta')) or 0) > 0:
        signs.append('audit_events_lost')
    if view.sample and (num(view.sample.get('backlog_wait_time_actual_delta_jiffies')) or 0) > 0:
        signs.append('audit_wait_time_accrued')
    if view.trace_ok and view.trace.get('audit_wait_observed'):
        signs.append('syscall_stall_observed')
    return signs


def stall_suspected(audit_status, thresholds=None):
    """True when the audit facts alone suggest a stall (wait accrued, backlog near limit, lost growing)."""
    thr = merge_thresholds(thresholds)
    return bool(_stall_signs(_View({'audit_status': audit_status}), thr))


def _sort_key(finding):
    return (SEVERITY_RANK.get(finding['severity'], 9), finding['id'])


def evaluate(host_facts, hostname, thresholds=None):
    """(findings, chain) for one host."""
    thr = merge_thresholds(thresholds)
    view = _View(host_facts)
    ctx = {'stall_signs': _stall_signs(view, thr)}
    ctx['harm'] = measure_harm(view, thr)
    ratio, _src, target = view.throttle()
    if target is not None and ratio is not None and ratio >= thr['throttled_ratio_warn']:
        ctx['cause_remediation'], ctx['cpu_sizing'] = agent_cpu_remediation(target, thr, view)
    ctx['stalled'] = consumer_stall_cause(view, thr, ctx['stall_signs'])
    findings = []
    for rule in RULES:
        findings.extend(rule(view, hostname, thr, ctx))
    chain = build_chain(view, ctx, findings)
    if chain:
        for finding in findings:
            if finding['severity'] != 'info' and finding['id'] != 'audit_unsupported':
                finding['evidence']['chain'] = chain
    findings.sort(key=_sort_key)
    return findings, chain


def build_chain(view, ctx, findings):
    """"symptom <- backlog <- consumer -> fix" from what the rules found (None when healthy)."""
    serious = [f for f in findings if f['severity'] in ('critical', 'warning')]
    if not serious:
        return None
    links = []
    symptoms = ctx.get('symptoms') or []
    if symptoms:
        links.append(symptoms[0])
    elif ctx.get('wait'):
        links.append(ctx['wait'])
    backlog = ctx.get('backlog')
    if backlog and ctx.get('lost'):
        backlog = '%s, %s' % (backlog, ctx['lost'])
    elif not backlog and ctx.get('lost'):
        backlog = 'audit records dropped (%s)' % ctx['lost']
    if backlog:
        links.append(backlog)
    if ctx.get('consumer'):
        links.append(ctx['consumer'])
    if not links:
        links.append(serious[0]['summary'])
    chain = ' <- '.join(links)
    if ctx.get('stalled'):
        fix = ctx['stalled']['fix']
    else:
        remediation = ctx.get('cause_remediation')
        if remediation is None:
            for finding in sorted(serious, key=_sort_key):
                if finding.get('remediation'):
                    remediation = finding['remediation']
                    break
        fix = _fix_text(remediation)
    if fix:
        chain += ' -> ' + fix
    if view.enabled == 2:
        chain += ' (audit is immutable: reboot to apply audit changes)'
    return chain


def worst_severity(findings):
    best = 'ok'
    for finding in findings or []:
        if SEVERITY_RANK.get(finding.get('severity'), 9) < SEVERITY_RANK[best]:
            best = finding['severity']
    return best


def host_summary(host_facts, hostname, thresholds=None, error=None, reachable=True):
    """One host's entry of fleet.json (docs/reports.md)."""
    facts = {k: v for k, v in _d(host_facts).items() if k in GATHERED}
    if not reachable:
        return {'host': hostname, 'reachable': False, 'error': error or 'unreachable', 'status': 'unreachable',
                'severity': None, 'findings': [], 'chain': None, 'facts': facts, 'metrics': {}, 'harm': None}
    findings, chain = evaluate(facts, hostname, thresholds)
    severity = worst_severity(findings)
    status = 'failed' if error else severity
    return {'host': hostname, 'reachable': True, 'error': error, 'status': status,
            'severity': severity, 'findings': findings, 'chain': chain, 'facts': facts,
            'metrics': host_metrics(facts), 'harm': measure_harm(_View(facts), merge_thresholds(thresholds))}


def host_metrics(host_facts):
    """Flat numbers for charts and Prometheus (None when unknown)."""
    view = _View(host_facts)
    peak, ratio, _src = view.backlog_peak()
    throttle_ratio, throttle_source, target = view.throttle()
    sample = view.sample
    return {
        'audit_supported': 1 if view.audit_ok else 0,
        'audit_enabled': view.enabled,
        'audit_consumer_pid': num(view.status.get('pid')),
        'audit_backlog': num(view.status.get('backlog')),
        'audit_backlog_limit': view.backlog_limit,
        'audit_lost': num(view.status.get('lost')),
        'audit_backlog_wait_time_jiffies': num(view.status.get('backlog_wait_time_jiffies')),
        'audit_backlog_wait_time_actual_jiffies': num(view.status.get('backlog_wait_time_actual_jiffies')),
        'audit_backlog_peak': peak,
        'audit_backlog_peak_ratio': ratio,
        'audit_lost_per_s': num(sample.get('lost_per_s')) if sample else None,
        'audit_wait_accrued_ms': num(sample.get('backlog_wait_time_actual_delta_ms')) if sample else None,
        'audit_sample_seconds': num(sample.get('seconds')) if sample else None,
        'consumer_throttled_ratio': throttle_ratio,
        'consumer_throttled_ratio_source': throttle_source,
        'consumer_limit_cores': num(_d(target).get('limit_cores')) if target else None,
    }


def facts_from_results(results):
    """(facts, errors, unreachable, core_failed) from registered results ``{name: result}``
    (RESULT_FACTS names first, in their order, then any other name, whose result may carry
    any fact key). A failing module may still return its facts (supported: false + reason);
    ``errors`` names each failed result, ``core_failed`` when one that carries audit_status
    failed; ``unreachable`` is the message of an unreachable result (nothing else is read)."""
    facts, errors, core_failed = {}, [], False
    results = results or {}
    names = [n for n in RESULT_ORDER if n in results] + sorted(n for n in results if n not in RESULT_ORDER)
    for name in names:
        res = results.get(name)
        if not isinstance(res, dict) or res.get('skipped'):
            continue
        if res.get('unreachable'):
            return facts, errors, to_text(res.get('msg') or 'unreachable'), core_failed
        if res.get('failed'):
            errors.append('%s: %s' % (name, to_text(res.get('msg') or 'failed')))
            core_failed = core_failed or 'audit_status' in RESULT_FACTS.get(name, ())
        for key in RESULT_FACTS.get(name, GATHERED):
            if isinstance(res.get(key), dict) and key not in facts:
                facts[key] = res[key]
    return facts, errors, None, core_failed


def host_entry(host, results, thresholds):
    """One host's entry of fleet.json from its registered results (facts_from_results).

    A failure of the result that carries audit_status fails the host; other
    failures are recorded in ``error`` and the audit findings still stand.
    """
    facts, errors, unreachable, core_failed = facts_from_results(results)
    if unreachable:
        return host_summary(facts, host, thresholds, error=unreachable, reachable=False)
    if not errors and 'audit_status' not in facts:
        errors.append('no audit facts gathered (the diagnose tasks did not run on this host)')
        core_failed = True
    entry = host_summary(facts, host, thresholds, error='; '.join(errors) or None)
    if errors and not core_failed and entry['status'] == 'failed':
        entry['status'] = entry['severity']
    return entry


def one_line(text, width=300):
    text = ' '.join(str(text or '').split())
    return text if len(text) <= width else text[:width - 3] + '...'


def failed_entry(host, error, reachable=True):
    """A host entry for a host whose facts could not be judged or rendered."""
    return {'host': str(host), 'reachable': bool(reachable), 'status': 'failed', 'severity': None,
            'error': one_line(error, 1000), 'findings': [], 'chain': None, 'facts': {}, 'metrics': {}}


def safe_host_entry(host, results, thresholds):
    """host_entry, or a failed entry when the results break the findings (a bad fact never
    loses the fleet report)."""
    try:
        return host_entry(host, results, thresholds)
    except Exception as exc:
        return failed_entry(host, 'findings failed: %s' % to_text(exc))
