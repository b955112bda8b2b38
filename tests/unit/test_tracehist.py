"""tracehist: the hist trigger commands and the hist parser, on a recorded histogram."""
import errno
import os

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import tracehist
from ansible_collections.auditgap.fleet.plugins.module_utils.syscall_tables import X86_64
from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import syscall_number

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'ftrace')


def test_latency_commands_from_integers_only():
    cmds = tracehist.latency_commands('auditgap_lat_42', [288, 43, 288], pids=[7, 8])
    assert cmds['synthetic'] == 'auditgap_lat_42 u64 lat; long id; int pid'
    assert cmds['enter'] == ('hist:keys=common_pid:ts0=common_timestamp.usecs'
                             ' if (id == 43 || id == 288) && (common_pid == 7 || common_pid == 8)')
    assert cmds['exit'].startswith('hist:keys=common_pid:lat=common_timestamp.usecs-$ts0:'
                                   'onmatch(raw_syscalls.sys_enter).trace(auditgap_lat_42,$lat,id,common_pid)')
    assert cmds['exit'].endswith(' if (id == 43 || id == 288) && (common_pid == 7 || common_pid == 8)')
    assert cmds['hist'].startswith('hist:keys=id.syscall,pid,lat:vals=hitcount')
    every = tracehist.latency_commands('auditgap_lat_42', [288], exclude=[1, 2])
    assert every['enter'].endswith(' if (id == 288) && (common_pid != 1 && common_pid != 2)')
    with pytest.raises(ValueError):
        tracehist.latency_commands('auditgap_lat_42', [])
    with pytest.raises(ValueError):
        tracehist.latency_commands('bad name; rm', [1])
    with pytest.raises(ValueError):
        tracehist.latency_commands('auditgap_lat_42', ['1 || 1'])


def test_hist_trigger_removal_of_written_and_listed_forms():
    assert tracehist.hist_trigger_removal('hist:keys=common_pid:ts0=common_timestamp.usecs') == \
        '!hist:keys=common_pid:ts0=common_timestamp.usecs'
    assert tracehist.hist_trigger_removal('hist:keys=pid:vals=hitcount:sort=hitcount:size=2048 [active]\n') == \
        '!hist:keys=pid:vals=hitcount:sort=hitcount:size=2048'


HIST = '''# event histogram
#
# trigger info: hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id.syscall,lat:size=16384 [active]
#

{ id: sys_read                      [  0], pid:        512, lat:          3 } hitcount:          5
{ id: sys_accept4                   [288], pid:        512, lat:          2 } hitcount:         98
{ id: sys_accept4                   [288], pid:        513, lat:          4 } hitcount:          1
{ id: sys_accept4                   [288], pid:        512, lat:     700000 } hitcount:          1

Totals:
    Hits: 105
    Entries: 4
    Dropped: 0
'''


def test_parse_hist_entries_and_totals():
    parsed = tracehist.parse_hist(HIST)
    assert parsed['hits'] == 105 and parsed['entries_count'] == 4 and parsed['dropped'] == 0
    first = parsed['entries'][0]
    assert first['keys'] == {'id': {'name': 'read', 'nr': 0}, 'pid': 512, 'lat': 3}
    assert first['values'] == {'hitcount': 5}


def test_syscalls_from_hist_same_shape_as_the_event_parser():
    res = tracehist.syscalls_from_hist(tracehist.parse_hist(HIST), ['accept4', 'connect'], X86_64, top=2)
    acc = res['accept4']
    assert acc['count'] == 100
    assert acc['p50_us'] == 2.0 and acc['p99_us'] == 4.0 and acc['max_us'] == 700000.0
    assert acc['total_us'] == 98 * 2 + 4 + 700000
    assert acc['slowest'] == [{'pid': 512, 'ts_s': None, 'duration_us': 700000.0},
                              {'pid': 513, 'ts_s': None, 'duration_us': 4.0}]
    assert res['connect'] == {'count': 0, 'p50_us': None, 'p99_us': None, 'max_us': None,
                              'total_us': 0.0, 'slowest': []}
    assert res['read']['count'] == 5
    assert set(res) == {'accept4', 'connect', 'read'}


def test_syscall_numbers_round_trip():
    assert syscall_number('x86_64', 'accept4') == 288
    assert syscall_number('aarch64', 'accept4') == 242
    assert syscall_number('x86_64', 'no_such_call') is None


def test_synthetic_event_uses_raw_syscalls_own_types():
    """6.1 refuses s64/s32 for raw_syscalls' long id and int common_pid (error_log: "Param
    type doesn't match synthetic event field type")."""
    cmds = tracehist.latency_commands('auditgap_lat_7', [288])
    assert cmds['synthetic'] == 'auditgap_lat_7 u64 lat; long id; int pid'
    assert 's64' not in cmds['synthetic'] and 's32' not in cmds['synthetic']


def test_synthetic_names_and_pids():
    text = 'auditgap_lat_12 u64 lat; long id; int pid\nwakeup_latency u64 lat; pid_t pid\n'
    assert tracehist.synthetic_names(text) == ['auditgap_lat_12', 'wakeup_latency']
    assert tracehist.synth_pid('auditgap_lat_12') == 12
    assert tracehist.synth_pid('wakeup_latency') is None and tracehist.synth_pid('auditgap_lat_1x') is None


def test_refused_command_names_the_kernel_error_log(tmp_path):
    (tmp_path / 'error_log').write_text(
        "[  101.5] hist:raw_syscalls:sys_exit: error: Param type doesn't match synthetic event field type\n"
        "  Command: hist:keys=common_pid:lat=...\n")

    def refuse(path, text):
        raise OSError(22, 'Invalid argument')
    with pytest.raises(tracehist.HistError) as err:
        tracehist.write_command(str(tmp_path), '/t/trigger', 'hist:keys=x', refuse)
    assert "Invalid argument (error_log: [  101.5] hist:raw_syscalls:sys_exit: error: Param type doesn't match" \
        in str(err.value)
    assert "'hist:keys=x' in /t/trigger" in str(err.value)
    written = []
    tracehist.write_command(str(tmp_path), '/t/trigger', 'hist:keys=x', lambda p, t: written.append((p, t)))
    assert written == [('/t/trigger', 'hist:keys=x')]


def _stale_instance(tmp_path):
    """A killed sample's instance with its three triggers as 6.1's trigger files print them."""
    inst = tmp_path / 'instances' / 'auditgap-42'
    texts = {
        'events/raw_syscalls/sys_exit/trigger':
            '# Available triggers:\nhist:keys=common_pid:vals=hitcount:lat=common_timestamp.usecs-$ts0:sort=hitcount'
            ':size=2048:clock=global:onmatch(raw_syscalls.sys_enter).trace(auditgap_lat_42,$lat,id,common_pid)'
            ' if (id == 288) && (common_pid == 7) [active]\n',
        'events/raw_syscalls/sys_enter/trigger':
            'hist:keys=common_pid:vals=hitcount:ts0=common_timestamp.usecs:sort=hitcount:size=2048:clock=global'
            ' if (id == 288) && (common_pid == 7) [active]\n',
        # the sort keys printed with their modifier: 6.1 refuses that back ("Invalid sort modifier")
        'events/synthetic/auditgap_lat_42/trigger':
            'hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id.syscall,lat:size=16384 [active]\n',
    }
    for rel, text in texts.items():
        path = inst / rel
        path.parent.mkdir(parents=True)
        path.write_text(text)
    return inst


def test_stale_cleanup_removes_exit_enter_then_histogram_triggers_as_written(tmp_path):
    """Each trigger is removed with the text this module writes plus the filter the file shows
    (what the journal would have appended): exit, enter, then the synthetic event's histogram."""
    inst = _stale_instance(tmp_path)
    appended = []
    name = tracehist.stale_cleanup(str(inst), 42, lambda p, t: appended.append((os.path.relpath(p, str(inst)), t)),
                                   lambda p: open(p).read())
    assert name == 'auditgap_lat_42'
    written = tracehist.latency_commands('auditgap_lat_42', [288], pids=[7])
    assert appended == [
        ('events/raw_syscalls/sys_exit/trigger', '!' + written['exit']),
        ('events/raw_syscalls/sys_enter/trigger', '!' + written['enter']),
        ('events/synthetic/auditgap_lat_42/trigger', '!' + written['hist']),
    ]


def test_stale_cleanup_falls_back_to_the_printed_form(tmp_path):
    """A trigger the kernel does not match with the written text (another version of this
    module wrote it) is tried again as its file prints it."""
    inst = _stale_instance(tmp_path)
    tried = []

    def append(path, text):
        tried.append(text)
        if len(tried) == 1:
            raise OSError(errno.ENOENT, 'no such trigger')

    tracehist.stale_cleanup(str(inst), 42, append, lambda p: open(p).read())
    assert tried[0].startswith('!hist:keys=common_pid:lat=') and tried[1].startswith('!hist:keys=common_pid:vals=')
    assert tried[1].endswith(' if (id == 288) && (common_pid == 7)')
    assert len(tried) == 4


RECORDED = os.path.join(FIX, 'hist', 'accept4-getppid.6.1.hist')


def test_recorded_hist_of_the_6_1_kernel():
    """A histogram of the module's own triggers recorded live in the ftrace VM (Debian 12,
    kernel 6.1; test_vm_hist_sample_killed_is_recovered_by_journal_and_by_stale_cleanup with
    AUDITGAP_HIST_RECORD, the scenario run with AUDITGAP_VM_RECORD_DIR): the kernel's own
    print format, keys id.syscall, pid and lat."""
    with open(RECORDED) as handle:
        text = handle.read()
    parsed = tracehist.parse_hist(text)
    entries = parsed['entries']
    assert entries and parsed['dropped'] == 0
    assert parsed['entries_count'] == len(entries)
    assert parsed['hits'] == sum(entry['values']['hitcount'] for entry in entries)
    names = {entry['keys']['id']['name'] for entry in entries}
    assert names == {'accept4', 'getppid'}, names
    assert all(isinstance(entry['keys']['pid'], int) and isinstance(entry['keys']['lat'], int) for entry in entries)
    res = tracehist.syscalls_from_hist(parsed, ['accept4', 'getppid'], X86_64)
    assert res['accept4']['count'] >= 50 and res['getppid']['count'] >= 50
    assert res['accept4']['count'] + res['getppid']['count'] == parsed['hits']
    for stats in res.values():
        assert stats['p50_us'] <= stats['p99_us'] <= stats['max_us'] == stats['slowest'][0]['duration_us']
