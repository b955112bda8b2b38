"""The netlink audit codec on reply bytes: no root, no kernel."""
import errno
import os
import struct

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, syscalls

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'audit')


def fixture_bytes(name):
    with open(os.path.join(FIXTURES, name), 'rb') as handle:
        return handle.read()


def fixture_text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def status_payload(n_fields, **values):
    names = auditnl.STATUS_FIELDS[:n_fields]
    return struct.pack('=%dI' % n_fields, *[values.get(name, 0) for name in names])


# -- framing ----------------------------------------------------------------

def test_encode_nlmsg_header_and_padding():
    data = auditnl.encode_nlmsg(auditnl.AUDIT_GET, b'abc', auditnl.NLM_F_REQUEST, seq=7)
    length, msg_type, flags, seq, pid = struct.unpack_from('=IHHII', data)
    assert (length, msg_type, flags, seq, pid) == (19, 1000, 1, 7, 0)
    assert len(data) == 20 and data[16:] == b'abc\0'


def test_iter_nlmsgs_splits_aligned_messages_and_stops_on_truncation():
    data = (auditnl.encode_nlmsg(1000, b'x', seq=1) + auditnl.encode_nlmsg(3, b'', seq=2))
    msgs = list(auditnl.iter_nlmsgs(data))
    assert [(m[0], m[2], m[4]) for m in msgs] == [(1000, 1, b'x'), (3, 2, b'')]
    assert list(auditnl.iter_nlmsgs(data[:10])) == []
    # a header claiming more bytes than the datagram holds is ignored
    bad = struct.pack('=IHHII', 400, 1000, 0, 1, 0) + b'\0' * 8
    assert list(auditnl.iter_nlmsgs(bad)) == []


def test_decode_error():
    assert auditnl.decode_error(struct.pack('=i', -errno.EPERM) + b'\0' * 16) == errno.EPERM
    assert auditnl.decode_error(struct.pack('=i', 0)) == 0
    assert auditnl.decode_error(b'') == errno.EIO


# -- status -----------------------------------------------------------------

def test_decode_status_real_reply_from_6_18():
    msgs = list(auditnl.iter_nlmsgs(fixture_bytes('netlink-status.6.18.bin')))
    assert msgs[0][0] == auditnl.AUDIT_GET
    status = auditnl.decode_status(msgs[0][4])
    assert status['failure'] == 1
    assert status['backlog_limit'] == 64
    assert status['feature_bitmap'] == 127
    assert status['backlog_wait_time'] == 15000
    assert status['backlog_wait_time_actual'] is not None
    assert 'mask' not in status


def test_decode_status_full_reply():
    payload = status_payload(11, enabled=1, failure=1, pid=6398, backlog_limit=64, lost=4,
                             backlog=3, feature_bitmap=0x7f, backlog_wait_time=250,
                             backlog_wait_time_actual=12828)
    status = auditnl.decode_status(payload)
    assert status == {'enabled': 1, 'failure': 1, 'pid': 6398, 'rate_limit': 0,
                      'backlog_limit': 64, 'lost': 4, 'backlog': 3, 'feature_bitmap': 0x7f,
                      'backlog_wait_time': 250, 'backlog_wait_time_actual': 12828}


def test_status_dict_is_the_struct_in_field_order():
    """The fast decoder's keys are the struct's fields after the mask, in order, each with its value."""
    values = list(range(101, 101 + len(auditnl.STATUS_FIELDS)))
    payload = struct.pack('=%dI' % len(values), *values)
    status = auditnl.decode_status(payload)
    assert list(status) == list(auditnl.STATUS_FIELDS[1:])
    assert list(status.values()) == values[1:]


@pytest.mark.parametrize('n_fields,missing', [
    (10, ['backlog_wait_time_actual']),                          # 3.14 .. 5.9
    (9, ['backlog_wait_time', 'backlog_wait_time_actual']),      # 3.12 .. 3.13
    (8, ['feature_bitmap', 'backlog_wait_time', 'backlog_wait_time_actual']),
])
def test_decode_status_short_reply_of_older_kernels(n_fields, missing):
    status = auditnl.decode_status(status_payload(n_fields, enabled=1, backlog_limit=320))
    assert status['enabled'] == 1 and status['backlog_limit'] == 320
    for name in missing:
        assert status[name] is None


def test_decode_status_partial_trailing_field_is_absent():
    status = auditnl.decode_status(status_payload(10) + b'\1\0')
    assert status['backlog_wait_time_actual'] is None


def test_decode_status_too_short_raises_value_error():
    with pytest.raises(ValueError):
        auditnl.decode_status(b'\0' * 20)


def test_features_from_bitmap():
    assert auditnl.features_from_bitmap(0x7f) == [
        'backlog_limit', 'backlog_wait_time', 'executable_path', 'exclude_extend',
        'sessionid_filter', 'lost_reset', 'filter_fs']
    assert auditnl.features_from_bitmap(0x3 | 0x400) == ['backlog_limit', 'backlog_wait_time', 'bit_10']
    assert auditnl.features_from_bitmap(None) == []


# -- set_status encoding and validation ---------------------------------------

def test_validate_status_fields_mask_bits():
    mask, values = auditnl.validate_status_fields(
        {'enabled': 1, 'failure': 1, 'pid': 42, 'rate_limit': 0, 'backlog_limit': 64,
         'backlog_wait_time': 250})
    assert mask == 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20
    assert values['backlog_wait_time'] == 250
    assert auditnl.validate_status_fields({'backlog_limit': 64}) == (0x10, {'backlog_limit': 64})
    assert auditnl.validate_status_fields({'backlog_wait_time': 250, 'rate_limit': None}) == (
        0x20, {'backlog_wait_time': 250})
    assert auditnl.validate_status_fields({'backlog_limit': '8192'}) == (0x10, {'backlog_limit': 8192})


@pytest.mark.parametrize('fields,message', [
    ({'enabled': 2}, 'allow_immutable'),
    ({'enabled': 3}, 'enabled must be 0, 1 or 2'),
    ({'failure': 5}, 'failure must be'),
    ({'backlog_limit': -1}, 'between 0 and'),
    ({'backlog_limit': 1 << 32}, 'between 0 and'),
    ({'backlog_limit': 'lots'}, 'must be an integer'),
    ({'backlog_limit': True}, 'must be an integer'),
    ({'lost': 0}, 'cannot set'),
    ({'backlog': 1}, 'cannot set'),
])
def test_validate_status_fields_refuses_bad_input(fields, message):
    with pytest.raises(ValueError) as err:
        auditnl.validate_status_fields(fields)
    assert message in str(err.value)


def test_enabled_2_only_when_explicitly_allowed():
    assert auditnl.validate_status_fields({'enabled': 2}, allow_immutable=True) == (0x1, {'enabled': 2})


def test_set_status_refuses_before_touching_a_socket(monkeypatch):
    def no_socket(*args, **kwargs):
        raise AssertionError('no socket may be opened for refused input')
    monkeypatch.setattr(auditnl, 'AuditSocket', no_socket)
    with pytest.raises(ValueError):
        auditnl.set_status(enabled=2)
    with pytest.raises(ValueError):
        auditnl.set_status(pid=1234)  # pid needs the consumer's own socket


def test_encode_status_round_trip():
    payload = auditnl.encode_status(0x30, backlog_limit=64, backlog_wait_time=250)
    assert len(payload) == auditnl.STATUS_SIZE == 44
    assert struct.unpack_from('=I', payload)[0] == 0x30
    status = auditnl.decode_status(payload)
    assert status['backlog_limit'] == 64 and status['backlog_wait_time'] == 250
    assert status['enabled'] == 0


class FakeSock:
    """Stands in for the netlink socket: answers like the kernel does."""

    def __init__(self, status, refuse_mask=0, refuse_errno=errno.EINVAL):
        self.status = dict(status)
        self.refuse_mask = refuse_mask
        self.refuse_errno = refuse_errno
        self.sent = []
        self.pending = []

    def send(self, data):
        (_len, msg_type, _flags, seq, _pid), payload = struct.unpack_from('=IHHII', data), data[16:]
        self.sent.append((msg_type, payload))
        if msg_type == auditnl.AUDIT_GET:
            body = auditnl.encode_status(0, **self.status)
            # an unrelated audit record first, as a registered consumer would see
            self.pending.append(auditnl.encode_nlmsg(1300, b'type=SYSCALL', 0, seq=0))
            self.pending.append(auditnl.encode_nlmsg(auditnl.AUDIT_GET, body, 0, seq=seq))
        elif msg_type == auditnl.AUDIT_SET:
            fields = struct.unpack_from('=11I', payload)
            mask = fields[0]
            err = 0
            for name, bit in auditnl.SETTABLE:   # applied in order, like the kernel
                if not mask & bit:
                    continue
                if bit & self.refuse_mask:
                    err = self.refuse_errno
                    break
                self.status[name] = fields[auditnl.STATUS_FIELDS.index(name)]
            self.pending.append(auditnl.encode_nlmsg(
                auditnl.NLMSG_ERROR, struct.pack('=i', -err) + data[:16], 0, seq=seq))
        return len(data)

    def recv(self, size):
        return self.pending.pop(0)

    def close(self):
        pass


def fake_socket(fake):
    sock = auditnl.AuditSocket.__new__(auditnl.AuditSocket)
    sock.sock = fake
    sock.timeout_s = 1.0
    sock._seq = 0
    sock.unsolicited = 0
    return sock


BASE = {'enabled': 1, 'failure': 1, 'pid': 0, 'rate_limit': 0, 'backlog_limit': 8192,
        'lost': 0, 'backlog': 0, 'feature_bitmap': 0x7f, 'backlog_wait_time': 15000,
        'backlog_wait_time_actual': 0}


def test_set_status_sends_mask_and_returns_previous():
    fake = FakeSock(BASE)
    before = fake_socket(fake).set_status(backlog_limit=64, backlog_wait_time=250)
    assert before['backlog_limit'] == 8192
    assert fake.status['backlog_limit'] == 64 and fake.status['backlog_wait_time'] == 250
    set_msgs = [payload for msg_type, payload in fake.sent if msg_type == auditnl.AUDIT_SET]
    assert len(set_msgs) == 1
    assert struct.unpack_from('=I', set_msgs[0])[0] == 0x10 | 0x20


def test_set_status_rolls_back_when_kernel_refuses_part():
    fake = FakeSock(BASE, refuse_mask=auditnl.AUDIT_STATUS_BACKLOG_WAIT_TIME)
    with pytest.raises(auditnl.AuditNetlinkError) as err:
        fake_socket(fake).set_status(backlog_limit=64, backlog_wait_time=999999)
    assert err.value.errno == errno.EINVAL
    assert 'refused' in str(err.value)
    # backlog_limit had been applied by the kernel before the refusal: set back
    assert fake.status['backlog_limit'] == 8192
    assert fake.status['backlog_wait_time'] == 15000


def test_set_status_refuses_when_kernel_is_locked():
    fake = FakeSock(dict(BASE, enabled=2))
    with pytest.raises(auditnl.AuditNetlinkError) as err:
        fake_socket(fake).set_status(backlog_limit=64)
    assert 'locked' in str(err.value)
    assert not [m for m in fake.sent if m[0] == auditnl.AUDIT_SET]


def test_get_status_skips_unsolicited_records():
    sock = fake_socket(FakeSock(BASE))
    assert sock.get_status()['backlog_limit'] == 8192
    assert sock.unsolicited == 1


def test_reply_deadline_under_a_flood_of_records():
    """A consumer socket flooded with records still gives up waiting for a lost reply."""
    class Flood(FakeSock):
        def send(self, data):
            return len(data)

        def recv(self, size):
            return auditnl.encode_nlmsg(1300, b'type=SYSCALL', 0, seq=0)
    sock = fake_socket(Flood(BASE))
    sock.timeout_s = 0.05
    with pytest.raises(auditnl.AuditNetlinkError) as err:
        sock.get_status()
    assert err.value.errno == errno.ETIMEDOUT and sock.unsolicited > 0


def test_get_status_raises_on_kernel_error():
    class Refusing(FakeSock):
        def send(self, data):
            seq = struct.unpack_from('=IHHII', data)[3]
            self.pending.append(auditnl.encode_nlmsg(
                auditnl.NLMSG_ERROR, struct.pack('=i', -errno.EPERM) + data[:16], 0, seq=seq))
    with pytest.raises(auditnl.AuditNetlinkError) as err:
        fake_socket(Refusing(BASE)).get_status()
    assert err.value.errno == errno.EPERM
    assert 'CAP_AUDIT_CONTROL' in str(err.value)


# -- rules ------------------------------------------------------------------

def rule_payloads(name):
    return [payload for msg_type, _f, _s, _p, payload in auditnl.iter_nlmsgs(fixture_bytes(name))
            if msg_type == auditnl.AUDIT_LIST_RULES]


def test_decode_rules_match_auditctl_l_of_the_same_kernel():
    """The real AUDIT_LIST_RULES reply renders exactly as auditctl -l printed it."""
    rules = [auditnl.decode_rule(p) for p in rule_payloads('netlink-list-rules.probe-rules.bin')]
    expected = fixture_text('auditctl-l.probe-rules.txt').splitlines()
    assert [rule['text'] for rule in rules] == expected


def test_decode_rule_fields():
    rules = [auditnl.decode_rule(p) for p in rule_payloads('netlink-list-rules.probe-rules.bin')]
    watch, everything, lab, compare, b32 = rules
    assert watch['list'] == 'exit' and watch['action'] == 'always'
    assert watch['syscalls'] == ['all']
    assert watch['fields'] == [{'name': 'path', 'op': '=', 'value': '/tmp/auditgap-x'},
                               {'name': 'perm', 'op': '=', 'value': 'wa'}]
    assert watch['key'] == 'auditgap-test-probe2' and watch['arch'] is None
    assert everything['syscalls'] == ['all'] and everything['arch'] == 'b64'
    assert lab['syscalls'] == ['bind', 'listen', 'accept4']
    assert {'name': 'success', 'op': '=', 'value': '1'} in lab['fields']
    assert compare['keys'] == ['auditgap-test-probe3', 'second']
    assert compare['key'] == 'auditgap-test-probe3'
    assert {'name': 'auid', 'op': '>=', 'value': '1000'} in compare['fields']
    assert {'name': 'auid', 'op': '!=', 'value': '-1'} in compare['fields']
    assert {'name': 'exit', 'op': '=', 'value': '-EPERM'} in compare['fields']
    assert {'name': 'compare', 'op': '!=', 'value': 'auid:obj_uid'} in compare['fields']
    assert b32['arch'] == 'b32' and b32['syscalls'] == ['open', 'openat']
    assert {'name': 'dir', 'op': '=', 'value': '/tmp/'} in b32['fields']
    assert {'name': 'exe', 'op': '=', 'value': '/usr/bin/true'} in b32['fields']


def test_decode_rule_too_short():
    with pytest.raises(ValueError):
        auditnl.decode_rule(b'\0' * 100)


def test_decode_rule_synthetic_exclude_list():
    words = [5, 0, 1] + [0xFFFFFFFF] * 64
    fields = [12] + [0] * 63
    values = [1307] + [0] * 63
    flags = [0x40000000] + [0] * 63
    payload = struct.pack('=%dI' % (3 + 64 + 192 + 1), *(words + fields + values + flags + [0]))
    rule = auditnl.decode_rule(payload)
    assert rule['list'] == 'exclude' and rule['action'] == 'never'
    assert rule['syscalls'] == []
    assert rule['text'] == '-a never,exclude -F msgtype=1307'


def synthetic_rule(fields, values, flags, mask, action=2, list_flags=4):
    count = len(fields)
    pad = [0] * (64 - count)
    words = [list_flags, action, count] + mask + fields + pad + values + pad + flags + pad + [0]
    return struct.pack('=%dI' % len(words), *words)


def test_decode_rule_names_syscalls_by_the_rules_arch():
    mask = [1 << 5] + [0] * 63
    rule = auditnl.decode_rule(synthetic_rule([11], [syscalls.AUDIT_ARCH_X86_64], [0x40000000], mask))
    assert rule['arch'] == 'b64' and rule['syscalls'] == ['fstat']
    # AUDIT_ARCH_AARCH64 names its own table whatever the host: auditctl prints it as b64
    rule = auditnl.decode_rule(synthetic_rule([11], [syscalls.AUDIT_ARCH_AARCH64], [0x40000000], mask),
                               machine='x86_64')
    assert rule['arch'] == 'b64' and rule['syscalls'] == ['setxattr']
    assert rule['text'] == '-a always,exit -F arch=b64 -S setxattr'
    # an architecture without a table: the arch as a number, syscalls stay numbers
    rule = auditnl.decode_rule(synthetic_rule([11], [0x80000016], [0x40000000], mask))    # s390x
    assert rule['arch'] == '0x80000016' and rule['syscalls'] == ['5']
    # no arch field: the host's native table, none for a machine without one
    assert auditnl.decode_rule(synthetic_rule([], [], [], mask), machine='aarch64')['syscalls'] == ['setxattr']
    assert auditnl.decode_rule(synthetic_rule([], [], [], mask), machine='ppc64le')['syscalls'] == ['5']
