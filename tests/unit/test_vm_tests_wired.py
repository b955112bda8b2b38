"""Every test marked ``vm`` runs in a VM scenario: the host skips it (tests/conftest.py, the one
skip CI=true accepts), so a vm test that no molecule verify names would run nowhere."""
import ast
import glob
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def vm_marked():
    found = set()
    for path in glob.glob(os.path.join(ROOT, 'tests', 'integration', 'test_*.py')):
        for node in ast.parse(open(path).read()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                func = deco.func if isinstance(deco, ast.Call) else deco
                if isinstance(func, ast.Attribute) and func.attr == 'vm':
                    found.add('tests/integration/%s::%s' % (os.path.basename(path), node.name))
    return found


def wired():
    found = {}
    for path in glob.glob(os.path.join(ROOT, 'molecule', '*', 'verify.yml')):
        for play in yaml.safe_load(open(path)) or []:
            if str(play.get('ansible.builtin.import_playbook', '')).endswith('shared/pytest-vm.yml'):
                for test in play['vars']['pytest_vm_tests']:
                    found.setdefault(test, []).append(path.split(os.sep)[-2])
    return found


def test_every_vm_test_runs_in_a_scenario():
    marked, scenarios = vm_marked(), wired()
    assert marked, 'no vm-marked tests found: the parser is wrong'
    assert sorted(marked - set(scenarios)) == [], 'vm-marked tests no molecule verify runs'
    assert sorted(set(scenarios) - marked) == [], 'molecule verify names tests that are not vm-marked'
