"""Kernel memory of ftrace_sample's hist recipe, run inside a guest whose kernel has hist triggers
(the ftrace VM scenario's Debian 12 kernel 6.1), standard library only.

The recipe (tracehist.latency_commands) adds, for each chosen syscall, an enter and an exit
histogram keyed by task; the kernel allocates every entry of a histogram's map when its trigger
is added. This script adds the recipe for --syscalls syscalls (the first ones with syscall events,
in a private instance) with the per-task maps at the kernel's default size and at tracehist's size
for named tasks, --rounds times each, alternating, and prints how much the slab objects in use grew
while it was in place (/proc/slabinfo: active objects x object size), and MemFree beside it; the
floor beside them: the same instance and synthetic event without any trigger, and the latency
histogram alone. MemAvailable does not show it: a freed trigger's objects stay in their slab caches
and the next round reuses them.

It writes tracefs (an instance, a synthetic event, triggers) and removes all of it after each
round: a throwaway guest only; it refuses to run without --guest. Not named bench_*.py, so
`make bench` leaves it out. Needs root. The triggers are spelled here as tracehist writes them
(tests/unit/test_tracehist.py pins that text); the instance is made once (its mkdir takes tens of
seconds under emulation).

    python3 guest_hist_memory.py --guest --syscalls 20 --rounds 3
"""
import argparse
import os
import statistics
import sys
import time

T = '/sys/kernel/tracing'
INSTANCE = os.path.join(T, 'instances', 'agmem')
SYNTH = 'agmem_lat'


def write(path, text, append=True):
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def slab_active_kb():
    """Bytes of the slab caches' objects in use (active_objs x objsize, /proc/slabinfo), in KiB.
    A freed object goes back to its cache, not to MemAvailable: only this count falls with it."""
    total = 0
    with open('/proc/slabinfo') as handle:
        for line in handle:
            if line.startswith(('slabinfo', '#')):
                continue
            fields = line.split()
            total += int(fields[1]) * int(fields[3])
    return total // 1024


def used_kb():
    """-> (KiB of slab objects in use, KiB of MemFree)."""
    with open('/proc/meminfo') as handle:
        free = [int(line.split()[1]) for line in handle if line.startswith('MemFree:')][0]
    return slab_active_kb(), free


def settle():
    with open('/proc/sys/vm/drop_caches', 'w') as handle:
        handle.write('3')
    time.sleep(2)


def triggers(syscall, size):
    where = (':size=%d' % size if size else '') + ' if (common_pid == %d)' % os.getpid()
    return [('sys_enter_' + syscall, 'hist:keys=common_pid:ts0_%s=common_timestamp.usecs%s' % (syscall, where)),
            ('sys_exit_' + syscall, 'hist:keys=common_pid:lat_{sc}=common_timestamp.usecs-$ts0_{sc}:'
             'onmatch(syscalls.sys_enter_{sc}).trace({n},$lat_{sc},__syscall_nr,common_pid){w}'
             .format(sc=syscall, n=SYNTH, w=where))]


def one_round(syscalls, size):
    """-> (KiB of slab objects, KiB of free pages) the recipe took (size False: no trigger, the
    floor; size 'hist': the latency histogram alone, without the per-task maps)."""
    added = []
    try:
        write(os.path.join(T, 'synthetic_events'), '%s u64 lat; int id; int pid\n' % SYNTH)
        hist = 'hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id,lat:size=16384'
        settle()
        slab0, free0 = used_kb()
        if size is not False:
            path = os.path.join(INSTANCE, 'events', 'synthetic', SYNTH, 'trigger')
            write(path, hist)
            added.append((path, hist))
            for syscall in syscalls if size != 'hist' else ():
                for event, text in triggers(syscall, size):
                    path = os.path.join(INSTANCE, 'events', 'syscalls', event, 'trigger')
                    write(path, text)
                    added.append((path, text))
        settle()
        slab1, free1 = used_kb()
        return slab1 - slab0, free0 - free1
    finally:
        for path, text in reversed(added):
            write(path, '!' + text)
        write(os.path.join(T, 'synthetic_events'), '!%s\n' % SYNTH)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--syscalls', type=int, default=20)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--guest', action='store_true', help='this is a throwaway guest: tracefs may be changed')
    args = ap.parse_args()
    if not args.guest:
        print('refused: run only inside a throwaway guest, with --guest')
        return 2
    if not os.path.exists(os.path.join(T, 'synthetic_events')):
        print('refused: this kernel has no hist triggers')
        return 2
    names = sorted(e[len('sys_enter_'):] for e in os.listdir(os.path.join(T, 'events', 'syscalls'))
                   if e.startswith('sys_enter_'))
    chosen = names[:args.syscalls]
    print('kernel %s; %d syscalls (%s ... %s); %d rounds' % (os.uname().release, len(chosen), chosen[0], chosen[-1],
                                                          args.rounds))
    kinds = (('floor (instance + synthetic event, no trigger)', False),
             ('the latency histogram alone (size=16384)', 'hist'),
             ('per-task maps at the kernel default', None),
             ('per-task maps size=128 (named tasks)', 128))
    taken = dict((label, []) for label, _size in kinds)
    os.mkdir(INSTANCE)
    try:
        for _round in range(args.rounds):
            for label, size in kinds:
                taken[label].append(one_round(chosen, size))
    finally:
        os.rmdir(INSTANCE)
    for label, _size in kinds:
        slab = [v[0] for v in taken[label]]
        pages = [v[1] for v in taken[label]]
        print('%-48s slab objects +%6d KiB, free pages -%6d KiB (medians; rounds %s)' % (
            label, statistics.median(slab), statistics.median(pages), ', '.join('%d+%d' % v for v in taken[label])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
