# ruff: noqa: UP031
"""The ``auditgap`` command: runs the project's playbooks through ansible-runner.

    auditgap diagnose [-i INVENTORY] [--hosts PATTERN] [--report-dir DIR]
                      [--sample-seconds N] [--trace auto|always|never] [-e KEY=VALUE ...]

Exit status: 0 report written and no warning/critical finding; 1 report
written with warning/critical findings or unreachable/failed hosts; 2 the run
failed (no report).
"""
import argparse
import datetime
import json
import os
import sys
import tempfile

from auditgap import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser():
    parser = argparse.ArgumentParser(prog='auditgap', description='Find kernel-side syscall stalls (audit backlog '
                                     'waits, throttled audit consumers) across a Linux fleet.')
    parser.add_argument('--version', action='version', version=f'auditgap {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    diag = sub.add_parser('diagnose', help='gather, compute findings, write the fleet reports')
    diag.add_argument('-i', '--inventory', help='inventory file or directory (default: the project\'s ansible.cfg)')
    diag.add_argument('--hosts', help='inventory pattern to diagnose (default: the group fleet)')
    diag.add_argument('--report-dir', help='report directory (default: ./reports/<UTC timestamp>, '
                      'with ./reports/latest pointing at it)')
    diag.add_argument('--sample-seconds', type=float,
                      help='audit and cgroup sample windows in seconds (default: the role\'s, 5)')
    diag.add_argument('--trace', choices=('auto', 'always', 'never'), help='when to run the bounded trace')
    diag.add_argument('-e', '--extra-var', action='append', default=[], metavar='KEY=VALUE',
                      help='extra variable (repeatable), e.g. -e diagnose_throttled_ratio_warn=0.3')
    return parser


def parse_extra(items):
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or not key or not key.replace('_', 'a').isalnum() or key[0].isdigit():
            raise ValueError(f'extra variable must be KEY=VALUE with an identifier as KEY: {item!r}')
        out[key] = value
    return out


def default_report_dir(cwd, now):
    return os.path.join(cwd, 'reports', now.strftime('%Y%m%dT%H%M%SZ'))


def playbook_path(root=ROOT):
    """The diagnose playbook: the source tree's, else the installed collection's."""
    local = os.path.join(root, 'playbooks', 'diagnose.yml')
    return local if os.path.isfile(local) else 'auditgap.fleet.diagnose'


def build_run(args, cwd, now, root=ROOT):
    """ansible_runner.run() keyword arguments and the report dir, from parsed arguments."""
    extravars = parse_extra(args.extra_var)
    report_dir = os.path.abspath(os.path.join(cwd, args.report_dir)) if args.report_dir else default_report_dir(cwd, now)
    extravars['report_dir'] = report_dir
    if args.hosts:
        extravars['diagnose_hosts'] = args.hosts
    if args.sample_seconds is not None:
        if args.sample_seconds < 0:
            raise ValueError('--sample-seconds must be >= 0')
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
    return kwargs, report_dir, not args.report_dir


def ensure_ansible_on_path(environ=os.environ, executable=sys.executable):
    """ansible-runner starts ``ansible-playbook`` from PATH: use the one beside this Python."""
    bindir = os.path.dirname(executable)
    if os.path.isfile(os.path.join(bindir, 'ansible-playbook')):
        parts = environ.get('PATH', '').split(os.pathsep)
        if bindir not in parts:
            environ['PATH'] = os.pathsep.join([bindir] + [p for p in parts if p])


def point_latest(report_dir):
    link = os.path.join(os.path.dirname(report_dir), 'latest')
    tmp = '%s.tmp.%d' % (link, os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(report_dir), tmp)
    os.rename(tmp, link)


def summary_text(doc):
    """The fleet summary (the report module's when importable, a short one otherwise)."""
    collections = os.path.join(ROOT, 'collections')
    if os.path.isdir(collections) and collections not in sys.path:
        sys.path.insert(0, collections)
    try:
        from ansible_collections.auditgap.fleet.plugins.module_utils import report
        return '\n'.join(report.summary_lines(doc))
    except ImportError:
        st = doc['summary']['by_status']
        return 'auditgap: %d host(s): %s' % (doc['summary']['hosts'],
                                             ', '.join('%d %s' % (n, s) for s, n in st.items()))


def exit_status(doc):
    st = doc['summary']['by_status']
    bad = st.get('critical', 0) + st.get('warning', 0) + st.get('unreachable', 0) + st.get('failed', 0)
    return 1 if bad else 0


def diagnose(args, runner=None, cwd=None, now=None, out=sys.stdout):
    cwd = cwd or os.getcwd()
    now = now or datetime.datetime.now(datetime.UTC)
    kwargs, report_dir, is_default = build_run(args, cwd, now)
    if runner is None:
        import ansible_runner
        runner = ansible_runner.run
        ensure_ansible_on_path()
    with tempfile.TemporaryDirectory(prefix='auditgap-runner-') as private:
        result = runner(private_data_dir=private, **kwargs)
        stdout = ''
        try:
            stdout = result.stdout.read()
        except (AttributeError, OSError, ValueError):
            pass
    fleet = os.path.join(report_dir, 'fleet.json')
    if not os.path.isfile(fleet):
        out.write(stdout[-4000:] if stdout else '')
        status, rc = getattr(result, 'status', '?'), getattr(result, 'rc', '?')
        out.write('auditgap: diagnose failed (status %s, rc %s): no report in %s\n' % (status, rc, report_dir))
        return 2
    if is_default:
        point_latest(report_dir)
    with open(fleet) as handle:
        doc = json.load(handle)
    out.write(summary_text(doc) + '\n')
    return exit_status(doc)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == 'diagnose':
            return diagnose(args)
    except ValueError as err:
        parser.error(str(err))
    return 2


if __name__ == '__main__':
    sys.exit(main())
