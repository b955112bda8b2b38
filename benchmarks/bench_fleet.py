#!/usr/bin/env python3
"""Benchmark: diagnose.yml over real SSH on the namespace fleet of
tests/support/sshfleet.py (a real sshd per host, the controller in the hub
namespace), against ``ansible -m ping`` over the same hosts in the same run
(issue 17 item 1). Root only.

Per fleet size N (reachable hosts), one fleet of N hosts plus N//10 hosts
black-holed (no answer at all: ssh waits for its connect timeout), and
these runs on it, interleaved per size (``--kinds`` picks besides ping):

- ``ping``: ``ansible -m ping`` on the N reachable hosts (the floor);
- ``diagnose``: playbooks/diagnose.yml on the N reachable hosts (1 s sample
  windows, no trace, every report format), the Ansible path (one task per host);
- ``diagnose+down``: the same on the N reachable and the black-holed hosts;
- ``fanout``, ``fanout+down``: the same two with ``diagnose_transport=fanout``
  (one controller task gathers every host, plugins/action/diagnose_fanout.py);
- ``fanout-base`` (``--baseline-tree DIR``): the fan-out of another checkout (e.g. ``git worktree
  add DIR main`` with this venv linked as DIR/.venv), so a change is measured before and after
  in one run, interleaved per size.

For each it prints the wall time, the wall time minus the sample window,
controller CPU seconds per reachable host (every process of the run: ansible,
its forks, the ssh clients; a cpuacct cgroup), target CPU seconds per host
(the sshds, their sessions and the modules: a cpuacct cgroup holding every
sshd), the controller's peak memory (a memory cgroup: all its processes
together) and the ratios to ping. It writes the table as JSON and the growth
as an SVG picture beside it (``--out``, default benchmarks/out/).

Goals (benchmark, one run, the machine is shared: noisy): machine CPU per
reachable host of diagnose <= 0.4x ping's; 200 hosts: diagnose wall <= 12x
the 1-host diagnose wall; with 10% black-holed: wall within 10% of the run
without them plus one connect timeout. They are checked on the fan-out
(the Ansible path is printed beside it). Exit status 1 when a measured goal
of the fan-out is missed.

    benchmarks/bench_fleet.py [--sizes 1,10] [--rounds 1] [--timeout 5]
    benchmarks/bench_fleet.py --sizes 1,10,50,100,200      (minutes)
    benchmarks/bench_fleet.py --sizes 50,200 --kinds fanout  (ping and the fan-out only)
    benchmarks/bench_fleet.py --sizes 10,50 --kinds fanout --bashrc /usr/share/base-files/dot.bashrc
    benchmarks/bench_fleet.py --sizes 10,50 --kinds fanout --baseline-tree /tmp/auditgap-before
    BENCH_FLEET_STRATEGY=mitogen_linear benchmarks/bench_fleet.py   (with mitogen installed)

The fan-out runs with the product's concurrency (Ansible's forks) unless --fanout-concurrency says
otherwise. With two sizes or more it also splits each run's machine CPU into a fixed cost per run
and a cost per host (a least-squares line over the sizes) and prints from how many hosts on the
fan-out's ratio to ping is within the goal: at small fleets the fixed cost decides (docs/scale.md).

Where one fan-out session's CPU goes (ssh client, sshd, login shell, payload):
benchmarks/bench_fanout_session.py.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import BIN, ROOT
from ansible_collections.auditgap.fleet.plugins.module_utils import svgchart
from tests.support.sshfleet import SSHFleet

CPUACCT = '/sys/fs/cgroup/cpuacct'
MEMORY = '/sys/fs/cgroup/memory'
WINDOW_S = 1.0
GOAL_CPU_RATIO = 0.4
GOAL_WALL_200 = 12.0
GOAL_DOWN = 0.10


class Cgroup:
    """One cgroup v1 directory per controller (cpuacct, memory), removed on exit."""

    def __init__(self, name, memory=False):
        self.dirs = [os.path.join(CPUACCT, name)] + ([os.path.join(MEMORY, name)] if memory else [])
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)

    def cpu_s(self):
        with open(os.path.join(self.dirs[0], 'cpuacct.usage')) as f:
            return int(f.read()) / 1e9

    def peak_mb(self):
        with open(os.path.join(self.dirs[1], 'memory.max_usage_in_bytes')) as f:
            return int(f.read()) / 1048576.0

    def join(self):
        """preexec_fn: the child (and all it starts) in this cgroup."""
        for d in self.dirs:
            with open(os.path.join(d, 'cgroup.procs'), 'w') as f:
                f.write(str(os.getpid()))

    def remove(self):
        # what is left are the run's own ssh ControlPersist masters (they outlive ansible by
        # ControlPersist seconds): end them, by pid, so the cgroup can go
        for d in self.dirs:
            try:
                with open(os.path.join(d, 'cgroup.procs')) as f:
                    pids = [int(p) for p in f.read().split()]
            except FileNotFoundError:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for d in self.dirs:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _env(extra=None, root=ROOT):
    env = dict(os.environ)
    env.update({'ANSIBLE_CONFIG': os.path.join(root, 'ansible.cfg'), 'ANSIBLE_NOCOLOR': '1',
                'ANSIBLE_FORCE_COLOR': '0'})
    env.update(extra or {})
    if STRATEGY:
        # e.g. mitogen_linear (pip install mitogen): its strategy plugins directory and name
        import ansible_mitogen
        env['ANSIBLE_STRATEGY_PLUGINS'] = os.path.join(os.path.dirname(ansible_mitogen.__file__), 'plugins', 'strategy')
        env['ANSIBLE_STRATEGY'] = STRATEGY
    return env


STRATEGY = os.environ.get('BENCH_FLEET_STRATEGY')
WARM_PERSIST = '30m'
KINDS = ['ping', 'diagnose', 'fanout']
FANOUT_CONCURRENCY = [0]
# --baseline-tree: another checkout whose fan-out runs beside this tree's, interleaved (before/after
# a change in one run)
BASELINE = [None]


def write_inventory(fleet, path, timeout, ssh_args=''):
    up = [h for h in fleet.hosts if h['reachable']]
    down = [h for h in fleet.hosts if not h['reachable']]
    lines = ['[up]'] + ['%s ansible_host=%s' % (h['name'], h['addr']) for h in up]
    lines += ['', '[down]'] + ['%s ansible_host=%s' % (h['name'], h['addr']) for h in down]
    lines += ['', '[fleet:children]', 'up', 'down', '', '[fleet:vars]',
              'ansible_connection=ssh', 'ansible_user=root',
              'ansible_ssh_private_key_file=%s' % fleet.key,
              'ansible_ssh_timeout=%d' % timeout,
              "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR%s'"
              % ((' ' + ssh_args) if ssh_args else ''),
              'ansible_python_interpreter=/usr/bin/python3', '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def run_one(fleet, kind, inventory, limit, tmp, targets, tag, n_reachable, warm=None):
    """One measured run; returns its row. ``kind``: ping, diagnose (the Ansible path) or fanout
    (diagnose.yml with diagnose_transport=fanout). ``warm``: (env, cgroup of the open ssh masters):
    the run reuses them, their CPU during the run is the run's."""
    env, masters = warm or ({}, None)
    root = ROOT
    if kind == 'fanout-base':
        root, kind = BASELINE[0], 'fanout'
    if kind == 'ping':
        args = [os.path.join(BIN, 'ansible'), '-i', inventory, limit, '-m', 'ansible.builtin.ping', '-o']
    else:
        report_dir = os.path.join(tmp, 'reports-%s' % tag)
        args = [os.path.join(BIN, 'ansible-playbook'), '-i', inventory, os.path.join(root, 'playbooks', 'diagnose.yml'),
                '-e', 'diagnose_hosts=%s' % limit, '-e', 'report_dir=%s' % report_dir,
                '-e', 'diagnose_audit_sample_seconds=%g' % WINDOW_S, '-e', 'diagnose_cgroup_sample_seconds=%g' % WINDOW_S,
                '-e', 'diagnose_trace=never', '-e', 'report_print_summary=false',
                '-e', 'diagnose_transport=%s' % ('fanout' if kind == 'fanout' else 'ansible'),
                '-e', 'diagnose_fanout_concurrency=%d' % FANOUT_CONCURRENCY[0]]
    ctl = Cgroup('agbench-ctl-%d-%s' % (os.getpid(), tag), memory=True)
    try:
        target0 = targets.cpu_s()
        masters0 = masters.cpu_s() if masters else 0.0
        t0 = time.monotonic()
        proc = subprocess.run(fleet.cmd(args), cwd=root, env=_env(env, root), capture_output=True, text=True,
                              check=False, preexec_fn=ctl.join, timeout=1800)
        wall = time.monotonic() - t0
        target_cpu = targets.cpu_s() - target0
        ctl_cpu, peak = ctl.cpu_s() + (masters.cpu_s() - masters0 if masters else 0.0), ctl.peak_mb()
    finally:
        ctl.remove()
    ok = proc.returncode in (0, 4) if kind == 'ping' or limit == 'fleet' else proc.returncode == 0
    if kind != 'ping':
        fleet_json = os.path.join(tmp, 'reports-%s' % tag, 'fleet.json')
        ok = ok and os.path.exists(fleet_json)
        down_errors = []
        if ok:
            with open(fleet_json) as f:
                doc = json.load(f)
            ok = doc['summary']['reachable'] == n_reachable
            down_errors = sorted(set(re.sub(r'\d+\.\d+\.\d+\.\d+', 'ADDR', str(h.get('error')))[-60:]
                                     for h in doc['hosts'] if not h.get('reachable')))
    if not ok:
        sys.stderr.write('%s run failed (rc %d):\n%s\n%s\n' % (tag, proc.returncode, proc.stdout[-3000:],
                                                               proc.stderr[-2000:]))
    return {'kind': kind, 'wall_s': wall, 'wall_minus_window_s': wall - (WINDOW_S if kind != 'ping' else 0),
            'controller_cpu_s': ctl_cpu, 'target_cpu_s': target_cpu, 'peak_controller_mb': peak,
            'controller_cpu_per_host_s': ctl_cpu / n_reachable, 'target_cpu_per_host_s': target_cpu / n_reachable,
            'machine_cpu_per_host_s': (ctl_cpu + target_cpu) / n_reachable, 'ok': ok,
            'unreachable_errors': down_errors if kind != 'ping' else []}


def measure_size(n, rounds, timeout, tmp, ssh_args='', bashrc=None, warm=False):
    down = n // 10
    targets = Cgroup('agbench-targets-%d-%d' % (os.getpid(), n))
    masters = Cgroup('agbench-masters-%d-%d' % (os.getpid(), n)) if warm else None
    fleet = SSHFleet(hosts=n, unreachable=down, net='10.214.0', blackhole=True, cgroup=targets.dirs, bashrc=bashrc)
    rows = {}
    try:
        with fleet:
            inventory = os.path.join(tmp, 'inventory-%d.ini' % n)
            write_inventory(fleet, inventory, timeout, ssh_args)
            if warm:
                # what a fleet operator gets with a ControlPersist longer than the interval of the
                # scheduled runs: masters opened by an earlier run (here an unmeasured ping), reused
                env = {'ANSIBLE_SSH_ARGS': '-o ControlMaster=auto -o ControlPersist=%s' % WARM_PERSIST,
                       'ANSIBLE_SSH_CONTROL_PATH_DIR': os.path.join(tmp, 'cp-%d' % n)}
                subprocess.run(fleet.cmd([os.path.join(BIN, 'ansible'), '-i', inventory, 'up', '-m', 'ansible.builtin.ping',
                                          '-o']), cwd=ROOT, env=_env(env), capture_output=True, check=False,
                               preexec_fn=masters.join, timeout=600)
                warm = (env, masters)
            plan = [('ping', 'up'), ('diagnose', 'up')] + ([('diagnose+down', 'fleet')] if down else [])
            plan += [('fanout', 'up')] + ([('fanout+down', 'fleet')] if down else [])
            plan += [('fanout-base', 'up')] if BASELINE[0] else []
            plan = [(kind, limit) for kind, limit in plan if kind.split('+')[0].split('-')[0] in KINDS]
            for rnd in range(rounds):
                for kind, limit in plan:
                    row = run_one(fleet, kind.split('+')[0], inventory, limit, tmp, targets,
                                  '%d-%s-%d' % (n, kind.replace('+', '_'), rnd), n, warm=warm or None)
                    best = rows.get(kind)
                    if best is None or row['wall_s'] < best['wall_s']:
                        rows[kind] = row      # the best of the rounds: the least disturbed by the load
    finally:
        if masters:
            masters.remove()
        targets.remove()
    for name, row in rows.items():
        row['hosts'] = n
        row['run'] = name
        row['down'] = down if name.endswith('+down') else 0
    ping = rows['ping']
    for row in rows.values():
        row['wall_vs_ping'] = row['wall_s'] / ping['wall_s']
        row['cpu_vs_ping'] = row['machine_cpu_per_host_s'] / ping['machine_cpu_per_host_s']
    return rows


RUNS = (('ping', '#2ca02c'), ('diagnose', '#1f77b4'), ('diagnose+down', '#d62728'),
        ('fanout', '#9467bd'), ('fanout+down', '#ff7f0e'), ('fanout-base', '#8c564b'))


def chart(results, path):
    sizes = sorted(results)
    series = []
    for kind, color in RUNS:
        points = [(n, results[n][kind]['wall_s']) for n in sizes if kind in results[n]]
        if points:
            series.append({'name': kind + ' wall (s)', 'points': points, 'color': color})
    svg = svgchart.line_chart(series, 'auditgap diagnose (Ansible path, fan-out) vs ansible ping: wall time by fleet size',
                              's', width=640, height=300, x_label='reachable hosts')
    cpu = [{'name': kind + ' CPU/host (s)', 'color': color,
            'points': [(n, results[n][kind]['machine_cpu_per_host_s']) for n in sizes if kind in results[n]]}
           for kind, color in RUNS if '+' not in kind]
    cpu = [c for c in cpu if c['points']]
    svg2 = svgchart.line_chart(cpu, 'machine CPU seconds per reachable host', 's', width=640, height=260,
                               x_label='reachable hosts')
    with open(path, 'w') as f:
        f.write('<svg xmlns="http://www.w3.org/2000/svg" width="640" height="570">%s<g transform="translate(0,305)">%s'
                '</g></svg>\n' % (svg, svg2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='1,10', help='reachable hosts per fleet, comma-separated (1..200)')
    parser.add_argument('--rounds', type=int, default=1, help='runs of each kind per size (the best is kept)')
    parser.add_argument('--timeout', type=int, default=5, help='ssh connect timeout (s) in the inventory')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'out'), help='directory for JSON + SVG')
    parser.add_argument('--kinds', default=','.join(KINDS),
                        help='runs besides ping: diagnose (Ansible path), fanout (diagnose_transport=fanout)')
    parser.add_argument('--ssh-args', default='',
                        help='ssh options added to the inventory for every run, e.g. "-o KexAlgorithms=curve25519-sha256"')
    parser.add_argument('--bashrc', help="a file put over root's ~/.bashrc for the hosts' sshds (a clean fleet host's "
                                         "rc, e.g. /usr/share/base-files/dot.bashrc): bash reads it for every command "
                                         "sshd runs, and this machine's runs pyenv init (0.11 s)")
    parser.add_argument('--warm', action='store_true',
                        help='every run (ping too) reuses ssh masters an earlier unmeasured run opened (ssh_args with '
                             'ControlPersist=%s): scheduled runs with a ControlPersist longer than their interval; '
                             "the masters' CPU during a run counts as its controller's" % WARM_PERSIST)
    parser.add_argument('--fanout-concurrency', type=int, default=0,
                        help="diagnose_fanout_concurrency (hosts at once; 0, the product's default: Ansible's forks)")
    parser.add_argument('--baseline-tree', help='another checkout of auditgap (same venv) whose fan-out runs too, as '
                                                '"fanout-base", interleaved with this tree\'s: a change before/after in one run')
    args = parser.parse_args()
    FANOUT_CONCURRENCY[:] = [args.fanout_concurrency]
    BASELINE[:] = [os.path.abspath(args.baseline_tree) if args.baseline_tree else None]
    KINDS[:] = ['ping'] + [k for k in args.kinds.split(',') if k in ('diagnose', 'fanout')]
    if os.geteuid() != 0:
        sys.exit('bench_fleet needs root (network namespaces, cgroups)')
    sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
    tmp = tempfile.mkdtemp(prefix='agbench-fleet-')
    results = {}
    try:
        for n in sizes:
            results[n] = measure_size(n, args.rounds, args.timeout, tmp, args.ssh_args, args.bashrc, args.warm)
            print_size(results[n])
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'bench_fleet.json'), 'w') as f:
        json.dump({'sizes': {str(n): results[n] for n in results}, 'loadavg': os.getloadavg(), 'ssh_args': args.ssh_args,
                   'bashrc': args.bashrc, 'warm': args.warm,
                   'fanout_concurrency': args.fanout_concurrency,
                   'window_s': WINDOW_S, 'timeout_s': args.timeout}, f, indent=1, sort_keys=True)
    chart(results, os.path.join(args.out, 'bench_fleet.svg'))
    print('wrote %s/bench_fleet.json and bench_fleet.svg (load average %.1f: shared machine, noisy)'
          % (args.out, os.getloadavg()[0]))
    fits = fixed_and_per_host(results)
    with open(os.path.join(args.out, 'bench_fleet.json')) as f:
        doc = json.load(f)
    doc['fits'] = fits
    with open(os.path.join(args.out, 'bench_fleet.json'), 'w') as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    return 0 if goals(results, args.timeout) else 1


def fit(points):
    """(fixed, per_host) of the least-squares line total = fixed + per_host * n through
    ``points`` [(n, total)], or None with fewer than two sizes."""
    if len(set(n for n, _ in points)) < 2:
        return None
    mean_n = sum(n for n, _ in points) / float(len(points))
    mean_t = sum(t for _, t in points) / float(len(points))
    per_host = (sum((n - mean_n) * (t - mean_t) for n, t in points)
                / sum((n - mean_n) ** 2 for n, _ in points))
    return mean_t - per_host * mean_n, per_host


def fixed_and_per_host(results):
    """Each run's machine CPU of all its reachable hosts split into a fixed cost per run and a cost
    per host (a line through the sizes measured): what decides the ratio at small fleets."""
    fits = {}
    for kind in ('ping', 'diagnose', 'fanout', 'fanout-base'):
        points = [(n, results[n][kind]['machine_cpu_per_host_s'] * n) for n in sorted(results) if kind in results[n]]
        line = fit(points)
        if line:
            fits[kind] = {'fixed_s': line[0], 'per_host_s': line[1], 'sizes': [n for n, _ in points]}
            print('%s: machine CPU of a run = %.2f s + %.3f s per reachable host (least squares over %s hosts)'
                  % (kind, line[0], line[1], ','.join(str(n) for n, _ in points)))
    if 'ping' in fits and 'fanout' in fits:
        ping, fan = fits['ping'], fits['fanout']
        room = GOAL_CPU_RATIO * ping['per_host_s'] - fan['per_host_s']
        if room > 0:
            # ratio(n) = (F_f + n d_f) / (F_p + n d_p) <= 0.4  <=>  n >= (F_f - 0.4 F_p) / (0.4 d_p - d_f)
            print('fanout/ping <= %.1f from %.0f hosts on (fixed costs %.2f s and %.2f s, per host %.3f s and %.3f s)'
                  % (GOAL_CPU_RATIO, max(0.0, (fan['fixed_s'] - GOAL_CPU_RATIO * ping['fixed_s']) / room),
                     fan['fixed_s'], ping['fixed_s'], fan['per_host_s'], ping['per_host_s']))
        else:
            print('fanout/ping stays above %.1f at any size: its per-host cost %.3f s > %.1f x ping\'s %.3f s'
                  % (GOAL_CPU_RATIO, fan['per_host_s'], GOAL_CPU_RATIO, ping['per_host_s']))
    return fits


HEAD = '%6s %-14s %8s %8s %9s %9s %9s %8s %8s %8s %3s' % (
    'hosts', 'run', 'wall_s', 'wall-win', 'ctlcpu/h', 'tgtcpu/h', 'cpu/h', 'peak_MB', 'wall/pg', 'cpu/pg', 'ok')


def print_size(rows):
    print(HEAD)
    for kind, _color in RUNS:
        r = rows.get(kind)
        if r:
            print('%6d %-14s %8.2f %8.2f %9.3f %9.3f %9.3f %8.0f %8.2f %8.2f %3s' % (
                r['hosts'], kind, r['wall_s'], r['wall_minus_window_s'], r['controller_cpu_per_host_s'],
                r['target_cpu_per_host_s'], r['machine_cpu_per_host_s'], r['peak_controller_mb'],
                r['wall_vs_ping'], r['cpu_vs_ping'], 'yes' if r['ok'] else 'NO'))
            for err in r.get('unreachable_errors') or []:
                print('%6s %-14s unreachable: ...%s' % ('', '', err))


def goals(results, timeout):
    """The goals of issue 17 for each path measured; the CPU goal is the fan-out's (the Ansible
    path is printed beside it: one Ansible task per host costs what a ping costs)."""
    ok = all(r['ok'] for rows in results.values() for r in rows.values())
    for path in ('diagnose', 'fanout'):
        for n in sorted(results):
            rows = results[n]
            if path not in rows:
                continue
            ratio = rows[path]['cpu_vs_ping']
            hit = ratio <= GOAL_CPU_RATIO
            print('goal %s %d hosts: machine CPU/host %s/ping <= %.1f: %.2f %s' % (
                path, n, path, GOAL_CPU_RATIO, ratio, 'ok' if hit else 'MISSED'))
            if path == 'fanout':
                ok = ok and hit
            if path + '+down' in rows:
                limit = rows[path]['wall_s'] * (1 + GOAL_DOWN) + timeout
                hit = rows[path + '+down']['wall_s'] <= limit
                print('goal %s %d hosts + %d black-holed: wall %.1f s <= %.1f s (+10%% + %d s timeout): %s' % (
                    path, n, n // 10, rows[path + '+down']['wall_s'], limit, timeout, 'ok' if hit else 'MISSED'))
                ok = ok and (hit or path != 'fanout')
        if 1 in results and 200 in results and path in results[1] and path in results[200]:
            growth = results[200][path]['wall_s'] / results[1][path]['wall_s']
            hit = growth <= GOAL_WALL_200
            print('goal %s 200 hosts: wall <= %gx the 1-host wall: %.1fx %s' % (
                path, GOAL_WALL_200, growth, 'ok' if hit else 'MISSED'))
            ok = ok and (hit or path != 'fanout')
    return ok


if __name__ == '__main__':
    sys.exit(main())
