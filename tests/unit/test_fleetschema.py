"""fleet.json's schema: docs/fleet.schema.json is FLEET_SCHEMA, real documents pass, malformed
or hostile ones fail with the path of the problem (and the jsonschema library agrees)."""
import copy
import glob
import json
import os

import jsonschema
import pytest
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import fleetschema as S
from ansible_collections.auditgap.fleet.plugins.module_utils import report as R

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'findings')


def real_doc():
    hosts = []
    for path in sorted(glob.glob(os.path.join(FIX, '*.json'))):
        with open(path) as handle:
            hosts.append(F.auditgap_host_summary(json.load(handle), os.path.basename(path)[:-5]))
    hosts.append(F.auditgap_host_summary({}, 'down', error='ssh: no route', reachable=False))
    return json.loads(R.to_json(R.fleet_document(hosts, '2026-11-25T20:00:00Z')))


def test_docs_schema_file_is_the_validators_schema(project_root):
    with open(os.path.join(project_root, 'docs', 'fleet.schema.json')) as handle:
        assert json.load(handle) == S.FLEET_SCHEMA
    jsonschema.Draft202012Validator.check_schema(S.FLEET_SCHEMA)


def test_real_documents_are_valid():
    doc = real_doc()
    assert any(f.get('remediation') for h in doc['hosts'] for f in h['findings'])
    assert S.fleet_errors(doc) == []
    assert list(jsonschema.Draft202012Validator(S.FLEET_SCHEMA).iter_errors(doc)) == []


def _first_remediation(doc, role):
    for entry in doc['hosts']:
        for finding in entry['findings']:
            if (finding.get('remediation') or {}).get('role') == role:
                return finding
    raise AssertionError(role)


def _set(path_fn):
    def make():
        doc = real_doc()
        path_fn(doc)
        return doc
    return make


BAD = [
    ('not a mapping', lambda: [1, 2], '(document): [1, 2] is not object'),
    ('other schema', _set(lambda d: d.update(schema='other/v9')), "schema: 'other/v9' is not"),
    ('hosts a mapping', _set(lambda d: d.update(hosts={'a': {}})), 'hosts: {'),
    ('host entry not a dict', _set(lambda d: d['hosts'].insert(0, 7)), 'hosts[0]: 7 is not object'),
    ('host null', _set(lambda d: d['hosts'][0].update(host=None)), 'hosts[0].host: None is not string'),
    ('host with a newline', _set(lambda d: d['hosts'][0].update(host='a\nb')), 'hosts[0].host'),
    ('finding not a dict', _set(lambda d: d['hosts'][0]['findings'].append('x')), "is not object"),
    ('finding host null', _set(lambda d: d['hosts'][0]['findings'][0].update(host=None)), 'host: None is not string'),
    ('unknown role', _set(lambda d: _first_remediation(d, 'audit_backlog')['remediation'].update(role='shell')),
     "role: 'shell' is not one of"),
    ('force from a file', _set(lambda d: _first_remediation(d, 'agent_cpu')['remediation']['vars'].update(
        agent_cpu_force=True)), 'unknown key'),
    ('cgroup path escapes', _set(lambda d: _first_remediation(d, 'agent_cpu')['remediation']['vars'].update(
        agent_cpu_target={'cgroup_path': '/a/../../etc'})), 'cgroup_path'),
    ('two targets', _set(lambda d: _first_remediation(d, 'agent_cpu')['remediation']['vars'].update(
        agent_cpu_target={'pid': 5, 'container': 'x'})), 'at most 1 key'),
    ('pid 1', _set(lambda d: _first_remediation(d, 'agent_cpu')['remediation']['vars'].update(
        agent_cpu_target={'pid': 1})), 'below 2'),
    ('limit a string', _set(lambda d: _first_remediation(d, 'agent_cpu')['remediation']['vars'].update(
        agent_cpu_limit_cores='lots')), 'is not number'),
    ('backlog 0', _set(lambda d: _first_remediation(d, 'audit_backlog')['remediation']['vars'].update(
        audit_backlog_limit=0)), 'below 1'),
    ('narrow not a list', _set(lambda d: _first_remediation(d, 'audit_rules')['remediation']['vars'].update(
        audit_rules_narrow='accept4')), 'is not array'),
    ('narrow syscall injection', _set(lambda d: _first_remediation(d, 'audit_rules')['remediation']['vars'].update(
        audit_rules_narrow=[{'syscall': 'accept4 -D'}])), 'syscall'),
]


@pytest.mark.parametrize('make,expected', [(m, e) for _n, m, e in BAD], ids=[n for n, _m, _e in BAD])
def test_bad_documents_fail_with_the_path(make, expected):
    doc = make()
    errs = S.fleet_errors(doc)
    assert errs and expected in '; '.join(errs), errs
    assert list(jsonschema.Draft202012Validator(S.FLEET_SCHEMA).iter_errors(doc))
    line = S.describe(errs, 'fleet.json')
    assert '\n' not in line and line.startswith('fleet.json is invalid: ')


def test_a_finding_naming_another_host_is_refused():
    doc = real_doc()
    entry = next(h for h in doc['hosts'] if h['findings'])
    entry['findings'][0]['host'] = 'db-01'
    assert "is not the entry's host" in '; '.join(S.fleet_errors(doc))


def test_explicit_remediations_may_force_but_stay_typed():
    assert S.explicit_remediation_errors({'role': 'agent_cpu', 'vars': {'agent_cpu_force': True,
                                                                         'agent_cpu_limit_cores': 2}}) == []
    assert S.explicit_remediation_errors({'role': 'agent_cpu', 'vars': {'agent_cpu_force': 'yes'}})
    assert S.explicit_remediation_errors({'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 8192},
                                          'hosts': 'all'})
    assert S.finding_errors(copy.deepcopy({'id': 'x', 'severity': 'info'})) == ['finding: host is missing']
