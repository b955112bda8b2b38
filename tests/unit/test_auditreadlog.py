"""Record counting of the audit multicast reader (module_utils/auditreadlog.py), on records
as the kernel sends them (captured on this project's test machine)."""
from ansible_collections.auditgap.fleet.plugins.module_utils import auditreadlog as R

SYSCALL = (b'audit(1796129527.203:%d): arch=c000003e syscall=%d success=yes exit=9102 a0=7fabc61cdcb0 a1=0 '
           b'a2=7fabc68694a0 a3=7fabc622d590 items=0 ppid=9102 pid=9106 auid=4294967295 uid=%d gid=0 euid=0 '
           b'suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="python" '
           b'exe=%s %s')
PROCTITLE = b'audit(1796129527.203:%d): proctitle=2E76656E762F62696E2F707974686F6E'
EOE = b'audit(1796129527.203:%d): '


def event(counter, serial, nr=110, uid=0, exe=b'"/usr/bin/python3.11"', key=b'key="web"', at=0.0, stamp=None):
    made = SYSCALL % (serial, nr, uid, exe, key)
    if stamp is not None:
        made = made.replace(b'1796129527.203', stamp)
    counter.feed(1300, made, at)
    counter.feed(1327, (PROCTITLE % serial).replace(b'1796129527.203', stamp or b'1796129527.203'), at)
    counter.feed(1320, (EOE % serial).replace(b'1796129527.203', stamp or b'1796129527.203'), at)


def test_records_of_an_event_count_for_its_syscall_key_exe_and_user():
    counter = R.RecordCounter()
    for serial in range(10):
        event(counter, serial)
    for serial in range(10, 13):
        event(counter, serial, nr=43, uid=1000, exe=b'"/usr/bin/node"', key=b'key="net"')
    out = counter.summary(2.0, user_names={1000: 'app'})
    assert (out['records'], out['events'], out['records_per_event']) == (39, 13, 3.0)
    assert out['records_per_s'] == 19.5
    top = out['top_talkers'][0]
    assert (top['key'], top['syscall'], top['exe'], top['uid'], top['events'], top['records']) == \
        ('web', 'getppid', '/usr/bin/python3.11', 0, 10, 30)
    assert top['records_per_s'] == 15.0 and top['share'] == round(30 / 39.0, 4)
    second = out['top_talkers'][1]
    assert (second['syscall'], second['user'], second['key']) == ('accept', 'app', 'net')
    assert [r['key'] for r in out['by_key']] == ['web', 'net']
    assert [r['uid'] for r in out['by_user']] == [0, 1000] and out['by_user'][1]['user'] == 'app'
    assert {r['type']: r['records'] for r in out['by_type']} == {'SYSCALL': 13, 'PROCTITLE': 13, 'EOE': 13}


def test_hex_encoded_values_keys_of_several_and_none():
    counter = R.RecordCounter()
    # a key with a space and a rule with two keys arrive hex-encoded (two keys joined by \x01)
    event(counter, 1, exe=b'2F746D702F6D7920617070', key=b'key=' + 'a b\x01second'.encode().hex().upper().encode())
    event(counter, 2, key=b'key=(null)')
    keys = [r['key'] for r in counter.summary(1.0)['top_talkers']]
    assert keys == ['a b', None] or keys == [None, 'a b']
    rows = {r['key']: r for r in counter.summary(1.0)['top_talkers']}
    assert rows['a b']['exe'] == '/tmp/my app'
    assert R.decode_value(b'(null)') is None and R.decode_value(b'"x y"') == 'x y'
    assert R.decode_value(b'zz') == 'zz'  # not hex: left as it is


def test_records_without_a_syscall_are_counted_by_type_and_garbage_does_not_break_it():
    counter = R.RecordCounter()
    counter.feed(1105, b'audit(1796129527.203:5): pid=1 uid=0 msg=\'op=PAM:session_open\'', 0.0)
    counter.feed(1300, b'garbage', 0.0)
    counter.feed(1306, b'audit(1796129527.203:99): saddr=02', 0.0)   # its SYSCALL never seen
    out = counter.summary(1.0)
    keys = {r['key']: r['records'] for r in out['by_key']}
    assert keys == {'type:USER_START': 1, 'type:SYSCALL': 1, 'type:SOCKADDR': 1}
    assert out['unparsed'] == 1 and out['records'] == 3


def test_peak_rate_and_burst_come_from_the_record_stamps():
    counter = R.RecordCounter()
    # 100 events made in the first 100 ms, delivered after a 300 ms pause in delivery
    base = 1796129527000
    counter.feed(1320, b'audit(1796129526.900:1): ', base - 100.0)      # the last delivery before the pause
    for i in range(100):
        stamp = ('%.3f' % ((base + i) / 1000.0)).encode()
        event(counter, 10 + i, stamp=stamp, at=base + 400.0)
    out = counter.summary(2.0)
    assert out['drain_gap_max_ms'] == 400 - 10      # from the later of the last delivery and its stamp + slack
    assert out['drain_gaps'] >= 1
    assert out['burst_records'] == 301               # 100 events x 3 records + the one before, within the gap
    assert out['peak_records_per_s'] == 301


def test_no_gap_while_delivery_keeps_up():
    counter = R.RecordCounter()
    base = 1796129527000
    for i in range(50):
        stamp = ('%.3f' % ((base + 20 * i) / 1000.0)).encode()
        event(counter, i, stamp=stamp, at=base + 20 * i + 1.0)
    out = counter.summary(1.0)
    assert out['drain_gap_max_ms'] == 0 and out['burst_records'] is None


def test_active_rate_counts_only_the_ticks_with_stamps():
    # a coarse clock (4 ms ticks): 12 records in 3 ticks, then the tasks slept 1 s, then 8 in 2 ticks
    counts = {1000: 4, 1004: 4, 1008: 4, 2008: 4, 2012: 4}
    assert R.active_time(counts) == (20, 20)                  # 5 ticks x 4 ms, 20 records
    assert R.active_time({}) == (None, 0) and R.active_time({7: 3}) == (None, 3)
    counter = R.RecordCounter()
    base = 1796129527000
    for i, ms in enumerate((0, 0, 4, 4, 8, 1008)):            # 6 events x 3 records in 4 ticks
        event(counter, i, stamp=('%.3f' % ((base + ms) / 1000.0)).encode(), at=base + 1100.0)
    out = counter.summary(2.0)
    assert out['active_ms'] == 16 and out['active_records_per_s'] == 1125.0   # 18 records / 16 ms
    assert out['records_per_s'] == 9.0                                         # over the 2 s window
    one = R.RecordCounter()
    event(one, 1)
    assert one.summary(1.0)['active_ms'] is None and one.summary(1.0)['active_records_per_s'] is None


def test_max_in_span_boundaries():
    assert R.max_in_span({}, 100) == 0
    assert R.max_in_span({0: 1, 99: 1, 100: 1}, 100) == 2     # [t, t+100) holds 0 and 99, or 99 and 100
    assert R.max_in_span({0: 5}, 0) == 5                      # a span under 1 ms is 1 ms
    assert R.max_in_span({0: 1, 1000: 2, 1500: 3}, 1000) == 5


def test_short_window_peak_is_scaled_to_per_second():
    counter = R.RecordCounter()
    for i in range(10):
        event(counter, i)
    assert counter.summary(0.5)['peak_records_per_s'] == 60.0
    assert counter.summary(0)['records_per_s'] is None


def test_log_chars_per_record_frames_the_kernels_text_as_auditds_raw_line():
    import struct
    counter = R.RecordCounter()
    assert counter.summary(1.0)['log_chars_per_record'] is None
    event(counter, 1)
    made = (SYSCALL % (1, 110, 0, b'"/usr/bin/python3.11"', b'key="web"'), PROCTITLE % 1, EOE % 1)
    lines = [b'type=SYSCALL msg=' + made[0] + b'\n', b'type=PROCTITLE msg=' + made[1] + b'\n',
             b'type=EOE msg=' + made[2] + b'\n']
    assert counter.summary(1.0)['log_chars_per_record'] == round(sum(map(len, lines)) / 3.0, 1)
    # the fast path (a whole datagram of the next record of the event seen last) counts the same text
    fast = R.RecordCounter()
    fast.feed(1300, made[0], 0.0)
    for msg_type, payload in ((1327, made[1]), (1320, made[2])):
        data = struct.pack('<IHHII', 16 + len(payload), msg_type, 0, 0, 0) + payload
        data += b'\0' * (-len(data) % 4)
        assert fast.feed_next(data, 0.0)
    assert fast.summary(1.0)['log_chars_per_record'] == counter.summary(1.0)['log_chars_per_record']
