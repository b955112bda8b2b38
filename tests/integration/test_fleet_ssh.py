"""Ansible over real SSH to a fleet of network-namespace hosts (root).

3 hosts, each a network namespace running its own sshd, plus one host whose
address nobody holds (unreachable on purpose). The controller runs inside
the fleet's hub namespace; see tests/support/sshfleet.py.
"""
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
