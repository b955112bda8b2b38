"""Record rates from the audit multicast group, checked against what a real auditd wrote.

audit_status's sample window joins AUDIT_NLGRP_READLOG (module_utils/auditreadlog.py) and
counts the records the kernel hands to the consumer, per rule key, syscall, executable and
user. Here the consumer is Debian's auditd (tests/support/stall.py, the incident lab's code)
writing its own log; a child process under a uid nobody else uses makes a known number of
audited calls inside the window, and the counts must equal both that number and the records
in auditd's log. The reader takes nothing from auditd: lost stays 0 and auditd logs them all.
"""
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts, auditnl

from tests.support.stall import audit_stall

pytestmark = [pytest.mark.kernel]

UID = 64917           # a uid no account on the host uses: only the child matches the rules
KEY_A = 'auditgap-test-readlog-a'
KEY_B = 'auditgap-test-readlog-b'
# the calls paced in steps of 10 ms (about 10k records/s for 3000 + 1000 calls in 1.2 s)
CHILD = r'''
import os, sys, time
os.setgid(%(uid)d)
os.setuid(%(uid)d)
sys.stdout.write('ready\n'); sys.stdout.flush()
sys.stdin.readline()
step = time.monotonic()
for name, count in ((os.getppid, %(a)d), (os.getpgrp, %(b)d)):
    for i in range(count):
        name()
        if i %% 30 == 29:
            step += 0.01
            time.sleep(max(0.0, step - time.monotonic()))
sys.stdout.write('done\n'); sys.stdout.flush()
'''


def rule(syscall):
    return ['-a', 'always,exit', '-F', 'arch=b64', '-S', syscall, '-F', 'uid=%d' % UID]


def add_rule(syscall, key):
    subprocess.run(['auditctl', '-a', 'always,exit', '-F', 'arch=b64', '-S', syscall, '-F', 'uid=%d' % UID,
                    '-k', key], check=True, capture_output=True)


def delete_rule(syscall, key):
    subprocess.run(['auditctl', '-d', 'always,exit', '-F', 'arch=b64', '-S', syscall, '-F', 'uid=%d' % UID,
                    '-k', key], check=False, capture_output=True)


def logged(path, key):
    """{serial: [record types]} of the events with ``key`` in auditd's log."""
    serials = set()
    with open(path, errors='replace') as handle:
        lines = handle.readlines()
    for line in lines:
        if 'type=SYSCALL' in line and 'key="%s"' % key in line:
            serials.add(re.search(r'audit\([0-9.]+:([0-9]+)\)', line).group(1))
    events = {}
    for line in lines:
        match = re.search(r'type=(\w+) msg=audit\([0-9.]+:([0-9]+)\)', line)
        if match and match.group(2) in serials:
            events.setdefault(match.group(2), []).append(match.group(1))
    return events


def run_window(calls_a, calls_b, seconds=2.0):
    child = subprocess.Popen([sys.executable, '-c', CHILD % {'uid': UID, 'a': calls_a, 'b': calls_b}],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == 'ready'
    out = {}

    def gather():
        out['facts'] = auditfacts.gather(source='netlink', sample_seconds=seconds, sample_interval_ms=100)
    thread = threading.Thread(target=gather)
    thread.start()
    time.sleep(0.4)
    child.stdin.write('go\n')
    child.stdin.flush()
    assert child.stdout.readline().strip() == 'done'
    child.wait(timeout=30)
    thread.join(timeout=60)
    return out['facts']


def wait_logged(path, key, events, timeout_s=10.0):
    deadline = time.time() + timeout_s
    found = {}
    while time.time() < deadline:
        found = logged(path, key)
        if len(found) >= events:
            return found
        time.sleep(0.2)
    return found


def test_multicast_counts_equal_what_auditd_wrote():
    calls_a, calls_b = 3000, 1000
    with audit_stall(quota_us=None, backlog_limit=8192, rules=[rule('getppid')], key=KEY_A,
                     auditd_conf={'max_log_file': 64}) as stall:
        add_rule('getpgrp', KEY_B)
        try:
            lost_before = auditnl.get_status()['lost']
            facts = run_window(calls_a, calls_b)
            lost_after = auditnl.get_status()['lost']
            log = os.path.join(stall.workdir, 'audit.log')
            logged_a = wait_logged(log, KEY_A, calls_a)
            logged_b = wait_logged(log, KEY_B, calls_b)
        finally:
            delete_rule('getpgrp', KEY_B)
    rates = facts['sample']['record_rates']
    assert rates is not None, facts['sample']
    assert rates['complete'] and rates['overruns'] == 0
    assert lost_after == lost_before
    by_key = {row['key']: row for row in rates['by_key']}
    # every audited call in the window, exactly, and exactly what auditd logged
    assert by_key[KEY_A]['events'] == calls_a == len(logged_a)
    assert by_key[KEY_B]['events'] == calls_b == len(logged_b)
    # records per event as auditd got them (the log has no EOE: auditd ends events with it)
    per_event_logged = {len(types) for types in logged_a.values()}
    assert per_event_logged == {by_key[KEY_A]['records'] // calls_a - 1}, per_event_logged
    # the child is a top talker: its key, syscall, executable and user (other software on the
    # host may talk more)
    child = [t for t in rates['top_talkers'] if t['key'] == KEY_A]
    assert len(child) == 1, rates['top_talkers']
    assert (child[0]['syscall'], child[0]['uid'], child[0]['events']) == ('getppid', UID, calls_a)
    assert child[0]['exe'] == os.path.realpath(sys.executable)
    assert child[0]['records_per_s'] == round(child[0]['records'] / rates['seconds'], 2)
    users = {row['uid']: row for row in rates['by_user']}
    assert users[UID]['events'] == calls_a + calls_b
    syscalls = {row['syscall']: row for row in rates['by_syscall']}
    assert syscalls['getpgrp']['events'] >= calls_b
    assert rates['records_per_s'] >= (calls_a + calls_b) * 3 / rates['seconds'] * 0.99
    assert facts['sample']['lost_delta'] == 0


def test_throttled_consumer_shows_drain_gaps_and_bursts():
    """auditd at 1 ms of CPU per 250 ms: delivery pauses while records wait (the drain gaps), and it
    reads what waited in batches."""
    with audit_stall(quota_us=1000, backlog_limit=8192, rules=[rule('getppid')], key=KEY_A) as stall:
        try:
            facts = run_window(6000, 0, seconds=2.0)
        finally:
            stall.set_quota(None)
    rates = facts['sample']['record_rates']
    assert rates['drain_gap_max_ms'] >= 100, rates
    assert rates['burst_records'] and rates['burst_records'] > 0
    assert KEY_A in [row['key'] for row in rates['by_key']]
    # throttled, it reads the backlog in batches: more records per wake-up (voluntary context switches of
    # its tasks) than one event's records, what waking once per event would give (the CPU limit's sizing)
    wakeups = facts['consumer_activity']['wakeups_per_s']
    assert wakeups is not None
    assert wakeups == 0 or rates['records_per_s'] / wakeups > rates['records_per_event'], (wakeups, rates)
