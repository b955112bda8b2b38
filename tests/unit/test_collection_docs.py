"""The collection's documentation matches its code (what ansible-doc shows users).

- every module declares the attributes check_mode, diff_mode and platform with a
  support level, through the doc fragment auditgap.fleet.attributes;
- every filter has plugins/filter/<name>.yml whose options are exactly the
  filter function's parameters (input first, then the positional ones in order);
- every role's argument spec lists every default and every role variable its
  tasks read; every optional variable has a role default, except the diagnose
  thresholds (the findings' own, tests/unit/test_findings.py) and the lab's (the
  incident_lab module's).
`make test-collection` checks the same through ansible-doc on the installed copy.
"""
import glob
import importlib
import inspect
import os
import re

import pytest
import yaml

from ansible_collections.auditgap.fleet.plugins.filter import findings, remediation
from ansible_collections.auditgap.fleet.plugins.module_utils import labkit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'plugins', 'modules', '*.py')))
FILTERS = dict(findings.FilterModule().filters(), **remediation.FilterModule().filters())
ROLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'roles', '*')))


def module_doc(name):
    mod = importlib.import_module('ansible_collections.auditgap.fleet.plugins.modules.%s' % name)
    return yaml.safe_load(mod.DOCUMENTATION)


def module_attributes(name):
    """The module's attributes as ansible-doc shows them: its doc fragments merged in the
    way ansible.utils.plugin_docs.add_fragments merges them (the module's own keys win)."""
    from ansible.utils.plugin_docs import merge_fragment
    doc = module_doc(name)
    attrs = doc.get('attributes') or {}
    for slug in doc.get('extends_documentation_fragment', []):
        parts = slug.split('.')
        fragment = importlib.import_module('ansible_collections.auditgap.fleet.plugins.doc_fragments.' + parts[2])
        var = parts[3].upper() if len(parts) == 4 else 'DOCUMENTATION'
        merge_fragment(attrs, yaml.safe_load(getattr(fragment.ModuleDocFragment, var)).get('attributes') or {})
    return attrs


@pytest.mark.parametrize('name', MODULES)
def test_module_declares_attributes(name):
    doc = module_doc(name)
    assert 'auditgap.fleet.attributes' in doc.get('extends_documentation_fragment', [])
    attrs = module_attributes(name)
    for attr in ('check_mode', 'diff_mode', 'platform'):
        assert attrs.get(attr, {}).get('support') in ('full', 'partial', 'none', 'N/A'), (name, attr)
        if attrs[attr]['support'] in ('partial', 'N/A'):
            assert attrs[attr].get('details'), (name, attr, 'partial support needs details')
    assert attrs['platform'].get('platforms')


def test_state_changing_modules_support_check_and_diff_mode():
    for name in ('audit_tune', 'cpu_limit', 'audit_rule_narrow'):
        assert 'auditgap.fleet.attributes.changes' in module_doc(name)['extends_documentation_fragment'], name
        attrs = module_attributes(name)
        assert attrs['check_mode']['support'] == 'full' and attrs['diff_mode']['support'] == 'full', name
        assert attrs['check_mode']['details'] and attrs['diff_mode']['details'], name
    assert module_attributes('incident_lab')['check_mode']['support'] == 'full'


def test_action_modules_run_on_the_controller():
    """auditgap.fleet.attributes.action (listed first) gives them platform posix and no diff."""
    for name in MODULES:
        if 'auditgap.fleet.attributes.action' in module_doc(name)['extends_documentation_fragment']:
            attrs = module_attributes(name)
            assert attrs['platform']['platforms'] == 'posix' and attrs['diff_mode']['support'] == 'none', name
            assert attrs['action']['support'] == 'full', name


def test_fragment_describes_every_attribute_modules_use():
    from ansible_collections.auditgap.fleet.plugins.doc_fragments.attributes import ModuleDocFragment
    described = set(yaml.safe_load(ModuleDocFragment.DOCUMENTATION)['attributes'])
    described |= set(yaml.safe_load(ModuleDocFragment.ACTION)['attributes'])
    for name in MODULES:
        assert set(module_attributes(name)) <= described, name


def test_gather_options_documented_once_as_diagnosegather_takes_them():
    """diagnose_gather and diagnose_fanout take their gather options from one fragment, whose
    types and defaults are diagnosegather.OPTIONS'."""
    from ansible_collections.auditgap.fleet.plugins.doc_fragments.diagnose_gather import ModuleDocFragment
    from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosegather
    options = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)['options']
    assert {name: (o['type'], o['default']) for name, o in options.items()} == \
        {name: (kind.__name__, default) for name, (kind, default) in diagnosegather.OPTIONS.items()}
    for name in ('diagnose_gather', 'diagnose_fanout'):
        doc = module_doc(name)
        assert 'auditgap.fleet.diagnose_gather' in doc['extends_documentation_fragment'], name
        assert not set(doc.get('options') or {}) & set(options), name


@pytest.mark.parametrize('name', sorted(FILTERS))
def test_filter_documented_as_its_signature(name):
    path = os.path.join(ROOT, 'plugins', 'filter', name + '.yml')
    with open(path) as handle:
        data = yaml.safe_load(handle)
    doc = data['DOCUMENTATION']
    assert doc['name'] == name and doc['short_description'] and doc['description']
    assert data['EXAMPLES'].strip() and data['RETURN']['_value']['description']
    assert 'auditgap.fleet.%s' % name in data['EXAMPLES']
    params = list(inspect.signature(FILTERS[name]).parameters.values())
    options = doc.get('options') or {}
    assert set(options) == {'_input'} | {p.name for p in params[1:]}, name
    positional = [p.strip() for p in doc.get('positional', '').split(',') if p.strip()]
    assert positional == [p.name for p in params[1:]], name
    for param in params[1:]:
        required = param.default is inspect.Parameter.empty
        assert bool(options[param.name].get('required')) == required, (name, param.name)
        if not required and param.default is not None:
            assert options[param.name].get('default') == param.default, (name, param.name)


def test_no_filter_doc_without_a_filter():
    docs = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, 'plugins', 'filter', '*.yml'))}
    assert docs == set(FILTERS)


def _role_files(role, sub):
    return sorted(glob.glob(os.path.join(ROOT, 'roles', role, sub, '**', '*'), recursive=True))


@pytest.mark.parametrize('role', ROLES)
def test_role_argument_spec_covers_what_the_role_reads(role):
    with open(os.path.join(ROOT, 'roles', role, 'meta', 'argument_specs.yml')) as handle:
        spec = yaml.safe_load(handle)['argument_specs']['main']
    options = set(spec.get('options') or {})
    defaults = set(_role_defaults(role))
    assert defaults <= options, 'defaults the argument spec does not describe: %s' % sorted(defaults - options)
    unset = sorted(o for o in options - defaults if not spec['options'][o].get('required'))
    assert not unset or role in ('diagnose', 'incident_lab'), 'optional variables without a role default: %s' % unset
    text = ''
    for path in _role_files(role, 'tasks') + _role_files(role, 'templates'):
        if os.path.isfile(path):
            with open(path) as handle:
                text += handle.read()
    registered = set(re.findall(r'^\s*register:\s*(\w+)', text, re.M))
    registered |= set(re.findall(r'^\s*(\w+):', text, re.M))  # set_fact keys, module options
    prefixes = {name.split('_')[0] for name in options} | {role}
    used = {w for w in re.findall(r'(?<![.\w])([a-z][a-z0-9_]*)\b', _jinja(text)) if w.split('_')[0] in prefixes and '_' in w}
    unknown = sorted(used - options - registered)
    assert not unknown, '%s reads variables its argument spec does not describe: %s' % (role, unknown)


def _role_defaults(role):
    path = os.path.join(ROOT, 'roles', role, 'defaults', 'main.yml')
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def test_lab_role_passes_only_what_is_set_and_shows_the_module_defaults():
    """incident_lab sets no defaults: an unset variable is not passed (default(omit)), so the
    module's default applies; the argument spec shows exactly the module's defaults."""
    with open(os.path.join(ROOT, 'roles', 'incident_lab', 'meta', 'argument_specs.yml')) as handle:
        spec = yaml.safe_load(handle)['argument_specs']['main']['options']
    with open(os.path.join(ROOT, 'roles', 'incident_lab', 'tasks', 'main.yml')) as handle:
        tasks = handle.read()
    module = module_doc('incident_lab')['options']
    assert not _role_defaults('incident_lab')
    for name, option in spec.items():
        option_name = name[len('incident_lab_'):]
        assert option.get('default') == module[option_name].get('default'), name
        if option_name in labkit.LAB_DEFAULTS:  # the module's argument spec reads them there
            assert module[option_name].get('default') == labkit.LAB_DEFAULTS[option_name], name
        assert '%s: "{{ %s | default(omit) }}"' % (option_name, name) in tasks, name


def _jinja(text):
    """The Jinja expressions of a role's files: {{ ... }} and when/that/loop values."""
    parts = re.findall(r'{{(.*?)}}', text, re.S)
    parts += re.findall(r'^\s*(?:-\s*)?(?:when|that|loop|until|failed_when|changed_when):?\s*(.*)$', text, re.M)
    parts += re.findall(r'^\s+-\s+(.*)$', text, re.M)
    return '\n'.join(parts)


def test_no_tracked_symlink_is_broken():
    """ansible-galaxy collection build and antsibull-changelog release refuse broken links."""
    import subprocess
    staged = subprocess.run(['git', 'ls-files', '-s'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split('\t', 1)[1] for line in staged.splitlines() if line.startswith('120000 ')]
    broken = [p for p in links if not os.path.exists(os.path.join(ROOT, p))]
    assert not broken, 'tracked symlinks pointing nowhere (store the target in <name>.link): %s' % broken
