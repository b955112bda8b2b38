"""Tracing overhead on a loopback accept loop, run inside a guest whose kernel has function_graph
and hist triggers (the ftrace VM scenario's Debian 12 kernel 6.1), standard library only.

The same design as bench_ftrace_sample.py (interleaved windows U0, M1, U1, M2, ...; each
middle window traced or a sham, compared with the mean of its untraced neighbours; accepts
per CPU-second of the server + client from /proc/PID/schedstat; median, quartiles and a
bootstrap 90% CI per kind; the sham rounds are the noise floor, untraced against untraced).
The tracing is set up here directly in tracefs, with the settings ftrace_sample writes, for
each traced window and taken down after it:

- fg-slow: function_graph's bounded slow-calls recipe: set_ftrace_filter = the diagnose
  role's default function_filter (the audit path and the exit work), set_ftrace_pid = the
  server, tracing_thresh 100 ms (the module's default), funcgraph-proc;
- fg-exits: the bounded "syscall, then exit work" recipe: tracing_thresh 0,
  set_graph_function and set_ftrace_filter += __x64_sys_accept4 and the exit work,
  max_graph_depth 2, set_ftrace_pid = the server;
- hist: syscall latency in the kernel, tracehist's recipe: a synthetic event
  (syscalls sys_enter_accept4 -> sys_exit_accept4, onmatch latency) and hist triggers for
  accept4 of the server, read once at the end of the window, on the top-level buffer
  (creating a tracefs instance takes 20 s to minutes under QEMU emulation);
- hist-raw: the same on raw_syscalls sys_enter -> sys_exit, filtered to accept4's number
  (tracehist's recipe before: every syscall of every task reserves a record and runs the
  triggers' filter).
- events: sys_enter/sys_exit_accept4 filtered to the server + sched_switch with a
  stacktrace trigger, top-level buffer (for comparison with this host's events mode).

It writes the top-level tracefs files (and clears the top-level buffer) of the machine it
runs on: a throwaway guest only, never a shared host; it refuses to run without --guest and
on a kernel without function_graph or hist triggers. Not named bench_*.py, so `make bench`
leaves it out. Everything it sets is undone after each window. Needs root. The accept loop, the
windows, the rounds and the statistics are benchlib.py's (shared with bench_ftrace_sample.py,
standard library only): copy it beside this file into the guest.

    python3 guest_trace_overhead.py --guest --modes hist,hist-raw,events --rounds 10 --window-s 2
"""
import argparse
import functools
import os
import sys
import time

from benchlib import accept_window, overhead_rounds, start_accept_loop, stop_accept_loop, summary

T = '/sys/kernel/tracing'
FUNCTION_FILTER = ['*audit*', 'schedule_timeout', 'syscall_exit_work', 'syscall_slow_exit_work',
                   'syscall_exit_to_user_mode_prepare', 'exit_to_user_mode_prepare']
ACCEPT4_NR = 288  # x86_64


def write(path, text, append=False):
    fd = os.open(os.path.join(T, path), os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def read(path):
    with open(os.path.join(T, path)) as handle:
        return handle.read()


def available(words):
    funcs = set(line.split()[0] for line in read('available_filter_functions').splitlines() if line.strip())
    out = []
    for word in words:
        if '*' in word:
            import fnmatch
            if any(fnmatch.fnmatchcase(f, word) for f in funcs):
                out.append(word)
        elif word in funcs:
            out.append(word)
    return out


def fg_on(pid, exits):
    words = available(FUNCTION_FILTER)
    if exits:
        roots = available(['__x64_sys_accept4', 'syscall_exit_to_user_mode_prepare', 'syscall_exit_work'])
        words += roots
    for word in words:  # one word per write: tracefs list files take one at a time
        write('set_ftrace_filter', word + '\n', append=True)
    write('set_ftrace_pid', str(pid))
    write('options/funcgraph-proc', '1')
    if exits:
        write('tracing_thresh', '0')
        for root in roots:
            write('set_graph_function', root + '\n', append=True)
        write('max_graph_depth', '2')
    else:
        write('tracing_thresh', '100000')
    write('current_tracer', 'function_graph')
    write('tracing_on', '1')


def fg_off():
    write('current_tracer', 'nop')
    write('tracing_thresh', '0')
    write('max_graph_depth', '0')
    write('set_graph_function', '')
    write('set_ftrace_filter', '')
    write('set_ftrace_pid', '')
    write('options/funcgraph-proc', '0')
    write('trace', '')


HIST = {
    # the syscall events' own types (int __syscall_nr, int common_pid), as tracehist writes them
    'hist': {
        'synthetic': 'agov_lat u64 lat; int id; int pid',
        'files': ('events/syscalls/sys_enter_accept4/trigger', 'events/syscalls/sys_exit_accept4/trigger'),
        'enter': 'hist:keys=common_pid:ts0_accept4=common_timestamp.usecs if (common_pid == %d)',
        'exit': ('hist:keys=common_pid:lat_accept4=common_timestamp.usecs-$ts0_accept4:'
                 'onmatch(syscalls.sys_enter_accept4).trace(agov_lat,$lat_accept4,__syscall_nr,common_pid)'
                 ' if (common_pid == %d)'),
    },
    # raw_syscalls' own types (long id, int common_pid)
    'hist-raw': {
        'synthetic': 'agov_lat u64 lat; long id; int pid',
        'files': ('events/raw_syscalls/sys_enter/trigger', 'events/raw_syscalls/sys_exit/trigger'),
        'enter': 'hist:keys=common_pid:ts0=common_timestamp.usecs if (id == %d) && (common_pid == %%d)' % ACCEPT4_NR,
        'exit': ('hist:keys=common_pid:lat=common_timestamp.usecs-$ts0:onmatch(raw_syscalls.sys_enter)'
                 '.trace(agov_lat,$lat,id,common_pid) if (id == %d) && (common_pid == %%d)' % ACCEPT4_NR),
    },
}
HIST_TRIGGER = 'hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id,lat:size=2048'


def hist_on(recipe, pid):
    write('synthetic_events', recipe['synthetic'] + '\n', append=True)
    write('events/synthetic/agov_lat/trigger', HIST_TRIGGER)
    write(recipe['files'][0], recipe['enter'] % pid)
    write(recipe['files'][1], recipe['exit'] % pid)
    write('tracing_on', '1')


def hist_off(recipe, pid):
    """-> hits in the hist (what the sample would read once at the end)."""
    text = read('events/synthetic/agov_lat/hist')
    hits = next((int(line.split(':')[1]) for line in text.splitlines() if line.strip().startswith('Hits:')), 0)
    write(recipe['files'][1], '!' + recipe['exit'] % pid, append=True)
    write(recipe['files'][0], '!' + recipe['enter'] % pid, append=True)
    write('events/synthetic/agov_lat/trigger', '!' + HIST_TRIGGER, append=True)
    write('synthetic_events', '!' + recipe['synthetic'].split()[0] + '\n', append=True)
    return hits


def events_on(pid):
    for event in ('sys_enter_accept4', 'sys_exit_accept4'):
        write('events/syscalls/%s/filter' % event, 'common_pid == %d' % pid)
        write('events/syscalls/%s/enable' % event, '1')
    write('events/sched/sched_switch/filter', 'prev_pid == %d || next_pid == %d' % (pid, pid))
    write('events/sched/sched_switch/trigger', 'stacktrace if prev_pid == %d' % pid)
    write('events/sched/sched_switch/enable', '1')
    write('tracing_on', '1')


def events_off(pid):
    write('events/sched/sched_switch/enable', '0')
    write('events/sched/sched_switch/trigger', '!stacktrace if prev_pid == %d' % pid, append=True)
    write('events/sched/sched_switch/filter', '0')
    for event in ('sys_enter_accept4', 'sys_exit_accept4'):
        write('events/syscalls/%s/enable' % event, '0')
        write('events/syscalls/%s/filter' % event, '0')
    write('trace', '')


ON = {'fg-slow': lambda pid: fg_on(pid, False), 'fg-exits': lambda pid: fg_on(pid, True),
      'hist': functools.partial(hist_on, HIST['hist']), 'hist-raw': functools.partial(hist_on, HIST['hist-raw']),
      'events': events_on}
OFF = {'fg-slow': lambda pid: fg_off(), 'fg-exits': lambda pid: fg_off(),
       'hist': functools.partial(hist_off, HIST['hist']), 'hist-raw': functools.partial(hist_off, HIST['hist-raw']),
       'events': events_off}


def traced_window(mode, srv_pid, measure):
    """One traced middle window: the tracing set up, the window measured, the tracing taken down."""
    t0 = time.monotonic()
    ON[mode](srv_pid)
    setup = time.monotonic() - t0
    try:
        time.sleep(0.3)
        mid = measure()
    finally:
        t0 = time.monotonic()
        hits = OFF[mode](srv_pid)
    note = ' (on %.1f s, off %.1f s%s)' % (setup, time.monotonic() - t0, ', hist hits %d' % hits if hits is not None else '')
    return mid, note, True


def run_mode(mode, args, measure, srv_pid):
    ratios, wall, _invalid = overhead_rounds(measure, functools.partial(traced_window, mode, srv_pid, measure),
                                             args.rounds, label=mode + ' ')
    print('%s: accepts per CPU-second of the workload, middle window / mean of its neighbours:' % mode)
    summary('traced / untraced', ratios['traced'])
    summary('untraced / untraced (noise)', ratios['sham'])
    print('%s: accepts per wall second:' % mode)
    summary('traced / untraced', wall['traced'])
    summary('untraced / untraced (noise)', wall['sham'])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--modes', default='fg-slow,fg-exits,hist')
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--window-s', type=float, default=2.0)
    ap.add_argument('--guest', action='store_true', help='this is a throwaway guest: tracefs may be changed')
    args = ap.parse_args()
    if not args.guest:
        print('refused: run only inside a throwaway guest, with --guest')
        return 2
    if 'function_graph' not in read('available_tracers').split() or not os.path.exists(os.path.join(T, 'synthetic_events')):
        print('refused: this kernel has no function_graph or no hist triggers')
        return 2
    if read('current_tracer').strip() != 'nop':
        print('current_tracer is not nop: someone is tracing')
        return 2
    counter, stop, workers, procs = start_accept_loop()
    print('kernel %s, %d CPU(s); workload server %d + client %d; %d rounds of %.1f s windows per mode'
          % (os.uname().release, os.cpu_count(), workers[0], workers[1], args.rounds, args.window_s))
    measure = functools.partial(accept_window, counter, workers, args.window_s)
    try:
        time.sleep(2.0)
        for mode in args.modes.split(','):
            run_mode(mode, args, measure, workers[0])
    finally:
        stop_accept_loop(stop, procs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
