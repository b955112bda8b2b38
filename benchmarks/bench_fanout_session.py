#!/usr/bin/env python3
"""Benchmark: where one fan-out session's CPU goes (issue 17, docs/scale.md). Root only.

One namespace host of tests/support/sshfleet.py (a real sshd); from the hub namespace,
``--sessions`` sessions one after the other of each variant below, the variants interleaved
per round. Per session it prints the controller's CPU (every process the session starts: the
ssh client, or the payload run locally) and the host's (sshd, its session, the login shell and
what it runs: a cpuacct cgroup holding the sshd), in milliseconds, the best of the rounds.

- ``ssh true``: the SSH session alone (key exchange, sshd, the login shell's rc files);
- ``ssh true, curve25519``: the same with ``-o KexAlgorithms=curve25519-sha256``;
- ``ssh true, warm master``: the same through an open ControlMaster (what a fleet that keeps
  ControlPersist across scheduled runs pays; the master is opened before, its CPU
  counted as the controller's);
- ``ssh python -c pass``: the session plus the host's Python start-up as the fan-out starts it;
- ``fan-out payload, local``: the fan-out's bootstrap and payload (0 s windows) run on the
  controller without ssh: interpreter, decompression, imports, the gather;
- ``fan-out payload, ssh``: the same over ssh, as diagnose_fanout sends it to one host.

``--bashrc FILE`` puts FILE over root's ~/.bashrc for the host's sshd (its own mount
namespace: a clean fleet host's rc, e.g. Debian's /usr/share/base-files/dot.bashrc), since
bash reads ~/.bashrc for every command sshd runs.

    benchmarks/bench_fanout_session.py [--sessions 20] [--rounds 3] [--bashrc FILE]
"""
import argparse
import os
import subprocess
import sys
import time

from benchlib import ROOT
from bench_fleet import Cgroup
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosegather
from ansible_collections.auditgap.fleet.plugins.plugin_utils import fanout
from tests.support.sshfleet import SSHFleet

KEX = '-o KexAlgorithms=curve25519-sha256'


def settings(fleet, host, extra=''):
    common = '-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR ' + extra
    s = fanout.host_settings(host['name'], {
        'ansible_host': host['addr'], 'ansible_user': 'root', 'ansible_ssh_private_key_file': fleet.key,
        'ansible_ssh_common_args': common, 'ansible_python_interpreter': '/usr/bin/python3'},
        {'timeout': 5, 'host_key_checking': False})
    assert 'error' not in s, s
    return s


def variants(fleet, host, control_path):
    sources = fanout.collect_sources(os.path.dirname(diagnosegather.__file__))
    params, error = diagnosegather.check_params({'audit_sample_seconds': 0.0, 'cgroup_sample_seconds': 0.0})
    assert error is None, error
    data = fanout.payload(params, fanout.build_blob(sources))
    plain = settings(fleet, host)
    ssh = fanout.command(plain)
    python = shlex_join(fanout.remote_argv(plain)[:-2] + ['-c', 'pass'])
    warm = dict(plain, control_path=control_path)
    local = dict(plain, kind='local')
    return [
        ('ssh true', ssh[:-1] + ['true'], b''),
        ('ssh true, curve25519', fanout.command(settings(fleet, host, KEX))[:-1] + ['true'], b''),
        ('ssh true, warm master', fanout.command(warm)[:-1] + ['true'], b''),
        ('ssh python -c pass', ssh[:-1] + [python], b''),
        ('fan-out payload, local', fanout.command(local), data),
        ('fan-out payload, ssh', ssh, data),
    ], len(data)


def shlex_join(argv):
    import shlex
    return ' '.join(shlex.quote(a) for a in argv)


def measure(fleet, argv, data, sessions, targets, tag, master):
    """(controller ms, host ms) per session; the warm master's CPU counts as the controller's."""
    ctl = Cgroup('agbench-sess-%d-%s' % (os.getpid(), tag))
    try:
        t0, c0 = targets.cpu_s(), -master.cpu_s()
        for _ in range(sessions):
            proc = subprocess.run(fleet.cmd(argv), input=data, capture_output=True, check=False,
                                  preexec_fn=ctl.join, timeout=60)
            if proc.returncode != 0 or (data and b'"audit_status"' not in proc.stdout):
                raise RuntimeError('%s failed (rc %d): %s %s' % (tag, proc.returncode, proc.stdout[-300:],
                                                                 proc.stderr[-300:]))
        time.sleep(0.2)    # sshd's session ends after the client sees the exit status
        return (ctl.cpu_s() + master.cpu_s() + c0) / sessions * 1000, (targets.cpu_s() - t0) / sessions * 1000
    finally:
        ctl.remove()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sessions', type=int, default=20, help='sessions per variant and round')
    parser.add_argument('--rounds', type=int, default=3, help='rounds (variants interleaved; the best is kept)')
    parser.add_argument('--bashrc', help="a file put over root's ~/.bashrc for the host's sshd (clean host)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('bench_fanout_session needs root (network namespaces, cgroups)')
    targets = Cgroup('agbench-sess-targets-%d' % os.getpid())
    master = Cgroup('agbench-sess-master-%d' % os.getpid())
    try:
        with SSHFleet(hosts=1, unreachable=0, net='10.215.0', cgroup=targets.dirs, bashrc=args.bashrc) as fleet:
            host = fleet.hosts[0]
            control_path = os.path.join(fleet.tmp, 'cm-%C')
            runs, size = variants(fleet, host, control_path)
            # the warm master: opened once, outside the measured cgroups' sessions
            argv = fanout.command(dict(settings(fleet, host), control_path=control_path))[:-1]
            subprocess.run(fleet.cmd(argv[:1] + ['-o', 'ControlPersist=600s', '-N', '-f'] + argv[1:]), stdin=subprocess.DEVNULL,
                           capture_output=True, check=True, preexec_fn=master.join, timeout=30)
            best = {}
            for rnd in range(args.rounds):
                for i, (name, argv, data) in enumerate(runs):
                    ctl_ms, tgt_ms = measure(fleet, argv, data, args.sessions, targets, '%d-%d' % (rnd, i),
                                             master)
                    if name not in best or ctl_ms + tgt_ms < sum(best[name]):
                        best[name] = (ctl_ms, tgt_ms)
            subprocess.run(fleet.cmd(fanout.command(dict(settings(fleet, host), control_path=control_path))[:-1]
                                     + ['-O', 'exit', 'true']), capture_output=True, check=False, timeout=30)
    finally:
        master.remove()
        targets.remove()
    print('payload %d bytes; bashrc %s; load average %.1f (shared machine: noisy)'
          % (size, args.bashrc or "root's own", os.getloadavg()[0]))
    print('%-26s %10s %10s %10s' % ('per session', 'ctl ms', 'host ms', 'total ms'))
    for name, _argv, _data in runs:
        ctl_ms, tgt_ms = best[name]
        print('%-26s %10.1f %10.1f %10.1f' % (name, ctl_ms, tgt_ms, ctl_ms + tgt_ms))
    return 0


if __name__ == '__main__':
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    sys.exit(main())
