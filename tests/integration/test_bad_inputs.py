"""Bad input to every module, run for real as root through the module's entry point (the
module file with an args JSON file, as Ansible runs it): each fails with a clear one-line
message, no traceback, and the host is as before (audit settings and rules, cgroup quotas,
/etc/audit, auditgap's systemd drop-ins, tracefs).

The pure layers (CLI, filters, parsers, reports) have their table in tests/unit/test_bad_inputs.py.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.support.hoststate import host_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.kernel

NAN = float('nan')
INF = float('inf')

# (module, args, a piece of the one-line message)
CASES = [
    # cpu_limit: argument checks before any lookup or write
    ('cpu_limit', {'limit_cores': 1, 'target': 'pid=1'}, 'target must be a mapping'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'cgroup_path': '/auditgap-test/../../../etc'}},
     'without . or .. components'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'cgroup_path': 'relative/path'}}, 'must be an absolute path'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'pid': 0}}, 'process id above 1'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'pid': 1}}, 'process id above 1'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'pid': 'x'}}, "unable to convert to int"),
    ('cpu_limit', {'limit_cores': 1, 'target': {'pid': 5, 'container': 'ids'}}, 'mutually exclusive'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'kubernetes': 'ds'}}, 'Supported parameters include'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'container': 'a b;rm'}}, 'not a container name'),
    ('cpu_limit', {'limit_cores': 1, 'target': {'systemd_unit': 'x\ny'}}, 'not a unit name'),
    ('cpu_limit', {'limit_cores': NAN}, 'out of range'),
    ('cpu_limit', {'limit_cores': INF}, 'out of range'),
    ('cpu_limit', {'limit_cores': 0}, 'out of range'),
    ('cpu_limit', {'limit_cores': 'lots'}, 'unable to convert to float'),
    ('cpu_limit', {'limit_cores': 1, 'period_us': 5}, 'period_us 5 out of range'),
    ('cpu_limit', {'limit_cores': 1, 'backend': 'kubernetes'}, 'value of backend must be one of'),
    ('cpu_limit', {'target': {'pid': 2}}, 'missing required arguments: limit_cores'),
    # cgroup_throttle
    ('cgroup_throttle', {'sample_seconds': NAN}, 'sample_seconds: nan must be a number'),
    ('cgroup_throttle', {'sample_seconds': INF}, 'sample_seconds: inf must be a number'),
    ('cgroup_throttle', {'sample_seconds': 1e9}, 'must be a number between 0 and 3600'),
    ('cgroup_throttle', {'cgroup_paths': ['/a/../../etc']}, 'without . or .. components'),
    ('cgroup_throttle', {'pids': [-1]}, 'not a positive integer'),
    ('cgroup_throttle', {'containers': ['$(id)']}, 'not a container id or name'),
    # audit_status / diagnose_gather
    ('audit_status', {'sample_seconds': NAN}, 'sample_seconds must be between 0 and'),
    ('audit_status', {'sample_seconds': 1e9}, 'sample_seconds must be between 0 and'),
    ('audit_status', {'sample_seconds': 1, 'record_rates': 'sometimes'}, 'record_rates'),
    ('diagnose_gather', {'audit_sample_seconds': NAN}, 'sample_seconds must be between 0 and'),
    ('diagnose_gather', {'cgroup_sample_seconds': INF}, 'sample_seconds: inf must be a number'),
    # ftrace_sample
    ('ftrace_sample', {'duration_s': NAN}, 'duration_s must be more than 0'),
    ('ftrace_sample', {'duration_s': INF}, 'duration_s must be more than 0'),
    ('ftrace_sample', {'mode': 'syscalls', 'aggregation': 'kernel'}, 'aggregation must be one of'),
    # audit_tune
    ('audit_tune', {'backlog_limit': 0}, 'out of range'),
    ('audit_tune', {'backlog_wait_time_jiffies': -1}, 'out of range'),
    ('audit_tune', {}, 'nothing to do'),
    # audit_rule_narrow
    ('audit_rule_narrow', {'narrow': []}, 'narrow is empty'),
    ('audit_rule_narrow', {'narrow': [{'syscall': 'accept4', 'scope': {'exe': '/x', 'uid': 0}}],
                           'rules_dir': '/nonexistent-auditgap-test'}, 'nothing changed'),
]


def run_module(name, args, tmp_path):
    """The module file run with an args file, as Ansible does; (rc, result, stderr)."""
    path = tmp_path / ('%s.args.json' % name)
    # NaN and infinity as Ansible's JSON carries them (Python's json writes NaN/Infinity)
    path.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, 'collections'))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'plugins', 'modules', name + '.py'), str(path)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60, check=False)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('not JSON (a traceback?): %r %r' % (proc.stdout[-2000:], proc.stderr[-2000:])) from None
    return proc.returncode, result, proc.stderr


@pytest.fixture(scope='module')
def tracefs_for_state(tracefs_root):
    return tracefs_root


@pytest.mark.parametrize('module,args,message', CASES,
                         ids=['%s-%d' % (c[0], i) for i, c in enumerate(CASES)])
def test_bad_module_input_fails_cleanly_and_changes_nothing(module, args, message, tmp_path, tracefs_for_state):
    before = host_state(tracefs_for_state)
    rc, result, stderr = run_module(module, args, tmp_path)
    after = host_state(tracefs_for_state)
    assert rc != 0 and result.get('failed') is True, result
    msg = result.get('msg', '')
    assert message in msg, msg
    assert '\n' not in msg and 'Traceback' not in msg and 'exception' not in result, result
    assert 'Traceback' not in stderr, stderr[-2000:]
    assert not result.get('changed')
    assert after == before
