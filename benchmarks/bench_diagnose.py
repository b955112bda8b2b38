#!/usr/bin/env python3
"""Benchmark: diagnose.yml on localhost with no sampling, against two baselines
measured in the same run, interleaved round by round:

- ``ansible localhost -m ping`` (the floor of any Ansible run);
- an equivalent playbook doing the same reads with command/shell tasks
  (auditctl -s, auditctl -l, the kernel HZ, the consumer's /proc files and
  cgroup cpu files) and writing one JSON file.

Goals (issue 6): diagnose <= 2x ping; command/shell >= 3x diagnose.
Exit status 1 when a goal is missed.

    benchmarks/bench_diagnose.py [--rounds N] [--with-consumer|--no-consumer]

The run holds the kernel test lock (root), so no test changes the audit state
meanwhile. ``--with-consumer`` (default when root and no audit consumer is
registered) registers the small test consumer (tests/support/audit_consumer.py)
for the run, so both variants read a consumer's process and cgroup as on a
real host. It unregisters on exit.
"""
import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import BIN, ROOT
from ansible_collections.auditgap.fleet.plugins.module_utils import audit
from tests.support.kernel import kernel_lock as hold_kernel_lock

PING_GOAL = 2.0
SHELL_GOAL = 3.0

SHELL_PLAYBOOK = r'''
- name: The diagnose reads with command/shell tasks
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Audit status
      ansible.builtin.command: auditctl -s
      register: st
      changed_when: false
    - name: Audit rules
      ansible.builtin.command: auditctl -l
      register: rules
      changed_when: false
    - name: Kernel HZ
      ansible.builtin.shell: set -o pipefail; zcat /proc/config.gz | grep '^CONFIG_HZ='
      args:
        executable: /bin/bash
      register: hz
      changed_when: false
    - name: Consumer pid
      ansible.builtin.set_fact:
        consumer_pid: "{{ st.stdout | regex_search('pid ([0-9]+)', '\\1') | first }}"
    - name: Consumer status
      ansible.builtin.command: cat /proc/{{ consumer_pid }}/status
      register: pstatus
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: Consumer cmdline
      ansible.builtin.command: cat /proc/{{ consumer_pid }}/cmdline
      register: pcmd
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: Consumer exe
      ansible.builtin.command: readlink /proc/{{ consumer_pid }}/exe
      register: pexe
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: Consumer cgroups
      ansible.builtin.command: cat /proc/{{ consumer_pid }}/cgroup
      register: pcg
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: Mount table (where the cgroup hierarchies are)
      ansible.builtin.command: cat /proc/self/mountinfo
      register: mountinfo
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: Consumer cpu cgroup path
      ansible.builtin.set_fact:
        cpu_cg: "{{ pcg.stdout | regex_search('[0-9]+:[^:]*cpu[,:][^\\n]*', multiline=True) | default('', true) }}"
      when: consumer_pid | int > 0
    - name: cpu.stat
      ansible.builtin.shell: cat /sys/fs/cgroup/cpu{{ cpu_cg.split(':')[2] | default('/') }}/cpu.stat
      register: cpustat
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: cpu.cfs_quota_us
      ansible.builtin.shell: cat /sys/fs/cgroup/cpu{{ cpu_cg.split(':')[2] | default('/') }}/cpu.cfs_quota_us
      register: quota
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: cpu.cfs_period_us
      ansible.builtin.shell: cat /sys/fs/cgroup/cpu{{ cpu_cg.split(':')[2] | default('/') }}/cpu.cfs_period_us
      register: period
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: cpuacct.usage
      ansible.builtin.shell: cat /sys/fs/cgroup/cpuacct{{ cpu_cg.split(':')[2] | default('/') }}/cpuacct.usage
      register: usage
      changed_when: false
      failed_when: false
      when: consumer_pid | int > 0
    - name: Write the result
      ansible.builtin.copy:
        dest: "{{ out_dir }}/localhost.json"
        content: "{{ {'status': st.stdout, 'rules': rules.stdout, 'hz': hz.stdout,
                      'cpu_stat': cpustat.stdout | default(''), 'quota': quota.stdout | default('')} | to_json }}"
        mode: "0644"
'''


def audit_pid():
    """The registered audit consumer's pid, 0 when none or unreadable (netlink, else auditctl -s)."""
    pid, _reason = audit.consumer()
    return pid or 0


@contextlib.contextmanager
def kernel_lock():
    """The kernel test lock, so no test changes audit state during the measurement (root only)."""
    if os.geteuid() != 0:
        yield
        return
    with hold_kernel_lock():
        yield


@contextlib.contextmanager
def test_consumer():
    """The tests' audit consumer, registered for the block (hold the kernel lock around it)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'support', 'audit_consumer.py')],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith('ready'):
            raise RuntimeError('test consumer did not start: %r' % line)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed(cmd, env):
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError('%s failed (%d): %s %s' % (' '.join(cmd[:3]), proc.returncode,
                                                   proc.stdout[-2000:], proc.stderr[-1000:]))
    return elapsed


def measure(rounds, workdir):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    shell_pb = os.path.join(workdir, 'shell_reads.yml')
    with open(shell_pb, 'w') as handle:
        handle.write(SHELL_PLAYBOOK)
    variants = {
        'ping': [os.path.join(BIN, 'ansible'), 'localhost', '-m', 'ansible.builtin.ping'],
        'diagnose': [os.path.join(BIN, 'ansible-playbook'), os.path.join(ROOT, 'playbooks', 'diagnose.yml'),
                     '-l', 'localhost', '-e', 'diagnose_hosts=localhost',
                     '-e', 'diagnose_audit_sample_seconds=0', '-e', 'diagnose_cgroup_sample_seconds=0',
                     '-e', 'diagnose_trace=never', '-e', 'report_dir={}'.format(os.path.join(workdir, 'report'))],
        'command/shell': [os.path.join(BIN, 'ansible-playbook'), shell_pb, '-e', f'out_dir={workdir}'],
    }
    times = {name: [] for name in variants}
    for name, cmd in variants.items():  # warm-up (caches, .pyc)
        timed(cmd, env)
    for _ in range(rounds):
        for name, cmd in variants.items():
            times[name].append(timed(cmd, env))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=int(os.environ.get('BENCH_ROUNDS', '3')))
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--with-consumer', dest='consumer', action='store_true', default=None)
    group.add_argument('--no-consumer', dest='consumer', action='store_false')
    args = parser.parse_args(argv)
    if shutil.which('auditctl') is None:
        print('auditctl not found (apt-get install auditd): the command/shell baseline needs it')
        return 2
    workdir = tempfile.mkdtemp(prefix='auditgap-bench-')
    try:
        with kernel_lock():
            want_consumer = args.consumer
            if want_consumer is None:
                want_consumer = os.geteuid() == 0 and audit_pid() == 0
            if want_consumer:
                with test_consumer() as pid:
                    print('test audit consumer registered: pid %d' % pid)
                    times = measure(args.rounds, workdir)
            else:
                print('audit consumer pid: %d' % audit_pid())
                times = measure(args.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print('%-14s median %.2f s  (runs: %s)' % (name, med[name], ', '.join(f'{v:.2f}' for v in values)))
    vs_ping = med['diagnose'] / med['ping']
    vs_shell = med['command/shell'] / med['diagnose']
    ok_ping = vs_ping <= PING_GOAL
    ok_shell = vs_shell >= SHELL_GOAL
    print('diagnose / ping          = {:.2f}x (goal <= {:.1f}x): {}'.format(vs_ping, PING_GOAL, 'ok' if ok_ping else 'MISSED'))
    print('command/shell / diagnose = {:.2f}x (goal >= {:.1f}x): {}'.format(vs_shell, SHELL_GOAL, 'ok' if ok_shell else 'MISSED'))
    return 0 if (ok_ping and ok_shell) else 1


if __name__ == '__main__':
    sys.exit(main())
