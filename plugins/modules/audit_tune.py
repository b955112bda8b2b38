#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: audit_tune
short_description: Set the audit backlog limit, backlog wait time and rate limit, live and persistently
description:
  - Applies C(backlog_limit), C(backlog_wait_time) and C(rate_limit) to the running kernel
    (netlink C(AUDIT_SET) through auditnl when available, else C(auditctl)) and writes them to
    auditgap's own rules.d file (C(-b N), C(--backlog_wait_time N), C(-r N)) so that
    C(augenrules --load) applies them at boot.
  - The rules file is written only when its content changes, atomically, with a backup of the
    previous version. The merged rules.d set is checked the way augenrules merges it, and a later
    file that overrides a value is reported in C(overridden_by).
  - When audit is immutable (C(enabled 2)) nothing is changed live; the persistent file is
    written and C(reboot_required) is true.
  - Bad input (a value out of range) fails before anything is changed. A failing live change
    rolls back the live values already set and the rules file.
version_added: "0.1.0"
author: auditgap contributors (@auditgap)
options:
  backlog_limit:
    description: Kernel audit backlog limit (records queued for the consumer); 1..1048576.
    type: int
  backlog_wait_time_jiffies:
    description:
      - How long a task waits in C(audit_log_start) when the backlog is full, in kernel jiffies;
        0..600*HZ (the kernel's own bound).
    type: int
  rate_limit:
    description: Messages per second before the kernel drops (0 = no limit); 0..2147483647.
    type: int
  rules_file:
    description: auditgap's own rules.d file. It must sort after the other files to win.
    type: path
    default: /etc/audit/rules.d/auditgap.rules
  live:
    description: Apply the values to the running kernel.
    type: bool
    default: true
  persistent:
    description: Write the values to I(rules_file).
    type: bool
    default: true
  backup:
    description: Keep a timestamped copy of I(rules_file) before changing it.
    type: bool
    default: true
  augenrules_check:
    description:
      - Run C(augenrules --check) after writing when I(rules_file) is in /etc/audit/rules.d
        (augenrules only knows that directory); its verdict is returned, nothing is loaded
        (C(augenrules --load) would also run the base file's C(-D)).
    type: bool
    default: true
notes:
  - Supports check mode and diff mode.
  - Safety - a change runs under the auditgap host lock (C(/run/auditgap/host.lock), waiting up to
    30 s for another auditgap run) and is journaled (docs/safety.md) - a failure rolls the file and
    every live setting back, and after a crash the next auditgap run does (C(recovered_from_crash)).
  - For boot time (before auditd starts) add the kernel parameter C(audit_backlog_limit=N);
    see docs/remediation.md.
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.changes
attributes:
  check_mode:
    details: Reports what would change (live settings, the rules file) and changes nothing.
  diff_mode:
    details: The rules file before and after, and the live settings that change.
'''

EXAMPLES = r'''
- name: Raise the backlog and keep the wait short
  auditgap.fleet.audit_tune:
    backlog_limit: 8192
    backlog_wait_time_jiffies: 250

- name: Persistent only (for example while audit is immutable)
  auditgap.fleet.audit_tune:
    backlog_limit: 16384
    live: false
'''

RETURN = r'''
audit_tune:
  description: What was found and done.
  returned: always
  type: dict
  contains:
    source:
      description: How live values were read and set (netlink or auditctl).
      type: str
    requested:
      description: The settings asked for (null = leave alone).
      type: dict
    before:
      description: Live values before (backlog_limit, backlog_wait_time_jiffies, rate_limit, enabled).
      type: dict
    after:
      description: Live values after (equal to before in check mode or when immutable).
      type: dict
    live_changes:
      description: Settings changed (or to change in check mode) live, name -> [old, new].
      type: dict
    immutable:
      description: Audit is locked (enabled 2); no live change was possible.
      type: bool
    rules_file:
      description: Path of the persistent file.
      type: str
    file_changed:
      description: The persistent file was (or would be) rewritten.
      type: bool
    backup_file:
      description: Backup of the previous persistent file (null when none was made).
      type: str
    effective_at_boot:
      description: Settings the merged rules.d set applies at boot (augenrules order, last wins).
      type: dict
    overridden_by:
      description: Settings a later rules.d file overrides, name -> file.
      type: dict
    augenrules_check:
      description: Output of augenrules --check (null when not run).
      type: str
    reboot_required:
      description: The persistent values differ from what runs and cannot be applied live.
      type: bool
    hz:
      description: Kernel HZ used for the wait-time bound, and where it came from.
      type: dict
    recovered_from_crash:
      description: >-
        Undo journals of auditgap runs that died (SIGKILL) which this run replayed first, one entry
        per journal {journal, module, owner_pid, since, undone, errors}; [] when none.
      type: list
      elements: dict
    restored:
      description: After a failed change, true when the file and every live setting were put back; null otherwise.
      type: bool
    restore_errors:
      description: Undo steps that failed after a failed change.
      type: list
      elements: str
'''

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, guard, kernelhz, procinfo, rulesfile

MAX_BACKLOG_LIMIT = 1048576
MAX_RATE_LIMIT = 2147483647
HEADER = ('# Managed by auditgap (audit_backlog role). Local changes are overwritten.\n'
          '# Backlog settings for the kernel audit queue; see docs/remediation.md.\n')
# live name -> the audit status field (audit.Audit.status / set)
LIVE = (
    ('backlog_limit', 'backlog_limit'),
    ('backlog_wait_time_jiffies', 'backlog_wait_time'),
    ('rate_limit', 'rate_limit'),
)
SYSTEM_RULES_DIR = '/etc/audit/rules.d'
LOCK_WAIT_S = 30


def kernel_hz():
    """(hz, source) from the kernel config, (None, 'unknown') when it does not say."""
    hz = kernelhz.detect_hz(measure=False)
    if hz['source'] == 'assumed':
        return None, 'unknown'
    return hz['value'], hz['source']


def validate(params, hz):
    errors = []
    b = params['backlog_limit']
    if b is not None and not 1 <= b <= MAX_BACKLOG_LIMIT:
        errors.append('backlog_limit %d out of range 1..%d' % (b, MAX_BACKLOG_LIMIT))
    w = params['backlog_wait_time_jiffies']
    max_wait = 600 * (hz or 1000)
    if w is not None and not 0 <= w <= max_wait:
        errors.append('backlog_wait_time_jiffies %d out of range 0..%d (600 s at HZ=%s)' % (w, max_wait, hz or '1000 assumed'))
    r = params['rate_limit']
    if r is not None and not 0 <= r <= MAX_RATE_LIMIT:
        errors.append('rate_limit %d out of range 0..%d' % (r, MAX_RATE_LIMIT))
    return errors


def live_settings(status):
    """Audit status dict (audit.Audit.status) -> {enabled, live names}."""
    out = {'enabled': status.get('enabled')}
    for name, sname in LIVE:
        out[name] = status.get(sname)
    return out


def read_live(module, client):
    """The live settings through the audit client (netlink, else auditctl); fails the task when unreadable."""
    try:
        return live_settings(client.status())
    except audit.AuditError as err:
        module.fail_json(msg=str(err))


def boot_view(rules_file, new_text):
    """(effective settings at boot, {name: overriding file}) with our file at new_text."""
    directory, ours = os.path.split(rules_file)
    files = []
    try:
        files = [(n, t) for n, t in rulesfile.read_rules_dir(directory) if n != ours]
    except OSError:
        files = []
    if ours.endswith('.rules'):
        files.append((ours, new_text))
        files.sort(key=lambda item: rulesfile.natural_key(item[0]))
    effective = rulesfile.effective_settings(files)
    mine = rulesfile.settings_in_lines(new_text.splitlines())
    overridden = {}
    for name, value in mine.items():
        if effective.get(name) != value:
            last = None
            for fname, text in files:
                if name in rulesfile.settings_in_lines(text.splitlines()):
                    last = fname
            overridden[name] = last
    return effective, overridden


def main():
    module = AnsibleModule(
        argument_spec={
            'backlog_limit': {'type': 'int'},
            'backlog_wait_time_jiffies': {'type': 'int'},
            'rate_limit': {'type': 'int'},
            'rules_file': {'type': 'path', 'default': '/etc/audit/rules.d/auditgap.rules'},
            'live': {'type': 'bool', 'default': True},
            'persistent': {'type': 'bool', 'default': True},
            'backup': {'type': 'bool', 'default': True},
            'augenrules_check': {'type': 'bool', 'default': True},
        },
        supports_check_mode=True,
    )
    p = module.params
    hz, hz_source = kernel_hz()
    requested = {n: p[n] for n, _s in LIVE}
    result = {'changed': False, 'audit_tune': {
        'source': None, 'requested': requested, 'before': None, 'after': None, 'live_changes': {},
        'immutable': False, 'rules_file': p['rules_file'], 'file_changed': False, 'backup_file': None,
        'effective_at_boot': {}, 'overridden_by': {}, 'augenrules_check': None,
        'reboot_required': False, 'hz': {'value': hz, 'source': hz_source},
        'recovered_from_crash': [], 'restored': None, 'restore_errors': []}}
    out = result['audit_tune']
    if all(v is None for v in requested.values()):
        module.fail_json(msg='nothing to do: give backlog_limit, backlog_wait_time_jiffies and/or rate_limit', **result)
    errors = validate(p, hz)
    if errors:
        module.fail_json(msg='; '.join(errors) + '; nothing changed', **result)
    rules_dir = os.path.dirname(p['rules_file'])
    if p['persistent'] and not os.path.isdir(rules_dir):
        module.fail_json(msg='rules directory %s does not exist (is auditd installed?); nothing changed' % rules_dir, **result)
    with audit.for_module(module) as client:
        guard.run_locked(module, 'audit_tune', lambda: tune(module, p, result, client), out, result, LOCK_WAIT_S)


def tune(module, p, result, client):
    """Read, compare, and (not in check mode) apply; ends the module (exit_json/fail_json)."""
    out = result['audit_tune']
    requested = out['requested']
    rules_dir = os.path.dirname(p['rules_file'])
    before = read_live(module, client)
    out['source'] = client.source
    out['before'] = before
    out['after'] = dict(before)
    out['immutable'] = before.get('enabled') == 2
    wanted = {k: v for k, v in requested.items() if v is not None}
    live_todo = {k: [before.get(k), v] for k, v in wanted.items() if before.get(k) != v} if p['live'] else {}
    warnings = []

    diffs = []
    old_text = new_text = None
    if p['persistent']:
        old_text = procinfo.read_text(p['rules_file'])
        new_text = rulesfile.render_settings_text(old_text or '', wanted, HEADER)
        out['file_changed'] = new_text != old_text
        if out['file_changed']:
            diffs.append({'before_header': p['rules_file'] if old_text is not None else '%s (absent)' % p['rules_file'],
                          'after_header': p['rules_file'], 'before': old_text or '', 'after': new_text})
        out['effective_at_boot'], out['overridden_by'] = boot_view(p['rules_file'], new_text)
        for name, fname in out['overridden_by'].items():
            warnings.append('%s in %s is overridden at boot by %s (augenrules: the last file wins); '
                            'rename %s so it sorts last' % (name, p['rules_file'], fname, os.path.basename(p['rules_file'])))

    if out['immutable']:
        if live_todo:
            warnings.append('audit is immutable (enabled 2): no live change is possible; the persistent '
                            'setting is written and takes effect after a reboot')
            out['reboot_required'] = True
        out['live_changes'] = live_todo
        live_todo = {}
    else:
        out['live_changes'] = live_todo
    if live_todo:
        diffs.append({'before_header': 'live audit settings', 'after_header': 'live audit settings',
                      'before': ''.join('%s %s\n' % (k, before.get(k)) for k in sorted(live_todo)),
                      'after': ''.join('%s %s\n' % (k, live_todo[k][1]) for k in sorted(live_todo))})
    result['changed'] = bool(live_todo) or out['file_changed']
    if module._diff and diffs:
        result['diff'] = diffs
    if module.check_mode or not result['changed']:
        for w in warnings:
            module.warn(w)
        module.exit_json(**result)

    # journaled: a failure, or a crash (replayed by the next auditgap run), puts the file
    # and every live setting back
    def apply(rg):
        if out['file_changed']:
            if p['backup'] and old_text is not None:
                out['backup_file'] = module.backup_local(p['rules_file'])
            rg.push_op('file_restore', 'restore %s' % p['rules_file'], path=p['rules_file'], text=old_text,
                       mode=0o640)
            rulesfile.write_atomic(module, p['rules_file'], new_text)
        for name, sname in LIVE:
            if name in live_todo:
                rg.push_op('audit_set', 'set %s back to %s' % (name, before[name]), fields={sname: before[name]})
                client.set(**{sname: live_todo[name][1]})

    err = guard.journaled('audit_tune', out, apply)
    if err is not None:
        module.fail_json(msg='live change failed (%s); rolled back%s' % (
            err, (' with errors: %s' % '; '.join(out['restore_errors'])) if out['restore_errors'] else ''), **result)
    out['after'] = read_live(module, client)
    mismatch = {k: out['after'].get(k) for k in live_todo if out['after'].get(k) != live_todo[k][1]}
    if mismatch:
        module.fail_json(msg='live values after the change differ from the request: %s' % mismatch, **result)
    if p['augenrules_check'] and out['file_changed'] and rules_dir.rstrip('/') == SYSTEM_RULES_DIR:
        augenrules = module.get_bin_path('augenrules')
        if augenrules:
            rc, so, se = module.run_command([augenrules, '--check'])
            out['augenrules_check'] = (so + se).strip()
            if rc != 0:
                warnings.append('augenrules --check failed: %s' % out['augenrules_check'])
    for w in warnings:
        module.warn(w)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
