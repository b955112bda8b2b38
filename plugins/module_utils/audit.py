# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""audit: the one client every module and the incident lab use to talk to the kernel's audit subsystem.

``Audit(source='auto')`` is one object: netlink first (``auditnl.AuditSocket``, kept
open for the client's life), ``auditctl`` when netlink fails; the first source that
answers is kept (``client.source``) and the ones that failed before it are in
``client.errors`` (``'netlink: ...'``).

- ``status()``: the raw status dict (``auditnl.decode_status`` keys; from auditctl also
  ``loginuid_immutable`` when printed, fields it lacks are None);
- ``rules()``: the loaded rules in one shape, docs/contracts.md's ``audit_status.rules``
  ({list, action, arch, syscalls, fields: [{name, op, value}], key, keys, text});
- ``consumer()``: ``(pid or None, reason)`` of the registered audit consumer, never raises;
- ``set(**fields)`` and the field-named setters (``set_backlog_limit(n)``, ...): one
  private ``_set``; bad input is a ValueError before anything is sent;
- ``delete_rules(rules)`` / ``add_rules(rules)``: exact deletes and adds through auditctl
  (``-d`` with the rule's own fields; never ``-D``).

Every failure is an ``AuditError`` naming its step (``step``) and each source's error
(``errors``). ``netlink`` (a socket factory), ``run_command`` and ``auditctl`` (the path,
None: not installed) are injectable, so the fallback is testable without root.

Pure parsers of auditctl's text: ``parse_status`` (``auditctl -s``, multi-line or the
old one-line format) and ``parse_rules`` / ``parse_rule_line`` (``auditctl -l``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex

from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl
from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import arch_label, named

SOURCES = ('auto', 'netlink', 'auditctl')
# what each step says when every source failed
STEPS = {
    'status': 'cannot read the audit status',
    'rules': 'cannot list the audit rules',
    'set': 'cannot set the audit status',
    'delete_rules': 'cannot delete audit rules',
    'add_rules': 'cannot add audit rules',
}
# settable status fields -> auditctl option, in the order auditctl applies them (-e last:
# a change after enabling 2 would fail)
AUDITCTL_SET = (
    ('failure', '-f'),
    ('rate_limit', '-r'),
    ('backlog_limit', '-b'),
    ('backlog_wait_time', '--backlog_wait_time'),
    ('enabled', '-e'),
)
_FIND = object()


class AuditError(Exception):
    """An audit request failed at ``step`` (see STEPS); ``errors``: ``'source: reason'`` each."""

    def __init__(self, step, errors):
        self.step = step
        self.errors = list(errors)
        super(AuditError, self).__init__('%s: %s' % (STEPS.get(step, step), '; '.join(self.errors)))


def run_command(argv, env=None, timeout=30):
    """(rc, stdout, stderr) like AnsibleModule.run_command; rc 127 when argv cannot run.
    ``env``: the whole environment (default: LC_ALL=C and the system PATH only)."""
    import subprocess   # here: the diagnose fan-out's hosts read audit over netlink and never pay it
    if env is None:
        env = {'LC_ALL': 'C', 'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        return 127, '', str(err)
    return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')


def source_order(source):
    """The sources to try, in order, for ``source`` (auto: netlink, then auditctl)."""
    if source not in SOURCES:
        raise ValueError('source must be one of %s, got %r' % (', '.join(SOURCES), source))
    return ['netlink', 'auditctl'] if source == 'auto' else [source]


def consumer_from_status(status):
    """(pid or None, reason) of the registered audit consumer in a status dict (pid 0: none)."""
    pid = (status or {}).get('pid')
    if not pid:
        return None, 'no audit consumer registered'
    return int(pid), None


def exe_variants(argv):
    """``argv`` and, when it has ``exe=X``, the same with ``exe!=X``: auditctl 3.x prints a
    loaded ``exe!=X`` as ``exe=X``, so a rule read back may need the other spelling."""
    out = [list(argv)]
    if any(a.startswith('exe=') for a in argv):
        out.append([('exe!=' + a[4:]) if a.startswith('exe=') else a for a in argv])
    return out


def rule_argv(rule):
    """auditctl arguments of a rule: an argv list as given, or a contract rule dict's text."""
    if isinstance(rule, dict):
        return rule['text'].split()
    return list(rule)


def delete_argv(rule):
    """auditctl arguments deleting exactly this rule: ``-d`` (``-W`` for a watch) with its fields."""
    argv = rule_argv(rule)
    flag = {'-a': '-d', '-A': '-d', '-d': '-d', '-w': '-W', '-W': '-W'}.get(argv[0] if argv else None)
    if flag is None:
        raise ValueError('not an audit rule: %r' % ' '.join(argv))
    return [flag] + argv[1:]


def consumer(**kwargs):
    """``Audit(**kwargs).consumer()`` on a client of its own: (pid or None, reason)."""
    with Audit(**kwargs) as client:
        return client.consumer()


def for_module(module, source='auto', **kwargs):
    """An ``Audit`` for an AnsibleModule: its run_command (``LC_ALL=C``) and auditctl path."""
    def run(argv):
        return module.run_command(argv, environ_update={'LC_ALL': 'C'})
    return Audit(source, run, module.get_bin_path('auditctl'), **kwargs)


class Audit:
    """One client: netlink first, auditctl as the fallback, the answering source kept."""

    def __init__(self, source='auto', run_command=run_command, auditctl=_FIND, netlink=None):
        self.order = source_order(source)
        self.run_command = run_command
        if auditctl is _FIND:
            import shutil
            auditctl = shutil.which('auditctl')
        self.auditctl = auditctl
        self.netlink = netlink  # socket factory; None: auditnl.AuditSocket
        self.source = None
        self.errors = []
        self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # -- reads ------------------------------------------------------------------

    def status(self):
        """The raw audit status (see the module doc)."""
        if self._sock is not None:  # the sampled path: one AUDIT_GET on the open socket
            try:
                return self._sock.get_status()
            except auditnl.AuditNetlinkError as err:
                raise AuditError('status', ['netlink: %s' % err])
        return self._read('status', self._netlink_status, self._auditctl_status)

    def rules(self):
        """The loaded rules, contract shape, in kernel order."""
        return self._read('rules', lambda: self._socket().list_rules(),
                          lambda: parse_rules(self._auditctl_text('-l')))

    def consumer(self):
        """(pid or None, reason) of the registered audit consumer; never raises."""
        try:
            return consumer_from_status(self.status())
        except AuditError as err:
            return None, str(err)

    def _read(self, step, netlink, auditctl):
        """``step`` from the kept source, else from each in order (the first to answer is kept)."""
        order = [self.source] if self.source else self.order
        errors = []
        for name in order:
            try:
                value = netlink() if name == 'netlink' else auditctl()
            except (auditnl.AuditNetlinkError, RuntimeError, ValueError, OSError) as err:
                if name == 'netlink':
                    self.close()
                errors.append('%s: %s' % (name, err))
                continue
            if self.source is None:
                self.source = name
                self.errors = errors
            return value
        raise AuditError(step, errors)

    def _socket(self):
        if self._sock is None:
            self._sock = (self.netlink or auditnl.AuditSocket)()
        return self._sock

    def _netlink_status(self):
        return self._socket().get_status()

    def _auditctl_status(self):
        return parse_status(self._auditctl_text('-s'))

    def _auditctl_text(self, flag):
        rc, out, err = self._auditctl_run([flag])
        if rc != 0:
            raise RuntimeError('auditctl %s failed (rc=%s): %s' % (flag, rc, (err or out).strip()))
        if not out.strip():
            raise RuntimeError('auditctl %s printed nothing%s' % (flag, ': %s' % err.strip() if err and err.strip() else ''))
        return out

    def _auditctl_run(self, args):
        if not self.auditctl:
            raise RuntimeError('not installed')
        return self.run_command([self.auditctl] + list(args))

    # -- changes ----------------------------------------------------------------

    def set(self, **fields):
        """Set audit status fields (auditnl.SETTABLE names but ``pid``) through the kept source."""
        return self._set(fields)

    def set_enabled(self, value):
        return self._set({'enabled': value})

    def set_failure(self, value):
        return self._set({'failure': value})

    def set_rate_limit(self, value):
        return self._set({'rate_limit': value})

    def set_backlog_limit(self, value):
        return self._set({'backlog_limit': value})

    def set_backlog_wait_time(self, value):
        return self._set({'backlog_wait_time': value})

    def _set(self, fields):
        if 'pid' in fields:
            raise ValueError('pid registers the socket that sends it: use auditnl.AuditSocket')
        _mask, values = auditnl.validate_status_fields(fields)  # bad input: nothing is sent
        if not values:
            return
        if self.source is None:  # the first source that reads the status is the one that sets it
            try:
                self.status()
            except AuditError as err:
                raise AuditError('set', err.errors)
        try:
            if self.source == 'netlink':
                self._socket().set_status(**values)
                return
            for field, option in AUDITCTL_SET:
                if field in values:
                    self._auditctl_change([option, str(values[field])])
        except (auditnl.AuditNetlinkError, RuntimeError, OSError) as err:
            raise AuditError('set', ['%s: %s' % (self.source, err)])

    def _auditctl_change(self, argv, ok_words=()):
        """Run one auditctl change; RuntimeError unless it succeeded (or said one of ``ok_words``)."""
        rc, out, err = self._auditctl_run(argv)
        text = (err or out or '').strip()
        if rc != 0 and not any(word in text for word in ok_words):
            raise RuntimeError('auditctl %s: %s' % (' '.join(argv), text))
        return rc, text

    def delete_rules(self, rules, missing_ok=False):
        """Delete each rule exactly (a contract rule dict or its auditctl argv; ``-d``/``-W``
        with its own fields, either ``exe`` spelling). ``missing_ok``: a rule not loaded is fine."""
        for rule in rules:
            argv = delete_argv(rule)
            text = ''
            try:
                for variant in exe_variants(argv):
                    rc, text = self._auditctl_change(variant, ok_words=('No such file', 'No rule matches'))
                    if rc == 0:
                        break
                else:
                    if not missing_ok:
                        raise RuntimeError('auditctl %s: %s' % (' '.join(argv), text))
            except (RuntimeError, OSError) as err:
                raise AuditError('delete_rules', ['auditctl: %s' % err])

    def add_rules(self, rules, exists_ok=False):
        """Add each rule (auditctl ``-a``/``-A`` argv, or a contract rule dict) in order."""
        for rule in rules:
            try:
                self._auditctl_change(rule_argv(rule), ok_words=('exists',) if exists_ok else ())
            except (RuntimeError, OSError) as err:
                raise AuditError('add_rules', ['auditctl: %s' % err])


# -- auditctl text (pure) ---------------------------------------------------------

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
    Returns the ``auditnl.decode_status`` keys (None when not printed), plus
    ``loginuid_immutable`` when printed. Raises ValueError when no status field is found.
    """
    status = {name: None for name in auditnl.STATUS_FIELDS if name != 'mask'}
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

    ``machine``: uname -m of the host the line comes from (default this host): syscall
    numbers auditctl printed are named with the table of the rule's arch there.
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
