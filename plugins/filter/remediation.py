# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""remediate.yml's pure parts: which fixes a host gets, and the before/after record.

Filters (``auditgap.fleet.<name>``):

- ``auditgap_fleet_findings(fleet_doc)`` -> every finding of fleet.json (checked against
  its schema first: module_utils/fleetschema.py)
- ``auditgap_remediation_plan(findings, host, only=None)`` ->
  ``{role: {vars, findings: [ids]}}`` for the remediations the findings naming exactly
  this host name (items may also be explicit remediations ``{role, vars}``, applied to
  every host); every item is checked first
- ``auditgap_remediation_items(items)`` -> the items unchanged once each is checked
- ``auditgap_remediation_host(before, plan, outcomes, after_results, host, thresholds, applied)``
  -> one host's record of remediation.json

The records become remediation.json/.md in the action ``auditgap.fleet.remediation_report``
(module_utils/report.py renders them).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis, fleetschema
from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import plain as _plain

ROLES = fleetschema.ROLES  # the order remediate.yml applies them


def auditgap_fleet_findings(fleet_doc):
    """All findings of a fleet.json document, after checking it against its schema
    (module_utils/fleetschema.py, docs/fleet.schema.json): a document that is not
    ``auditgap.fleet/v1``, a finding without its host, an unknown role or variable
    fails here, before anything is planned."""
    doc = _plain(fleet_doc)
    errs = fleetschema.fleet_errors(doc)
    if errs:
        raise AnsibleFilterError(fleetschema.describe(errs, 'fleet.json') + '; nothing planned')
    return [dict(finding, host=entry['host']) for entry in doc['hosts'] for finding in entry['findings']]


def _checked_items(findings):
    """[(item, explicit)]: remediate_findings / remediate_remediations items, each checked.
    Findings ``{id, severity, host, remediation}`` apply to their host; explicit
    remediations ``{role, vars}`` (operator input) to every host."""
    items = _plain(findings)
    if items is None:
        return []
    if not isinstance(items, list):
        raise AnsibleFilterError('remediation plan: expected a list of findings or {role, vars} items, got %s; '
                                 'nothing planned' % type(items).__name__)
    out = []
    for index, item in enumerate(items):
        where = 'item %d' % index
        explicit = isinstance(item, dict) and 'role' in item and 'id' not in item
        if explicit:
            errs = fleetschema.explicit_remediation_errors(item, where)
        else:
            errs = fleetschema.finding_errors(item, where)
        if errs:
            raise AnsibleFilterError(fleetschema.describe(errs, 'remediation plan') + '; nothing planned')
        if explicit:
            item = {'id': 'explicit:%s' % item['role'], 'severity': 'info', 'host': None, 'remediation': item}
        out.append((item, explicit))
    return out


def auditgap_remediation_items(items):
    """``items`` unchanged once each is a valid finding or explicit remediation (else AnsibleFilterError)."""
    _checked_items(items)
    return items


def auditgap_remediation_plan(findings, host, only=None):
    """``{role: {vars, findings}}`` for one host.

    Only findings naming exactly this host count; explicit remediations
    ``{role, vars}`` apply to every host. The most severe finding naming a role
    sets its vars; ``audit_rules`` narrow items from several findings are merged
    (unique by syscall+key). ``only`` restricts to some roles. Malformed items
    fail (AnsibleFilterError) before anything is planned.
    """
    plan = {}
    mine = [item for item, explicit in _checked_items(findings) if explicit or item['host'] == host]
    mine.sort(key=lambda f: diagnosis.SEVERITY_RANK.get(f.get('severity'), 3))
    for finding in mine:
        rem = finding.get('remediation')
        if not rem:
            continue
        role = rem['role']
        if only and role not in only:
            continue
        entry = plan.get(role)
        if entry is None:
            plan[role] = {'vars': dict(rem.get('vars') or {}), 'findings': [finding.get('id')]}
            sizing = (finding.get('evidence') or {}).get('sizing') if isinstance(finding.get('evidence'), dict) else None
            if isinstance(sizing, dict) and sizing.get('formula'):
                # how the finding sized these vars (docs/findings.md "Fixes sized from measurement")
                plan[role]['sizing'] = {'formula': str(sizing['formula']), 'measured': bool(sizing.get('measured')),
                                        'inputs': sizing.get('inputs') if isinstance(sizing.get('inputs'), dict) else {}}
            continue
        if finding.get('id') not in entry['findings']:
            entry['findings'].append(finding.get('id'))
        if role == 'audit_rules':
            have = entry['vars'].setdefault('audit_rules_narrow', [])
            for item in (rem.get('vars') or {}).get('audit_rules_narrow') or []:
                if not any(i.get('syscall') == item.get('syscall') and i.get('key') == item.get('key') for i in have):
                    have.append(item)
    return plan


def _brief(finding):
    if not finding:
        return None
    return {'severity': finding.get('severity'), 'summary': finding.get('summary'),
            'evidence': finding.get('evidence')}


def auditgap_remediation_host(before, plan, outcomes, after_results, host, thresholds=None, applied=False):
    """One host's before/after record.

    ``before``: the host's findings from the diagnosis; ``outcomes``:
    ``{role: {changed, failed, msg, result}}`` of the roles run;
    ``after_results``: the re-sample's registered results (any keys; each
    result's audit_status/cgroup_throttle/ftrace_sample facts are used), None
    in a dry run. ``thresholds``: a thresholds dict or the host's variables
    (``diagnose_<key>`` overrides, as the report step reads them).
    A finding is ``fixed`` when it is gone after, ``not_fixed`` when it is
    still there, ``not_remediated`` when no role ran for it, ``pending``
    in a dry run; findings only present after are ``new``.
    """
    before = [f for f in (_plain(before) or []) if isinstance(f, dict) and f.get('host') == host]
    plan = _plain(plan) or {}
    outcomes = _plain(outcomes) or {}
    after = None
    after_error = None
    if applied and after_results:
        facts = diagnosis.facts_from_results(_plain(after_results))[0]
        if 'audit_status' in facts:
            found = diagnosis.thresholds_from_vars(thresholds, ('', 'diagnose_')) if hasattr(thresholds, 'get') else {}
            after = diagnosis.evaluate(facts, host, found)[0]
        else:
            after_error = 'the re-sample gathered no audit status'
    by_role = {}
    for role, entry in plan.items():
        for fid in entry.get('findings') or []:
            by_role[fid] = role
    records = []
    after_ids = {f['id']: f for f in after or []}
    for finding in before:
        fid = finding.get('id')
        role = by_role.get(fid)
        outcome = outcomes.get(role) if role else None
        if not applied:
            status = 'pending' if role else 'not_remediated'
        elif after is None:
            status = 'unknown'
        elif fid in after_ids:
            status = 'not_fixed' if role else 'not_remediated'
        else:
            status = 'fixed'
        records.append({'id': fid, 'role': role, 'status': status,
                        'role_failed': bool(outcome and outcome.get('failed')),
                        'before': _brief(finding), 'after': _brief(after_ids.get(fid)) if after is not None else None})
    before_ids = {f.get('id') for f in before}
    for finding in after or []:
        if finding['id'] not in before_ids:
            records.append({'id': finding['id'], 'role': None, 'status': 'new', 'role_failed': False,
                            'before': None, 'after': _brief(finding)})
    remediations = []
    for role in ROLES:
        if role not in plan:
            continue
        outcome = outcomes.get(role) or {}
        remediations.append({'role': role, 'vars': plan[role].get('vars'), 'findings': plan[role].get('findings'),
                             'sizing': plan[role].get('sizing'),
                             'changed': bool(outcome.get('changed')), 'failed': bool(outcome.get('failed')),
                             'msg': outcome.get('msg'), 'result': outcome.get('result')})
    return {'host': host, 'applied': bool(applied), 'remediations': remediations, 'findings': records,
            'after_error': after_error,
            'fixed': sum(1 for r in records if r['status'] == 'fixed'),
            'not_fixed': sum(1 for r in records if r['status'] == 'not_fixed')}


class FilterModule(object):
    def filters(self):
        return {
            'auditgap_fleet_findings': auditgap_fleet_findings,
            'auditgap_remediation_items': auditgap_remediation_items,
            'auditgap_remediation_plan': auditgap_remediation_plan,
            'auditgap_remediation_host': auditgap_remediation_host,
        }
