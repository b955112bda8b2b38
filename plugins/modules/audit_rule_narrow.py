#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: audit_rule_narrow
short_description: Narrow hot audit syscall rules in the rules.d file where they live
description:
  - For each item of I(narrow), finds the C(-a always,exit) rules in the rules.d files that
    audit the syscall (optionally only rules carrying I(key)) and rewrites them in place
    (backup kept, diff shown). Without I(scope) the syscall is taken out of the rule (a rule
    left without syscalls is commented out, never turned into an all-syscalls rule). With
    I(scope) the syscall moves to its own rule restricted by C(exe), C(uid), C(auid), C(euid)
    or C(success).
  - Live, only the affected rules change - each replaced rule is deleted exactly (C(auditctl -d)
    with the rule's own fields) and its replacements added. Watches (C(-w)), rules of other
    lists and every rule it does not replace stay loaded. C(auditctl -D) is never used, not even
    with a key.
  - A loaded rule that audits the syscall but is in no rules.d file is reported in
    C(unmapped) and left alone (it may belong to an agent that loads its own rules).
  - After the change the loaded rule set must equal the intended one (the syscall rules before,
    with the old rules replaced by the new ones, and every other loaded line - watches - as it
    was); otherwise the module fails.
  - Safety - the change runs under the host lock (C(/run/auditgap/host.lock), waiting up to 30 s
    for another auditgap run) and is journaled (docs/safety.md) - on any failure, and after a
    crash (the next auditgap run replays the journal), the rules files and the full loaded rule
    set read first are put back.
  - When audit is immutable (C(enabled 2)) the files are rewritten and C(reboot_required) is true.
version_added: "0.1.0"
author: auditgap contributors (@auditgap)
options:
  narrow:
    description: What to narrow.
    type: list
    elements: dict
    required: true
    suboptions:
      syscall:
        description: The hot syscall (such as C(accept4)).
        type: str
        required: true
      key:
        description: Only rules carrying this key.
        type: str
      scope:
        description:
          - Keep auditing the syscall, restricted by these fields (C(exe), C(uid), C(auid),
            C(euid), C(success)). A value may start with an operator (C(!=/usr/bin/node),
            C(>=1000)); without one it means C(=).
        type: dict
  rules_dir:
    description: The rules.d directory whose files are searched and rewritten.
    type: path
    default: /etc/audit/rules.d
  live:
    description: Change the loaded rules too.
    type: bool
    default: true
  backup:
    description: Keep a timestamped copy of each file before changing it.
    type: bool
    default: true
notes:
  - Supports check mode and diff mode.
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.changes
attributes:
  check_mode:
    details: Reports the rules it would rewrite (files and live) and changes nothing.
  diff_mode:
    details: Each rewritten rules.d file before and after; the loaded rules follow the files.
'''

EXAMPLES = r'''
- name: Stop auditing accept4 (the incident's hot syscall)
  auditgap.fleet.audit_rule_narrow:
    narrow:
      - syscall: accept4

- name: Keep accept4 audited except for the web server
  auditgap.fleet.audit_rule_narrow:
    narrow:
      - syscall: accept4
        key: net
        scope:
          exe: "!=/usr/bin/node"
'''

RETURN = r'''
audit_rule_narrow:
  description: What was found and done.
  returned: always
  type: dict
  contains:
    changes:
      description: One entry per rewritten rule line (file, line, old, new lines, syscalls).
      type: list
      elements: dict
    files_changed:
      description: Files rewritten (or to rewrite in check mode).
      type: list
      elements: str
    backups:
      description: Backup file per changed file.
      type: dict
    unmapped:
      description: Loaded rules auditing a narrowed syscall that no rules.d file holds (left alone).
      type: list
      elements: str
    live_method:
      description: Per changed rule, how it was reloaded (always C(exact)), null in check mode.
      type: list
      elements: str
    loaded_before:
      description: Loaded syscall rules before (auditctl -l text).
      type: list
      elements: str
    loaded_after:
      description: Loaded syscall rules after.
      type: list
      elements: str
    loaded_equals_intended:
      description: After the change, the loaded rules equal the intended set (null when not applied live).
      type: bool
    immutable:
      description: Audit is locked (enabled 2).
      type: bool
    reboot_required:
      description: Files changed but the loaded rules could not be (immutable).
      type: bool
    recovered_from_crash:
      description: >-
        Undo journals of auditgap runs that died (SIGKILL) which this run replayed first - one
        entry per journal {journal, module, owner_pid, since, undone, errors}; [] when none.
      type: list
      elements: dict
    restored:
      description: After a failed change, true when files and loaded rules were all put back; null otherwise.
      type: bool
    restore_errors:
      description: Undo steps that failed after a failed change.
      type: list
      elements: str
'''

import collections
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, guard
from ansible_collections.auditgap.fleet.plugins.module_utils import rulesfile as rf


LOCK_WAIT_S = 30


def loaded_rules(client):
    """(lines, rules) of the loaded audit rules, read through the audit client."""
    rules = client.rules()
    return [rule['text'] for rule in rules], rules


def multiset(rules):
    return collections.Counter(rf.canonical(r) for r in rules)


def main():
    module = AnsibleModule(
        argument_spec={
            'narrow': {'type': 'list', 'elements': 'dict', 'required': True, 'options': {
                'syscall': {'type': 'str', 'required': True},
                'key': {'type': 'str', 'no_log': False},
                'scope': {'type': 'dict'},
            }},
            'rules_dir': {'type': 'path', 'default': '/etc/audit/rules.d'},
            'live': {'type': 'bool', 'default': True},
            'backup': {'type': 'bool', 'default': True},
        },
        supports_check_mode=True,
    )
    p = module.params
    out = {'changes': [], 'files_changed': [], 'backups': {}, 'unmapped': [], 'live_method': None,
           'loaded_before': [], 'loaded_after': [], 'loaded_equals_intended': None,
           'immutable': False, 'reboot_required': False, 'recovered_from_crash': [], 'restored': None,
           'restore_errors': []}
    result = {'changed': False, 'audit_rule_narrow': out}
    try:
        specs = [rf.validate_spec({k: v for k, v in item.items() if v is not None}) for item in p['narrow']]
    except rf.RulesError as err:
        module.fail_json(msg='%s; nothing changed' % err, **result)
    if not specs:
        module.fail_json(msg='narrow is empty; nothing to do', **result)
    if not os.path.isdir(p['rules_dir']):
        module.fail_json(msg='rules directory %s does not exist; nothing changed' % p['rules_dir'], **result)

    with audit.for_module(module) as client:
        guard.run_locked(module, 'audit_rule_narrow', lambda: narrow(module, p, specs, result, client), out, result,
                         LOCK_WAIT_S)


def narrow(module, p, specs, result, client):
    out = result['audit_rule_narrow']
    files = rf.read_rules_dir(p['rules_dir'])
    new_texts = {}
    file_rules_before = []
    for name, text in files:
        file_rules_before.extend(rf.syscall_rules(text))
        new_text, changes = rf.narrow_text(text, specs)
        if changes:
            for change in changes:
                out['changes'].append({'file': os.path.join(p['rules_dir'], name), 'line': change['line'],
                                       'old': change['old'], 'new': change['new'],
                                       'syscalls': change['syscalls']})
                change['file'] = name
            new_texts[name] = (text, new_text, changes)
    out['files_changed'] = [os.path.join(p['rules_dir'], n) for n in sorted(new_texts)]

    loaded, all_loaded = [], []
    if p['live']:
        if not client.auditctl:  # the rules are changed with auditctl
            module.fail_json(msg='auditctl not found (install auditd) or set live=false; nothing changed', **result)
        try:
            out['loaded_before'], all_loaded = loaded_rules(client)
            out['immutable'] = client.status()['enabled'] == 2
        except audit.AuditError as err:
            module.fail_json(msg='%s; nothing changed' % err, **result)
        loaded = rf.loaded_syscall_rules(all_loaded)
        file_canon = {rf.canonical(r) for r in file_rules_before}
        for rule in loaded:
            if any(rf.rule_matches(rule, s) and rf.narrow_rule(rule, s) != [rule] for s in specs) \
                    and rf.canonical(rule) not in file_canon:
                out['unmapped'].append(rule['text'])
    for text in out['unmapped']:
        module.warn('loaded rule not found in any file under %s, left alone (narrow it where it is loaded): %s'
                    % (p['rules_dir'], text))

    all_changes = [c for name in sorted(new_texts) for c in new_texts[name][2]]
    loaded_canon = multiset(loaded)
    live_changes = [c for c in all_changes if loaded_canon[rf.canonical(c['old_rule'])] > 0] if p['live'] else []
    if out['immutable'] and live_changes:
        out['reboot_required'] = True
        module.warn('audit is immutable (enabled 2): rules files are rewritten, the loaded rules change after a reboot')
        live_changes = []
    result['changed'] = bool(all_changes)
    if module._diff and new_texts:
        result['diff'] = [{'before_header': os.path.join(p['rules_dir'], n), 'after_header': os.path.join(p['rules_dir'], n),
                           'before': new_texts[n][0], 'after': new_texts[n][1]} for n in sorted(new_texts)]
    if module.check_mode or not all_changes:
        module.exit_json(**result)

    # journaled: a failure or a crash at any step puts the files and the loaded rules
    # back as they were read
    def apply(rg):
        for name in sorted(new_texts):
            path = os.path.join(p['rules_dir'], name)
            if p['backup']:
                out['backups'][path] = module.backup_local(path)
            mode = os.stat(path).st_mode & 0o7777
            rg.push_op('file_restore', 'restore %s' % path, path=path, text=new_texts[name][0], mode=mode)
            rf.write_atomic(module, path, new_texts[name][1], mode)
        if live_changes:
            change_live(client, rg, live_changes, loaded, loaded_canon, file_rules_before, all_loaded, out)

    err = guard.journaled('audit_rule_narrow', out, apply)
    if err is not None:
        module.fail_json(msg='changing the rules failed: %s; %s' % (
            err, 'files and loaded rules restored' if out['restored']
            else 'restore incomplete: %s' % '; '.join(out['restore_errors'])), **result)
    module.exit_json(**result)


def change_live(client, rg, live_changes, loaded, loaded_canon, file_rules_before, all_loaded, out):
    """Delete exactly the replaced loaded rules and add the new ones; RuntimeError when the
    loaded set is not the intended one afterwards (the guard then restores it)."""
    intended = collections.Counter(loaded_canon)
    for c in live_changes:
        intended[rf.canonical(c['old_rule'])] -= 1
        for r in c['new_rules']:
            intended[rf.canonical(r)] += 1
    intended = +intended
    others_before = rf.other_lines(all_loaded)
    # as they were added: a file's spelling when a file holds the rule (auditctl -l prints exe!=X as exe=X)
    spelled = {rf.canonical(r): r for r in file_rules_before}
    rg.push_op('audit_rules_restore', 'restore the loaded audit rules (%d syscall rules)' % len(loaded),
               rules=[rf.rule_argv(dict(spelled.get(rf.canonical(r), r), flag='-a')) for r in loaded])
    methods = []
    for c in live_changes:
        client.delete_rules([rf.delete_argv(c['old_rule'])])
        rg.checkpoint()
        for r in c['new_rules']:
            client.add_rules([rf.rule_argv(dict(r, flag='-a'))])
            rg.checkpoint()
        methods.append('exact')
    out['live_method'] = methods
    out['loaded_after'], after = loaded_rules(client)
    out['loaded_equals_intended'] = (multiset(rf.loaded_syscall_rules(after)) == intended
                                     and rf.other_lines(after) == others_before)
    if not out['loaded_equals_intended']:
        raise RuntimeError('the loaded rules differ from the intended set after the change')


if __name__ == '__main__':
    main()
