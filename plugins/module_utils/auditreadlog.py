# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""auditreadlog: audit record rates per rule key, syscall, executable and user, read from
the audit multicast group (``AUDIT_NLGRP_READLOG``) over a sample window.

The kernel's kauditd thread copies every record it takes off the backlog to the
``AUDIT_NLGRP_READLOG`` netlink group right before it hands the record to the registered
consumer (kernel/audit.c: ``kauditd_send_queue(..., kauditd_send_multicast_skb, ...)``), so a
listener sees the records the consumer is given, in the same order, without taking any of
them away from it. Joining the group needs ``CAP_AUDIT_READ`` (``audit_bind``). The copy is
made only while the group has a listener, and a listener that does not keep up loses its own
copies (``ENOBUFS``), never the consumer's.

What the window measures (docs/audit_status.md, "Record rates"):

- records and events (one event = the records of one serial number, e.g. SYSCALL, SOCKADDR,
  PROCTITLE, EOE of one audited syscall) delivered to the consumer during the window, per
  talker ``(key, syscall, exe, uid)``: who fills the backlog;
- when they were made: every record carries its event's time stamp (the syscall's entry
  time), so the record rate over time and the largest burst in any span can be counted from
  the stamps, not from when the consumer got around to them; and the rate records were made at
  while they were being made (``active_records_per_s``: over the clock ticks that have stamps,
  so the time the audited tasks slept in audit_log_start does not dilute it);
- when delivery stopped while records waited (the consumer's drain gaps);
- how long a record is as a consumer logs it (``log_chars_per_record``: the kernel's text of each
  record framed as auditd's raw log line, ``type=NAME msg=...`` and a newline): what counts the
  records a consumer wrote before the window from its bytes written (sizing.wakeup_cost).

Pure parts (``RecordCounter``, ``decode_value``, ``max_in_span``, ``active_time``) are
unit-tested on captured records; ``ReadlogSocket`` is the socket (root).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import select
import socket
import struct
import time

from ansible_collections.auditgap.fleet.plugins.module_utils.auditnl import SocketOwner
from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import audit_arch, syscall_name

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_SYSCALL = 1300
AUDIT_EOE = 1320
# record types named in by_type (others as numbers)
TYPE_NAMES = {1300: 'SYSCALL', 1302: 'PATH', 1306: 'SOCKADDR', 1307: 'CWD', 1309: 'EXECVE',
              1320: 'EOE', 1327: 'PROCTITLE', 1305: 'CONFIG_CHANGE', 1335: 'EVENT_LISTENER',
              1100: 'USER_AUTH', 1101: 'USER_ACCT', 1104: 'CRED_ACQ', 1105: 'USER_START',
              1106: 'USER_END', 1112: 'USER_LOGIN', 1130: 'SERVICE_START', 1131: 'SERVICE_STOP',
              1331: 'BPF', 1334: 'BPF', 1325: 'NETFILTER_CFG', 1400: 'AVC'}
# receive buffer asked for (SO_RCVBUFFORCE as root; memory is only taken while records wait):
# a record's copy takes ~1-3 KiB of it, so 32 MiB holds a burst of ~10k records or more
DEFAULT_RCVBUF = 32 << 20
TOP = 10
# record stamps come from a coarse clock (one jiffy, up to 10 ms at HZ=100, behind)
STAMP_SLACK_MS = 10
# pauses in delivery shorter than this are not drain gaps
GAP_MIN_MS = 10
# serial -> talker memory for the records that follow an event's SYSCALL record
_MAX_OPEN_EVENTS = 4096
_NLMSGHDR = struct.Struct('=IHHII')


class ReadlogError(Exception):
    """The multicast group cannot be read here; ``errno`` when the kernel said why."""

    def __init__(self, message, err=None):
        super(ReadlogError, self).__init__(message)
        self.errno = err


# -- pure parsing ---------------------------------------------------------------

def _field(payload, name):
    """Raw value of `` name=`` in a record (up to the next space), or None."""
    start = payload.find(name)
    if start < 0:
        return None
    start += len(name)
    if payload[start:start + 1] == b'"':
        end = payload.find(b'"', start + 1)
        return payload[start:end + 1] if end > 0 else payload[start:]
    end = payload.find(b' ', start)
    return payload[start:] if end < 0 else payload[start:end]


def decode_value(raw):
    """An audit text value: ``"text"``, hex-encoded text, or ``(null)`` -> str or None."""
    if raw is None or raw in (b'(null)', b'(none)', b'?'):
        return None
    if raw[:1] == b'"':
        return raw[1:-1].decode('utf-8', 'replace') if raw.endswith(b'"') and len(raw) > 1 \
            else raw[1:].decode('utf-8', 'replace')
    try:
        return bytes.fromhex(raw.decode('ascii')).decode('utf-8', 'replace')
    except ValueError:
        return raw.decode('utf-8', 'replace')


def max_in_span(ms_counts, span_ms):
    """Largest number of records stamped within any ``span_ms`` (``{ms: count}`` in, int out)."""
    if not ms_counts:
        return 0
    span_ms = max(1, int(span_ms))
    stamps = sorted(ms_counts)
    best = total = 0
    low = 0
    for stamp in stamps:
        total += ms_counts[stamp]
        while stamps[low] <= stamp - span_ms:
            total -= ms_counts[stamps[low]]
            low += 1
        if total > best:
            best = total
    return best


def active_time(ms_counts):
    """(ms the records were made in, records stamped then): the distinct stamps x the smallest step
    between them (the stamp clock's tick: the stamps come from a coarse clock, one jiffy), so a task
    asleep in audit_log_start, making no records, adds no time. (None, records) with fewer than two
    distinct stamps (no step to measure)."""
    stamps = sorted(ms_counts)
    records = sum(ms_counts.values())
    steps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
    if not steps:
        return None, records
    return len(stamps) * min(steps), records


class RecordCounter:
    """Counts records per talker; ``feed(msg_type, payload, received_ms)`` for each record.

    ``received_ms``: wall-clock ms when the datagram arrived (for the drain gaps). The
    per-record path only slices bytes and counts (a reader at 10k records/s must stay
    cheap); values are decoded once per distinct talker in ``summary``.
    """

    def __init__(self):
        self.talkers = {}          # raw (arch, syscall, uid, exe... tail) or type -> [events, records]
        self.by_type = {}
        self.stamps = {}           # raw stamp b'1764590000.123' -> records made then
        self.open_events = {}      # serial -> raw talker (the records after an event's SYSCALL)
        self.records = 0
        self.events = 0
        self.unparsed = 0
        self.text_bytes = 0        # the records' text as the kernel made it (netlink payloads)
        self.last_received_ms = None
        self.max_gap_ms = 0.0      # longest wait of a record while nothing was delivered
        self.gaps = 0              # such waits of GAP_MIN_MS or more
        # the event of the last record: its b'audit(STAMP:SERIAL)' header, stamp, serial and
        # talker counts (the fast path for the records that follow it)
        self._prefix = None
        self._stamp = self._serial = self._entry = None

    def feed_next(self, data, received_ms):
        """Fast path for a whole datagram (netlink header included) holding the next record of
        the event seen last: True when counted, False when ``feed`` must take it."""
        prefix = self._prefix
        if prefix is None or not data.startswith(prefix, 16) or received_ms - self.last_received_ms >= GAP_MIN_MS:
            return False
        length = int.from_bytes(data[:4], 'little')
        if length + 3 < len(data):
            return False
        msg_type = data[4] | data[5] << 8
        if msg_type == AUDIT_SYSCALL:
            return False
        self.records += 1
        self.text_bytes += length - 16
        by_type = self.by_type
        by_type[msg_type] = by_type.get(msg_type, 0) + 1
        self._entry[1] += 1
        self.stamps[self._stamp] += 1
        self.last_received_ms = received_ms
        if msg_type == AUDIT_EOE:
            self.open_events.pop(self._serial, None)
            self._prefix = None
        return True

    def feed(self, msg_type, payload, received_ms):
        self.records += 1
        self.text_bytes += len(payload)
        by_type = self.by_type
        by_type[msg_type] = by_type.get(msg_type, 0) + 1
        colon = payload.find(b':', 6)
        close = payload.find(b')', colon)
        if colon < 0 or close < 0 or not payload.startswith(b'audit('):
            self.unparsed += 1
            self._count(('type', msg_type), True)
            return
        stamp = payload[6:colon]
        stamps = self.stamps
        stamps[stamp] = stamps.get(stamp, 0) + 1
        last = self.last_received_ms
        self.last_received_ms = received_ms
        if last is not None and received_ms - last >= GAP_MIN_MS:
            self._gap(stamp, last, received_ms)
        serial = payload[colon + 1:close]
        if msg_type == AUDIT_SYSCALL:
            arch = payload.find(b' arch=', close)
            nr = payload.find(b' syscall=', arch)
            uid = payload.find(b' uid=', nr)
            exe = payload.find(b' exe=', uid)
            talker = (payload[arch + 6:payload.find(b' ', arch + 6)],
                      payload[nr + 9:payload.find(b' ', nr + 9)],
                      payload[uid + 5:payload.find(b' ', uid + 5)],
                      payload[exe:] if exe >= 0 else b'')
            events = self.open_events
            if len(events) >= _MAX_OPEN_EVENTS:
                events.pop(next(iter(events)))
            events[serial] = talker
            self._remember(payload[:close + 1], stamp, serial, self._count(talker, True))
            return
        talker = self.open_events.get(serial)
        if talker is None:
            # a record of no syscall event (user space messages, config changes): its type
            self._count(('type', msg_type), msg_type != AUDIT_EOE)
            self._prefix = None
            return
        entry = self._count(talker, False)
        if msg_type == AUDIT_EOE:
            del self.open_events[serial]
            self._prefix = None
        else:
            self._remember(payload[:close + 1], stamp, serial, entry)

    def _remember(self, prefix, stamp, serial, entry):
        self._prefix, self._stamp, self._serial, self._entry = prefix, stamp, serial, entry

    def _gap(self, stamp, last, received_ms):
        """A pause in delivery: how long this record waited with nothing delivered, from the
        later of the previous delivery and its own (coarse) stamp."""
        try:
            made = float(stamp) * 1000.0 + STAMP_SLACK_MS
        except ValueError:
            return
        gap = received_ms - max(last, made)
        if gap > self.max_gap_ms:
            self.max_gap_ms = gap
        if gap >= GAP_MIN_MS:
            self.gaps += 1

    def _count(self, talker, new_event):
        entry = self.talkers.get(talker)
        if entry is None:
            entry = self.talkers[talker] = [0, 0]
        entry[1] += 1
        if new_event:
            entry[0] += 1
            self.events += 1
        return entry

    def rows(self, machine=None):
        """One row per talker: {key, syscall, exe, uid, events, records} (decoded)."""
        rows = []
        for raw, (events, records) in self.talkers.items():
            if raw[0] == 'type':
                rows.append({'key': 'type:%s' % TYPE_NAMES.get(raw[1], raw[1]), 'syscall': None,
                             'exe': None, 'uid': None, 'events': events, 'records': records})
                continue
            arch, nr, uid, tail = raw
            try:
                arch_value = int(arch, 16)
                table = audit_arch(arch_value)[1]
            except ValueError:
                table = None
            try:
                name = syscall_name(table, int(nr)) if table else nr.decode('ascii', 'replace')
            except ValueError:
                name = nr.decode('ascii', 'replace')
            key = decode_value(_field(tail, b' key='))
            if key is not None and '\x01' in key:
                key = next((part for part in key.split('\x01') if part), None)
            try:
                uid_value = int(uid)
            except ValueError:
                uid_value = None
            rows.append({'key': key, 'syscall': name, 'exe': decode_value(_field(tail, b' exe=')),
                         'uid': uid_value, 'events': events, 'records': records})
        return rows

    def ms_counts(self):
        """{ms: records made then} from the raw stamps."""
        out = {}
        for stamp, count in self.stamps.items():
            try:
                ms = int(round(float(stamp) * 1000.0))
            except ValueError:
                continue
            out[ms] = out.get(ms, 0) + count
        return out

    def log_chars_per_record(self):
        """The bytes of a record as auditd's raw log line (``type=NAME msg=`` + the kernel's text + a newline),
        averaged over the window's records; None without records. An ENRICHED log adds interpreted fields."""
        if not self.records:
            return None
        framing = sum(count * (len(TYPE_NAMES.get(t, 'UNKNOWN[%d]' % t)) + len('type= msg=\n'))
                      for t, count in self.by_type.items())
        return round((self.text_bytes + framing) / float(self.records), 1)

    def summary(self, seconds, top=TOP, machine=None, user_names=None):
        """The contract's ``record_rates`` for a window of ``seconds`` (pure).

        ``user_names``: {uid: name}, or a callable taking the uids and returning that.
        """
        rows = self.rows(machine)
        if callable(user_names):
            names = user_names(set(row['uid'] for row in rows if row['uid'] is not None))
        else:
            names = user_names or {}

        def per_s(count):
            return round(count / seconds, 2) if seconds > 0 else None

        def share(count):
            return round(count / float(self.records), 4) if self.records else None

        def ranked(field):
            totals = {}
            for row in rows:
                entry = totals.setdefault(row[field], [0, 0])
                entry[0] += row['events']
                entry[1] += row['records']
            out = [{field: value, 'events': ev, 'records': rec, 'records_per_s': per_s(rec),
                    'share': share(rec)} for value, (ev, rec) in totals.items()]
            out.sort(key=lambda r: (-r['records'], str(r[field])))
            return out[:top]
        talkers = sorted(rows, key=lambda r: (-r['records'], str(r['key']), str(r['syscall']), str(r['exe'])))[:top]
        for row in talkers:
            row.update(user=names.get(row['uid']), records_per_s=per_s(row['records']),
                       events_per_s=per_s(row['events']), share=share(row['records']))
        by_user = ranked('uid')
        for row in by_user:
            row['user'] = names.get(row['uid'])
        stamps = self.ms_counts()
        gap_ms = int(round(self.max_gap_ms)) if self.max_gap_ms >= GAP_MIN_MS else 0
        if seconds >= 1:
            peak = max_in_span(stamps, 1000)
        else:
            peak = round(max_in_span(stamps, seconds * 1000) / seconds, 2) if seconds > 0 else None
        active_ms, stamped = active_time(stamps)
        return {
            'seconds': round(seconds, 3),
            'records': self.records,
            'active_ms': active_ms,
            'active_records_per_s': round(stamped * 1000.0 / active_ms, 2) if active_ms else None,
            'events': self.events,
            'records_per_s': per_s(self.records),
            'events_per_s': per_s(self.events),
            'records_per_event': round(self.records / float(self.events), 3) if self.events else None,
            'log_chars_per_record': self.log_chars_per_record(),
            'peak_records_per_s': peak,
            'drain_gap_max_ms': gap_ms,
            'drain_gaps': self.gaps,
            'burst_records': max_in_span(stamps, gap_ms) if gap_ms else None,
            'unparsed': self.unparsed,
            'by_key': ranked('key'),
            'by_syscall': ranked('syscall'),
            'by_exe': ranked('exe'),
            'by_user': by_user,
            'by_type': sorted(({'type': TYPE_NAMES.get(t, str(t)), 'records': n} for t, n in self.by_type.items()),
                              key=lambda r: (-r['records'], r['type']))[:top],
            'top_talkers': talkers,
        }


def user_names(uids):
    """{uid: login name} for the uids this host knows (others left out)."""
    names = {}
    try:
        import pwd
    except ImportError:  # pragma: no cover - not Linux
        return names
    for uid in uids:
        if uid is None or uid < 0 or uid == 4294967295:
            continue
        try:
            names[uid] = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            continue
    return names


# -- socket -------------------------------------------------------------------------

class ReadlogSocket(SocketOwner):
    """A NETLINK_AUDIT socket joined to AUDIT_NLGRP_READLOG (root / CAP_AUDIT_READ).

    ``read_for(seconds)`` reads and counts records for that long (the sample loop's wait
    between status reads); ``overruns`` counts ENOBUFS: this reader lost some of its copies.
    """

    def __init__(self, rcvbuf=DEFAULT_RCVBUF, counter=None, clock=time.time):
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except (OSError, AttributeError) as err:
            raise ReadlogError('cannot open a NETLINK_AUDIT socket: %s' % err, getattr(err, 'errno', None))
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, 'SO_RCVBUFFORCE', 33), int(rcvbuf))
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(rcvbuf))
            # bound to a port id (the kernel's broadcast skips port id 0, its own) and to the
            # group; binding to a group runs the kernel's audit_bind (CAP_AUDIT_READ)
            self.sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
            self.sock.setblocking(False)
        except OSError as err:
            self.sock.close()
            hint = ' (needs CAP_AUDIT_READ)' if err.errno == errno.EPERM else ''
            raise ReadlogError('cannot join the audit multicast group AUDIT_NLGRP_READLOG: %s%s'
                               % (os.strerror(err.errno or 0), hint), err.errno)
        self.counter = counter if counter is not None else RecordCounter()
        self.clock = clock
        self.overruns = 0
        self.datagrams = 0

    def drain(self):
        """Read every datagram queued now; returns how many."""
        recv = self.sock.recv
        feed = self.counter.feed
        feed_next = self.counter.feed_next
        unpack = _NLMSGHDR.unpack_from
        clock = self.clock
        count = 0
        while True:
            try:
                data = recv(65536)
            except BlockingIOError:
                return count
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            count += 1
            self.datagrams += 1
            now_ms = clock() * 1000.0
            size = len(data)
            if size < 16 or feed_next(data, now_ms):
                continue
            length, msg_type, _flags, _seq, _pid = unpack(data)
            if length == size or length + 3 & ~3 == size:
                feed(msg_type, data[16:length], now_ms)   # one record per datagram: the usual case
                continue
            offset = 0
            while offset + 16 <= size:
                length, msg_type, _flags, _seq, _pid = unpack(data, offset)
                if length < 16 or offset + length > size:
                    break
                feed(msg_type, data[offset + 16:offset + length], now_ms)
                offset += (length + 3) & ~3

    def read_for(self, seconds):
        """Count records for ``seconds`` (a sleep that reads)."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            self.drain()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                select.select([self.sock], [], [], left)
            except InterruptedError:
                continue
