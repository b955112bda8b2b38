"""The SSH fleet fixture after its owner was SIGKILLed (root): the next fleet's start reaps
what the dead run left (tests/support/sshfleet.py: journal, reap_stale)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import sshfleet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A fleet of one host with a live ssh session into it, in a process of its own that waits to be
# killed (the session prints "up").
OWNER = r'''
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from tests.support.sshfleet import SSHFleet
fleet = SSHFleet(hosts=1, unreachable=0, net='10.216.0').start()
host = fleet.hosts[0]
session = subprocess.Popen(fleet.cmd(['ssh', '-i', fleet.key, '-o', 'UserKnownHostsFile=/dev/null',
                            '-o', 'StrictHostKeyChecking=no', '-o', 'LogLevel=ERROR', '-o', 'BatchMode=yes',
                            '-o', 'ConnectTimeout=10', 'root@' + host['addr'], 'echo up; exec sleep 600']),
                       stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
print(session.stdout.readline() or 'ssh failed', flush=True)
time.sleep(600)
'''


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


@pytest.mark.kernel
def test_fleet_of_a_sigkilled_run_is_reaped_by_the_next_start():
    if os.geteuid() != 0:
        pytest.skip('SSH fleet needs root (network namespaces)')
    if not os.path.exists(sshfleet.SSHD):
        pytest.skip(f'{sshfleet.SSHD} missing: apt-get install openssh-server')
    owner = subprocess.Popen([sys.executable, '-c', OWNER, ROOT], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        line = owner.stdout.readline()
        assert line == 'up\n', line
        journal = os.path.join(sshfleet.JOURNAL_DIR, [n for n in os.listdir(sshfleet.JOURNAL_DIR)
                                                      if n.startswith(f'{sshfleet.PREFIX}f{owner.pid}')][0])
        with open(journal) as f:
            doc = json.load(f)
        host_ns = [ns['name'] for ns in doc['namespaces'] if not ns['name'].endswith('-hub')][0]
        # the sshd listener, its session and the session's sleep
        left = [int(p) for p in subprocess.run(['ip', 'netns', 'pids', host_ns], capture_output=True,
                                               text=True, check=True).stdout.split()]
        assert len(left) >= 3 and set(doc['sshd_pids']) <= set(left), (left, doc)
    finally:
        os.kill(owner.pid, signal.SIGKILL)     # no teardown: what a killed pytest leaves
        owner.wait()
    assert all(_alive(p) for p in left)
    assert not sshfleet.journal_stale({'owner': os.getpid(), 'owner_start': sshfleet._start_time(os.getpid())})

    sshfleet.cleanup_stale()                   # what SSHFleet.start() runs first

    deadline = time.monotonic() + 10
    while any(_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in left if _alive(p)]
    assert not os.path.exists(journal)
    assert not [ns for ns in doc['namespaces'] if os.path.exists(f"/run/netns/{ns['name']}")]
    assert not os.path.exists(doc['tmp'])


def test_only_fleets_whose_owner_is_gone_are_reaped(tmp_path):
    """A live owner's fleet is left alone; a journal whose pid was reused by another process is
    stale (pid and start time name the owner). Needs no root: journals naming no namespace."""
    me, start = os.getpid(), sshfleet._start_time(os.getpid())
    live_dir = tmp_path / 'agf-sshfleet-live'
    dead_dir = tmp_path / 'agf-sshfleet-dead'
    live_dir.mkdir()
    dead_dir.mkdir()
    live = tmp_path / 'agf-f1-live.json'
    dead = tmp_path / 'agf-f2-dead.json'
    live.write_text(json.dumps({'owner': me, 'owner_start': start, 'tmp': str(live_dir), 'namespaces': []}))
    dead.write_text(json.dumps({'owner': me, 'owner_start': start - 1, 'tmp': str(dead_dir), 'namespaces': []}))
    (tmp_path / 'agf-f3-torn.json').write_text('{"owner": ')
    assert sshfleet.reap_stale(str(tmp_path)) == [str(dead)]
    assert live.exists() and live_dir.exists()
    assert not dead.exists() and not dead_dir.exists()
