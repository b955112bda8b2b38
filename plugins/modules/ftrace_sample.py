#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r'''
---
module: ftrace_sample
short_description: Sample where syscalls of chosen processes lose time in the kernel (ftrace), and restore tracefs
description:
  - Runs a short, bounded ftrace sample and returns what it found under C(ftrace_sample).
  - C(function_graph) mode (where the kernel has the tracer) runs the two recipes that found the
    original incident, one after the other, each for half of I(duration_s) - slow calls only
    (C(tracing_thresh), C(set_ftrace_pid)), then C(set_graph_function) I(graph_function) with
    C(max_graph_depth) I(max_graph_depth) - and returns the slow call chains and the
    "syscall, then exit work" pairs.
  - C(syscalls) mode enables C(syscalls:sys_enter_X)/C(sys_exit_X) for the chosen syscalls (default
    the ones the loaded audit rules name), filtered to the target tasks, in a private tracefs
    instance C(auditgap-<pid>), and returns per syscall count, p50/p99/max latency and the slowest
    calls.
  - C(offcpu) mode enables C(sched:sched_switch) with a C(stacktrace) trigger for the target tasks
    in the private instance and returns the sleeps grouped by kernel stack (count, total and max
    off-CPU time, paired with the task's next switch-in); by default only their uninterruptible
    sleeps carry a stack (I(offcpu_stacked_sleeps)).
  - C(auto) runs C(function_graph) where available, else C(syscalls) and C(offcpu) together.
  - C(syscalls) and C(offcpu) read the instance's binary ring buffer (C(per_cpu/cpuN/trace_pipe_raw))
    and decode it with the events' C(format) files where they parse (C(reader=raw)), else the text
    (C(trace_pipe), C(reader=text), C(reader_fallback) says why); the result is the same.
  - Safety (model perf-tools funcslower) - the auditgap host lock (C(/run/auditgap/host.lock), not
    waited for); every change is written to an undo journal under C(/run/auditgap) first, and the
    journals of runs that died (SIGKILL) are replayed first (C(recovered_from_crash), docs/safety.md); refuses
    when the top-level tracer is not C(nop) unless I(force); bounded duration and buffer; every
    file it changes is restored and its instance removed on success, error, timeout and SIGTERM
    (RestoreGuard); instances left by a SIGKILLed sample (dead pid) are removed first; every
    value written to tracefs is validated (pids, function names, syscall names; filters are
    built from validated integers only). tracefs is mounted when absent and unmounted after.
  - Nothing persists, so C(changed) is always false; the sample also runs in check mode.
version_added: "0.1.0"
author: auditgap contributors (@auditgap)
options:
  mode:
    description: Which sample to run.
    type: str
    choices: [auto, function_graph, syscalls, offcpu]
    default: auto
  pids:
    description:
      - Target process ids (their threads are included, up to 64 tasks in all). With neither
        I(pids) nor I(process_names) every task except the audit consumer and the module itself
        is sampled (C(offcpu) then takes stacks of uninterruptible sleeps only).
    type: list
    elements: int
    default: []
  process_names:
    description: Target processes by name (C(comm) or executable basename).
    type: list
    elements: str
    default: []
  include_audit_consumer:
    description:
      - Also trace the registered audit consumer (auditd or an agent) when it is among the
        targets. Off by default, tracing it slows the very process that drains the backlog.
    type: bool
    default: false
  syscalls:
    description:
      - Syscall names for C(syscalls) mode (for example C(accept4)). Default - the syscalls the
        loaded audit rules name (netlink, else C(auditctl -l)). A name without
        C(events/syscalls/sys_enter_NAME) fails the task.
      - In C(function_graph) mode on kernels where C(do_syscall_64) is not traceable, these syscalls'
        own functions are graphed (default the audited ones, else accept4, accept, connect, bind,
        listen, execve, clone, read, write).
    type: list
    elements: str
  duration_s:
    description: Length of the sample in seconds (more than 0, at most 60).
    type: float
    default: 5
  buffer_size_kb:
    description: Per-CPU ring buffer size for the sample, 64..65536 KiB.
    type: int
    default: 4096
  tracing_thresh_us:
    description: C(function_graph) slow-calls recipe - only calls at least this long (microseconds).
    type: int
    default: 100000
  graph_function:
    description:
      - C(function_graph) second recipe - the C(set_graph_function) root; must be traceable.
      - When it is the default C(do_syscall_64) and the kernel does not allow tracing it (C(noinstr),
        kernels 5.x and later), the roots are the chosen syscalls' own functions (C(__x64_sys_NAME))
        plus the exit work (C(syscall_exit_work)); the calls are paired per task.
    type: str
    default: do_syscall_64
  max_graph_depth:
    description: C(function_graph) second recipe - C(max_graph_depth), 1..16.
    type: int
    default: 2
  function_filter:
    description:
      - C(function_graph) mode - bound the tracer to these functions (C(set_ftrace_filter) words,
        function names or globs with C(*) and C(?), for example C(*audit*), C(schedule_timeout),
        C(__x64_sys_accept4)). Only they are patched and only they appear in the chains, which keeps
        the cost of a sample on a busy host small.
      - Empty (default) - every traceable function, as in the seed's recipes.
      - The second recipe adds its C(set_graph_function) roots to the filter. Words that match no
        traceable function on this kernel are left out (reported in C(function_filter_unmatched)), so
        one list fits a fleet of different kernels; when none matches, the task fails.
        C(set_ftrace_filter) must be empty before the sample (it is cleared again after); otherwise
        the task fails and nothing is changed.
    type: list
    elements: str
    default: []
  top:
    description: How many slowest calls to return per syscall (and slow chains), 1..100.
    type: int
    default: 10
  aggregation:
    description:
      - How C(syscalls) mode measures latency.
      - C(hist) - in the kernel, where it has hist triggers (C(CONFIG_HIST_TRIGGERS), for example Debian 12's
        6.1) - a synthetic event C(auditgap_lat_<pid>) (each syscall's C(sys_enter_X) to C(sys_exit_X),
        onmatch latency) and a C(hist) trigger keyed by syscall, task and latency in the private instance; no
        per-call event is written or read, only the histogram, once at the end (C(slowest[].ts_s) is then
        null). The synthetic event and the triggers are removed after, like the instance. Fails, with
        nothing changed, where the kernel lacks hist triggers.
      - C(events) - the C(sys_enter_X)/C(sys_exit_X) events, paired in user space.
      - C(auto) - C(hist) where the kernel allows it, else C(events); the one used is returned in
        C(syscalls_aggregation), why not C(hist) in C(syscalls_aggregation_note).
      - C(offcpu) always reads events (its stacks come from the C(stacktrace) trigger).
    type: str
    choices: [auto, hist, events]
    default: events
  offcpu_stacked_sleeps:
    description:
      - C(offcpu) mode - which sleeps of the target tasks get a kernel stack.
      - C(blocked) - uninterruptible sleeps only (C(D), killable and idle sleeps - the kernel-side waits,
        the audit backlog wait in C(audit_log_start) among them). The targets' other switch-outs
        (waiting in C(accept4), C(poll) or C(nanosleep) for work, preempted) are still timed, without a
        stack, in C(offcpu_unstacked). A stack costs the traced task more than the event; on a loopback
        accept loop an off-CPU sample cost 3.5% of accepts per CPU-second with C(blocked) and 7.5% with C(all)
        (docs/ftrace_sample.md).
      - C(all) - every switch-out of the targets, grouped by stack with their C(states).
      - Without targets (no I(pids) or I(process_names)) only uninterruptible sleeps get a stack, either way.
    type: str
    choices: [blocked, all]
    default: blocked
  force:
    description: Run even when the top-level tracer is not C(nop) (another user's tracing is then disturbed).
    type: bool
    default: false
notes:
  - Needs root. Without root or tracefs the result is C(supported=false) with a reason, not a failure.
  - Bad input (pid or process name not found, tracer busy, function not traceable, unknown syscall,
    another sample running) fails before tracefs is changed.
  - See docs/ftrace_sample.md.
extends_documentation_fragment:
  - auditgap.fleet.attributes
attributes:
  check_mode:
    support: partial
    details:
      - Check mode runs the sample as a normal run does; tracefs is changed for the sample window and
        restored afterwards. The module always reports C(changed=false).
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Sample the web server (auto - function_graph where available, else syscalls + offcpu)
  auditgap.fleet.ftrace_sample:
    process_names: [node]
    duration_s: 5
  register: sample

- name: Accept latency of one pid, the audited syscalls by default
  auditgap.fleet.ftrace_sample:
    mode: syscalls
    pids: [4242]
    syscalls: [accept4]

- name: function_graph bounded to the audit path (small cost on a busy host)
  auditgap.fleet.ftrace_sample:
    mode: function_graph
    process_names: [nginx]
    tracing_thresh_us: 10000
    function_filter: ['*audit*', schedule_timeout, '__x64_sys_accept4', 'syscall_exit*']

- name: Accept latency counted in the kernel where it has hist triggers, else from the events
  auditgap.fleet.ftrace_sample:
    mode: syscalls
    pids: [4242]
    syscalls: [accept4]
    aggregation: auto
  register: accept_latency   # accept_latency.ftrace_sample.syscalls_aggregation - hist or events

- name: Where does it sleep
  auditgap.fleet.ftrace_sample:
    mode: offcpu
    pids: [4242]
    duration_s: 10
'''

RETURN = r'''
ftrace_sample:
  description: The sample (see docs/contracts.md, section ftrace_sample).
  returned: always
  type: dict
  contains:
    supported:
      description: False when the host cannot be sampled (no root, no tracefs, mode unavailable).
      type: bool
    reason:
      description: Why not supported (or why the task failed); null otherwise.
      type: str
    modes:
      description: The modes that ran (function_graph, syscalls, offcpu).
      type: list
      elements: str
    mode_requested:
      description: The I(mode) asked for.
      type: str
    duration_s:
      description: Requested sample length in seconds.
      type: float
    window_s:
      description: Time between the first and the last event seen (events modes).
      type: float
    tracefs:
      description: tracefs path used.
      type: str
    tracefs_mounted:
      description: True when the module mounted tracefs itself (and unmounted it after).
      type: bool
    instance:
      description: Name of the private instance used (removed after), or null.
      type: str
    available_tracers:
      description: The kernel's available_tracers.
      type: list
      elements: str
    function_graph_available:
      description: Whether the kernel has the function_graph tracer.
      type: bool
    targets:
      description: >-
        C(pids) and C(process_names) asked for, C(resolved_pids) (processes),
        C(tids) (tasks traced), C(excluded) (pids left out, for example the audit consumer),
        C(audit_consumer_pid), C(all_tasks) (true when no target was given).
      type: dict
    syscalls:
      description: >-
        Per syscall name - C(count), C(p50_us), C(p99_us), C(max_us), C(total_us) and
        C(slowest) [{pid, ts_s, duration_us}]. Percentiles are within 0.5%.
      type: dict
    syscalls_traced:
      description: The syscalls whose events were enabled.
      type: list
      elements: str
    syscalls_source:
      description: Where the syscall list came from (option, audit_rules_netlink, audit_rules_auditctl, none).
      type: str
    syscalls_skipped:
      description: Syscalls named by audit rules that have no tracepoint on this kernel.
      type: list
      elements: str
    syscalls_aggregation:
      description: >-
        How C(syscalls) was measured - C(hist) (in the kernel, hist triggers and a synthetic event) or
        C(events) (the syscall events read and paired); null when C(syscalls) did not run.
      type: str
    syscalls_aggregation_note:
      description: Why C(aggregation=auto) used C(events) (for example no hist triggers on this kernel), else null.
      type: str
    syscalls_hist:
      description: >-
        With C(hist) - C(synthetic_event) (its name), C(hits), C(entries) and C(dropped) (calls the
        kernel's histogram had no room for; more than 0 means the counts are short), C(buffered_events)
        (events in the instance's ring buffer at the end - 0 with C(syscalls) alone - no per-call event
        written); null otherwise.
      type: dict
    offcpu:
      description: >-
        Sleeps grouped by kernel stack, total_us descending - C(stack) (innermost first, tracing and
        scheduler-core frames removed), C(stack_text) (C(a <- b <- c)), C(count), C(total_us),
        C(max_us), C(pids), C(states) (prev_state counts).
      type: list
      elements: dict
    offcpu_unstacked:
      description: >-
        Off-CPU time of switch-outs that had no stack (count, total_us, max_us) - with
        C(offcpu_stacked_sleeps=blocked) the targets' ordinary sleeps and preemptions.
      type: dict
    offcpu_stacked_sleeps:
      description: Which sleeps got a stack (I(offcpu_stacked_sleeps) - C(blocked) or C(all)); null when C(offcpu) did not run.
      type: str
    function_graph:
      description: >-
        C(slow_calls) [{cpu, duration_us, chain (outermost first)}], C(syscall_exits)
        [{cpu, syscall, syscall_function, syscall_us, exit_work, exit_work_us}],
        C(exit_work_by_syscall) {name: {count, p50_us, p99_us, max_us}}, C(max_graph_depth_used)
        (3 where C(do_syscall_64) dispatches through C(x64_sys_call), kernels 6.9+),
        C(graph_functions) (the set_graph_function roots used), C(note) (why they differ from
        I(graph_function), for example C(do_syscall_64) is noinstr on kernels 5.x+),
        C(function_filter) (the I(function_filter) words used, [] for every function),
        C(function_filter_unmatched) (words left out: no traceable function matches them); null when
        not run.
      type: dict
    audit_wait_observed:
      description: True when an off-CPU stack or a slow chain passes through audit_log_start.
      type: bool
    events:
      description: Events paired (syscall exits and switch-ins) or calls parsed.
      type: int
    events_lost:
      description: >-
        Events the ring buffer overwrote or dropped (per_cpu stats overrun + dropped events);
        more than 0 means the window was busier than the buffer (raise I(buffer_size_kb)).
      type: int
    lines:
      description: Trace lines read (text reader), or ring buffer records decoded (raw reader).
      type: int
    read_while_tracing_bytes:
      description: >-
        Events modes - bytes of the instance's ring buffer the sample took while it traced (the buffer
        reached its watermark; whole pages spliced into pipes, or read where splice is missing); 0 when
        the buffer held the whole window and everything was read after tracing stopped; null when no
        event was read (C(function_graph), or C(hist) alone). Above 0 the traced tasks may have paid for
        it beside the tracepoints (docs/ftrace_sample.md); a I(buffer_size_kb) that holds the window keeps
        it out.
      type: int
    top_buffer_expanded_kb:
      description: >-
        Set when this sample was the kernel's first use of tracing since boot, on a kernel with one
        global "buffers expanded" flag (6.1) - sizing the private instance's buffer set that flag, and
        the top-level buffer, which would otherwise stay at its boot size (7 KiB per CPU) for every
        later user, was set to the size it grows to on first use (KiB per CPU, 1408 by default), as
        the kernel does itself the first time anyone enables an event. That flag cannot be cleared
        by anyone; null when nothing was needed.
      type: int
    reader:
      description: >-
        How the trace was read - C(raw) (events modes - the binary ring buffer of the instance,
        C(per_cpu/cpuN/trace_pipe_raw), decoded with its format files; the kernel formats no text)
        or C(text) (C(trace_pipe); function_graph, and events modes where the raw reader cannot be
        used, see C(reader_fallback)); null when nothing was sampled.
      type: str
    reader_fallback:
      description: >-
        Why an events sample read text instead of the ring buffer (a format file it cannot decode,
        a clock that does not count nanoseconds, kernel addresses hidden for stacks, no
        trace_pipe_raw, or an offcpu sample too small for naming its stacks from /proc/kallsyms to
        pay off); null otherwise.
      type: str
    stale_instances_removed:
      description: >-
        C(auditgap-<pid>) instances (and C(auditgap_lat_<pid>) synthetic events) of dead samples
        that were removed first.
      type: list
      elements: str
    stale_cleanup_errors:
      description: >-
        What of a dead sample could not be removed, and why (the sample went on). A synthetic event
        the kernel reports busy stays until reboot.
      type: list
      elements: str
    interrupted:
      description: SIGTERM/SIGINT/SIGHUP/timeout when the sample was cut short, else null.
      type: str
    restored:
      description: True only when every undo step succeeded (whatever error ended the sample).
      type: bool
    recovered_from_crash:
      description: >-
        Undo journals of auditgap runs that died (SIGKILL) which this run replayed before sampling,
        one entry per journal {journal, module, owner_pid, since, undone, errors}; [] when none.
      type: list
      elements: dict
    signals_during_restore:
      description: Signals that arrived while restoring (held off until every undo step had run).
      type: list
      elements: str
    restore_errors:
      description: Undo steps that failed.
      type: list
      elements: str
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, tracefs
from ansible_collections.auditgap.fleet.plugins.module_utils import tracehist, traceparse, tracering
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import (
    GuardInterrupted, Journal, RestoreGuard, UnsafePath, append_value, write_value)
from ansible_collections.auditgap.fleet.plugins.module_utils.procinfo import find_pids_by_name
from ansible_collections.auditgap.fleet.plugins.module_utils.syscall_tables import TABLES
from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import table_for

MAX_DURATION_S = 60.0
# function_graph fallback roots when neither the option nor the audit rules name a syscall
DEFAULT_GRAPH_SYSCALLS = ('accept4', 'accept', 'connect', 'bind', 'listen', 'execve', 'clone', 'read', 'write')
BUFFER_KB_RANGE = (64, 65536)
# An offcpu sample read raw names its stacks from /proc/kallsyms: about 0.1-0.2 s CPU once, which
# the raw reader wins back at ~1.5 us an event over the kernel's text (docs/ftrace_sample.md).
# Below this many buffered events, with nothing read during the window, the text is read.
RAW_MIN_EVENTS_WITH_STACKS = 100000
MODES = ('auto', 'function_graph', 'syscalls', 'offcpu')
AGGREGATIONS = ('auto', 'hist', 'events')
ARGUMENT_SPEC = dict(
    mode=dict(type='str', default='auto', choices=list(MODES)),
    pids=dict(type='list', elements='int', default=[]),
    process_names=dict(type='list', elements='str', default=[]),
    include_audit_consumer=dict(type='bool', default=False),
    syscalls=dict(type='list', elements='str'),
    duration_s=dict(type='float', default=5),
    buffer_size_kb=dict(type='int', default=4096),
    tracing_thresh_us=dict(type='int', default=100000),
    graph_function=dict(type='str', default='do_syscall_64'),
    max_graph_depth=dict(type='int', default=2),
    function_filter=dict(type='list', elements='str', default=[]),
    top=dict(type='int', default=10),
    aggregation=dict(type='str', default='events', choices=list(AGGREGATIONS)),
    offcpu_stacked_sleeps=dict(type='str', default='blocked', choices=list(tracefs.OFFCPU_STACKED_SLEEPS)),
    force=dict(type='bool', default=False),
)
# what a top-level file is set back to when its old value cannot be read
_TOP_DEFAULTS = {'current_tracer': 'nop', 'tracing_on': '1', 'tracing_thresh': '0',
                 'set_ftrace_pid': '', 'set_ftrace_notrace_pid': '', 'set_graph_function': '',
                 'max_graph_depth': '0', 'options/funcgraph-proc': '0',
                 'buffer_size_kb': '1408'}


class SampleError(Exception):
    """Bad input or a refused sample: the task fails, nothing stays changed."""


class Unsupported(Exception):
    """The host cannot be sampled: supported=false, not a failure."""


def validate_params(params):
    """Range checks before anything is touched; returns a list of problems."""
    errors = []
    duration = params['duration_s']
    if duration is None or not 0 < duration <= MAX_DURATION_S:
        errors.append('duration_s must be more than 0 and at most %d' % MAX_DURATION_S)
    low, high = BUFFER_KB_RANGE
    if not low <= params['buffer_size_kb'] <= high:
        errors.append('buffer_size_kb must be %d..%d' % (low, high))
    if not 0 <= params['tracing_thresh_us'] <= 60000000:
        errors.append('tracing_thresh_us must be 0..60000000')
    if not 1 <= params['max_graph_depth'] <= 16:
        errors.append('max_graph_depth must be 1..16')
    if not 1 <= params['top'] <= 100:
        errors.append('top must be 1..100')
    if not tracefs.is_symbol(params['graph_function']):
        errors.append('graph_function %r is not a kernel symbol name' % (params['graph_function'],))
    words = params.get('function_filter') or []
    if len(words) > 100:
        errors.append('function_filter takes at most 100 words')
    for word in words:
        if not tracefs.is_filter_glob(word):
            errors.append('function_filter word %r is not a function name or glob (letters, digits, _ . * ?)'
                          % (word,))
    for name in params.get('syscalls') or ():
        if not tracefs.is_syscall_name(name):
            errors.append('syscall name %r is invalid (lowercase letters, digits, _)' % (name,))
    for name in params.get('process_names') or ():
        if not name or '/' in name or '\n' in name:
            errors.append('process name %r is invalid' % (name,))
    return errors


def choose_modes(mode, function_graph_available):
    """-> list of modes to run, or raise Unsupported."""
    if mode == 'auto':
        return ['function_graph'] if function_graph_available else ['syscalls', 'offcpu']
    if mode == 'function_graph' and not function_graph_available:
        raise Unsupported('the kernel has no function_graph tracer (available_tracers lacks it); '
                          'use mode syscalls/offcpu or auto')
    return [mode]


def audit_consumer_pid(**client):
    """PID of the registered audit consumer (netlink, else auditctl -s), or None."""
    return audit.consumer(**client)[0]


def audit_rule_syscalls(**client):
    """(names, source) of the syscalls the loaded audit rules name (netlink, else auditctl -l)."""
    with audit.Audit(**client) as client:
        try:
            return tracefs.syscalls_from_rules(client.rules()), 'audit_rules_%s' % client.source
        except audit.AuditError:
            return [], 'none'


def resolve_targets(params, consumer_pid, own_pid, proc_root='/proc'):
    """-> targets dict; raises SampleError for pids/names not found."""
    try:
        pids = tracefs.validate_pids(params['pids'], proc_root)
    except tracefs.TracefsError as err:
        raise SampleError(str(err)) from None
    names = list(params['process_names'] or [])
    if names:
        found = find_pids_by_name(names, proc_root)
        missing = [name for name in names if not found.get(name)]
        if missing:
            raise SampleError('process name(s) not found: %s' % ', '.join(missing))
        for name in names:
            for pid in sorted(found[name]):
                if pid not in pids:
                    pids.append(pid)
    excluded = []
    if own_pid in pids:
        pids.remove(own_pid)
        excluded.append(own_pid)
    if consumer_pid and not params['include_audit_consumer'] and consumer_pid in pids:
        pids.remove(consumer_pid)
        excluded.append(consumer_pid)
    all_tasks = not params['pids'] and not names
    if not all_tasks and not pids:
        raise SampleError('no target left after excluding %s (the module itself is never traced, '
                          'the audit consumer only with include_audit_consumer=true)' % excluded)
    exclude_all = [own_pid]
    if consumer_pid and not params['include_audit_consumer']:
        exclude_all.append(consumer_pid)
    return {
        'pids': list(params['pids']), 'process_names': names, 'resolved_pids': pids,
        'tids': tracefs.threads_of(pids, proc_root) if pids else [],
        'excluded': excluded if not all_tasks else exclude_all,
        'audit_consumer_pid': consumer_pid, 'all_tasks': all_tasks,
    }


def resolve_syscalls(params, root, modes):
    if 'syscalls' not in modes:
        return [], 'none', []
    if params.get('syscalls'):
        unknown = [name for name in params['syscalls'] if not tracefs.syscall_event_exists(root, name)]
        if unknown:
            raise SampleError('unknown syscall name(s) (no events/syscalls/sys_enter_X): %s' % ', '.join(unknown))
        return list(dict.fromkeys(params['syscalls'])), 'option', []
    names, source = audit_rule_syscalls()
    known = [name for name in names if tracefs.syscall_event_exists(root, name)]
    skipped = [name for name in names if name not in known]
    return known, source if names else 'none', skipped


# ---------------------------------------------------------------------------
# the sampling itself

def _window(reader, seconds, on_text, base, buffer_size_kb):
    # read during the window only when the buffer fills up (the raw reader asleep in the kernel until its
    # watermark); the rest after tracing stops
    reader.read_until(time.monotonic() + seconds, on_text,
                      drain_if=lambda: tracefs.buffer_filling(base, buffer_size_kb), buffer_bytes=buffer_size_kb * 1024)


# ---------------------------------------------------------------------------
# syscall latency aggregated in the kernel (hist triggers)

def choose_aggregation(requested, root, syscalls):
    """-> (aggregation, note): 'hist' where the kernel can aggregate the syscall latency
    itself, else 'events' with the reason; SampleError when 'hist' was asked and cannot be.
    ``syscalls`` have their events (resolve_syscalls): the kernel names them in the histogram
    from the same metadata, so no syscall table is needed (one names a number where it is not)."""
    if requested == 'events' or not syscalls:
        return 'events', None
    if tracehist.available(root):
        return 'hist', None
    reason = 'the kernel has no hist triggers (CONFIG_HIST_TRIGGERS: no synthetic_events or hist files)'
    if requested == 'hist':
        raise SampleError('aggregation hist: %s; nothing changed' % reason)
    return 'events', reason


def start_syscall_hist(guard, root, inst, syscalls, tids, exclude):
    """The synthetic latency event, its histogram and each syscall's enter and exit triggers;
    the guard removes them in the reverse order (each exit trigger before its enter trigger,
    then the histogram, then the synthetic event).
    Returns (synthetic event name, the path of the histogram to read at the end)."""
    name = tracehist.synth_name()
    commands = tracehist.latency_commands(name, syscalls, tids, exclude)
    tracefs.remove_synthetic(root, name)  # left by a killed sample with our pid (pid reuse)
    guard.push_op('remove_synthetic', 'remove synthetic event %s' % name, root=root, name=name)
    tracehist.write_command(root, os.path.join(root, 'synthetic_events'), commands['synthetic'], append_value)
    synth_dir = os.path.join(inst, 'events', 'synthetic', name)
    writes = [(os.path.join(synth_dir, 'trigger'), commands['hist'])]
    writes.extend((os.path.join(inst, 'events', 'syscalls', event, 'trigger'), trigger)
                  for event, trigger in commands['triggers'])
    for path, trigger in writes:
        guard.push_op('append', 'remove hist trigger %s' % path, path=path,
                      value=tracehist.hist_trigger_removal(trigger))
        tracehist.write_command(root, path, trigger, append_value)
    return name, os.path.join(synth_dir, 'hist')


def read_syscall_hist(inst, hist, syscalls, top):
    """(syscalls result, {synthetic_event, hits, entries, dropped, buffered_events}) from the
    histogram file; ``buffered_events``: what the instance's ring buffer holds (0 when only
    the kernel's histogram counted: no per-call event written)."""
    name, path = hist
    parsed = tracehist.parse_hist(tracefs.read(path))
    result = tracehist.syscalls_from_hist(parsed, syscalls, TABLES.get(table_for(None), {}), top)
    buffered = tracefs.events_buffered(inst)
    return result, {'synthetic_event': name, 'hits': parsed['hits'], 'entries': parsed['entries_count'],
                    'dropped': parsed['dropped'], 'buffered_events': buffered}


def sample_events(guard, root, modes, targets, syscalls, params, facts):
    """syscalls and/or offcpu in a private instance. Returns (instance name, parser,
    events lost); ``facts`` gets ``reader`` and ``reader_fallback``, and with
    ``facts['syscalls_aggregation'] == 'hist'`` ``syscalls`` and ``syscalls_hist`` from the
    kernel's histogram (read before the guard removes its triggers)."""
    name = tracefs.instance_name()
    inst = tracefs.create_instance(guard, root, name)
    write_value(os.path.join(inst, 'tracing_on'), '0')
    facts['top_buffer_expanded_kb'] = tracefs.size_instance_buffer(guard, root, inst, params['buffer_size_kb'])
    tids = targets['tids']
    exclude = [] if tids else targets['excluded']
    hist = None
    if 'syscalls' in modes and facts.get('syscalls_aggregation') == 'hist':
        hist = start_syscall_hist(guard, root, inst, syscalls, tids, exclude)
        # the events read are offcpu's only (when asked); the syscalls come from the histogram
        modes = [mode for mode in modes if mode != 'syscalls']
        syscalls = []
    stacked = 'blocked'
    if 'offcpu' in modes:
        stacked = facts['offcpu_stacked_sleeps'] = params.get('offcpu_stacked_sleeps') or 'blocked'
    for rel, value, undo in tracefs.events_plan(modes, syscalls, tids, exclude, stacked):
        if undo is None:
            tracefs.guarded_trigger(guard, os.path.join(inst, rel), value)
        else:
            guard.write_file(os.path.join(inst, rel), value, restore_value=undo)
    if not modes:  # syscalls in the kernel only: nothing to read until the end
        write_value(os.path.join(inst, 'tracing_on'), '1')
        time.sleep(params['duration_s'])  # the kernel counts; nothing to read before the end
        write_value(os.path.join(inst, 'tracing_on'), '0')
        facts['syscalls'], facts['syscalls_hist'] = read_syscall_hist(inst, hist, facts['syscalls_traced'],
                                                                      params['top'])
        return name, None, tracefs.events_lost(inst)
    parser, reader, feed, facts['reader'], facts['reader_fallback'] = events_reader(
        inst, modes, tids, syscalls, params['top'])
    guard.push(reader.close, description='close the trace reader')
    write_value(os.path.join(inst, 'tracing_on'), '1')
    _window(reader, params['duration_s'], feed, inst, params['buffer_size_kb'])
    write_value(os.path.join(inst, 'tracing_on'), '0')
    facts['read_while_tracing_bytes'] = reader.bytes
    if hist:
        facts['syscalls'], facts['syscalls_hist'] = read_syscall_hist(inst, hist, facts['syscalls_traced'],
                                                                      params['top'])
    why = text_for_small_sample(facts['reader'], modes, reader.bytes,
                                tracefs.events_buffered(inst))
    if why:
        reader.close()
        parser, reader, feed = text_reader(inst, tids, syscalls, params['top'])
        guard.push(reader.close, description='close trace_pipe')
        facts['reader'], facts['reader_fallback'] = 'text', why
    reader.drain(feed)
    return name, parser.flush(), tracefs.events_lost(inst)


def text_for_small_sample(reader, modes, bytes_read, buffered, least=RAW_MIN_EVENTS_WITH_STACKS):
    """Why an events sample set up to be read raw should be read as text after all, or None.

    When tracing stops: an offcpu sample (its stacks are named from /proc/kallsyms, a cost
    once per sample) whose buffer holds fewer than ``least`` events (``buffered``: the
    per-CPU ``entries``) and from which nothing was read during the window (``bytes_read``)
    costs less as the kernel's text.
    """
    if reader != 'raw' or 'offcpu' not in modes or bytes_read or buffered >= least:
        return None
    return ('%d events with stacks, fewer than %d: the text costs less than naming the stacks from '
            '/proc/kallsyms' % (buffered, least))


def text_reader(inst, tids, syscalls, top):
    """The text reader of an events sample (trace_pipe): (parser, reader, the reader's callback)."""
    parser = traceparse.EventParser(pids=tids or None, syscalls=syscalls or None, top=top)
    return parser, tracefs.PipeReader(os.path.join(inst, 'trace_pipe')), parser.feed_text


def events_reader(inst, modes, tids, syscalls, top, kallsyms='/proc/kallsyms'):
    """The reader of an events sample: the binary ring buffer (per_cpu/cpuN/trace_pipe_raw,
    decoded with the instance's format files) when everything it needs is there, else the
    text (trace_pipe). Returns (parser, reader, the reader's callback, 'raw'|'text', why
    not raw or None)."""
    try:
        plan = tracering.plan_events(inst, syscalls if 'syscalls' in modes else [], 'offcpu' in modes)
        symbols = None
        if 'offcpu' in modes:
            symbols = tracering.Symbols.at(kallsyms)
            if not symbols.usable():
                raise tracering.FormatError('%s shows no addresses (kptr_restrict): stacks could not be named'
                                            % kallsyms)
        reader = tracering.RawReader(inst, plan)
    except (tracering.FormatError, OSError) as err:
        why = str(err) if isinstance(err, tracering.FormatError) else 'cannot open trace_pipe_raw (%s)' % (
            err.strerror or err)
        return text_reader(inst, tids, syscalls, top) + ('text', why)
    parser = tracering.RawEventParser(plan.names, plan.states, symbols, pids=tids or None,
                                      syscalls=syscalls or None, top=top)
    return parser, reader, parser.feed_records, 'raw', None


def _top_guarded(guard, root, restore, rel, value):
    old = restore.get(rel)
    if old is None:
        old = _TOP_DEFAULTS[rel]
    guard.write_file(os.path.join(root, rel), value, restore_value=old)


def recipe_filter(function_filter, recipe, roots):
    """set_ftrace_filter words of one recipe ([] = every function): the second recipe
    needs its set_graph_function roots traced too."""
    words = list(function_filter or ())
    if words and recipe == 'syscall_exits':
        words.extend(root for root in roots if root not in words)
    return words


def check_function_filter(root, words, unmatched):
    """Before anything changes: set_ftrace_filter readable and empty, at least one word
    matching (``unmatched``: the words no traceable function matches). Returns the words
    that match."""
    path = os.path.join(root, 'set_ftrace_filter')
    try:
        current = tracefs.parse_function_list(tracefs.read(path))
    except OSError as err:
        raise SampleError('function_filter: cannot read %s (%s); nothing changed'
                          % (path, err.strerror or err)) from None
    if current:
        raise SampleError('function_filter: set_ftrace_filter already holds %d function(s) (%s) - '
                          "someone's tracing set-up; clear it or drop function_filter; nothing changed"
                          % (len(current), ', '.join(current[:5])))
    usable = [word for word in words if word not in unmatched]
    if not usable:
        raise SampleError('function_filter: no traceable function matches %s; nothing changed'
                          % ', '.join(repr(w) for w in unmatched))
    return usable


def plan_function_graph(root, params):
    """Before anything changes: the second recipe's set_graph_function roots and the
    function_filter words that match, from one pass over available_filter_functions.
    Returns (params for the sample, roots, note, function_filter words left out)."""
    graph_sys = list(params.get('syscalls') or []) or [
        name for name in audit_rule_syscalls()[0] if tracefs.is_syscall_name(name)]
    if not graph_sys:  # no audit rule names a syscall: the seed's audited syscalls + read/write
        graph_sys = list(DEFAULT_GRAPH_SYSCALLS)
    words = list(params.get('function_filter') or [])
    traceable, unmatched = tracefs.filter_functions(
        root, tracefs.graph_candidates(params['graph_function'], graph_sys), words)
    roots, note = tracefs.plan_graph_roots(params['graph_function'], graph_sys, traceable)
    if not roots:
        raise SampleError('%s; nothing changed' % note)
    params = dict(params)
    if words:
        params['function_filter'] = check_function_filter(root, words, unmatched)
    if roots == ['do_syscall_64'] and 'x64_sys_call' in traceable:
        # 6.9+: do_syscall_64 -> x64_sys_call -> __x64_sys_NAME: one level more to see NAME
        params['max_graph_depth'] = max(params['max_graph_depth'], 3)
    return params, roots, note, unmatched


def _run_recipe(inner, root, restore, recipe, targets, roots, params, seconds):
    """One function_graph recipe for ``seconds``; ``inner`` restores its files when it ends
    (or fails). Returns the parser's result with ``events_lost``."""
    tids = targets['tids']
    with inner:
        _top_guarded(inner, root, restore, 'tracing_on', '0')
        _top_guarded(inner, root, restore, 'current_tracer', 'nop')
        _top_guarded(inner, root, restore, 'buffer_size_kb', str(params['buffer_size_kb']))
        if 'options/funcgraph-proc' in restore:
            # task names on every line: calls are paired per task even across CPUs
            _top_guarded(inner, root, restore, 'options/funcgraph-proc', '1')
        if tids:
            _top_guarded(inner, root, restore, 'set_ftrace_pid', ' '.join(str(t) for t in tids))
        elif targets.get('excluded') and 'set_ftrace_notrace_pid' in restore:
            # every task but the audit consumer and ourselves
            _top_guarded(inner, root, restore, 'set_ftrace_notrace_pid',
                         ' '.join(str(int(p)) for p in targets['excluded']))
        if recipe == 'slow_calls':
            _top_guarded(inner, root, restore, 'tracing_thresh', str(params['tracing_thresh_us']))
        else:
            _top_guarded(inner, root, restore, 'tracing_thresh', '0')
            _top_guarded(inner, root, restore, 'set_graph_function', ' '.join(roots))
            _top_guarded(inner, root, restore, 'max_graph_depth', str(params['max_graph_depth']))
        words = recipe_filter(params.get('function_filter'), recipe, roots)
        if words:
            # before the tracer goes on: only these functions are ever patched
            inner.write_file(os.path.join(root, 'set_ftrace_filter'), ' '.join(words), restore_value='')
        _top_guarded(inner, root, restore, 'current_tracer', 'function_graph')
        parser = traceparse.FunctionGraphParser(top=params['top'])
        reader = tracefs.PipeReader(os.path.join(root, 'trace_pipe'))
        inner.push(reader.close, description='close trace_pipe')
        lost_before = tracefs.events_lost(root)
        write_value(os.path.join(root, 'tracing_on'), '1')
        _window(reader, seconds, parser.feed_text, root, params['buffer_size_kb'])
        write_value(os.path.join(root, 'tracing_on'), '0')
        reader.drain(parser.feed_text)
        result = parser.flush().result()
        result['events_lost'] = max(0, tracefs.events_lost(root) - lost_before)
    return result


def sample_function_graph(guard, root, targets, params, roots=None):
    """The seed's two recipes on the top-level buffer, each for half the duration.

    ``roots``: the set_graph_function list of the second recipe (default
    ``graph_function``); see tracefs.plan_graph_roots.
    """
    roots = roots or [params['graph_function']]
    restore = tracefs.top_level_restore_values(root)
    half = max(0.5, params['duration_s'] / 2.0)
    results = []
    for recipe in ('slow_calls', 'syscall_exits'):
        inner = RestoreGuard(signals=False, journal=guard.journal)
        try:
            results.append(_run_recipe(inner, root, restore, recipe, targets, roots, params, half))
        finally:
            guard.restore_errors.extend(inner.restore_errors)
    slow, exits = results
    graph = {key: slow[key] + exits[key] for key in ('events_lost', 'calls', 'lines')}
    graph.update(slow_calls=slow['slow_calls'], syscall_exits=exits['syscall_exits'],
                 exit_work_by_syscall=exits['exit_work_by_syscall'])
    return graph


def empty_facts(params):
    return {
        'supported': False, 'reason': None, 'modes': [], 'mode_requested': params['mode'],
        'duration_s': params['duration_s'], 'window_s': 0.0, 'tracefs': None, 'tracefs_mounted': False,
        'instance': None, 'available_tracers': [], 'function_graph_available': False,
        'targets': {'pids': list(params['pids'] or []), 'process_names': list(params['process_names'] or [])},
        'syscalls': {}, 'syscalls_traced': [], 'syscalls_source': 'none', 'syscalls_skipped': [],
        'offcpu': [], 'offcpu_unstacked': {'count': 0, 'total_us': 0.0, 'max_us': 0.0}, 'offcpu_stacked_sleeps': None,
        'function_graph': None, 'audit_wait_observed': False, 'events': 0, 'events_lost': 0, 'lines': 0,
        'stale_instances_removed': [], 'stale_cleanup_errors': [], 'interrupted': None, 'restored': True, 'restore_errors': [],
        'reader': None, 'reader_fallback': None, 'read_while_tracing_bytes': None, 'top_buffer_expanded_kb': None,
        'syscalls_aggregation': None, 'syscalls_aggregation_note': None, 'syscalls_hist': None,
        'recovered_from_crash': [], 'signals_during_restore': [],
    }


def split_offcpu(groups):
    stacked = [g for g in groups if g['stack']]
    unstacked = {'count': 0, 'total_us': 0.0, 'max_us': 0.0}
    for group in groups:
        if not group['stack']:
            unstacked = {'count': group['count'], 'total_us': group['total_us'], 'max_us': group['max_us']}
    return stacked, unstacked


def run_sample(params, geteuid=os.geteuid):
    """The whole sample; returns facts or raises SampleError (facts attached, with the
    real ``restored``/``restore_errors`` whatever the error was)."""
    facts = empty_facts(params)
    errors = validate_params(params)
    if errors:
        raise SampleError('; '.join(errors) + '; nothing changed')
    if geteuid() != 0:
        facts['reason'] = 'ftrace_sample needs root'
        return facts
    try:
        with tracefs.Lock() as lock:
            facts['recovered_from_crash'] = lock.recovered
            guard = RestoreGuard(timeout_s=params['duration_s'] * 2 + 60,
                                 journal=Journal('ftrace_sample', state_dir=lock.state_dir))
            try:
                with guard:
                    _sample(guard, params, facts)
            except GuardInterrupted as err:
                facts['interrupted'] = guard.interrupted
                facts['reason'] = '%s; tracefs %s' % (err, 'restored' if guard.ok else 'NOT fully restored')
                raise SampleError(facts['reason']) from None
            finally:
                facts['restore_errors'] = list(guard.restore_errors)
                facts['restored'] = guard.ok
                facts['signals_during_restore'] = list(guard.signals_during_restore)
            if guard.interrupted:  # a signal arrived while restoring after the sample ended
                facts['interrupted'] = guard.interrupted
                raise SampleError('interrupted by %s while restoring; tracefs %s'
                                  % (guard.interrupted, 'restored' if guard.ok else 'NOT fully restored'))
    except (tracefs.LockBusy, UnsafePath) as err:
        error = SampleError('%s; nothing changed' % err)
        error.facts = facts
        raise error from None
    except Unsupported as err:
        facts['supported'] = False
        facts['reason'] = str(err)
        facts['modes'] = []
    except tracefs.TracefsError as err:
        error = SampleError('%s; nothing changed' % err)
        error.facts = facts
        raise error from None
    except SampleError as err:
        err.facts = facts
        raise
    except Exception as err:  # any other error: report it with what the guard restored
        error = SampleError('ftrace_sample failed: %s: %s; tracefs %s' % (
            type(err).__name__, err, 'restored' if facts['restored'] else 'NOT fully restored'))
        error.facts = facts
        raise error from None
    return facts


def _sample(guard, params, facts):
    root = tracefs.locate()
    if root is None:
        root = tracefs.mount(guard)
        facts['tracefs_mounted'] = root is not None
    if root is None:
        raise Unsupported('tracefs not found (/sys/kernel/tracing, /sys/kernel/debug/tracing) and cannot be mounted')
    facts['tracefs'] = root
    facts['stale_instances_removed'] = tracefs.remove_stale_instances(root, errors=facts['stale_cleanup_errors'])
    tracers = tracefs.available_tracers(root)
    facts['available_tracers'] = tracers
    facts['function_graph_available'] = 'function_graph' in tracers
    modes = choose_modes(params['mode'], facts['function_graph_available'])
    tracer = tracefs.current_tracer(root)
    if tracer != 'nop' and not params['force']:
        raise SampleError('tracer busy: current_tracer is %r, not nop (someone is tracing); '
                          'set force=true to sample anyway; nothing changed' % tracer)
    if 'function_graph' in modes and not params['force']:
        try:
            events = tracefs.read(os.path.join(root, 'set_event')).split()
        except OSError:
            events = []
        if events:
            raise SampleError('tracer busy: top-level events are enabled (%s); function_graph would use the '
                              'top-level buffer; set force=true to sample anyway; nothing changed'
                              % ', '.join(events[:5]))
    graph_roots, graph_note, filter_unmatched = [], None, []
    if 'function_graph' in modes:
        params, graph_roots, graph_note, filter_unmatched = plan_function_graph(root, params)
    consumer = audit_consumer_pid()
    targets = resolve_targets(params, consumer, os.getpid())
    facts['targets'] = targets
    syscalls, source, skipped = resolve_syscalls(params, root, modes)
    facts['syscalls_source'] = source
    facts['syscalls_skipped'] = skipped
    facts['syscalls_traced'] = syscalls
    facts['supported'] = True
    facts['modes'] = modes
    if 'function_graph' in modes:
        graph = sample_function_graph(guard, root, targets, params, graph_roots)
        graph['max_graph_depth_used'] = params['max_graph_depth']
        graph['graph_functions'] = graph_roots
        graph['function_filter'] = list(params.get('function_filter') or [])
        graph['function_filter_unmatched'] = filter_unmatched
        graph['note'] = graph_note
        facts['function_graph'] = graph
        facts['events'] = graph['calls']
        facts['events_lost'] = graph['events_lost']
        facts['lines'] = graph['lines']
        facts['reader'] = 'text'
    else:
        if 'syscalls' in modes:
            facts['syscalls_aggregation'], facts['syscalls_aggregation_note'] = choose_aggregation(
                params.get('aggregation') or 'events', root, syscalls)
        name, parser, lost = sample_events(guard, root, modes, targets, syscalls, params, facts)
        facts['instance'] = name
        facts['events_lost'] = lost
        result = parser.result() if parser else {'syscalls': {}, 'offcpu': [], 'events': 0, 'lines': 0,
                                                 'window_s': 0.0}
        if facts['syscalls_aggregation'] == 'hist':
            result['events'] += sum(stats['count'] for stats in facts['syscalls'].values())
            if not parser:
                facts['window_s'] = float(params['duration_s'])
        elif 'syscalls' in modes:
            facts['syscalls'] = result['syscalls']
        if 'offcpu' in modes:
            facts['offcpu'], facts['offcpu_unstacked'] = split_offcpu(result['offcpu'])
        facts['events'] = result['events']
        facts['lines'] = result['lines']
        facts['window_s'] = result['window_s'] or facts['window_s']
    graph = facts['function_graph'] or {}
    facts['audit_wait_observed'] = traceparse.audit_wait_in(facts['offcpu'], graph.get('slow_calls'))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = dict(module.params)
    try:
        facts = run_sample(params)
    except SampleError as err:
        facts = getattr(err, 'facts', None) or empty_facts(params)
        facts['supported'] = False
        facts['reason'] = str(err)
        module.fail_json(msg=str(err), ftrace_sample=facts)
    except Exception as err:  # never a traceback (run_sample wraps what it can; this is the rest)
        facts = empty_facts(params)
        facts['restored'] = None
        module.fail_json(msg='ftrace_sample failed: %s: %s' % (type(err).__name__, err),
                         ftrace_sample=facts)
    if facts['restore_errors']:
        module.warn('ftrace_sample could not restore everything: %s' % '; '.join(facts['restore_errors']))
    module.exit_json(changed=False, ftrace_sample=facts)


if __name__ == '__main__':
    main()
