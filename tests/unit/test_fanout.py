"""The diagnose fan-out's controller side (plugins/plugin_utils/fanout.py, action diagnose_fanout):
argv, payload, per-host settings, result parsing and the event loop, run with real local
processes (a shell script stands in for ssh where a host misbehaves). No root needed."""
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
from ansible.plugins.connection.ssh import Connection

from ansible_collections.auditgap.fleet.plugins.action import diagnose_fanout as A
from ansible_collections.auditgap.fleet.plugins.action import diagnose_report as R
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosegather
from ansible_collections.auditgap.fleet.plugins.plugin_utils import fanout as F

MODULE_UTILS = os.path.dirname(diagnosegather.__file__)
DEFAULTS = {'timeout': 10, 'host_key_checking': False, 'control_path_dir': '/tmp/cp'}


@pytest.fixture(scope='module')
def blob():
    return F.build_blob(F.collect_sources(MODULE_UTILS))


def test_payload_carries_the_gather_and_what_it_imports_never_ansible_module_utils():
    sources = F.collect_sources(MODULE_UTILS)
    names = {k.rsplit('.', 1)[1] for k in sources}
    assert {'diagnosegather', 'auditfacts', 'auditnl', 'cgroups', 'procinfo', 'dockerctl'} <= names
    for text in sources.values():
        F.module_utils_imports(text)          # raises on an ansible.module_utils import


def test_imports_nested_in_any_statement_are_found():
    """A lazy import anywhere (functions, methods, try/except/else/finally, with, loops' else,
    match cases) is part of the payload: the statements are walked, not only the top level."""
    pkg = F.PACKAGE
    src = '\n'.join([
        'def f():', '    try:', '        pass', '    except ImportError:', '        from %s import a' % pkg,
        '    else:', '        with x:', '            import %s.b' % pkg,
        '    finally:', '        if y:', '            from %s.c import z' % pkg,
        'class K:', '    def m(self):', '        while 1:', '            from %s import d, e' % pkg,
        '        for i in x:', '            pass', '        else:', '            from %s import g' % pkg,
        'match v:', '    case 1:', '        from %s import h' % pkg, ''])
    assert F.module_utils_imports(src) == {'a', 'b', 'c', 'd', 'e', 'g', 'h'}


def test_an_ansible_module_utils_import_is_refused(tmp_path):
    (tmp_path / 'x.py').write_text('from ansible.module_utils.basic import AnsibleModule\n')
    with pytest.raises(F.FanoutError, match='ansible.module_utils.basic'):
        F.collect_sources(str(tmp_path), entry='x')
    with pytest.raises(F.FanoutError, match='missing'):
        F.collect_sources(str(tmp_path), entry='missing')


def test_blob_cache_serves_the_same_blob_until_a_source_changes(tmp_path, monkeypatch):
    """The blob is built once and read back by later runs; any change of a module_util (or of
    the payload's format) builds a new one; a cache directory others can write is never read."""
    src, cache = tmp_path / 'mu', tmp_path / 'cache'
    src.mkdir()
    (src / 'x.py').write_text('from %s import y\nV = y.W\n' % F.PACKAGE)
    (src / 'y.py').write_text('W = 1\n')
    built = []
    real_build = F.build_blob
    monkeypatch.setattr(F, 'build_blob', lambda sources: built.append(sorted(sources)) or real_build(sources))
    first = F.cached_blob(str(src), entry='x', cache_dir=str(cache))
    again = F.cached_blob(str(src), entry='x', cache_dir=str(cache))
    assert len(built) == 1 and (again.tag, again.code, again.sources) == (first.tag, first.code, first.sources)
    assert oct(cache.stat().st_mode & 0o777) == '0o700'
    (src / 'y.py').write_text('W = 2\n')
    changed = F.cached_blob(str(src), entry='x', cache_dir=str(cache))
    assert len(built) == 2 and changed.code != first.code
    cache.chmod(0o777)
    F.cached_blob(str(src), entry='x', cache_dir=str(cache))
    assert len(built) == 3


def test_a_damaged_cached_blob_is_built_again(tmp_path):
    """A kept blob whose bytes are not those written (truncated, one byte changed) is never sent."""
    first = F.cached_blob(MODULE_UTILS, cache_dir=str(tmp_path))
    [path] = [p for p in tmp_path.iterdir() if p.name.startswith(F.BLOB_CACHE_PREFIX)]
    data = path.read_bytes()
    for damaged in (data[:-1] + bytes([data[-1] ^ 1]), data[:len(data) // 2]):
        path.write_bytes(damaged)
        assert F._read_blob(str(path), first.tag) is None
        again = F.cached_blob(MODULE_UTILS, cache_dir=str(tmp_path))
        assert (again.code, again.sources) == (first.code, first.sources)
        assert path.read_bytes() == data


def test_cached_blob_of_the_gather_is_the_built_one(tmp_path):
    built = F.build_blob(F.collect_sources(MODULE_UTILS))
    for _ in range(2):
        blob = F.cached_blob(MODULE_UTILS, cache_dir=str(tmp_path))
        assert (blob.tag, blob.code, blob.sources) == (built.tag, built.code, built.sources)


def _run_local(data, python=sys.executable):
    argv = F.remote_argv({'python': python, 'become': False})
    return subprocess.run(argv, input=data, capture_output=True, check=False, timeout=60)


@pytest.mark.parametrize('tag', [None, 'another-python-0'])
def test_payload_runs_from_memory_with_bytecode_or_sources(blob, tag):
    """The host's python3 runs the gather from stdin (bytecode for the same minor version, the
    sources for any other) and prints the module's result; bad parameters are its own error."""
    if tag:
        blob.tag, saved = tag, blob.tag
    try:
        out = _run_local(F.payload({'audit_sample_seconds': 0, 'cgroup_sample_seconds': 0}, blob))
        bad = _run_local(F.payload({'audit_sample_seconds': -1}, blob))
    finally:
        if tag:
            blob.tag = saved
    result = F.parse_result('local', out.returncode, out.stdout, out.stderr)
    assert set(result) >= {'audit_status', 'cgroup_throttle', 'changed'}, result
    assert result['changed'] is False and isinstance(result['audit_status']['supported'], bool)
    bad_result = F.parse_result('local', bad.returncode, bad.stdout, bad.stderr)
    assert bad_result['failed'] is True and 'sample_seconds' in bad_result['msg'], bad_result


def test_check_params_types_like_the_module():
    full, err = diagnosegather.check_params({})
    assert err is None and full['audit_sample_seconds'] == 5.0 and full['source'] == 'auto'
    for params, word in (({'audit_sample_seconds': 'x'}, 'audit_sample_seconds must be a float'),
                         ({'consumer_cgroup': 'yes'}, 'consumer_cgroup must be a bool'),
                         ({'source': 'nope'}, 'source must be one of'),
                         ({'bogus': 1}, 'unknown parameter'),
                         ([], 'must be a mapping')):
        assert word in diagnosegather.check_params(params)[1]


def test_ssh_argv_follows_ansible_order_and_connection_vars():
    hv = {'ansible_host': '10.0.0.5', 'ansible_port': '2222', 'ansible_user': 'ops',
          'ansible_ssh_private_key_file': '/k/id', 'ansible_ssh_common_args': '-o ConnectTimeout=5 -o LogLevel=ERROR',
          'ansible_ssh_timeout': 3, 'ansible_become': 'true', 'ansible_python_interpreter': '/usr/bin/python3'}
    s = F.host_settings('web1', hv, DEFAULTS)
    argv = F.command(s)
    assert argv[0] == 'ssh' and argv[-2] == '10.0.0.5'
    joined = ' '.join(argv[:-1])
    # ours before the inventory's (ssh keeps the first value): Ansible's timeout wins over common args
    assert joined.index('ConnectTimeout=3') < joined.index('ConnectTimeout=5')
    for opt in ('Port=2222', 'User="ops"', 'IdentityFile="/k/id"', 'StrictHostKeyChecking=no', 'BatchMode=yes',
                'ControlMaster=auto', 'ControlPersist=60s'):
        assert opt in argv, opt
    # Ansible's default ssh_args first, without -C (the payload is compressed already); Ansible's control path
    assert argv[1:6] == ['-T', '-o', 'ControlMaster=auto', '-o', 'ControlPersist=60s'] and '-C' not in argv
    assert argv[-5:-3] == ['-o', 'ControlPath="%s"' % Connection._create_control_path('10.0.0.5', 2222, 'ops')
                           % {'directory': '/tmp/cp'}]
    remote = shlex.split(argv[-1])
    assert remote[:6] == ['sudo', '-n', '-H', '-u', 'root', '/usr/bin/python3'] and remote[-1] == F.BOOTSTRAP


@pytest.mark.parametrize('hv, path', [
    ({'ansible_ssh_args': '-o ControlMaster=auto -o ControlPersist=30m'}, '/tmp/cp/'),      # Ansible's hash
    ({'ansible_control_path': '%(directory)s/%%h-%%r'}, '/tmp/cp/%h-%r'),
    ({'ansible_control_path_dir': '/run/cp'}, '/run/cp/'),
    ({'ansible_ssh_args': '-C'}, None),                                                    # no ControlPersist
    ({'ansible_ssh_common_args': '-o ControlPath=/x/%C'}, None),                           # the inventory's own
])
def test_control_path_is_ansibles_and_ssh_args_are_the_configured_ones(hv, path):
    """The fan-out's master is the one Ansible's tasks on the host use (and the reverse), so a
    ControlPersist set in ssh_args (e.g. longer than the interval of scheduled runs) serves both."""
    s = F.host_settings('web1', dict(hv, ansible_host='10.0.0.5', ansible_user='ops'), DEFAULTS)
    argv = F.command(s)
    paths = [a for a in argv if a.startswith('ControlPath="')]
    if path is None:
        assert paths == [], argv
    else:
        if path.endswith('/'):
            path = Connection._create_control_path('10.0.0.5', None, 'ops') % {'directory': path.rstrip('/')}
        assert paths == ['ControlPath="%s"' % path], argv
    if 'ansible_ssh_args' in hv:
        assert argv[2:2 + len(hv['ansible_ssh_args'].split()) - hv['ansible_ssh_args'].count('-C')] == [
            a for a in hv['ansible_ssh_args'].split() if a != '-C']


def test_local_connection_runs_the_payload_without_ssh():
    s = F.host_settings('localhost', {'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3'},
                        DEFAULTS)
    assert F.command(s)[:2] == ['/usr/bin/python3', '-E']


@pytest.mark.parametrize('hv, word', [
    ({'ansible_connection': 'community.docker.docker'}, 'ssh or local only'),
    ({'ansible_password': 'x'}, 'password logins'),
    ({'ansible_become': True, 'ansible_become_method': 'su'}, 'become_method su'),
    ({'ansible_become': True, 'ansible_become_password': 'x'}, 'NOPASSWD'),
    ({'ansible_port': 'http'}, 'bad connection variable'),
    ({'ansible_port': 70000}, 'bad connection variable'),
    ({'ansible_ssh_common_args': '-o "unclosed'}, 'bad connection variable'),
])
def test_hosts_the_fanout_cannot_serve_get_a_reason(hv, word):
    assert word in F.host_settings('h', hv, DEFAULTS)['error']


@pytest.mark.parametrize('rc, out, err, key, word', [
    (255, b'', b'ssh: connect to host 10.0.0.9 port 22: Connection timed out\r\n', 'unreachable', 'Connection timed out'),
    (0, b'hello', b'', 'failed', 'malformed result (not JSON)'),
    (0, b'{"audit_status": ', b'', 'failed', 'malformed result'),
    (0, b'[1, 2]', b'', 'failed', 'malformed result'),
    (0, b'', b'', 'failed', 'no result'),
    (127, b'', b'python3: not found', 'failed', 'python3: not found'),
    (1, b'{"audit_status": {"supported": true}}', b'Killed', 'failed', 'rc 1'),
])
def test_parse_result(rc, out, err, key, word):
    res = F.parse_result('ssh', rc, out, err, address='10.0.0.9')
    assert res[key] is True and word in res['msg'], res


def test_parse_result_skips_noise_before_the_json():
    res = F.parse_result('ssh', 0, b'motd line\n{"audit_status": {"supported": true}}\n', b'')
    assert res == {'audit_status': {'supported': True}, 'changed': False}


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text('#!/bin/sh\n' + body + '\n')
    path.chmod(0o755)
    return [str(path)]


def test_run_all_bounds_every_host_and_keeps_the_others(tmp_path):
    """One process per host from one loop: a good one, one that never answers (stopped at its
    timeout, its process group killed), one that floods (stopped at max_result_bytes), one that
    fails to connect (rc 255), one that cannot start; all results present, in time."""
    good = _script(tmp_path, 'good', 'cat >/dev/null; echo \'{"audit_status": {"supported": true}}\'')
    hang = _script(tmp_path, 'hang', 'sleep 30 & wait')
    flood = _script(tmp_path, 'flood', 'cat >/dev/null; yes "{}" | head -c 5000000')
    down = _script(tmp_path, 'down', 'echo "ssh: connect to host x port 22: No route to host" >&2; exit 255')
    data = b'x' * 300000          # more than a pipe holds: written as the process reads
    jobs = [F.Job('good', 'ssh', good, data, 20), F.Job('hang', 'ssh', hang, b'', 1.5),
            F.Job('flood', 'ssh', flood, data, 20), F.Job('down', 'ssh', down, b'', 20),
            F.Job('nope', 'ssh', [str(tmp_path / 'missing')], b'', 20)]
    start = time.monotonic()
    F.run_all(jobs, concurrency=2, max_result_bytes=100000)
    assert time.monotonic() - start < 15
    by = {j.host: j.result for j in jobs}
    assert by['good'] == {'audit_status': {'supported': True}, 'changed': False}
    assert by['hang']['failed'] and 'no result within 1.5 s' in by['hang']['msg']
    assert by['flood']['failed'] and 'larger than 100000 bytes' in by['flood']['msg']
    assert by['down']['unreachable'] and 'No route to host' in by['down']['msg']
    assert by['nope']['failed'] and 'cannot start' in by['nope']['msg']


def test_trace_wanted_as_the_role_decides():
    yes, no = (lambda s: True), (lambda s: False)
    assert F.trace_wanted({'audit_status': {}}, 'auto', yes) is True
    assert F.trace_wanted({'audit_status': {}}, 'auto', no) is False
    assert F.trace_wanted({'audit_status': {}}, 'always', no) is True
    assert F.trace_wanted({'audit_status': {}}, 'never', yes) is False
    assert F.trace_wanted({'unreachable': True}, 'always', yes) is False


@pytest.mark.parametrize('args, word', [
    ({'transport': 'carrier-pigeon'}, 'transport must be one of'),
    ({'trace': 'sometimes'}, 'trace must be one of'),
    ({'hosts': 'web1'}, 'hosts must be a list'),
    ({'audit_sample_seconds': 'x'}, 'audit_sample_seconds must be a number'),
    ({'cgroup_sample_seconds': float('nan')}, 'cgroup_sample_seconds must be between'),
    ({'concurrency': -1}, 'concurrency must be between'),
    ({'source': 'nope'}, 'source must be one of'),
])
def test_action_refuses_bad_arguments(args, word):
    with pytest.raises(A.AnsibleActionFail, match=word):
        A.check_args(args)


def test_the_report_reads_fanout_results_as_gather_results():
    """The same facts through either path give the same host entry and the same fleet.json."""
    facts = {'changed': False, 'audit_status': {'supported': True, 'status': {'backlog': 1, 'backlog_limit': 64}},
             'cgroup_throttle': {'supported': True, 'targets': []}}
    ansible_vars = {'diagnose_gather_result': facts}
    fanout_vars = {'diagnose_fanout_result': {'results': {'web1': facts, 'web2': {'unreachable': True}}},
                   'diagnose_gather_result': {'skipped': True, 'changed': False}}
    a, b = R.host_results(ansible_vars, 'web1'), R.host_results(fanout_vars, 'web1')
    assert a == b
    entry_a = R.host_entries([('web1', a)], {})
    entry_b = R.host_entries([('web1', b)], {})
    assert json.dumps(entry_a, sort_keys=True) == json.dumps(entry_b, sort_keys=True)
    assert R.host_results({'diagnose_fanout_result': {'skipped': True}}, 'web1') == {}


def test_concurrency_zero_is_ansibles_forks():
    assert A.check_args({})['concurrency'] == A.C.DEFAULT_FORKS
    assert A.check_args({'concurrency': 7})['concurrency'] == 7
