"""Cost of an events-mode sample on a loopback accept loop (goal: at most 5% fewer accepts).

The traced workload is a loopback accept loop: a server process (accept + close) and a
client process (connect + close, as fast as it can, or --rate connections a second), both
pinned to one CPU (--workload-cpu, default the last one) at niceness --workload-nice (default
-10: other tenants of the host take less of that CPU); the sampler (the ftrace_sample module,
run as Ansible runs it) and this script run on the other CPUs. Same run, interleaved windows:

    U0, M1, U1, M2, U2, ...

U are untraced windows; each middle window M is either traced (while ftrace_sample samples
the server pid in its private instance) or a sham (nothing started: untraced too). Traced
and sham rounds alternate. Each M is compared with the mean of the untraced windows right
before and after it (drift and neighbours' load cancel out), so the sham rounds give the
noise floor of exactly the statistic the traced rounds give: untraced against untraced,
in the same run.

Two ratios per round:
- accepts per CPU-second of the server + client (their own CPU time, from
  /proc/PID/schedstat in ns): the cost the tracepoints add to the traced syscalls. This
  is the one the goal is judged on: other tenants of a shared host change how much CPU
  the loop gets, not what an accept costs it.
- accepts per wall second: printed beside it; on a shared host it moves with others' load.

--rounds rounds at least (default 20), then more traced and sham pairs until the 90% CI of
the traced median is at most --ci-width wide (default 0.04) or --max-rounds (default 80).
Printed: every round, then per kind the median, the quartiles and a bootstrap 90%
confidence interval of the median; the verdict says whether the goal (traced median >= 1 -
--max-loss) is met, missed, or not resolved at this noise (the interval straddles the goal).
--mode events (the default) is what ``mode: auto`` runs where the kernel has no
function_graph, as on this project's hosts: ``syscalls`` (sys_enter/sys_exit of accept4)
and ``offcpu`` (sched_switch with a stacktrace trigger) together in one instance;
--mode syscalls or offcpu runs one of them; --mode syscalls --syscall getppid traces a syscall
the loop never makes: a sample that records nothing, whose cost is the slow path every syscall
of every task takes once any syscall event is enabled and the sampler's own activity beside the
loop (on a 2-vCPU VM most of it: docs/ftrace_sample.md). Each round also prints the server's switch-ins
per accept (the loop's regime: an accept that blocks costs an off-CPU stack) and the sample's
events_lost. A traced round whose sample recorded no accept4 (syscalls) or no off-CPU event
(offcpu) is left out of the statistics. Exit 1 when the traced median is below
1 - --max-loss (default 0.05), a round was left out, or a sample did not restore. Accepts
per wall second are printed, not judged: under other load the loop's throughput depends on
how often it sleeps and waits to be woken more than on its cost (traced windows often ran
faster).

Needs root. Takes the host-wide kernel test lock (other tests change tracefs too) for the
whole run; the module restores tracefs itself. The accept loop, the windows, the rounds and
the statistics are benchlib's, shared with guest_trace_overhead.py.

--settle-s (default 0.3): seconds between the sample going live and its measured window; 1.5
leaves out what the sample's set-up leaves behind in its first second (docs/ftrace_sample.md: a
sample that records nothing cost 2-3% at 0.3, 0.6% at 1.5).

--floor: the traced rounds alternate between the module and the kernel's share of it: the same
events, filters and trigger in an instance (``tracefs.events_plan``, what the module writes), set up
by this process with no module and no reader (the ring buffer overwrites), so what the tracepoints
cost the loop and what the module adds to them (its process, its reads in the window) are measured in
one run. Printed: both medians and the difference; the verdict is the module's. tracefs stays mounted
for the run (the module rounds then find it mounted, as the floor's do).

--baseline DIR (another checkout of this project, e.g. ``git worktree add /tmp/base main``): the
traced rounds alternate between this checkout's module and DIR's, each judged against its own
untraced neighbours, so a change's effect is measured in one run, under the same host (run to run
the cost moved by 2 points on a quiet host, more than one run's CI). Printed: both medians, their
difference, and the verdict for this checkout's rounds.

    .venv/bin/python benchmarks/bench_ftrace_sample.py [--mode events|syscalls|offcpu] [--syscall accept4]
        [--window-s 2] [--rounds 20]
        [--max-rounds 80] [--ci-width 0.04] [--workload-nice -10] [--rate 0] [--settle-s 0.3] [--baseline DIR | --floor]
"""
import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import COLLECTIONS, ROOT, accept_window, overhead_rounds, start_accept_loop, stop_accept_loop, summary
from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import append_value, write_value
from tests.support.kernel import kernel_lock, tracefs_mounted

MODULE = os.path.join(ROOT, 'plugins', 'modules', 'ftrace_sample.py')
TRACEFS = '/sys/kernel/tracing'
BUFFER_KB = 4096  # the module's default buffer_size_kb (its ARGUMENT_SPEC): the floor's, without --buffer-kb


# --mode -> the module's mode, and the modes it must run
MODES = {'events': ('auto', ['syscalls', 'offcpu']), 'syscalls': ('syscalls', ['syscalls']),
         'offcpu': ('offcpu', ['offcpu'])}


def collections_of(root, workdir):
    """The collections path that imports the checkout at ``root`` as auditgap.fleet (a link tree in
    ``workdir``, made the first time, as make setup makes collections/ for this checkout)."""
    path = os.path.join(workdir, 'baseline-collections')
    link = os.path.join(path, 'ansible_collections', 'auditgap', 'fleet')
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link))
        os.symlink(os.path.abspath(root), link)
    return path


def start_sample(server_pid, seconds, workdir, mode, buffer_kb, cpus, syscall='accept4', root=None):
    """The module of this checkout (or of the checkout at ``root``: --baseline) run as Ansible runs it."""
    module, collections = MODULE, COLLECTIONS
    if root:
        module = os.path.join(root, 'plugins', 'modules', 'ftrace_sample.py')
        collections = collections_of(root, workdir)
    args = os.path.join(workdir, 'args.json')
    module_args = {'mode': MODES[mode][0], 'pids': [server_pid], 'syscalls': [syscall], 'duration_s': seconds}
    if buffer_kb:
        module_args['buffer_size_kb'] = buffer_kb
    with open(args, 'w') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': module_args}, handle)
    env = dict(os.environ, PYTHONPATH=collections)
    return subprocess.Popen([sys.executable, module, args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT, preexec_fn=lambda: os.sched_setaffinity(0, cpus))


def wait_live(proc, mode, syscall='accept4', timeout_s=30.0):
    """True once the sample traces: its events enabled and then its instance's tracing_on 1 (a new
    instance starts with tracing_on 1; the module turns it off, enables the events, turns it on)."""
    inst = os.path.join(TRACEFS, 'instances', 'auditgap-%d' % proc.pid)
    files = []  # the enable files first: once one reads 1, the module has turned tracing_on off
    if 'syscalls' in MODES[mode][1]:
        files.append('events/syscalls/sys_exit_%s/enable' % syscall)
    if 'offcpu' in MODES[mode][1]:
        files.append('events/sched/sched_switch/enable')
    files.append('tracing_on')
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            values = []
            for name in files:
                with open(os.path.join(inst, name)) as handle:
                    values.append(handle.read().strip())
            if all(value[:1] == '1' for value in values):  # '1*': enabled in soft mode (a trigger)
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def kernel_floor(root, mode, syscall, pid, buffer_kb):
    """The module's events for --mode on ``pid`` (``tracefs.events_plan``), set up in an instance by this
    process, tracing on; yields the instance's path, then removes what it wrote in the reverse order and
    the instance. Its name is ``auditgap-<this pid>``: if this run is killed, the next auditgap run
    removes it as a stale instance of a dead pid."""
    inst = os.path.join(root, 'instances', tracefs.instance_name())
    os.mkdir(inst)
    undo = [lambda: os.rmdir(inst)]
    try:
        write_value(os.path.join(inst, 'tracing_on'), '0')
        write_value(os.path.join(inst, 'buffer_size_kb'), str(buffer_kb))
        for rel, value, restore in tracefs.events_plan(MODES[mode][1], [syscall], [pid]):
            path = os.path.join(inst, rel)
            write = append_value if restore is None else write_value  # O_TRUNC would drop a file's triggers
            removal = tracefs.command_trigger_removal(value) if restore is None else restore
            undo.append(functools.partial(write, path, removal))
            write(path, value)
        write_value(os.path.join(inst, 'tracing_on'), '1')
        yield inst
    finally:
        if os.path.isdir(inst):
            write_value(os.path.join(inst, 'tracing_on'), '0')
        for step in reversed(undo):
            step()


def floor_round(args, measure, srv_pid, counts, restored, sources, root):
    """One middle window traced by the kernel floor (--floor) -> (window, note, valid: events written)."""
    with kernel_floor(root, args.mode, args.syscall, srv_pid, args.buffer_kb or BUFFER_KB) as inst:
        time.sleep(args.settle_s)
        mid = measure()
        written = tracefs.events_buffered(inst) + tracefs.events_lost(inst)
    counts.append(written)
    restored.append(not os.path.exists(inst))
    if written:
        sources.append('floor')
    note = ' (kernel floor %s: %d events written, no reader, restored %s)' % (
        '+'.join(MODES[args.mode][1]), written, restored[-1])
    return mid, note, bool(written)


def sample_round(args, measure, srv_pid, workdir, other_cpus, counts, restored, sources, root=TRACEFS):
    """One traced middle window: start the sample, measure while it traces, collect its facts;
    -> (window, note, valid: the sample recorded something). With --baseline every other one runs
    the baseline's module; ``sources`` gets which module each valid round ran."""
    if args.floor and len(counts) % 2:
        return floor_round(args, measure, srv_pid, counts, restored, sources, root)
    root = args.baseline if args.baseline and len(counts) % 2 else None
    for _attempt in range(30):
        proc = start_sample(srv_pid, args.window_s + args.settle_s + 1.2, workdir, args.mode, args.buffer_kb, other_cpus,
                            args.syscall, root)
        if wait_live(proc, args.mode, args.syscall):
            break
        out, err = proc.communicate(timeout=2 * args.window_s + 120)  # the module's own limit: 2 x duration + 60 s
        if b'"restored": true' in out:
            # it sampled and ended before this process saw it live (seen at load 15+):
            # the window is not known to be traced, so it is left out (and fails the run at the end)
            counts.append(0)
            return measure(), ' (the sample ended before its window was measured)', False
        if b'host lock' not in out:
            raise RuntimeError('sample did not start: %s %s' % (out[-500:], err[-500:]))
        time.sleep(2.0)  # another auditgap run holds the host lock: wait for it
    else:
        raise RuntimeError('sample did not start: the auditgap host lock stayed busy for a minute')
    time.sleep(args.settle_s)
    mid = measure()
    out, _err = proc.communicate(timeout=2 * args.window_s + 120)
    facts = json.loads(out.decode())['ftrace_sample']
    if facts.get('modes') != MODES[args.mode][1]:
        raise RuntimeError('the sample ran modes %s, not %s (mode auto runs function_graph where the kernel has it: '
                           'use --mode syscalls or offcpu there)' % (facts.get('modes'), MODES[args.mode][1]))
    acc = (facts.get('syscalls') or {}).get('accept4', {})
    offcpu = sum(group['count'] for group in facts.get('offcpu') or ())
    offcpu += (facts.get('offcpu_unstacked') or {}).get('count', 0)
    if args.syscall != 'accept4':  # --mode syscalls (main refuses any other)
        counts.append(1)  # the null sample: nothing to record, traced once it was live (above)
    else:
        counts.append(acc.get('count', 0) if 'syscalls' in facts['modes'] else offcpu)
    restored.append(facts['restored'])
    note = ' (%ssample %s: %d accept4, p99 %s us, %d off-CPU, events_lost %s, restored %s, reader %s, read while tracing %s)' % (
        'baseline ' if root else '', '+'.join(facts['modes']), acc.get('count', 0), acc.get('p99_us'), offcpu,
        facts.get('events_lost'), facts['restored'], facts.get('reader'), facts.get('read_while_tracing_bytes'))
    if counts[-1]:
        sources.append('baseline' if root else 'this')
    # a sample that recorded nothing in this window (seen on a host at load 20+): the window was not
    # traced, so it is left out of the statistics (and fails the run at the end)
    return mid, note, bool(counts[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--mode', choices=sorted(MODES), default='events',
                    help='events: syscalls + offcpu in one instance (mode auto without function_graph)')
    ap.add_argument('--syscall', default='accept4',
                    help='the syscall the sample traces (default accept4, what the loop makes); with --mode '
                         'syscalls, one the loop never makes (getppid) measures a sample that records nothing: '
                         'the slow path every syscall takes then, and the sampler beside the loop')
    ap.add_argument('--window-s', type=float, default=2.0)
    ap.add_argument('--rounds', type=int, default=20,
                    help='middle windows at least, traced and sham alternating')
    ap.add_argument('--max-rounds', type=int, default=80,
                    help='more traced and sham pairs, up to this many rounds, until the 90%% CI of the traced '
                         'median is at most --ci-width wide (0: --rounds only)')
    ap.add_argument('--ci-width', type=float, default=0.04)
    ap.add_argument('--max-loss', type=float, default=0.05)
    ap.add_argument('--buffer-kb', type=int, default=0, help="the sample's buffer_size_kb (0: the module's default)")
    ap.add_argument('--workload-cpu', type=int, default=-1,
                    help='the CPU the server and client are pinned to (default: the last one)')
    ap.add_argument('--workload-nice', type=int, default=-10,
                    help="the server's and client's niceness: other tenants of the host take less of their CPU")
    ap.add_argument('--rate', type=float, default=0.0,
                    help='connections a second the client offers (0: as fast as it can); with a rate below what '
                         'the loop can do, the server waits for every connection in every window alike')
    ap.add_argument('--settle-s', type=float, default=0.3,
                    help='seconds between the sample going live and its measured window (1.5: what its set-up '
                         'leaves behind in the first second settles first)')
    ap.add_argument('--baseline', metavar='DIR',
                    help="another checkout of this project: traced rounds alternate between this checkout's "
                         "module and DIR's (a change's effect in one run)")
    ap.add_argument('--floor', action='store_true',
                    help="traced rounds alternate between the module and the same events set up by this process "
                         "(no module, no reader): the kernel's share and the module's in one run")
    args = ap.parse_args()
    if args.floor and args.baseline:
        ap.error('--floor and --baseline: one comparison a run')
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, 'plugins', 'modules', 'ftrace_sample.py')):
        ap.error('--baseline %s: no plugins/modules/ftrace_sample.py there (a checkout of this project)'
                 % args.baseline)
    if args.syscall != 'accept4' and args.mode != 'syscalls':
        ap.error('--syscall other than accept4 needs --mode syscalls (the rounds are judged on accept4 otherwise)')
    if os.geteuid() != 0:
        print('needs root')
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    workload_cpus = {cpus[args.workload_cpu]}
    other_cpus = set(cpus) - workload_cpus or workload_cpus
    os.sched_setaffinity(0, other_cpus)
    counter, stop, workers, procs = start_accept_loop(workload_cpus, args.workload_nice, args.rate)
    print('workload (server %d + client %d, nice %d, %s) on CPU %s; sampler on CPU %s; %d-%d rounds of %.1f s '
          'windows, mode %s'
          % (workers[0], workers[1], args.workload_nice,
             '%.0f connections/s offered' % args.rate if args.rate else 'as fast as it can',
             ','.join(map(str, sorted(workload_cpus))), ','.join(map(str, sorted(other_cpus))),
             args.rounds, max(args.rounds, args.max_rounds), args.window_s,
             args.mode + ('' if args.syscall == 'accept4' else ' (tracing %s)' % args.syscall)))
    measure = functools.partial(accept_window, counter, workers, args.window_s)
    counts, restored, sources = [], [], []
    mounted = tracefs_mounted() if args.floor else contextlib.nullcontext(TRACEFS)
    with kernel_lock(), tempfile.TemporaryDirectory() as workdir, mounted as root:
        try:
            time.sleep(1.0)  # warm up
            ratios, wall_ratios, _invalid = overhead_rounds(
                measure, functools.partial(sample_round, args, measure, workers[0], workdir, other_cpus, counts,
                                           restored, sources, root),
                args.rounds, args.max_rounds, args.ci_width)
        except RuntimeError as err:
            print(err)
            return 1
        finally:
            stop_accept_loop(stop, procs)
    ok = all(restored)
    goal = 1 - args.max_loss
    if not ratios['traced']:
        print('no traced round recorded anything')
        return 1
    print('mode %s, accepts per CPU-second of the workload, middle window / mean of its neighbours:' % args.mode)
    other = 'baseline' if args.baseline else 'floor' if args.floor else None
    if other:
        this = [r for r, src in zip(ratios['traced'], sources) if src == 'this']
        base = [r for r, src in zip(ratios['traced'], sources) if src == other]
        if len(base) < 3 or len(this) < 3:
            print('NOT RESOLVED: %d rounds of this checkout, %d of the %s; a comparison needs 3 of each'
                  % (len(this), len(base), other))
            return 1
        base_median = summary('%s / untraced' % ('baseline' if args.baseline else 'kernel floor'), base)[0]
        ratios['traced'] = this
    traced, t_low, t_high = summary('this checkout / untraced' if other else 'traced / untraced', ratios['traced'])
    if args.baseline:
        print('this checkout against the baseline (%s): %+.1f points of accepts per CPU-second'
              % (args.baseline, (traced - base_median) * 100))
    elif args.floor:
        print('the kernel floor (the same events, no module, no reader) cost %.1f%% of accepts per CPU-second; '
              'the module adds %+.1f points' % ((1 - base_median) * 100, (base_median - traced) * 100))
    if ratios['sham']:
        sham, s_low, s_high = summary('untraced / untraced (noise)', ratios['sham'])
    print('accepts per wall second (moves with other load on the host):')
    summary('traced / untraced', wall_ratios['traced'])
    if wall_ratios['sham']:
        summary('untraced / untraced (noise)', wall_ratios['sham'])
    if ratios['sham']:
        print('noise floor: untraced against untraced moves the median by %.1f%% (90%% CI %.3f-%.3f); the sample '
              'cost %.1f%% of accepts per CPU-second (goal <= %.0f%%)'
              % (abs(1 - sham) * 100, s_low, s_high, (1 - traced) * 100, args.max_loss * 100))
    if len(ratios['traced']) < 3:
        print('NOT RESOLVED: %d traced round(s); a verdict needs at least 3' % len(ratios['traced']))
    elif t_low >= goal:
        print('GOAL MET: the 90%% CI of the traced median (%.3f-%.3f) is above %.2f' % (t_low, t_high, goal))
    elif t_high < goal:
        print('GOAL MISSED: the 90%% CI of the traced median (%.3f-%.3f) is below %.2f' % (t_low, t_high, goal))
    else:
        print('NOT RESOLVED at this noise: the 90%% CI of the traced median (%.3f-%.3f) straddles %.2f; '
              'more --rounds or a quieter host' % (t_low, t_high, goal))
    if traced < goal:
        ok = False
    if not all(counts):
        print('FAILED ROUNDS: %d sample(s) saw no %s (left out above)'
              % (counts.count(0), 'accept4' if args.mode != 'offcpu' else 'off-CPU event'))
        ok = False
    print('OK' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
