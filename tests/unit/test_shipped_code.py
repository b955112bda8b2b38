"""What Ansible ships to a host with each module: the module_utils it imports, at any
depth, anywhere in a file (AnsiballZ follows imports inside functions too). The lab's
code travels with incident_lab only; Docker daemon, image and rootfs code with no module."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(ROOT, 'plugins')
PREFIX = 'ansible_collections.auditgap.fleet.plugins.module_utils'
LAB_ONLY = {'labkit', 'labworkload', 'labdocker', 'labchart'}


def _imports(path):
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module == PREFIX:
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(PREFIX + '.'):
            found.add(node.module[len(PREFIX) + 1:].split('.')[0])
    return found


def shipped(module):
    todo = _imports(os.path.join(PLUGINS, 'modules', module + '.py'))
    seen = set()
    while todo:
        name = todo.pop()
        path = os.path.join(PLUGINS, 'module_utils', name + '.py')
        if name in seen or not os.path.exists(path):
            continue
        seen.add(name)
        todo |= _imports(path)
    return seen


def test_only_incident_lab_ships_the_lab():
    modules = sorted(n[:-3] for n in os.listdir(os.path.join(PLUGINS, 'modules')) if n.endswith('.py'))
    for module in modules:
        if module != 'incident_lab':
            assert not shipped(module) & LAB_ONLY, (module, sorted(shipped(module)))
    assert {'labkit', 'labworkload', 'labdocker'} <= shipped('incident_lab')


def test_docker_daemon_and_image_code_is_not_in_dockerctl():
    from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl
    for name in ('ensure_dockerd', 'stop_dockerd', 'import_image', 'build_rootfs_tar', 'run_container',
                 'update_container_cpus'):
        assert not hasattr(dockerctl, name), name
