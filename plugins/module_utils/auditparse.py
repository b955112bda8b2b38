# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers for ``auditctl -s`` and ``auditctl -l`` text (pure functions).

``parse_status(text)`` returns the same dict as ``auditnl.decode_status``
(fields the text lacks are None), plus ``loginuid_immutable`` when printed.
``parse_rules(text)`` returns the same rule dicts as ``auditnl.decode_rule``;
syscall numbers auditctl printed (ones its table lacks) are named with the
table of the rule's arch on the host the text came from (``machine``,
default this host: ``-F arch=b64`` is aarch64 on an aarch64 host).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex

from ansible_collections.auditgap.fleet.plugins.module_utils.auditnl import STATUS_FIELDS
from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import arch_label, named

# names auditctl used in older one-line output -> the struct's names
_STATUS_ALIASES = {'flag': 'failure', 'features': 'feature_bitmap'}
_PAIR_RE = re.compile(r'^[a-z_]+=')
_INT_RE = re.compile(r'^(0x[0-9a-fA-F]+|-?\d+)$')
_FIELD_RE = re.compile(r'^([A-Za-z0-9_]+)(<=|>=|!=|&=|=|<|>|&)(.*)$')
_LISTS = ('user', 'task', 'entry', 'watch', 'exit', 'exclude', 'filesystem', 'io_uring')
_ACTIONS = ('never', 'possible', 'always')


def _to_int(text):
    text = text.strip()
    if not _INT_RE.match(text):
        return None
    return int(text, 16) if text.lower().startswith('0x') else int(text)


def parse_status(text):
    """Parse ``auditctl -s`` output, multi-line or the old one-line format.

    Multi-line (auditctl >= 2.3): ``enabled 1`` per line.
    One-line (older): ``AUDIT_STATUS: enabled=1 flag=1 pid=0 rate_limit=0
    backlog_limit=320 lost=0 backlog=0``.
    Raises ValueError when no status field is found.
    """
    status = {name: None for name in STATUS_FIELDS if name != 'mask'}
    found = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith('AUDIT_STATUS:'):
            line = line.split(':', 1)[1].strip()
        if _PAIR_RE.match(line):
            pairs = [item.split('=', 1) for item in line.split() if '=' in item]
        else:
            parts = line.split(None, 1)
            if len(parts) != 2:
                continue
            pairs = [parts]
        for name, value in pairs:
            name = _STATUS_ALIASES.get(name, name)
            if name == 'loginuid_immutable':
                # "loginuid_immutable 0 unlocked"
                words = value.split()
                status['loginuid_immutable'] = _to_int(words[0]) if words else None
                continue
            if name not in status:
                continue
            number = _to_int(value.split()[0]) if value.split() else None
            if number is not None:
                status[name] = number
                found += 1
    if not found:
        raise ValueError('no audit status fields in auditctl -s output: %r' % text[:200])
    return status


def _split_list_action(text):
    first, _sep, second = text.partition(',')
    if first in _LISTS or second in _ACTIONS:
        return first, second
    return second, first


def _empty_rule():
    return {'list': None, 'action': None, 'arch': None, 'syscalls': [],
            'fields': [], 'key': None, 'keys': []}


def parse_rule_line(line, machine=None):
    """One ``auditctl -l`` line -> rule dict; raises ValueError when it is not a rule.

    ``machine``: uname -m of the host the line comes from (default this host).
    """
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    if not tokens or tokens[0] not in ('-a', '-A', '-w', '-W'):
        raise ValueError('not an audit rule: %r' % line)
    rule = _empty_rule()
    arch_value = None
    watch_path = None
    perms = []
    i = 0
    while i < len(tokens):
        opt = tokens[i]
        arg = tokens[i + 1] if i + 1 < len(tokens) else None
        if opt in ('-a', '-A'):
            if arg is None:
                raise ValueError('%s needs list,action: %r' % (opt, line))
            rule['list'], rule['action'] = _split_list_action(arg)
        elif opt in ('-w', '-W'):
            watch_path = arg
            rule['list'], rule['action'] = 'exit', 'always'
        elif opt == '-p':
            perms.append(arg or '')
        elif opt == '-S':
            for name in (arg or '').split(','):
                if name and name not in rule['syscalls']:
                    rule['syscalls'].append(name)
        elif opt == '-k':
            rule['keys'].append(arg)
        elif opt == '-F':
            match = _FIELD_RE.match(arg or '')
            if not match:
                raise ValueError('bad field %r in %r' % (arg, line))
            name, op, value = match.groups()
            if name in ('key', 'filterkey'):
                rule['keys'].append(value)
            else:
                if name == 'arch':
                    arch_value = value
                    value = arch_label(value)
                    rule['arch'] = value
                rule['fields'].append({'name': name, 'op': op, 'value': value})
        elif opt == '-C':
            match = _FIELD_RE.match(arg or '')
            if not match:
                raise ValueError('bad comparison %r in %r' % (arg, line))
            left, op, right = match.groups()
            rule['fields'].append({'name': 'compare', 'op': op, 'value': '%s:%s' % (left, right)})
        else:
            raise ValueError('unknown option %r in %r' % (opt, line))
        i += 2
    if watch_path is not None:
        name = 'dir' if watch_path.endswith('/') and len(watch_path) > 1 else 'path'
        rule['fields'].insert(0, {'name': name, 'op': '=', 'value': watch_path})
        for perm in perms:
            rule['fields'].append({'name': 'perm', 'op': '=', 'value': perm})
        rule['syscalls'] = ['all']
    elif rule['list'] in ('exit', 'entry') and not rule['syscalls']:
        rule['syscalls'] = ['all']
    if 'all' in rule['syscalls']:
        rule['syscalls'] = ['all']
    else:
        rule['syscalls'] = named(rule['syscalls'], arch_value, machine)
    rule['key'] = rule['keys'][0] if rule['keys'] else None
    rule['text'] = line.strip()
    return rule


def parse_rules(text, machine=None):
    """Parse ``auditctl -l`` output into rule dicts.

    ``No rules`` gives []. A line that is not a rule is kept as
    ``{'text': line, 'parse_error': reason}`` with the other keys None/empty,
    so nothing the kernel holds is silently dropped.
    """
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == 'No rules':
            continue
        try:
            rules.append(parse_rule_line(line, machine))
        except ValueError as err:
            rules.append(dict(_empty_rule(), text=line, parse_error=str(err)))
    return rules
