# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet.json schema (``auditgap.fleet/v1``) and a small validator for it.

``FLEET_SCHEMA`` is a JSON Schema (draft 2020-12) document written as Python
data; ``docs/fleet.schema.json`` is the same document (a unit test keeps the two
equal, and checks that the ``jsonschema`` library agrees with ``errors`` here).
It covers what remediate.yml relies on: every host entry names its host, every
finding names the same host, and a remediation names a known role with only the
variables that role takes from a diagnosis (typed and bounded).

``errors(value, schema)`` is a pure interpreter of the subset of JSON Schema
the schema uses (type, enum, const, pattern, min/maxLength, minimum, maximum,
exclusiveMinimum, required, properties, additionalProperties, maxProperties,
items, maxItems, allOf, if/then, $ref to $defs). No dependency.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re

SCHEMA_NAME = 'auditgap.fleet/v1'
ROLES = ('agent_cpu', 'audit_backlog', 'audit_rules')
STATUSES = ('critical', 'warning', 'failed', 'unreachable', 'info', 'ok')
SEVERITIES = ('critical', 'warning', 'info')
NAME_MAX = 1024
# no control characters (a newline in a host name would forge report lines)
_PRINTABLE = '^[^\\u0000-\\u001f\\u007f]+$'
# an absolute cgroup path without . or .. components
CGROUP_PATH_PATTERN = '^(?!.*/\\.\\.?(/|$))/[^\\u0000-\\u001f\\u007f]*$'

_AGENT_CPU_TARGET = {
    'type': 'object', 'maxProperties': 1, 'additionalProperties': False,
    'properties': {
        'pid': {'type': ['integer', 'null'], 'minimum': 2},
        'container': {'type': 'string', 'pattern': '^/?[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$'},
        'systemd_unit': {'type': 'string', 'pattern': '^[A-Za-z0-9:_.\\\\@-]{1,255}$'},
        'cgroup_path': {'type': 'string', 'maxLength': 4096, 'pattern': CGROUP_PATH_PATTERN},
    },
}
_NARROW_ITEM = {
    'type': 'object', 'required': ['syscall'], 'additionalProperties': False,
    'properties': {
        'syscall': {'type': 'string', 'pattern': '^[a-z0-9_]{1,64}$'},
        'key': {'type': 'string', 'pattern': '^[^\\s\\u0000-\\u001f\\u007f]{1,255}$'},
        'scope': {
            'type': 'object', 'maxProperties': 1, 'additionalProperties': False,
            'properties': {name: {'type': ['string', 'integer'], 'pattern': '^[^\\s\\u0000-\\u001f\\u007f]{1,4096}$'}
                           for name in ('exe', 'uid', 'auid', 'euid', 'success')},
        },
    },
}
# the variables a diagnosis may hand each role (module_utils/diagnosis.py writes exactly these)
ROLE_VARS = {
    'agent_cpu': {
        'type': 'object', 'additionalProperties': False,
        'properties': {
            'agent_cpu_backend': {'enum': ['auto', 'docker', 'systemd', 'cgroup']},
            'agent_cpu_target': {'$ref': '#/$defs/agent_cpu_target'},
            'agent_cpu_limit_cores': {'type': 'number', 'minimum': 0.01, 'maximum': 1024},
        },
    },
    'audit_backlog': {
        'type': 'object', 'additionalProperties': False,
        'properties': {
            'audit_backlog_limit': {'type': 'integer', 'minimum': 1, 'maximum': 1048576},
            'audit_backlog_wait_time_jiffies': {'type': ['integer', 'null'], 'minimum': 0, 'maximum': 600000},
            'audit_backlog_rate_limit': {'type': ['integer', 'null'], 'minimum': 0, 'maximum': 2147483647},
        },
    },
    'audit_rules': {
        'type': 'object', 'additionalProperties': False, 'required': ['audit_rules_narrow'],
        'properties': {
            'audit_rules_narrow': {'type': 'array', 'maxItems': 64, 'items': {'$ref': '#/$defs/narrow_item'}},
        },
    },
}


def _remediation_schema():
    return {
        'type': ['object', 'null'], 'required': ['role', 'vars'], 'additionalProperties': False,
        'properties': {'role': {'enum': list(ROLES)}, 'vars': {'type': 'object'}},
        'allOf': [{'if': {'type': 'object', 'properties': {'role': {'const': role}}, 'required': ['role']},
                   'then': {'properties': {'vars': {'$ref': '#/$defs/%s_vars' % role}}}} for role in ROLES],
    }


FLEET_SCHEMA = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    '$id': 'https://auditgap.invalid/schemas/fleet.schema.json',
    'title': 'auditgap fleet.json (%s)' % SCHEMA_NAME,
    'description': 'The parts of fleet.json that remediate.yml relies on (docs/reports.md has every key). '
                   'Generated from plugins/module_utils/fleetschema.py.',
    'type': 'object',
    'required': ['schema', 'hosts'],
    'properties': {
        'schema': {'const': SCHEMA_NAME},
        'generated_at': {'type': 'string'},
        'hosts': {'type': 'array', 'items': {'$ref': '#/$defs/host_entry'}},
    },
    '$defs': {
        'host_name': {'type': 'string', 'minLength': 1, 'maxLength': NAME_MAX, 'pattern': _PRINTABLE},
        'host_entry': {
            'type': 'object', 'required': ['host', 'status', 'findings'],
            'properties': {
                'host': {'$ref': '#/$defs/host_name'},
                'status': {'enum': list(STATUSES)},
                'error': {'type': ['string', 'null']},
                'findings': {'type': 'array', 'items': {'$ref': '#/$defs/finding'}},
            },
        },
        'finding': {
            'type': 'object', 'required': ['id', 'severity'],
            'properties': {
                'id': {'type': 'string', 'pattern': '^[a-z][a-z0-9_]{0,63}$'},
                'severity': {'enum': list(SEVERITIES)},
                'host': {'$ref': '#/$defs/host_name'},
                'summary': {'type': 'string'},
                'evidence': {'type': 'object'},
                'remediation': {'$ref': '#/$defs/remediation'},
            },
        },
        'remediation': _remediation_schema(),
        'agent_cpu_target': _AGENT_CPU_TARGET,
        'narrow_item': _NARROW_ITEM,
        'agent_cpu_vars': ROLE_VARS['agent_cpu'],
        'audit_backlog_vars': ROLE_VARS['audit_backlog'],
        'audit_rules_vars': ROLE_VARS['audit_rules'],
    },
}

_TYPES = {
    'object': lambda v: isinstance(v, dict),
    'array': lambda v: isinstance(v, list),
    'string': lambda v: isinstance(v, str),
    'integer': lambda v: isinstance(v, int) and not isinstance(v, bool),
    'number': lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    'boolean': lambda v: isinstance(v, bool),
    'null': lambda v: v is None,
}


def _where(path):
    return path or '(document)'


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def errors(value, schema, path='', root=None, limit=20):
    """Error strings (``path: problem``) of ``value`` against ``schema`` (empty: valid)."""
    root = FLEET_SCHEMA if root is None else root
    out = []
    _check(value, schema, path, root, out, limit)
    return out[:limit]


def _check(value, schema, path, root, out, limit):
    if len(out) >= limit:
        return
    if '$ref' in schema:
        name = schema['$ref'].rsplit('/', 1)[-1]
        _check(value, root['$defs'][name], path, root, out, limit)
        return
    if 'type' in schema:
        types = schema['type'] if isinstance(schema['type'], list) else [schema['type']]
        if not any(_TYPES[t](value) for t in types):
            out.append('%s: %s is not %s' % (_where(path), _short(value), ' or '.join(types)))
            return
    if 'const' in schema and value != schema['const']:
        out.append('%s: %s is not %r' % (_where(path), _short(value), schema['const']))
        return
    if 'enum' in schema and (not isinstance(value, (str, int, float)) or isinstance(value, bool)
                             or value not in schema['enum']):
        out.append('%s: %s is not one of %s' % (_where(path), _short(value), ', '.join(map(str, schema['enum']))))
        return
    if isinstance(value, str):
        if len(value) < schema.get('minLength', 0):
            out.append('%s: empty string' % _where(path))
        if 'maxLength' in schema and len(value) > schema['maxLength']:
            out.append('%s: longer than %d characters' % (_where(path), schema['maxLength']))
    if isinstance(value, str) and 'pattern' in schema \
            and not re.search(schema['pattern'], value):
        out.append('%s: %s is not allowed here (pattern %s)' % (_where(path), _short(value), schema['pattern']))
    if _TYPES['number'](value):
        if 'minimum' in schema and value < schema['minimum']:
            out.append('%s: %s is below %s' % (_where(path), value, schema['minimum']))
        if 'maximum' in schema and value > schema['maximum']:
            out.append('%s: %s is above %s' % (_where(path), value, schema['maximum']))
    if isinstance(value, dict):
        _check_object(value, schema, path, root, out, limit)
    if isinstance(value, list):
        if 'maxItems' in schema and len(value) > schema['maxItems']:
            out.append('%s: more than %d items' % (_where(path), schema['maxItems']))
        if 'items' in schema:
            for index, item in enumerate(value):
                _check(item, schema['items'], '%s[%d]' % (path, index), root, out, limit)
    for sub in schema.get('allOf', ()):
        if 'if' in sub:
            if not errors(value, sub['if'], path, root, 1):
                _check(value, sub['then'], path, root, out, limit)
        else:
            _check(value, sub, path, root, out, limit)


def _check_object(value, schema, path, root, out, limit):
    for key in schema.get('required', ()):
        if key not in value:
            out.append('%s: %s is missing' % (_where(path), key))
    if 'maxProperties' in schema and len(value) > schema['maxProperties']:
        out.append('%s: at most %d key(s), got %s' % (_where(path), schema['maxProperties'], sorted(map(str, value))))
    props = schema.get('properties', {})
    for key, item in value.items():
        sub = '%s.%s' % (path, key) if path else str(key)
        if key in props:
            _check(item, props[key], sub, root, out, limit)
        elif schema.get('additionalProperties') is False:
            out.append('%s: unknown key %s (allowed: %s)' % (_where(path), _short(key), ', '.join(sorted(props))))


def fleet_errors(doc):
    """Errors of a fleet.json document: the schema, then that each finding names its entry's
    host (a finding without ``host`` belongs to its entry)."""
    found = errors(doc, FLEET_SCHEMA)
    if found or not isinstance(doc, dict):
        return found
    for index, entry in enumerate(doc.get('hosts') or []):
        for num, finding in enumerate(entry.get('findings') or []):
            if finding.get('host', entry.get('host')) != entry.get('host'):
                found.append('hosts[%d].findings[%d].host: %s is not the entry\'s host %s'
                             % (index, num, _short(finding.get('host')), _short(entry.get('host'))))
    return found


def finding_errors(finding, path='finding'):
    """Errors of one finding as remediate_findings gives them (``host`` required)."""
    found = errors(finding, FLEET_SCHEMA['$defs']['finding'], path)
    if not found and 'host' not in finding:
        found.append('%s: host is missing' % path)
    return found


def explicit_remediation_errors(item, path='remediation'):
    """Errors of one explicit remediation ``{role, vars}`` (remediate_remediations, given by the
    operator with -e): the diagnosis's variables plus ``agent_cpu_force``."""
    found = errors(item, {'type': 'object', 'required': ['role', 'vars'], 'additionalProperties': False,
                          'properties': {'role': {'enum': list(ROLES)}, 'vars': {'type': 'object'}}}, path)
    if found:
        return found
    role_vars = dict(ROLE_VARS[item['role']])
    if item['role'] == 'agent_cpu':
        role_vars['properties'] = dict(role_vars['properties'], agent_cpu_force={'type': 'boolean'})
    return errors(item['vars'], role_vars, path + '.vars')


def describe(errs, what):
    """One line: ``<what> is invalid: e1; e2; ... (N more)``."""
    shown = '; '.join(errs[:5])
    more = ' (%d more)' % (len(errs) - 5) if len(errs) > 5 else ''
    return '%s is invalid: %s%s' % (what, shown, more)
