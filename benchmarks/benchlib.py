"""What the benchmarks share: the tree on ``sys.path`` (the project root for ``tests.support``
and ``auditgap``, ``collections/`` for ``ansible_collections.auditgap.fleet``, as ansible.cfg
links it) and the start of those that run the incident lab (root and auditd checked, the
kernel-tests lock held, the lab present for a block). Imported first, before anything of the tree."""
import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, '.venv', 'bin')
COLLECTIONS = os.path.join(ROOT, 'collections')
for _path in (COLLECTIONS, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def run_lab_locked(name, run, args):
    """``run(args)`` holding the kernel-tests lock; 2 (and why, on stderr) without root or auditd."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import labkit
    from tests.support.kernel import kernel_lock
    if os.geteuid() != 0 or not labkit.find_auditd():
        print('%s: needs root and auditd' % name, file=sys.stderr)
        return 2
    with kernel_lock():
        return run(args)


@contextlib.contextmanager
def lab_present(name, params):
    """The incident lab (``labkit.lab_present``, as playbooks/lab.yml) for the block, removed
    after it, also on error; yields (the checked params, the lab, the guard). Exits 2 when the
    host refuses the lab; the guard's restore errors are printed after the block."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import labkit
    from ansible_collections.auditgap.fleet.plugins.module_utils.guard import RestoreGuard
    p = labkit.validate_lab_params(params)
    labkit.lab_absent(p['state_path'])
    with RestoreGuard() as guard:
        guard.push(lambda: labkit.lab_absent(p['state_path']), description='lab absent')
        try:
            _, lab = labkit.lab_present(params)
        except labkit.LabRefused as err:
            print('%s: %s' % (name, err), file=sys.stderr)
            raise SystemExit(2)
        yield p, lab, guard
    if guard.restore_errors:
        print('%s: restore errors: %s' % (name, guard.restore_errors), file=sys.stderr)


# ---------------------------------------------------------------------------
# Parser benchmarks (bench_traceparse, bench_tracering): CPU time against plain iteration of the
# same file in the same run, peak RSS.

def rss_mb():
    """Peak RSS of this process so far, MB (getrusage)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, *args):
    """``fn(*args)`` -> (what it returned, CPU seconds, wall seconds). Rates use CPU time: the
    test hosts are shared."""
    import time
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - start


def iterate_lines(path):
    """The floor: plain line iteration over the file (what reading alone costs); -> lines."""
    count = 0
    with open(path, 'r', buffering=1 << 20) as handle:
        for _line in handle:
            count += 1
    return count


def feed_pipe(parser, path):
    """The file through the reader ftrace_sample uses on trace_pipe (tracefs.PipeReader: text of
    whole lines, one chunk per read) into ``parser.feed_text``."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
    reader = tracefs.PipeReader(path)
    try:
        reader.read_available(parser.feed_text, max_bytes=1 << 40)
        reader.drain(parser.feed_text)
    finally:
        reader.close()
    return parser


# ---------------------------------------------------------------------------
# Tracing overhead on a loopback accept loop (bench_ftrace_sample on this host,
# guest_trace_overhead.py inside a throwaway guest): standard library only, as the guest has
# nothing else (copy this file beside guest_trace_overhead.py).

def _pin(cpus, nice):
    if cpus:
        os.sched_setaffinity(0, cpus)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def accept_server(counter, port_q, stop, cpus=None, nice=0):
    """The traced task: accept + close, counting accepts in ``counter``."""
    import socket
    _pin(cpus, nice)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', 0))
    sock.listen(1024)
    sock.settimeout(0.5)
    port_q.put(sock.getsockname()[1])
    while not stop.is_set():
        try:
            conn, _addr = sock.accept()
        except socket.timeout:
            continue
        conn.close()
        counter.value += 1


def accept_client(port, stop, cpus=None, nice=0, rate=0.0):
    """The load generator: connect + close, as fast as it can (``rate`` 0) or ``rate`` connections
    a second (paced in steps of 1 ms: the server then waits for each connection, every window alike)."""
    import socket
    import time
    _pin(cpus, nice)
    due = time.monotonic()
    while not stop.is_set():
        if rate:
            due += 1.0 / rate
            delay = due - time.monotonic()
            if delay > 0.001:
                time.sleep(delay)
            elif delay < -1.0:
                due = time.monotonic()  # fell a second behind (the CPU was taken): no burst to catch up
        try:
            conn = socket.create_connection(('127.0.0.1', port), timeout=1)
            conn.close()
        except OSError:
            time.sleep(0.001)


def start_accept_loop(cpus=None, nice=0, rate=0.0):
    """Server and client processes (forked, daemonic), pinned to ``cpus`` at niceness ``nice``;
    -> (accepts counter, stop event, [server pid, client pid], the processes)."""
    import multiprocessing
    ctx = multiprocessing.get_context('fork')
    counter = ctx.RawValue('q', 0)
    stop = ctx.Event()
    port_q = ctx.Queue()
    srv = ctx.Process(target=accept_server, args=(counter, port_q, stop, cpus, nice), daemon=True)
    srv.start()
    port = port_q.get(timeout=30)
    cli = ctx.Process(target=accept_client, args=(port, stop, cpus, nice, rate), daemon=True)
    cli.start()
    return counter, stop, [srv.pid, cli.pid], (srv, cli)


def stop_accept_loop(stop, procs):
    stop.set()
    for proc in procs[::-1]:
        proc.join(5)


def cpu_ns(pids):
    """CPU time of the tasks in ns (schedstat's sum_exec_runtime; utime + stime ticks without it)."""
    total = 0
    for pid in pids:
        try:
            with open('/proc/%d/schedstat' % pid) as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            with open('/proc/%d/stat' % pid) as handle:
                fields = handle.read().rsplit(')', 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * 1000000000 // os.sysconf('SC_CLK_TCK')
    return total


def switch_ins(pid):
    """How often the task was switched in (schedstat's third field): blocking accepts switch it out."""
    try:
        with open('/proc/%d/schedstat' % pid) as handle:
            return int(handle.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 0


def accept_window(counter, workers, seconds):
    """(accepts per wall second, accepts per CPU-second of the workers, switch-ins of the first
    (the server) per accept) over one window. The last one is the loop's regime: near 1 when every
    accept blocks (each then costs an off-CPU stack), near 0 when connections queue up while it
    waits for the CPU."""
    import time
    start_n, start_t, start_c, start_r = counter.value, time.monotonic(), cpu_ns(workers), switch_ins(workers[0])
    time.sleep(seconds)
    done = counter.value - start_n
    cpu_s = (cpu_ns(workers) - start_c) / 1e9
    return (done / (time.monotonic() - start_t), (done / cpu_s if cpu_s else 0.0),
            (switch_ins(workers[0]) - start_r) / float(done or 1))


def quartiles(values):
    import statistics
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method='inclusive')
    return q[0], q[2]


def median_ci(values, level=0.90, resamples=2000, seed=15):
    """Bootstrap confidence interval of the median (percentile method)."""
    import random
    import statistics
    rnd = random.Random(seed)
    medians = sorted(statistics.median(rnd.choices(values, k=len(values))) for _ in range(resamples))
    low = medians[int(resamples * (1 - level) / 2)]
    high = medians[min(resamples - 1, int(resamples * (1 + level) / 2))]
    return low, high


def summary(label, values):
    """Prints median, quartiles and the bootstrap 90% CI of the median; -> (median, CI low, CI high)."""
    import statistics
    low, high = quartiles(values)
    ci_low, ci_high = median_ci(values)
    print('  %-26s median %.3f  quartiles %.3f-%.3f  90%% CI of the median %.3f-%.3f  (n=%d, min %.3f, max %.3f)'
          % (label, statistics.median(values), low, high, ci_low, ci_high, len(values), min(values), max(values)))
    sys.stdout.flush()
    return statistics.median(values), ci_low, ci_high


def _another_round(rnd, traced, rounds, max_rounds, ci_width):
    if rnd < rounds:
        return True
    if rnd >= max_rounds:
        return False
    if rnd % 2 or len(traced) < 3:  # a traced round's sham partner; a CI needs 3 rounds
        return True
    low, high = median_ci(traced)
    return high - low > ci_width


def overhead_rounds(measure, traced, rounds, max_rounds=0, ci_width=0.0, label=''):
    """Interleaved windows ``U0, M1, U1, M2, ...``: each middle window is traced (even rounds:
    ``traced()`` measures it while tracing and returns (window, note, valid)) or a sham (odd rounds:
    0.3 s, as a traced round waits for its tracing to start, then ``measure()``), and is compared
    with the mean of the untraced windows right before and after it, so the sham rounds give the
    noise floor of exactly that statistic. ``rounds`` rounds at least; with ``max_rounds``, more
    traced and sham pairs until the 90% CI of the traced median of accepts per CPU-second is at most
    ``ci_width`` wide (or ``max_rounds``). A round whose ``traced`` says not valid is printed and left
    out. Prints every round; -> ({'traced': [...], 'sham': [...]} per CPU-second, the same per wall
    second, traced rounds left out)."""
    ratios = {'traced': [], 'sham': []}
    wall = {'traced': [], 'sham': []}
    invalid = 0
    before = measure()
    rnd = 0
    while _another_round(rnd, ratios['traced'], rounds, max_rounds, ci_width):
        kind = 'traced' if rnd % 2 == 0 else 'sham'
        note = ''
        if kind == 'traced':
            mid, note, valid = traced()
            if not valid:
                kind = 'invalid'
                invalid += 1
        else:
            import time
            time.sleep(0.3)
            mid = measure()
        after = measure()
        wall_ratio = mid[0] / ((before[0] + after[0]) / 2.0)
        cpu_ratio = mid[1] / ((before[1] + after[1]) / 2.0)
        if kind != 'invalid':
            wall[kind].append(wall_ratio)
            ratios[kind].append(cpu_ratio)
        rnd += 1
        print('%sround %2d %-6s accepts/s %.0f | %.0f | %.0f (ratio %.3f); accepts per CPU-s %.0f | %.0f | %.0f '
              '(ratio %.3f); server switch-ins per accept %.2f | %.2f | %.2f%s'
              % (label, rnd, kind, before[0], mid[0], after[0], wall_ratio, before[1], mid[1], after[1],
                 cpu_ratio, before[2], mid[2], after[2], note))
        sys.stdout.flush()
        before = after
    return ratios, wall, invalid
