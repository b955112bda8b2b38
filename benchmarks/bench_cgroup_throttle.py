#!/usr/bin/env python3
"""Benchmark: resolving cgroup_throttle's ``process_names`` over /proc with 5,000 extra processes.

Starts 5,000 extra processes (forked children of this script, blocked on a pipe;
no exec, so they cost a few pages each; each renames its comm so that no name
matches it by comm: the worst case, an exe readlink per process), then times
``procinfo.find_pids_by_name`` (what the module uses) against a baseline measured in
the same run: a bare ``os.listdir('/proc')`` plus one read of every ``comm``.
Prints both, the ratio, and exits non-zero when the goal (< 0.5 s) is missed or
the lookup is wrong. Every extra process is gone when the script ends.

    .venv/bin/python benchmarks/bench_cgroup_throttle.py [--extra 5000] [--goal 0.5]
"""
import argparse
import ctypes
import os
import signal
import sys
import time

import benchlib  # noqa: F401  (the tree on sys.path)

from ansible_collections.auditgap.fleet.plugins.module_utils import procinfo

NAMES = ['auditd', 'ids-agent', 'falco', 'no-such-process-name', 'bench-target']
TARGETS = 3
PR_SET_NAME = 15


def set_comm(name):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()), 0, 0, 0)


def baseline(proc_root='/proc'):
    """The floor: list /proc and read every comm once."""
    comms = 0
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        try:
            with open(proc_root + '/' + entry + '/comm', 'rb') as handle:
                handle.read()
            comms += 1
        except OSError:
            continue
    return comms


def spawn(count):
    """Fork ``count`` children that wait on a pipe; returns (pids, write end)."""
    read_fd, write_fd = os.pipe()
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # child: wait until the parent closes the pipe, then leave
            try:
                set_comm('bench-target' if index < TARGETS else 'bench-idle')
                os.close(write_fd)
                os.read(read_fd, 1)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(read_fd)
    return pids, write_fd


def reap(pids, write_fd):
    os.close(write_fd)
    deadline = time.time() + 30
    for pid in pids:
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG if time.time() < deadline else 0)
            except ChildProcessError:
                break
            if done:
                break
            if time.time() >= deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.001)


def best_of(fn, runs):
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--extra', type=int, default=5000)
    parser.add_argument('--goal', type=float, default=0.5, help='seconds')
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()

    pids, write_fd = spawn(args.extra)
    try:
        time.sleep(0.5)  # let the last children rename themselves
        visible = sum(1 for e in os.listdir('/proc') if e.isdigit())
        base_t, comms = best_of(baseline, args.runs)
        names = list(NAMES)
        find_t, found = best_of(lambda: procinfo.find_pids_by_name(names), args.runs)
    finally:
        reap(pids, write_fd)

    # correctness: exactly the renamed targets, nothing for an unknown name
    ok = found['bench-target'] == sorted(pids[:TARGETS]) and found['no-such-process-name'] == []
    ratio = find_t / base_t if base_t else float('inf')
    print(f'processes in /proc: {visible} ({args.extra} extra), comm files read by baseline: {comms}')
    print(f'baseline (listdir + read every comm): {base_t:.3f} s')
    print(f'find_pids_by_name({len(names)} names):          {find_t:.3f} s  (ratio {ratio:.2f}x baseline)')
    print('goal < {:.2f} s: {}; lookup correct: {}'.format(args.goal, 'met' if find_t < args.goal else 'MISSED', ok))
    return 0 if (find_t < args.goal and ok) else 1


if __name__ == '__main__':
    sys.exit(main())
