"""tests/support/forkrun.py: a forked module run reads its own arguments, prints its own
result and exits like the module's process would (the VM crash test relies on it)."""
import json

from tests.support.forkrun import ModuleForks


def test_a_forked_run_is_the_module_with_its_own_arguments(tmp_path):
    forks = ModuleForks('audit_tune')
    results = []
    for limit in (-5, -6):  # the second run must not see the first run's arguments
        proc = forks.start('audit_tune', {'backlog_limit': limit}, tmp_path)
        out, _err = proc.communicate(timeout=60)
        results.append((proc.returncode, json.loads(out)))
    for (rc, res), limit in zip(results, (-5, -6)):
        assert rc == 1 and res['failed'] is True, res
        assert res['invocation']['module_args']['backlog_limit'] == limit
        assert 'backlog_limit' in res['msg'], res['msg']
