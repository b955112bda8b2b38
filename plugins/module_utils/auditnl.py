# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""auditnl: get_status() -> dict, list_rules() -> [rule], set_status(**fields) -> previous status; AuditSocket for a persistent connection.

The netlink transport under the one audit client (``audit.Audit``), which modules use.

The Linux audit netlink protocol (NETLINK_AUDIT), stdlib only.

Pure codec (testable on bytes, no root):
  - ``encode_nlmsg`` / ``iter_nlmsgs``: struct nlmsghdr framing
  - ``encode_status`` / ``decode_status``: struct audit_status; a short reply
    (older kernels) yields None for the fields it does not carry
  - ``decode_rule``: struct audit_rule_data -> {list, action, arch, syscalls,
    fields: [{name, op, value}], key, keys, text}; ``render_rule`` gives the
    ``auditctl -l`` text
  - ``features_from_bitmap``: AUDIT_FEATURE_BITMAP_* names
Socket (root / CAP_AUDIT_CONTROL, initial user and pid namespace):
  - ``AuditSocket().get_status()``, ``.list_rules()``,
    ``.set_status(enabled=, failure=, pid=, rate_limit=, backlog_limit=,
    backlog_wait_time=, allow_immutable=False)``.
  ``set_status`` validates everything before sending, refuses ``enabled=2``
  (locks the configuration until reboot) unless ``allow_immutable=True``,
  refuses any change when the kernel is already locked, and rolls back the
  fields it set when the kernel rejects part of the request.
  ``pid`` registers (own pid) or unregisters (0) the audit consumer: only on
  the socket that stays open as the consumer (``AuditSocket``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import itertools
import os
import socket
import struct
import time

from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import (
    audit_arch,
    syscall_name,
    table_for,
)

NETLINK_AUDIT = 9

# netlink control messages and flags
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4

# audit message types (include/uapi/linux/audit.h)
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_LIST = 1002            # obsolete
AUDIT_ADD = 1003             # obsolete
AUDIT_DEL = 1004             # obsolete
AUDIT_USER = 1005
AUDIT_LOGIN = 1006
AUDIT_SIGNAL_INFO = 1010
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013
AUDIT_TRIM = 1014
AUDIT_MAKE_EQUIV = 1015
AUDIT_TTY_GET = 1016
AUDIT_TTY_SET = 1017
AUDIT_SET_FEATURE = 1018
AUDIT_GET_FEATURE = 1019

# struct audit_status mask bits
AUDIT_STATUS_ENABLED = 0x0001
AUDIT_STATUS_FAILURE = 0x0002
AUDIT_STATUS_PID = 0x0004
AUDIT_STATUS_RATE_LIMIT = 0x0008
AUDIT_STATUS_BACKLOG_LIMIT = 0x0010
AUDIT_STATUS_BACKLOG_WAIT_TIME = 0x0020
AUDIT_STATUS_LOST = 0x0040
AUDIT_STATUS_BACKLOG_WAIT_TIME_ACTUAL = 0x0080

# Settable fields -> mask bit, in the order the kernel applies them.
SETTABLE = (
    ('enabled', AUDIT_STATUS_ENABLED),
    ('failure', AUDIT_STATUS_FAILURE),
    ('pid', AUDIT_STATUS_PID),
    ('rate_limit', AUDIT_STATUS_RATE_LIMIT),
    ('backlog_limit', AUDIT_STATUS_BACKLOG_LIMIT),
    ('backlog_wait_time', AUDIT_STATUS_BACKLOG_WAIT_TIME),
)

# struct audit_status, in order; all __u32. The reply of an older kernel
# stops early: fields past its length are absent (None).
STATUS_FIELDS = ('mask', 'enabled', 'failure', 'pid', 'rate_limit', 'backlog_limit',
                 'lost', 'backlog', 'feature_bitmap', 'backlog_wait_time',
                 'backlog_wait_time_actual')
STATUS_SIZE = 4 * len(STATUS_FIELDS)
STATUS_MIN_SIZE = 4 * 8  # up to and including backlog: every kernel with audit

FEATURE_BITS = (
    (0x00000001, 'backlog_limit'),
    (0x00000002, 'backlog_wait_time'),
    (0x00000004, 'executable_path'),
    (0x00000008, 'exclude_extend'),
    (0x00000010, 'sessionid_filter'),
    (0x00000020, 'lost_reset'),
    (0x00000040, 'filter_fs'),
)

# rules
FILTER_LISTS = {0: 'user', 1: 'task', 2: 'entry', 3: 'watch', 4: 'exit',
                5: 'exclude', 6: 'filesystem', 7: 'io_uring'}
AUDIT_FILTER_PREPEND = 0x10
ACTIONS = {0: 'never', 1: 'possible', 2: 'always'}
AUDIT_MAX_FIELDS = 64
AUDIT_BITMASK_SIZE = 64
RULE_HEADER_SIZE = 4 * (3 + AUDIT_BITMASK_SIZE + 3 * AUDIT_MAX_FIELDS + 1)  # 1040

OPERATORS = {
    0x08000000: '&',
    0x10000000: '<',
    0x20000000: '>',
    0x30000000: '!=',
    0x40000000: '=',
    0x48000000: '&=',
    0x50000000: '<=',
    0x60000000: '>=',
}
AUDIT_OPERATORS = 0x78000000

FIELD_NAMES = {
    0: 'pid', 1: 'uid', 2: 'euid', 3: 'suid', 4: 'fsuid', 5: 'gid', 6: 'egid',
    7: 'sgid', 8: 'fsgid', 9: 'auid', 10: 'pers', 11: 'arch', 12: 'msgtype',
    13: 'subj_user', 14: 'subj_role', 15: 'subj_type', 16: 'subj_sen',
    17: 'subj_clr', 18: 'ppid', 19: 'obj_user', 20: 'obj_role', 21: 'obj_type',
    22: 'obj_lev_low', 23: 'obj_lev_high', 24: 'loginuid_set', 25: 'sessionid',
    26: 'fstype',
    100: 'devmajor', 101: 'devminor', 102: 'inode', 103: 'exit', 104: 'success',
    105: 'path', 106: 'perm', 107: 'dir', 108: 'filetype', 109: 'obj_uid',
    110: 'obj_gid', 111: 'field_compare', 112: 'exe', 113: 'saddr_fam',
    200: 'a0', 201: 'a1', 202: 'a2', 203: 'a3',
    210: 'key',
}
STRING_FIELDS = frozenset((13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 105, 107, 112, 210))
AUDIT_FIELD_COMPARE = 111
AUDIT_FILTERKEY = 210
KEY_SEPARATOR = '\x01'

# AUDIT_COMPARE_* -> (left, right) as auditctl -C prints them
COMPARE_NAMES = {
    1: ('uid', 'obj_uid'), 2: ('gid', 'obj_gid'), 3: ('euid', 'obj_uid'),
    4: ('egid', 'obj_gid'), 5: ('auid', 'obj_uid'), 6: ('suid', 'obj_uid'),
    7: ('sgid', 'obj_gid'), 8: ('fsuid', 'obj_uid'), 9: ('fsgid', 'obj_gid'),
    10: ('uid', 'auid'), 11: ('uid', 'euid'), 12: ('uid', 'fsuid'),
    13: ('uid', 'suid'), 14: ('auid', 'fsuid'), 15: ('auid', 'suid'),
    16: ('auid', 'euid'), 17: ('euid', 'suid'), 18: ('euid', 'fsuid'),
    19: ('suid', 'fsuid'), 20: ('gid', 'egid'), 21: ('gid', 'fsgid'),
    22: ('gid', 'sgid'), 23: ('egid', 'fsgid'), 24: ('egid', 'sgid'),
    25: ('sgid', 'fsgid'),
}
# fields whose value is signed in the kernel's view
SIGNED_FIELDS = frozenset(('exit', 'auid', 'uid', 'euid', 'suid', 'fsuid', 'gid', 'egid',
                           'sgid', 'fsgid', 'obj_uid', 'obj_gid', 'sessionid'))
HEX_FIELDS = frozenset(('a0', 'a1', 'a2', 'a3'))
PERM_BITS = ((4, 'r'), (2, 'w'), (1, 'x'), (8, 'a'))
U32_MAX = 0xFFFFFFFF

_NLMSGHDR = struct.Struct('=IHHII')
_STATUS_NAMES = STATUS_FIELDS[1:]
_STATUS = struct.Struct('=%dI' % len(_STATUS_NAMES))
_TIMEVAL = struct.Struct('ll')  # struct timeval: native longs


def _status_dict(data, offset):
    """The full struct audit_status after its mask at ``offset`` -> dict (the fields of
    _STATUS_NAMES). A dict display with constant keys is built in one step, about twice as
    fast as dict(zip(...)): the status is read in a sampling loop, near the cost of the
    AUDIT_GET round trip itself."""
    (enabled, failure, pid, rate_limit, backlog_limit, lost, backlog, feature_bitmap, backlog_wait_time,
     backlog_wait_time_actual) = _STATUS.unpack_from(data, offset)
    return {'enabled': enabled, 'failure': failure, 'pid': pid, 'rate_limit': rate_limit,
            'backlog_limit': backlog_limit, 'lost': lost, 'backlog': backlog, 'feature_bitmap': feature_bitmap,
            'backlog_wait_time': backlog_wait_time, 'backlog_wait_time_actual': backlog_wait_time_actual}


class AuditNetlinkError(Exception):
    """A netlink audit request failed; ``errno`` holds the kernel's error when known."""

    def __init__(self, message, err=None):
        super(AuditNetlinkError, self).__init__(message)
        self.errno = err


# -- framing ----------------------------------------------------------------

def _align(length):
    return (length + 3) & ~3


def encode_nlmsg(msg_type, payload=b'', flags=NLM_F_REQUEST, seq=0, pid=0):
    """One netlink message: nlmsghdr + payload, padded to 4 bytes."""
    length = _NLMSGHDR.size + len(payload)
    data = _NLMSGHDR.pack(length, msg_type, flags, seq, pid) + payload
    return data + b'\0' * (_align(length) - length)


def iter_nlmsgs(data):
    """Yield ``(type, flags, seq, pid, payload)`` for each message in a datagram.

    Stops at a truncated or malformed header instead of raising.
    """
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield msg_type, flags, seq, pid, data[offset + _NLMSGHDR.size:offset + length]
        offset += _align(length)


def decode_error(payload):
    """The errno of an NLMSG_ERROR payload (positive; 0 is an ack)."""
    if len(payload) < 4:
        return errno.EIO
    return -struct.unpack_from('=i', payload)[0]


# -- struct audit_status ----------------------------------------------------

def decode_status(payload):
    """struct audit_status -> dict (mask excluded).

    A reply shorter than the full struct (kernels before 3.14 lack
    backlog_wait_time, before 5.10 backlog_wait_time_actual) gives None for
    the missing fields; a reply shorter than the 8 fields every kernel sends
    raises ValueError.
    """
    if len(payload) < STATUS_MIN_SIZE:
        raise ValueError('audit status reply too short: %d bytes' % len(payload))
    if len(payload) >= STATUS_SIZE:
        # the common case in one unpack (the read is sampled in a loop: every microsecond shows)
        return _status_dict(payload, 4)
    count = len(payload) // 4
    values = struct.unpack_from('=%dI' % count, payload)
    status = dict(zip(STATUS_FIELDS, values))
    for name in STATUS_FIELDS[count:]:
        status[name] = None
    status.pop('mask')
    return status


def features_from_bitmap(bitmap):
    """Names of the AUDIT_FEATURE_BITMAP_* bits set (unknown bits as ``bit_N``)."""
    if bitmap is None:
        return []
    names = []
    known = 0
    for bit, name in FEATURE_BITS:
        known |= bit
        if bitmap & bit:
            names.append(name)
    for n in range(32):
        if bitmap & (1 << n) and not known & (1 << n):
            names.append('bit_%d' % n)
    return names


def validate_status_fields(fields, allow_immutable=False):
    """Check settable fields; returns ``(mask, values)`` or raises ValueError."""
    settable = dict(SETTABLE)
    unknown = sorted(set(fields) - set(settable))
    if unknown:
        raise ValueError('cannot set audit status field(s) %s; settable: %s'
                         % (', '.join(unknown), ', '.join(name for name, _bit in SETTABLE)))
    mask = 0
    values = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value), 10)
            except ValueError:
                raise ValueError('%s must be an integer, got %r' % (name, value))
        if value < 0 or value > U32_MAX:
            raise ValueError('%s must be between 0 and %d, got %d' % (name, U32_MAX, value))
        if name == 'enabled':
            if value not in (0, 1, 2):
                raise ValueError('enabled must be 0, 1 or 2, got %d' % value)
            if value == 2 and not allow_immutable:
                raise ValueError('enabled=2 locks the audit configuration until reboot; '
                                 'refused unless allow_immutable=True')
        if name == 'failure' and value not in (0, 1, 2):
            raise ValueError('failure must be 0 (silent), 1 (printk) or 2 (panic), got %d' % value)
        mask |= settable[name]
        values[name] = value
    return mask, values


def encode_status(mask, **values):
    """struct audit_status (full size) with ``mask`` and the given fields."""
    row = []
    for name in STATUS_FIELDS:
        if name == 'mask':
            row.append(mask)
        else:
            row.append(int(values.get(name) or 0))
    return struct.pack('=%dI' % len(row), *row)


# -- struct audit_rule_data -------------------------------------------------

def _signed(value):
    return value - (1 << 32) if value & 0x80000000 else value


def _perm_text(value):
    return ''.join(letter for bit, letter in PERM_BITS if value & bit) or str(value)


def _field_value(name, raw):
    """Numeric field value as ``auditctl -l`` prints it."""
    if name == 'arch':
        return audit_arch(raw)[0]
    if name == 'perm':
        return _perm_text(raw)
    if name in HEX_FIELDS:
        return '0x%x' % raw
    if name == 'exit':
        value = _signed(raw)
        if value < 0 and -value in errno.errorcode:
            return '-' + errno.errorcode[-value]
        return str(value)
    if name in SIGNED_FIELDS:
        return str(_signed(raw))
    return str(raw)


def _syscalls_from_mask(words, table):
    # auditctl -S all sets every word but the last (as libaudit checks it)
    if all(word == U32_MAX for word in words[:-1]):
        return ['all']
    names = []
    for index, word in enumerate(words):
        if not word:
            continue
        for bit in range(32):
            if word & (1 << bit):
                names.append(syscall_name(table, index * 32 + bit))
    return names


def decode_rule(payload, machine=None):
    """struct audit_rule_data -> rule dict (the shape ``audit.parse_rules`` returns).

    Syscall numbers are named with the table of the rule's ``AUDIT_ARCH_*``
    (x86_64, i386, aarch64, arm); a rule without an arch field uses the native
    table of ``machine`` (uname -m, default this host's).
    """
    if len(payload) < RULE_HEADER_SIZE:
        raise ValueError('audit rule too short: %d bytes' % len(payload))
    words = struct.unpack_from('=%dI' % (RULE_HEADER_SIZE // 4), payload)
    flags, action, field_count = words[0:3]
    mask = words[3:3 + AUDIT_BITMASK_SIZE]
    base = 3 + AUDIT_BITMASK_SIZE
    fields_ids = words[base:base + AUDIT_MAX_FIELDS]
    values = words[base + AUDIT_MAX_FIELDS:base + 2 * AUDIT_MAX_FIELDS]
    fieldflags = words[base + 2 * AUDIT_MAX_FIELDS:base + 3 * AUDIT_MAX_FIELDS]
    buflen = words[-1]
    buf = payload[RULE_HEADER_SIZE:RULE_HEADER_SIZE + buflen]
    field_count = min(field_count, AUDIT_MAX_FIELDS)

    arch = None
    table = table_for(None, machine)
    fields = []
    keys = []
    offset = 0
    for i in range(field_count):
        field_id = fields_ids[i] & ~0x80000000
        op = OPERATORS.get(fieldflags[i] & AUDIT_OPERATORS, '?')
        name = FIELD_NAMES.get(field_id, 'field_%d' % field_id)
        raw = values[i]
        if field_id in STRING_FIELDS:
            text = buf[offset:offset + raw].decode('utf-8', 'replace')
            offset += raw
            if field_id == AUDIT_FILTERKEY:
                keys.extend(part for part in text.split(KEY_SEPARATOR) if part)
                continue
            value = text
        elif field_id == AUDIT_FIELD_COMPARE:
            left, right = COMPARE_NAMES.get(raw, ('compare_%d' % raw, '?'))
            fields.append({'name': 'compare', 'op': op, 'value': '%s:%s' % (left, right)})
            continue
        else:
            value = _field_value(name, raw)
        if name == 'arch':
            arch, table = audit_arch(raw)
        fields.append({'name': name, 'op': op, 'value': value})

    list_name = FILTER_LISTS.get(flags & ~AUDIT_FILTER_PREPEND & 0xFF, 'list_%d' % flags)
    if list_name in ('exit', 'entry'):
        syscalls = _syscalls_from_mask(mask, table)
    else:
        syscalls = []
    rule = {
        'list': list_name,
        'action': ACTIONS.get(action, 'action_%d' % action),
        'arch': arch,
        'syscalls': syscalls,
        'fields': fields,
        'key': keys[0] if keys else None,
        'keys': keys,
    }
    rule['text'] = render_rule(rule)
    return rule


def is_watch(rule):
    """True for a rule ``auditctl -l`` prints as ``-w PATH -p PERM``."""
    if rule['list'] != 'exit' or rule['action'] != 'always' or rule['syscalls'] != ['all']:
        return False
    names = [field['name'] for field in rule['fields']]
    return (len(names) in (1, 2) and names[0] in ('path', 'dir')
            and rule['fields'][0]['op'] == '=' and all(name == 'perm' for name in names[1:]))


def render_rule(rule):
    """The ``auditctl -l`` line for a rule dict."""
    if is_watch(rule):
        parts = ['-w', rule['fields'][0]['value']]
        for field in rule['fields'][1:]:
            parts.extend(['-p', field['value']])
        for key in rule['keys']:
            parts.extend(['-k', key])
        return ' '.join(parts)
    parts = ['-a', '%s,%s' % (rule['action'], rule['list'])]
    syscalls_done = False
    syscall_text = ['-S', ','.join(rule['syscalls'])] if rule['syscalls'] else []
    for field in rule['fields']:
        if field['name'] == 'compare':
            left, _sep, right = field['value'].partition(':')
            parts.extend(['-C', '%s%s%s' % (left, field['op'], right)])
        else:
            parts.extend(['-F', '%s%s%s' % (field['name'], field['op'], field['value'])])
        if field['name'] == 'arch' and not syscalls_done:
            parts.extend(syscall_text)
            syscalls_done = True
    if not syscalls_done and syscall_text:
        # auditctl prints -S right after arch, or first when there is none
        parts[2:2] = syscall_text
    for key in rule['keys']:
        parts.extend(['-F', 'key=%s' % key])
    return ' '.join(parts)


# -- socket -----------------------------------------------------------------

def _strerror(err):
    return '%s (%s)' % (os.strerror(err), errno.errorcode.get(err, err))


class SocketOwner:
    """A context manager that closes ``self.sock`` (a netlink socket) once: the audit
    socket here, the multicast reader in auditreadlog."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class AuditSocket(SocketOwner):
    """A NETLINK_AUDIT socket. Use as a context manager or call close()."""

    def __init__(self, timeout_s=2.0, rcvbuf=None):
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except (OSError, AttributeError) as err:
            code = getattr(err, 'errno', None)
            if code == errno.EPROTONOSUPPORT:
                raise AuditNetlinkError('the kernel has no audit support (NETLINK_AUDIT: %s)'
                                        % _strerror(code), code)
            raise AuditNetlinkError('cannot open a NETLINK_AUDIT socket: %s' % err, code)
        self.timeout_s = timeout_s
        try:
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(rcvbuf))
            # no bind: the kernel binds the socket to a port id on its first send.
            # A blocking socket with a kernel receive timeout: Python's own timeout
            # (settimeout) polls before every recv, an extra system call per read
            seconds = int(timeout_s)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 _TIMEVAL.pack(seconds, int((timeout_s - seconds) * 1e6)))
        except OSError as err:
            self.sock.close()
            raise AuditNetlinkError('cannot set up the NETLINK_AUDIT socket: %s' % err, err.errno)
        self._seq = 0
        # messages that arrived for nobody in particular (audit records when
        # this socket is the registered consumer)
        self.unsolicited = 0

    def fileno(self):
        return self.sock.fileno()

    def _send(self, msg_type, payload=b'', flags=NLM_F_REQUEST):
        self._seq = (self._seq + 1) & U32_MAX or 1
        try:
            self.sock.send(encode_nlmsg(msg_type, payload, flags, self._seq))
        except OSError as err:
            raise AuditNetlinkError('sending audit request %d failed: %s' % (msg_type, _strerror(err.errno)),
                                    err.errno)
        return self._seq

    def _replies(self, seq):
        """Yield (type, flags, payload) for messages answering ``seq``.

        One overall deadline (the socket timeout), so a flood of audit records
        on a consumer socket cannot keep us waiting for a lost reply forever.
        """
        deadline = time.monotonic() + (self.timeout_s or 2.0)
        while True:
            if time.monotonic() > deadline:
                raise AuditNetlinkError('no reply from the kernel audit subsystem (timeout)',
                                        errno.ETIMEDOUT)
            data = self._recv()
            for msg_type, flags, msg_seq, _pid, payload in iter_nlmsgs(data):
                if msg_seq != seq:
                    self.unsolicited += 1
                    continue
                yield msg_type, flags, payload

    def _recv(self):
        try:
            return self.sock.recv(1 << 17)
        except (socket.timeout, BlockingIOError):  # SO_RCVTIMEO expired (EAGAIN)
            raise AuditNetlinkError('no reply from the kernel audit subsystem (timeout)',
                                    errno.ETIMEDOUT)
        except OSError as err:
            raise AuditNetlinkError('reading the audit reply failed: %s' % _strerror(err.errno),
                                    err.errno)

    @staticmethod
    def _raise_for(err, what):
        hints = {
            errno.EPERM: 'needs CAP_AUDIT_CONTROL in the initial user and pid namespace',
            errno.ECONNREFUSED: 'audit is not available in this namespace or container',
        }
        hint = hints.get(err)
        raise AuditNetlinkError('%s: %s%s' % (what, _strerror(err), ' (%s)' % hint if hint else ''), err)

    def get_status(self):
        """AUDIT_GET -> decoded status dict (see decode_status).

        Fast path: the first datagram is the whole reply (one message of our
        sequence number), decoded in place; anything else (an error, records
        on a consumer socket) goes through the general reply loop.
        """
        self._seq = seq = (self._seq + 1) & U32_MAX or 1
        try:
            self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size, AUDIT_GET, NLM_F_REQUEST, seq, 0))
        except OSError as err:
            raise AuditNetlinkError('sending audit request %d failed: %s' % (AUDIT_GET, _strerror(err.errno)),
                                    err.errno)
        data = self._recv()
        if len(data) >= _NLMSGHDR.size + STATUS_SIZE:
            length, msg_type, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data)
            if msg_type == AUDIT_GET and msg_seq == seq and length == len(data):
                return _status_dict(data, _NLMSGHDR.size + 4)
        return self._status_reply(seq, data)

    def _status_reply(self, seq, data):
        """The general path of get_status, starting with the datagram already read."""
        replies = self._replies(seq)
        pending = []
        for msg_type, _flags, msg_seq, _pid, payload in iter_nlmsgs(data):
            if msg_seq != seq:
                self.unsolicited += 1
                continue
            pending.append((msg_type, _flags, payload))
        for msg_type, _flags, payload in itertools.chain(pending, replies):
            if msg_type == NLMSG_ERROR:
                err = decode_error(payload)
                if err:
                    self._raise_for(err, 'AUDIT_GET refused')
                continue  # a plain ack
            if msg_type == AUDIT_GET:
                return decode_status(payload)

    def list_rules(self, machine=None):
        """AUDIT_LIST_RULES -> [rule dict] in kernel order (``machine``: see decode_rule)."""
        seq = self._send(AUDIT_LIST_RULES)
        rules = []
        for msg_type, _flags, payload in self._replies(seq):
            if msg_type == NLMSG_ERROR:
                err = decode_error(payload)
                if err:
                    self._raise_for(err, 'AUDIT_LIST_RULES refused')
                continue
            if msg_type == NLMSG_DONE:
                return rules
            if msg_type == AUDIT_LIST_RULES:
                rules.append(decode_rule(payload, machine))

    def _set(self, mask, values):
        seq = self._send(AUDIT_SET, encode_status(mask, **values), NLM_F_REQUEST | NLM_F_ACK)
        for msg_type, _flags, payload in self._replies(seq):
            if msg_type == NLMSG_ERROR:
                return decode_error(payload)

    def set_status(self, allow_immutable=False, **fields):
        """AUDIT_SET with the mask bits of the given fields; returns the status before.

        Raises ValueError on bad input (nothing sent) and AuditNetlinkError
        when the kernel refuses; fields already applied are then set back.
        """
        mask, values = validate_status_fields(fields, allow_immutable)
        before = self.get_status()
        if not mask:
            return before
        if before.get('enabled') == 2:
            raise AuditNetlinkError('the audit configuration is locked (enabled=2) until reboot',
                                    errno.EPERM)
        err = self._set(mask, values)
        if err:
            rollback = {name: before[name] for name in values if name != 'pid'}
            rollback_error = None
            if rollback:
                rb_mask, rb_values = validate_status_fields(rollback)
                rollback_error = self._set(rb_mask, rb_values)
            message = 'AUDIT_SET %s refused' % ', '.join('%s=%s' % item for item in sorted(values.items()))
            if rollback_error:
                message += ' (and rolling back failed: %s)' % _strerror(rollback_error)
            self._raise_for(err, message)
        return before


# -- convenience: one request, one socket ------------------------------------

def get_status(timeout_s=2.0):
    """Current audit status (dict, see decode_status)."""
    with AuditSocket(timeout_s) as sock:
        return sock.get_status()


def list_rules(timeout_s=2.0, machine=None):
    """The loaded audit rules, decoded."""
    with AuditSocket(timeout_s) as sock:
        return sock.list_rules(machine)


def set_status(allow_immutable=False, sock=None, **fields):
    """Set audit status fields; returns the status before the change.

    ``pid`` needs ``sock``: the consumer's own, still-open AuditSocket.
    """
    if sock is not None:
        return sock.set_status(allow_immutable=allow_immutable, **fields)
    validate_status_fields(fields, allow_immutable)  # refuse bad input before opening anything
    if fields.get('pid') is not None:
        raise ValueError('pid registers the socket that sends it: pass the consumer '
                         'socket as sock=AuditSocket(...)')
    with AuditSocket() as own:
        return own.set_status(allow_immutable=allow_immutable, **fields)
