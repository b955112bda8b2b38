# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Audit rules files (``/etc/audit/rules.d/*.rules``): parse, narrow, rewrite.

Pure functions on text, no I/O except :func:`read_rules_dir` and
:func:`write_atomic`. Used by the
``audit_tune`` module (backlog settings in auditgap's own rules.d file) and
the ``audit_rule_narrow`` module (narrowing hot syscall rules where they live).

A rule is parsed into a dict::

    {kind: syscall|watch|control|other, flag: -a|-A|-d, list, action,
     syscalls: [...], fields: [(name, op, value)], keys: [...], tokens: [...]}

Canonical forms (:func:`canonical`) compare a rule from a file with the same
rule as ``auditctl -l`` prints it (``-k K`` is printed as ``-F key=K``,
syscall numbers as names, ``exit,always`` as ``always,exit``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import re
import tempfile

from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import arch_label, named

_FIELD_RE = re.compile(r'^([A-Za-z_0-9]+)(!=|<=|>=|&=|=|<|>|&)(.*)$')
_LISTS = ('exit', 'task', 'user', 'exclude', 'filesystem', 'io_uring', 'entry')
_ACTIONS = ('always', 'never')

# Backlog settings in a rules file: name -> auditctl option
SETTING_OPTIONS = (
    ('backlog_limit', '-b'),
    ('backlog_wait_time_jiffies', '--backlog_wait_time'),
    ('rate_limit', '-r'),
)
_OPTION_SETTING = {opt: name for name, opt in SETTING_OPTIONS}
SCOPE_FIELDS = ('exe', 'uid', 'auid', 'euid', 'success')
_SCOPE_OPS = ('!=', '<=', '>=', '=', '<', '>')


class RulesError(ValueError):
    """A rules line or narrowing request that cannot be handled."""


def split_line(line):
    """Tokens of one rules line, [] for blank/comment.

    ``auditctl -R`` splits lines on whitespace without shell quoting, so
    this does too."""
    stripped = line.strip()
    if not stripped or stripped.startswith('#'):
        return []
    return stripped.split()


def parse_field(text):
    match = _FIELD_RE.match(text)
    if not match:
        raise RulesError('cannot parse field %r' % text)
    return (match.group(1), match.group(2), match.group(3))


def parse_rule(line):
    """Parse one line; None for blank lines and comments."""
    tokens = split_line(line)
    if not tokens:
        return None
    rule = {'kind': 'other', 'flag': None, 'list': None, 'action': None,
            'list_first': False, 'syscalls': [], 'fields': [], 'keys': [],
            'tokens': tokens, 'text': line.strip()}
    first = tokens[0]
    if first in ('-a', '-A', '-d'):
        rule['kind'] = 'syscall'
        rule['flag'] = first
    elif first == '-w' or first == '-W':
        rule['kind'] = 'watch'
        return rule
    elif first in ('-b', '--backlog_wait_time', '-r', '-e', '-f', '-D',
                   '--loginuid-immutable', '-i', '-c', '--reset-lost'):
        rule['kind'] = 'control'
        return rule
    else:
        return rule
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        val = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok in ('-a', '-A', '-d'):
            if val is None:
                raise RulesError('%s needs list,action in %r' % (tok, line))
            parts = val.split(',')
            if len(parts) != 2:
                raise RulesError('bad list,action %r in %r' % (val, line))
            if parts[0] in _ACTIONS:
                rule['action'], rule['list'] = parts
            else:
                rule['list'], rule['action'] = parts
                rule['list_first'] = True
            i += 2
        elif tok == '-S':
            if val is None:
                raise RulesError('-S needs a syscall in %r' % line)
            rule['syscalls'].extend(s for s in val.split(',') if s)
            i += 2
        elif tok == '-F':
            if val is None:
                raise RulesError('-F needs a field in %r' % line)
            name, op, value = parse_field(val)
            if name == 'key' and op == '=':
                rule['keys'].append(value)
            else:
                rule['fields'].append((name, op, value))
            i += 2
        elif tok == '-k':
            if val is None:
                raise RulesError('-k needs a key in %r' % line)
            rule['keys'].append(val)
            i += 2
        elif tok == '-C':
            rule['fields'].append(('-C', '', val))
            i += 2
        else:
            raise RulesError('unsupported option %r in rule %r' % (tok, line))
    if rule['action'] not in _ACTIONS or rule['list'] not in _LISTS:
        raise RulesError('bad list/action in %r' % line)
    return rule


def syscall_rules(text):
    """The syscall rules (-a/-A) of a rules.d text, parsed; other lines are skipped."""
    rules = []
    for line in text.splitlines():
        try:
            rule = parse_rule(line)
        except RulesError:
            continue
        if rule and rule['kind'] == 'syscall' and rule['flag'] in ('-a', '-A'):
            rules.append(rule)
    return rules


def syscall_names(rule, machine=None):
    """The rule's syscalls, numbers named with the table of its arch on a host of ``machine``
    (uname -m, default this host: ``-F arch=b64`` is aarch64 on aarch64)."""
    arch = [value for name, _op, value in rule['fields'] if name == 'arch']
    return named(rule['syscalls'], arch[0] if arch else None, machine)


def canonical(rule, machine=None):
    """Hashable form for comparing rules regardless of spelling.

    Syscall numbers compare as names (``syscall_names``). ``exe`` fields
    compare without their operator: auditctl 3.0 prints ``exe!=X`` as
    ``exe=X``.
    """
    syscalls = tuple(sorted(set(syscall_names(rule, machine))))
    fields = []
    for name, op, value in rule['fields']:
        if name == 'exe':
            op = '~'
        elif name == 'arch':
            value = arch_label(value)  # -F arch=x86_64 loads as b64
        fields.append((name, op, value))
    return (rule['list'], rule['action'], syscalls,
            tuple(sorted(fields)), tuple(sorted(rule['keys'])))


def render_rule(rule):
    """One rules line for a (possibly modified) syscall rule."""
    la = [rule['list'], rule['action']] if rule['list_first'] else [rule['action'], rule['list']]
    out = [rule['flag'] or '-a', ','.join(la)]
    arch = [f for f in rule['fields'] if f[0] == 'arch']
    rest = [f for f in rule['fields'] if f[0] != 'arch']
    for name, op, value in arch:
        out += ['-F', '%s%s%s' % (name, op, value)]
    if rule['syscalls']:
        out += ['-S', ','.join(rule['syscalls'])]
    for name, op, value in rest:
        if name == '-C':
            out += ['-C', value]
        else:
            out += ['-F', '%s%s%s' % (name, op, value)]
    for key in rule['keys']:
        out += ['-k', key]
    return ' '.join(out)


def rule_argv(rule):
    """auditctl arguments adding this rule (list, no shell)."""
    return render_rule(rule).split()


def _copy(rule):
    new = dict(rule)
    new['syscalls'] = list(rule['syscalls'])
    new['fields'] = list(rule['fields'])
    new['keys'] = list(rule['keys'])
    return new


def parse_scope(scope):
    """``{exe|uid|auid|euid|success: value}`` -> [(name, op, value)].

    A value may start with an operator (``!=/usr/bin/node``, ``>=1000``);
    without one it means ``=``. ``success`` takes 0/1 (or yes/no/true/false).
    """
    if not scope:
        return []
    if not isinstance(scope, dict):
        raise RulesError('scope must be a mapping such as {exe: /usr/bin/x}, got %r' % (scope,))
    out = []
    for name in sorted(scope):
        if name not in SCOPE_FIELDS:
            raise RulesError('unsupported scope field %r (allowed: %s)' % (name, ', '.join(SCOPE_FIELDS)))
        raw = scope[name]
        if isinstance(raw, bool):
            raw = '1' if raw else '0'
        raw = str(raw).strip()
        op = '='
        for cand in _SCOPE_OPS:
            if raw.startswith(cand):
                op, raw = cand, raw[len(cand):].strip()
                break
        if not raw or re.search(r'[\s\'"\\]', raw):
            raise RulesError('bad value for scope %s: %r' % (name, scope[name]))
        if name == 'success':
            low = raw.lower()
            if low in ('1', 'yes', 'true'):
                raw = '1'
            elif low in ('0', 'no', 'false'):
                raw = '0'
            else:
                raise RulesError('scope success must be 0 or 1, got %r' % scope[name])
            if op not in ('=', '!='):
                raise RulesError('scope success takes = or !=')
        elif name == 'exe':
            if op not in ('=', '!=') or not raw.startswith('/'):
                raise RulesError('scope exe must be an absolute path with = or !=, got %r' % scope[name])
        elif not re.match(r'^-?\d+$', raw) and raw != 'unset':
            raise RulesError('scope %s must be a number, got %r' % (name, scope[name]))
        out.append((name, op, raw))
    return out


def validate_spec(spec):
    """Normalise one ``audit_rules_narrow`` item; raises RulesError."""
    if not isinstance(spec, dict):
        raise RulesError('each narrow item must be a mapping {syscall, key?, scope?}, got %r' % (spec,))
    unknown = set(spec) - {'syscall', 'key', 'scope'}
    if unknown:
        raise RulesError('unknown narrow item keys: %s' % ', '.join(sorted(unknown)))
    syscall = str(spec.get('syscall') or '').strip()
    if not re.match(r'^[a-z0-9_]+$', syscall) or syscall == 'all':
        raise RulesError('narrow item needs a syscall name (such as accept4), got %r' % spec.get('syscall'))
    key = spec.get('key')
    if key is not None:
        key = str(key)
        if not key or re.search(r'[\s\'"\\]', key):
            raise RulesError('bad key %r' % spec.get('key'))
    return {'syscall': syscall, 'key': key, 'scope': parse_scope(spec.get('scope'))}


def rule_matches(rule, spec, machine=None):
    """Does narrowing ``spec`` apply to this rule?"""
    if rule is None or rule['kind'] != 'syscall' or rule['flag'] == '-d':
        return False
    if rule['list'] != 'exit' or rule['action'] != 'always':
        return False
    if spec['syscall'] not in syscall_names(rule, machine):
        return False
    return not (spec['key'] is not None and spec['key'] not in rule['keys'])


def narrow_rule(rule, spec, machine=None):
    """Rules replacing ``rule`` once ``spec`` is applied.

    Without scope the syscall leaves the rule; if it was the only one, the
    rule goes (returns []): a rule without -S would audit every syscall.
    With scope the syscall leaves the rule and comes back in its own rule
    with the scope fields (replacing fields of the same name). Returns the
    input unchanged (one element, same canonical form) when already narrow.
    """
    names = dict(zip(rule['syscalls'], syscall_names(rule, machine)))
    syscall = spec['syscall']
    scope = spec['scope']
    if scope:
        scope_names = {f[0] for f in scope}
        if rule['syscalls'] and all(names[s] == syscall for s in rule['syscalls']):
            kept_fields = [f for f in rule['fields'] if f[0] not in scope_names]
            if sorted(kept_fields + scope) == sorted(rule['fields']):
                return [rule]
    out = []
    rest = _copy(rule)
    rest['syscalls'] = [s for s in rule['syscalls'] if names[s] != syscall]
    if rest['syscalls']:
        out.append(rest)
    if scope:
        scoped = _copy(rule)
        scoped['syscalls'] = [syscall]
        scoped['fields'] = [f for f in rule['fields'] if f[0] not in {f2[0] for f2 in scope}] + list(scope)
        out.append(scoped)
    return out


def narrow_text(text, specs, machine=None):
    """Apply narrowing specs to one rules file's text.

    Returns ``(new_text, changes)``; ``changes`` is a list of
    ``{line, old, new: [lines], spec}``. Lines that do not parse are kept as
    they are. A removed rule is kept as a comment so the file tells why.
    """
    lines = text.splitlines(True)
    out = []
    changes = []
    for number, line in enumerate(lines, 1):
        try:
            rule = parse_rule(line)
        except RulesError:
            out.append(line)
            continue
        current = [rule] if rule is not None else None
        applied = []
        if current is not None:
            for spec in specs:
                nxt = []
                hit = False
                for r in current:
                    if rule_matches(r, spec, machine):
                        replaced = narrow_rule(r, spec, machine)
                        if [canonical(x, machine) for x in replaced] != [canonical(r, machine)]:
                            hit = True
                        nxt.extend(replaced)
                    else:
                        nxt.append(r)
                if hit:
                    applied.append(spec)
                current = nxt
        if not applied:
            out.append(line)
            continue
        ending = '\n' if line.endswith('\n') else ''
        indent = line[:len(line) - len(line.lstrip())]
        new_lines = [render_rule(r) for r in current]
        if new_lines:
            out.extend(indent + nl + '\n' for nl in new_lines)
        else:
            out.append('%s# auditgap: removed (narrowed %s): %s\n' % (
                indent, ','.join(s['syscall'] for s in applied), line.strip()))
        if not ending and out:
            out[-1] = out[-1].rstrip('\n')
        changes.append({'line': number, 'old': line.strip(), 'new': new_lines,
                        'old_rule': rule, 'new_rules': current,
                        'syscalls': [s['syscall'] for s in applied]})
    return ''.join(out), changes


# -- rules.d as a whole (augenrules semantics) --------------------------------

def natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def rules_files(names):
    """The ``*.rules`` names in the order augenrules reads them (ls -v)."""
    return sorted((n for n in names if n.endswith('.rules')), key=natural_key)


def read_rules_dir(rules_dir):
    """``[(name, text)]`` for each rules file, in augenrules order."""
    out = []
    for name in rules_files(os.listdir(rules_dir)):
        path = os.path.join(rules_dir, name)
        if os.path.isfile(path):
            with open(path, 'r') as handle:
                out.append((name, handle.read()))
    return out


def write_atomic(module, path, text, mode=0o640):
    """Replace ``path`` with ``text`` (file mode ``mode``): a temp file beside it, then
    ``module.atomic_move`` (AnsibleModule), so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.auditgap-')
    with os.fdopen(fd, 'w') as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    module.atomic_move(tmp, path)


def merge_rules(files):
    """augenrules' merge: lines of all files, comments dropped, the last ``-D``
    first, the last ``-b`` second, the last ``-f`` third, the last ``-e`` last.
    Returns the list of lines (without the generated header)."""
    minus = {'-e': '', '-D': '', '-f': '', '-b': ''}
    rest = []
    for _name, text in files:
        for line in text.splitlines():
            if not line or re.match(r'^\s*#', line):
                continue
            if re.match(r'^\s*-e', line):
                minus['-e'] = line
            elif re.match(r'^\s*-D\s*$', line):
                minus['-D'] = line
            elif re.match(r'^\s*-f', line):
                minus['-f'] = line
            elif re.match(r'^\s*-b', line):
                minus['-b'] = line
            else:
                rest.append(line)
    return [minus['-D'], minus['-b'], minus['-f']] + rest + [minus['-e']]


def settings_in_lines(lines):
    """The backlog settings the lines set (the last one wins), as ints."""
    found = {}
    for line in lines:
        tokens = split_line(line)
        i = 0
        while i < len(tokens):
            name = _OPTION_SETTING.get(tokens[i])
            if name and i + 1 < len(tokens) and re.match(r'^-?\d+$', tokens[i + 1]):
                found[name] = int(tokens[i + 1])
                i += 2
            else:
                i += 1
    return found


def effective_settings(files):
    """Backlog settings a boot-time ``augenrules --load`` would apply."""
    return settings_in_lines(merge_rules(files))


def render_settings_text(existing, settings, header):
    """Our own rules file with ``settings`` (name -> int or None) applied.

    Keeps lines for settings not given, replaces a setting's line in place,
    appends missing ones in the canonical order. Content is deterministic so
    a second run writes nothing.
    """
    lines = existing.splitlines() if existing else []
    if not lines or not lines[0].startswith('#'):
        lines = header.splitlines() + lines
    wanted = {k: v for k, v in settings.items() if v is not None}
    done = set()
    out = []
    for line in lines:
        tokens = split_line(line) if not line.lstrip().startswith('#') else []
        name = _OPTION_SETTING.get(tokens[0]) if len(tokens) == 2 else None
        if name in wanted:
            if name in done:
                continue
            out.append('%s %d' % (tokens[0], wanted[name]))
            done.add(name)
        else:
            out.append(line)
    for name, opt in SETTING_OPTIONS:
        if name in wanted and name not in done:
            out.append('%s %d' % (opt, wanted[name]))
    return '\n'.join(out) + '\n'


# -- loaded rules ----------------------------------------------------------------

def loaded_syscall_rules(rules):
    """The syscall rules (``-a``) among loaded rules (``audit.Audit.rules()``), parsed as
    rules.d lines: what narrowing compares and changes."""
    return syscall_rules('\n'.join(rule['text'] for rule in rules))


def delete_argv(rule):
    """auditctl arguments deleting exactly this rule (``-d`` with its own fields)."""
    return rule_argv(dict(rule, flag='-d'))


def restore_plan(loaded, wanted):
    """auditctl argv lists that turn the ``loaded`` syscall rules into ``wanted``
    (both parsed, in kernel order), order included: the rules not wanted are deleted
    exactly; from the first position where the rest differs from ``wanted``, loaded
    rules are deleted and the wanted ones added (``-a`` appends). Watches are not
    syscall rules and are never in the plan."""
    loaded_c = [canonical(r) for r in loaded]
    wanted_c = [canonical(r) for r in wanted]
    surplus = collections.Counter(loaded_c) - collections.Counter(wanted_c)
    plan, kept = [], []
    for rule, canon in zip(loaded, loaded_c):
        if surplus[canon] > 0:
            surplus[canon] -= 1
            plan.append(delete_argv(rule))
        else:
            kept.append((rule, canon))
    same = 0
    while same < len(kept) and same < len(wanted_c) and kept[same][1] == wanted_c[same]:
        same += 1
    plan.extend(delete_argv(rule) for rule, _canon in kept[same:])
    plan.extend(rule_argv(dict(rule, flag='-a')) for rule in wanted[same:])
    return plan


def other_lines(rules):
    """The text of loaded rules (``audit.Audit.rules()``) that are not syscall rules (watches
    and the like), in order: what narrowing must leave exactly as it was."""
    return [rule['text'] for rule in rules if not syscall_rules(rule['text'])]
