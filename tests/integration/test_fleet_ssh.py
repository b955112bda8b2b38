"""Ansible over real SSH to a fleet of network-namespace hosts (root).

3 hosts, each a network namespace running its own sshd, plus one host whose
address nobody holds (unreachable on purpose). The controller runs inside
the fleet's hub namespace; see tests/support/sshfleet.py.
"""
import hashlib
import json
import os
import subprocess

import pytest

from tests.support.sshfleet import sshfleet_fixture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, '.venv', 'bin')

pytestmark = pytest.mark.kernel

sshfleet = sshfleet_fixture(hosts=3, unreachable=1)


def _env():
    env = dict(os.environ)
    env['ANSIBLE_CONFIG'] = os.path.join(ROOT, 'ansible.cfg')
    env['ANSIBLE_NOCOLOR'] = '1'
    env['ANSIBLE_FORCE_COLOR'] = '0'
    return env


def _tool(name):
    path = os.path.join(VENV_BIN, name)
    return path if os.path.exists(path) else name


def test_fleet_ping_over_ssh(sshfleet):
    """Every reachable host answers over SSH; the unreachable one is reported as such."""
    res = subprocess.run(
        sshfleet.cmd([_tool('ansible'), '-i', sshfleet.inventory, 'fleet', '-m', 'ansible.builtin.ping',
                      '-o']),
        check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    out = res.stdout
    assert res.returncode == 4, (res.returncode, out, res.stderr)   # 4: some host unreachable
    for name in sshfleet.reachable:
        assert f'{name} | SUCCESS' in out, out
    for name in sshfleet.unreachable:
        assert f'{name} | UNREACHABLE' in out, out


def test_fleet_diagnose_over_ssh(sshfleet, tmp_path):
    """diagnose.yml over real SSH: the fleet report is complete, the unreachable host carries its error."""
    report_dir = tmp_path / 'reports'
    res = subprocess.run(
        sshfleet.cmd([
            _tool('ansible-playbook'), '-i', sshfleet.inventory, 'playbooks/diagnose.yml',
            '-e', f'report_dir={report_dir}',
            # Short windows and no tracing: this tests fan-out over SSH, not the kernel.
            '-e', 'diagnose_audit_sample_seconds=1',
            '-e', 'diagnose_cgroup_sample_seconds=1',
            '-e', 'diagnose_trace=never',
        ]),
        check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    fleet_json = report_dir / 'fleet.json'
    assert fleet_json.exists(), (res.returncode, res.stdout[-4000:], res.stderr[-2000:])
    fleet = json.loads(fleet_json.read_text())
    by_host = {h['host']: h for h in fleet['hosts']}
    every = sshfleet.reachable + sshfleet.unreachable
    assert sorted(by_host) == sorted(every), by_host.keys()
    assert fleet['summary']['hosts'] == len(every)
    assert fleet['summary']['unreachable'] == len(sshfleet.unreachable)
    for name in sshfleet.reachable:
        host = by_host[name]
        assert host['reachable'] is True, host
        assert host['error'] is None, host
        assert host['facts']['audit_status']['supported'] is True, host
        assert (report_dir / f'{name}.json').exists()
    for name in sshfleet.unreachable:
        host = by_host[name]
        assert host['reachable'] is False, host
        assert host['status'] == 'unreachable', host
        # ssh's own words reach the report (nobody holds the address: ARP fails).
        assert 'No route to host' in json.dumps(host['error']), host['error']
        assert name in (report_dir / 'fleet.md').read_text()


def test_blackholed_host_times_out_once(tmp_path):
    """A black-holed host (its packets vanish) is unreachable after the connect timeout, not
    refused and not retried: the case of benchmarks/bench_fleet.py and docs/scale.md."""
    from tests.support.sshfleet import SSHFleet
    with SSHFleet(hosts=1, unreachable=1, blackhole=True, net='10.215.0') as fleet:
        res = subprocess.run(
            fleet.cmd([_tool('ansible'), '-i', fleet.inventory, 'fleet', '-m', 'ansible.builtin.ping', '-o',
                       '-e', 'ansible_ssh_timeout=3']),
            check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    out = res.stdout
    assert res.returncode == 4, (res.returncode, out, res.stderr)
    assert f'{fleet.reachable[0]} | SUCCESS' in out, out
    down = [line for line in out.splitlines() if line.startswith(fleet.unreachable[0] + ' | UNREACHABLE')]
    assert down and 'timed out' in down[0], out
    assert 'No route to host' not in out


def _fanout_inventory(sshfleet, tmp_path):
    """The fleet plus the bad input of issue 17: a host name listed twice (two groups), a second
    name for the same address, a host whose "python" answers garbage and one whose answer is
    JSON with malformed facts; fleet-h1 alone asks for the trace (a host variable over the
    group's never)."""
    garbage = tmp_path / 'garbage-python'
    garbage.write_text('#!/bin/sh\ncat >/dev/null\necho "this is not a result {"\n')
    badfacts = tmp_path / 'badfacts-python'
    badfacts.write_text('#!/bin/sh\ncat >/dev/null\necho \'{"audit_status": "oops", "cgroup_throttle": 5}\'\n')
    for script in (garbage, badfacts):
        script.chmod(0o755)
    addr = {h['name']: h['addr'] for h in sshfleet.hosts}
    up = sshfleet.reachable
    lines = ['[fleet]']
    lines += ['%s ansible_host=%s%s' % (n, addr[n], ' diagnose_trace=always' if n == up[0] else '')
              for n in up + sshfleet.unreachable]
    lines += ['%s-again ansible_host=%s' % (up[0], addr[up[0]]),
              'fleet-garbage ansible_host=%s ansible_python_interpreter=%s' % (addr[up[1]], garbage),
              'fleet-badfacts ansible_host=%s ansible_python_interpreter=%s' % (addr[up[2]], badfacts),
              '', '[web]', up[1], '', '[fleet:children]', 'web', '',
              '[fleet:vars]', 'ansible_user=root', 'ansible_ssh_private_key_file=%s' % sshfleet.key,
              "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR'",
              'ansible_ssh_timeout=5', 'ansible_python_interpreter=/usr/bin/python3', 'diagnose_trace=never', '']
    path = tmp_path / 'inventory-fanout.ini'
    path.write_text('\n'.join(lines))
    return path


def test_fleet_diagnose_fanout_over_ssh(sshfleet, tmp_path):
    """diagnose.yml with diagnose_transport=fanout, in check mode: one controller task gathers every
    host over real SSH; the run finishes with every host in the report, the bad ones failed with
    their reason, the unreachable one with ssh's words, no traceback; the host that asks for the
    trace gets it through ftrace_sample (its guard, check mode) and only that host, over the
    connection the fan-out opened (Ansible's control path: one SSH login on that host)."""
    report_dir = tmp_path / 'reports'
    inventory = _fanout_inventory(sshfleet, tmp_path)
    env = dict(_env(), ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / 'cp'))   # no master of another test
    res = subprocess.run(
        sshfleet.cmd([
            _tool('ansible-playbook'), '-i', str(inventory), 'playbooks/diagnose.yml', '--check',
            '-e', f'report_dir={report_dir}', '-e', 'diagnose_transport=fanout',
            '-e', 'diagnose_audit_sample_seconds=1', '-e', 'diagnose_cgroup_sample_seconds=1',
            '-e', 'diagnose_trace_seconds=1',
        ]),
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, (res.returncode, res.stdout[-4000:], res.stderr[-2000:])
    assert 'Traceback' not in out, out[-4000:]
    # the fan-out's masters are on Ansible's control path (its hash of address, port, user): one per
    # address, the one the trace task used
    addresses = sorted({h['addr'] for h in sshfleet.hosts if h['reachable']})
    assert sorted(os.listdir(tmp_path / 'cp')) == sorted(
        hashlib.sha1(('%s-None-root' % a).encode()).hexdigest()[:10] for a in addresses)
    fleet = json.loads((report_dir / 'fleet.json').read_text())
    by_host = {h['host']: h for h in fleet['hosts']}
    up = sshfleet.reachable
    good = up + [up[0] + '-again']
    assert sorted(by_host) == sorted(good + sshfleet.unreachable + ['fleet-garbage', 'fleet-badfacts'])
    for name in good:
        host = by_host[name]
        assert host['reachable'] is True and host['error'] is None, host
        assert host['facts']['audit_status']['supported'] is True, host
    traced = [n for n in by_host if 'ftrace_sample' in (by_host[n].get('facts') or {})]
    assert traced == [up[0]], traced
    assert by_host[up[0]]['facts']['ftrace_sample']['restored'] is True, by_host[up[0]]['facts']['ftrace_sample']
    down = by_host[sshfleet.unreachable[0]]
    assert down['status'] == 'unreachable' and 'No route to host' in down['error'], down
    assert by_host['fleet-garbage']['status'] == 'failed', by_host['fleet-garbage']
    assert 'malformed result' in by_host['fleet-garbage']['error']
    assert by_host['fleet-badfacts']['status'] == 'failed', by_host['fleet-badfacts']
    # one Ansible task per host never ran for the gather: the play's recap names the first host only
    recap = out[out.rindex('PLAY RECAP'):]
    assert 'fleet-h2 ' not in recap and 'fleet-garbage' not in recap, recap
