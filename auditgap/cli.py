"""The ``auditgap`` command: runs the project's playbooks through ansible-runner.

    auditgap diagnose [-i INVENTORY] [--hosts PATTERN] [--report-dir DIR]
                      [--sample-seconds N] [--trace auto|always|never] [-e KEY=VALUE ...]
    auditgap audit    [the same] [--report-root DIR] [--db FILE] [--prom-dir DIR]   (one scheduled run)
    auditgap history  [--host H] [--runs N] [--format table|json|html] [--output FILE] [--db FILE]
    auditgap history  prune --keep-days N [--db FILE]

diagnose exit status: 0 report written and no warning/critical finding; 1 report
written with warning/critical findings or unreachable/failed hosts; 2 the run
failed (no report). audit: see AUDIT_EXIT_HELP.
"""
import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis, report

from auditgap import __version__, changes, history, promfile, trends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the longest audit sample window (auditfacts.MAX_SAMPLE_SECONDS; a unit test keeps them equal)
MAX_SAMPLE_SECONDS = 300
# extra variables that must be numbers >= 0: the sample lengths, and the findings thresholds
# (numeric_vars(): findings.DEFAULT_THRESHOLDS as diagnose_<key>)
SAMPLE_VARS = frozenset(('diagnose_audit_sample_seconds', 'diagnose_cgroup_sample_seconds', 'diagnose_trace_seconds'))
_CONTROL = re.compile(r'[\x00-\x1f\x7f]')


def text_arg(value):
    """A path or pattern argument: no control characters (a newline would forge output lines)."""
    if _CONTROL.search(value):
        raise argparse.ArgumentTypeError('%r holds a control character' % value)
    if not value.strip():
        raise argparse.ArgumentTypeError('empty value')
    return value


def number(value, low=0.0, high=None):
    """A finite float in low..high, else ValueError with the reason."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError('%r is not a number' % (value,)) from None
    if not math.isfinite(result) or result < low or (high is not None and result > high):
        raise ValueError('%r is not a number between %g and %s' % (value, low, '%g' % high if high is not None else 'any'))
    return result


def sample_seconds(value):
    try:
        return number(value, 0, MAX_SAMPLE_SECONDS)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


AUDIT_EXIT_HELP = """exit status (the worst that applies):
  0  ok: every host diagnosed, no warning/critical finding, nothing regressed
  1  findings: warning/critical findings, none new since the last run
  2  usage error (bad option, no such --prom-dir, an inventory with no hosts)
  3  partial coverage: some hosts unknown (unreachable, failed, not seen for N runs)
  4  regressions: a host has new findings or metrics worse than its baseline
  5  run failed: no report (playbook failed, SIGTERM), or the history/report root is unusable
  6  another auditgap audit holds the lock (this run did nothing)
errors go to stderr; the summary to stdout."""


def _add_run_options(cmd):
    cmd.add_argument('-i', '--inventory', type=text_arg, help='inventory file or directory (default: the project\'s ansible.cfg)')
    cmd.add_argument('--hosts', type=text_arg, help='inventory pattern to diagnose (default: the group fleet)')
    cmd.add_argument('--sample-seconds', type=sample_seconds,
                     help='audit and cgroup sample windows in seconds, 0..%d (default: the role\'s, 5)'
                     % MAX_SAMPLE_SECONDS)
    cmd.add_argument('--trace', choices=('auto', 'always', 'never'), help='when to run the bounded trace')
    cmd.add_argument('-e', '--extra-var', action='append', default=[], metavar='KEY=VALUE', type=extra_var,
                     help='extra variable (repeatable), e.g. -e diagnose_throttled_ratio_warn=0.3')
    cmd.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                     help='show hosts done/total and elapsed time on stderr as results arrive '
                     '(default: only when stderr is a terminal)')


def build_parser():
    parser = argparse.ArgumentParser(prog='auditgap', description='Find kernel-side syscall stalls (audit backlog '
                                     'waits, throttled audit consumers) across a Linux fleet.')
    parser.add_argument('--version', action='version', version=f'auditgap {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    diag = sub.add_parser('diagnose', help='gather, compute findings, write the fleet reports')
    _add_run_options(diag)
    diag.add_argument('--report-dir', type=text_arg, help='report directory (default: ./reports/<UTC timestamp>, '
                      'with ./reports/latest pointing at it)')
    aud = sub.add_parser('audit', help='one scheduled run: diagnose, compare with the history, write metrics',
                         description='One scheduled audit: diagnose the fleet, store the run in the history '
                         'database, compare every host with its previous runs (new/resolved findings, '
                         'regressions and what changed), compute coverage, write the reports, '
                         'the Prometheus textfile and a short summary.',
                         epilog=AUDIT_EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(aud)
    aud.add_argument('--report-root', default='reports', type=text_arg,
                     help='reports go to ROOT/<UTC run id>/, ROOT/latest points at the newest (default: ./reports)')
    aud.add_argument('--db', type=text_arg, help='history database (default: ROOT/history.db)')
    aud.add_argument('--prom-dir', type=text_arg, help='node_exporter textfile directory: auditgap.prom is written there '
                     'atomically (the directory must exist)')
    aud.add_argument('--stale-after-runs', type=int, default=3, metavar='N',
                     help='a host not seen for N runs is unknown (default: 3)')
    aud.add_argument('--interval', type=float, metavar='SECONDS',
                     help='the schedule\'s interval: how late this run is = now - (previous run + interval), '
                     'written as auditgap_schedule_lateness_seconds')
    aud.add_argument('--max-lateness', type=float, metavar='SECONDS',
                     help='with --interval: warn on stderr when the run is later than this (the schedule missed runs: '
                     'host down, timer stopped); the audit still runs')
    aud.add_argument('--keep-artifacts', type=int, default=10, metavar='N',
                     help='ansible-runner artifact directories kept under ROOT/.runner (default: 10)')
    hist = sub.add_parser('history', help='the audit history per host and finding (table, json, history.html); prune',
                          description='Per host and per finding over the stored audit runs: first seen, resolved, '
                          'flapping, and the trend of backlog peak ratio, throttled ratio and lost/s.')
    hist.add_argument('--report-root', default='reports', help='as for audit (default: ./reports)')
    hist.add_argument('--db', help='history database (default: ROOT/history.db)')
    hist.add_argument('--host', action='append', default=[], help='only this host (repeatable; default: every host)')
    hist.add_argument('--runs', type=int, default=100, metavar='N', help='the last N runs of each host (default: 100)')
    hist.add_argument('--format', choices=('table', 'json', 'html'), default='table',
                      help='table (stdout), json (stdout) or html (ROOT/history.html, or --output)')
    hist.add_argument('--output', help='write to this file instead (atomically)')
    hsub = hist.add_subparsers(dest='history_command')
    prune = hsub.add_parser('prune', help='delete runs older than --keep-days')
    prune.add_argument('--keep-days', type=float, required=True, metavar='N')
    return parser


def parse_extra(items):
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or not key or not key.replace('_', 'a').isalnum() or key[0].isdigit():
            raise ValueError(f'extra variable must be KEY=VALUE with an identifier as KEY: {item!r}')
        if _CONTROL.search(value):
            raise ValueError(f'extra variable {key}: the value holds a control character')
        if key in numeric_vars():
            try:
                number(value)
            except ValueError as err:
                raise ValueError(f'extra variable {key}: {err}') from None
        out[key] = value
    return out


def numeric_vars():
    """The -e variables that must be numbers >= 0: the sample lengths and the thresholds."""
    return SAMPLE_VARS | {'diagnose_' + key for key in diagnosis.DEFAULT_THRESHOLDS}


def extra_var(item):
    """One -e item, checked when the command line is parsed (parse_extra's rules)."""
    try:
        parse_extra([item])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return item


def playbook_path(root=ROOT):
    """The diagnose playbook: the source tree's, else the installed collection's."""
    local = os.path.join(root, 'playbooks', 'diagnose.yml')
    return local if os.path.isfile(local) else 'auditgap.fleet.diagnose'


def build_run(args, cwd, now, root=ROOT):
    """ansible_runner.run() keyword arguments and the report dir, from parsed arguments."""
    extravars = parse_extra(args.extra_var)
    report_dir = getattr(args, 'report_dir', None)
    report_dir = os.path.abspath(os.path.join(cwd, report_dir or report.default_report_dir(now, os.path.join(cwd, 'reports'))))
    extravars['report_dir'] = report_dir
    if args.hosts:
        extravars['diagnose_hosts'] = args.hosts
    if args.sample_seconds is not None:
        extravars['diagnose_audit_sample_seconds'] = args.sample_seconds
        extravars['diagnose_cgroup_sample_seconds'] = args.sample_seconds
    if args.trace:
        extravars['diagnose_trace'] = args.trace
    envvars = {'ANSIBLE_NOCOLOR': '1'}
    config = os.path.join(root, 'ansible.cfg')
    if os.path.isfile(config):
        envvars['ANSIBLE_CONFIG'] = config
    kwargs = {'playbook': playbook_path(root), 'extravars': extravars, 'envvars': envvars,
              'project_dir': root if os.path.isdir(root) else cwd, 'quiet': True}
    if args.inventory:
        kwargs['inventory'] = os.path.abspath(os.path.join(cwd, args.inventory))
    elif os.path.isfile(os.path.join(root, 'inventory.example')):
        kwargs['inventory'] = os.path.join(root, 'inventory.example')
    return kwargs, report_dir, not getattr(args, 'report_dir', None)


def ensure_ansible_on_path(environ=os.environ, executable=sys.executable):
    """ansible-runner starts ``ansible-playbook`` from PATH: use the one beside this Python."""
    bindir = os.path.dirname(executable)
    if os.path.isfile(os.path.join(bindir, 'ansible-playbook')):
        parts = environ.get('PATH', '').split(os.pathsep)
        if bindir not in parts:
            environ['PATH'] = os.pathsep.join([bindir] + [p for p in parts if p])


def summary_text(doc):
    return '\n'.join(report.summary_lines(doc))


def exit_status(doc):
    st = doc['summary']['by_status']
    bad = st.get('critical', 0) + st.get('warning', 0) + st.get('unreachable', 0) + st.get('failed', 0)
    return 1 if bad else 0


class Progress:
    """ansible-runner event handler: hosts done/total and elapsed time on ``stream``.

    A host is done when its last gather task (``ftrace_sample``, run or skipped) has a result,
    or when it is unreachable. On a terminal one line is rewritten; otherwise a line per host.
    """
    RESULTS = ('runner_on_ok', 'runner_on_failed', 'runner_on_skipped', 'runner_on_unreachable')

    def __init__(self, total, stream, tty, clock=time.monotonic):
        self.total, self.stream, self.tty, self.clock = total, stream, tty, clock
        self.start = clock()
        self.done = set()

    def line(self):
        total = '?' if self.total is None else self.total
        return 'auditgap: %d/%s hosts done, %.1f s elapsed' % (len(self.done), total, self.clock() - self.start)

    def __call__(self, event):
        kind = event.get('event')
        data = event.get('event_data') or {}
        host = data.get('host')
        if kind in self.RESULTS and host and host not in self.done and (
                kind == 'runner_on_unreachable' or str(data.get('task_action', '')).endswith('ftrace_sample')):
            self.done.add(host)
            self.stream.write(('\r%s\033[K' if self.tty else '%s\n') % self.line())
            self.stream.flush()
        return True

    def finish(self):
        if self.tty and self.done:
            self.stream.write('\n')
            self.stream.flush()


def want_progress(args, stream):
    if args.progress is not None:
        return args.progress
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def inventory_hosts(inventory, pattern):
    """(hosts matching ``pattern``, every host) of an inventory, parsed in-process with Ansible's own parser."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.utils.display import Display
    Display().verbosity = 0
    manager = InventoryManager(loader=DataLoader(), sources=[inventory] if inventory else None)
    return [h.name for h in manager.get_hosts(pattern)], [h.name for h in manager.get_hosts('all')]


def _stdout_of(result):
    try:
        return result.stdout.read()
    except (AttributeError, OSError, ValueError):
        return ''


def diagnose(args, runner=None, cwd=None, now=None, out=None, err=None, list_hosts=inventory_hosts):
    cwd = cwd or os.getcwd()
    out, err = out or sys.stdout, err or sys.stderr
    now = now or datetime.datetime.now(datetime.UTC)
    kwargs, report_dir, is_default = build_run(args, cwd, now)
    if runner is None:
        import ansible_runner
        runner = ansible_runner.run
        ensure_ansible_on_path()
    progress = None
    if want_progress(args, err):
        total = len(list_hosts(kwargs.get('inventory'), args.hosts or 'fleet')[0])
        progress = kwargs['event_handler'] = Progress(total, err, err.isatty() if hasattr(err, 'isatty') else False)
    with tempfile.TemporaryDirectory(prefix='auditgap-runner-') as private:
        result = runner(private_data_dir=private, **kwargs)
        stdout = _stdout_of(result)
    if progress:
        progress.finish()
    fleet = os.path.join(report_dir, 'fleet.json')
    if not os.path.isfile(fleet):
        out.write(stdout[-4000:] if stdout else '')
        status, rc = getattr(result, 'status', '?'), getattr(result, 'rc', '?')
        out.write('auditgap: diagnose failed (status %s, rc %s): no report in %s\n' % (status, rc, report_dir))
        return 2
    if is_default:
        report.point_latest(report_dir)
    with open(fleet) as handle:
        doc = json.load(handle)
    out.write(summary_text(doc) + '\n')
    return exit_status(doc)


def schedule_lateness(started, previous_started, interval):
    """Seconds this run starts after it was due (previous run + interval; 0 when early); None when unknown."""
    if not interval or previous_started is None:
        return None
    return max(0.0, round(started - (previous_started + interval), 3))


class AuditError(Exception):
    """A clear message for stderr and the exit status that goes with it."""

    def __init__(self, message, code=changes.EXIT['failed']):
        super().__init__(message)
        self.code = code


def run_id_for(now, root):
    """The UTC run id (also the report dir's name and the runner ident); -2, -3... when taken."""
    return os.path.basename(report.default_report_dir(now, root))


def _writable_root(root):
    try:
        os.makedirs(root, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix='.auditgap-probe-')
        probe.close()
    except OSError as exc:
        raise AuditError('cannot write under the report root %s: %s' % (root, exc.strerror or exc)) from exc


def since_last_run(previous_run, states, rows):
    """The ``since_last_run`` section of fleet.json (docs/scheduled-audits.md)."""
    counts = {s: 0 for s in changes.COVERAGE_STATES}
    for state in states.values():
        counts[state['state']] += 1
    by_host = {r['host']: r for r in rows}
    hosts = []
    for host in sorted(states):
        row = by_host.get(host) or {}
        ch = row.get('changes') or {}
        item = {'host': host, 'state': states[host]['state'], 'reason': states[host]['reason'],
                'regressed': bool(ch.get('regressed')), 'first_run': ch.get('first_run', False),
                'new_findings': ch.get('new_findings', []), 'resolved_findings': ch.get('resolved_findings', []),
                'worse_metrics': ch.get('worse_metrics', []), 'causes': ch.get('causes', []),
                'last_good_run': ch.get('last_good_run'), 'first_bad_run': ch.get('first_bad_run')}
        hosts.append(item)
    return {'previous_run': previous_run,
            'coverage': {'ratio': changes.coverage_ratio(states), 'hosts': counts},
            'hosts': hosts}


def _rewrite_reports(doc, report_dir, html_template=None):
    """fleet.json/md/html again, with the since-last-run section (fleet.json last, as the report role;
    fleet.html from the template the run used: -e report_html_template)."""
    # the modes of the report step: the facts hold the audit consumer's command line
    report.write_atomic(os.path.join(report_dir, 'fleet.md'), report.render_markdown(doc), report.REPORT_MODE)
    html = os.path.join(report_dir, 'fleet.html')
    timeline = os.path.join(report_dir, 'lab-timeline.svg')
    svg = report.read_svg(timeline)[0] if os.path.isfile(timeline) else None
    report.write_atomic(html, report.render_html(doc, timeline_svg=svg, template=html_template), report.REPORT_MODE)
    report.write_atomic(os.path.join(report_dir, 'fleet.json'), report.to_json(doc), report.REPORT_MODE)


def audit(args, runner=None, cwd=None, clock=time.time, out=None, err=None, list_hosts=inventory_hosts):
    """One scheduled audit run; returns the exit status (AUDIT_EXIT_HELP)."""
    cwd = cwd or os.getcwd()
    out, err = out or sys.stdout, err or sys.stderr
    started = clock()
    root = os.path.abspath(os.path.join(cwd, args.report_root))
    db_path = os.path.abspath(os.path.join(cwd, args.db)) if args.db else os.path.join(root, 'history.db')
    if args.prom_dir and not os.path.isdir(os.path.join(cwd, args.prom_dir)):
        raise AuditError('the textfile directory %s does not exist (--prom-dir): create it, or point at '
                         'node_exporter\'s --collector.textfile.directory' % args.prom_dir, changes.EXIT_USAGE)
    if args.stale_after_runs < 1 or args.keep_artifacts < 1:
        raise AuditError('--stale-after-runs and --keep-artifacts must be >= 1', changes.EXIT_USAGE)
    if (args.interval is not None and args.interval <= 0) or (args.max_lateness is not None and args.max_lateness < 0):
        raise AuditError('--interval must be > 0 and --max-lateness >= 0', changes.EXIT_USAGE)
    if args.max_lateness is not None and not args.interval:
        raise AuditError('--max-lateness needs --interval', changes.EXIT_USAGE)
    prom_dir = os.path.abspath(os.path.join(cwd, args.prom_dir)) if args.prom_dir else None
    _writable_root(root)
    terminated = []

    def on_signal(signum, _frame):
        terminated.append(signum)
    previous_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with history.run_lock(db_path):
            conn = history.connect(db_path)
            try:
                return _audit_locked(args, runner, cwd, clock, out, err, list_hosts, started, root, db_path,
                                     prom_dir, conn, terminated)
            finally:
                conn.close()
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _audit_locked(args, runner, cwd, clock, out, err, list_hosts, started, root, db_path, prom_dir, conn, terminated):
    now = datetime.datetime.fromtimestamp(started, datetime.UTC)
    run_id = run_id_for(now, root)
    args.report_dir = os.path.join(root, run_id)
    kwargs, report_dir, _default = build_run(args, cwd, now)
    try:
        matched, every = list_hosts(kwargs.get('inventory'), args.hosts or 'fleet')
    except Exception as exc:  # Ansible's parser raises many kinds; the message is what matters
        raise AuditError('cannot read the inventory %s: %s' % (kwargs.get('inventory'), exc), changes.EXIT_USAGE) from exc
    if not matched:
        raise AuditError('the inventory %s has no hosts matching %r: nothing to audit'
                         % (kwargs.get('inventory'), args.hosts or 'fleet'), changes.EXIT_USAGE)
    if runner is None:
        import ansible_runner
        runner = ansible_runner.run
        ensure_ansible_on_path()
    private = os.path.join(root, '.runner')
    os.makedirs(private, mode=0o700, exist_ok=True)
    progress = None
    if want_progress(args, err):
        progress = kwargs['event_handler'] = Progress(len(matched), err, err.isatty() if hasattr(err, 'isatty') else False)
    kwargs.update(ident=run_id, rotate_artifacts=args.keep_artifacts, cancel_callback=lambda: bool(terminated))
    if terminated:
        raise AuditError('auditgap audit: interrupted before the run started; nothing stored')
    previous = history.runs(conn, limit=1)
    lateness = schedule_lateness(started, previous[0]['started_at'] if previous else None, args.interval)
    if lateness is not None and args.max_lateness is not None and lateness > args.max_lateness:
        err.write('auditgap audit: this run is %.0f s late (more than --max-lateness %g s after the previous run + '
                  '--interval): scheduled runs were missed\n' % (lateness, args.max_lateness))
    result = runner(private_data_dir=private, **kwargs)
    stdout = _stdout_of(result)
    if progress:
        progress.finish()
    fleet = os.path.join(report_dir, 'fleet.json')
    if terminated:
        if os.path.isdir(report_dir):
            shutil.rmtree(report_dir, ignore_errors=True)
        raise AuditError('auditgap audit: interrupted by signal %d; run %s not stored, its partial report removed, '
                         'the history and the textfile are as before' % (terminated[0], run_id))
    previous_run = previous[0]['run_id'] if previous else None
    failed = not os.path.isfile(fleet)
    rows, doc = [], None
    if not failed:
        with open(fleet, encoding='utf-8') as handle:
            doc = json.load(handle)
        rows = [changes.host_state(entry) for entry in doc.get('hosts') or []]
    depth = changes.BASELINE_RUNS + 20
    for row in rows:
        row['changes'] = changes.compare(row, history.host_history(conn, row['host'], limit=depth))
        row['regressed'] = row['changes']['regressed']
    current = {r['host']: r for r in rows}
    for host in matched:
        if host not in current:
            current[host] = {'host': host, 'status': 'failed' if failed else 'unreachable'}
    in_inventory = set(every)
    recent = history.recent_hosts(conn, args.stale_after_runs)
    ago = {h: recent.get(h) for h in history.host_names(conn) if h not in current and h in in_inventory}
    prev_state = {}
    for host in ago:
        last = history.host_history(conn, host, limit=1)
        prev_state[host] = last[0]['state'] if last else None
    states = changes.coverage(current, ago, args.stale_after_runs, prev_state)
    for host, st in states.items():
        if host in current and not current[host].get('error') and st['state'] == 'unknown' and failed:
            st['reason'] = 'run failed'
    for row in rows:
        row['state'] = states[row['host']]['state']
    outcome = changes.outcome(failed, states, rows)
    code = changes.EXIT[outcome]
    since = since_last_run(previous_run, states, rows)
    if doc is not None:
        doc['since_last_run'] = since
        doc['run_id'] = run_id
        template = parse_extra(args.extra_var).get('report_html_template')
        _rewrite_reports(doc, report_dir, os.path.join(cwd, template) if template else None)
    finished = clock()
    run = {'run_id': run_id, 'started_at': started, 'finished_at': finished, 'outcome': outcome, 'exit_code': code,
           'hosts_total': len(states), 'coverage_ratio': since['coverage']['ratio'],
           'report_dir': None if failed else report_dir, 'version': __version__, 'lateness_seconds': lateness,
           'message': None if not failed else 'no report (status %s, rc %s)' % (
               getattr(result, 'status', '?'), getattr(result, 'rc', '?'))}
    history.store_run(conn, run, rows)
    text = promfile.render(run, rows, states, history.run_counts(conn), history.last_success_at(conn), __version__)
    if not failed:
        promfile.write_atomic(os.path.join(report_dir, promfile.TEXTFILE_NAME), text)
        report.point_latest(report_dir)
    if prom_dir:
        try:
            promfile.write_textfile(prom_dir, text)
        except OSError as exc:
            err.write('auditgap audit: cannot write the textfile to %s: %s\n' % (prom_dir, exc))
            code = max(code, changes.EXIT['failed'])
    if failed:
        err.write(stdout[-4000:] if stdout else '')
        err.write('auditgap audit: run %s failed (status %s, rc %s): no report in %s; stored as failed in %s\n'
                  % (run_id, getattr(result, 'status', '?'), getattr(result, 'rc', '?'), report_dir, db_path))
        return code
    lines = [summary_text(doc)] + report.since_last_run_lines(since)
    lines.append('audit %s: %s (exit %d), history %s' % (run_id, outcome, code, db_path))
    out.write('\n'.join(lines) + '\n')
    return code


def history_command(args, cwd=None, out=None, err=None):
    cwd = cwd or os.getcwd()
    out, err = out or sys.stdout, err or sys.stderr
    root = os.path.abspath(os.path.join(cwd, args.report_root))
    db_path = os.path.abspath(os.path.join(cwd, args.db)) if args.db else os.path.join(root, 'history.db')
    if args.history_command == 'prune':
        if args.keep_days < 0:
            raise AuditError('--keep-days must be >= 0', changes.EXIT_USAGE)
        if not os.path.isfile(db_path):
            raise AuditError('no history database at %s' % db_path, changes.EXIT_USAGE)
        with history.run_lock(db_path):
            conn = history.connect(db_path)
            try:
                removed = history.prune(conn, args.keep_days)
            finally:
                conn.close()
        out.write('auditgap history: %d run(s) older than %g day(s) removed from %s\n' % (removed, args.keep_days, db_path))
        return 0
    if args.runs < 1:
        raise AuditError('--runs must be >= 1', changes.EXIT_USAGE)
    conn = history.connect(db_path, readonly=True)
    try:
        hosts = args.host or history.host_names(conn)
        unknown = [h for h in hosts if h not in set(history.host_names(conn))]
        if unknown:
            raise AuditError('no such host in the history: %s' % ', '.join(unknown), changes.EXIT_USAGE)
        summaries = trends.worst_first([trends.host_summary(h, history.host_timeline(conn, h, limit=args.runs))
                                        for h in hosts])
    finally:
        conn.close()
    if args.format == 'json':
        text = json.dumps({'db': db_path, 'hosts': summaries}, indent=2, sort_keys=True) + '\n'
    elif args.format == 'html':
        text = trends.render_html(summaries, datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ'), db_path)
    else:
        text = trends.render_table(summaries)
    target = args.output or (os.path.join(root, 'history.html') if args.format == 'html' else None)
    if target:
        target = os.path.abspath(os.path.join(cwd, target))
        try:
            promfile.write_atomic(target, text)
        except OSError as exc:
            raise AuditError('cannot write %s: %s' % (target, exc.strerror or exc)) from exc
        out.write('auditgap history: %s\n' % target)
    else:
        out.write(text)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == 'diagnose':
            return diagnose(args)
        if args.command == 'audit':
            return audit(args)
        if args.command == 'history':
            return history_command(args)
    except history.LockedError as exc:
        sys.stderr.write('auditgap: %s\n' % exc)
        return changes.EXIT_LOCKED
    except (AuditError, history.HistoryError) as exc:
        sys.stderr.write('auditgap: %s\n' % exc)
        return getattr(exc, 'code', changes.EXIT['failed'])
    except ValueError as err:
        parser.error(str(err))
    return 2


if __name__ == '__main__':
    sys.exit(main())
