"""tracehist: the hist trigger commands and the hist parser, on a recorded histogram."""
import errno
import os

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import tracehist
from ansible_collections.auditgap.fleet.plugins.module_utils.syscall_tables import X86_64
from ansible_collections.auditgap.fleet.plugins.module_utils.syscalls import syscall_number

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'ftrace')


def test_latency_commands_one_trigger_pair_per_syscall_on_its_own_events():
    cmds = tracehist.latency_commands('auditgap_lat_42', ['accept4', 'getppid', 'accept4'], pids=[7, 8])
    assert cmds['synthetic'] == 'auditgap_lat_42 u64 lat; int id; int pid'
    # the per-task maps sized for the named tasks (the kernel's smallest), not its default 2048
    where = ':size=128 if (common_pid == 7 || common_pid == 8)'
    assert cmds['triggers'] == [
        ('sys_enter_accept4', 'hist:keys=common_pid:ts0_accept4=common_timestamp.usecs' + where),
        ('sys_exit_accept4', 'hist:keys=common_pid:lat_accept4=common_timestamp.usecs-$ts0_accept4:'
                             'onmatch(syscalls.sys_enter_accept4).trace(auditgap_lat_42,$lat_accept4,'
                             '__syscall_nr,common_pid)' + where),
        ('sys_enter_getppid', 'hist:keys=common_pid:ts0_getppid=common_timestamp.usecs' + where),
        ('sys_exit_getppid', 'hist:keys=common_pid:lat_getppid=common_timestamp.usecs-$ts0_getppid:'
                             'onmatch(syscalls.sys_enter_getppid).trace(auditgap_lat_42,$lat_getppid,'
                             '__syscall_nr,common_pid)' + where),
    ]
    assert cmds['hist'].startswith('hist:keys=id.syscall,pid,lat:vals=hitcount')
    every = tracehist.latency_commands('auditgap_lat_42', ['accept4'], exclude=[1, 2])
    # every task but those: the kernel's default map size
    assert every['triggers'][0][1].endswith(':ts0_accept4=common_timestamp.usecs if (common_pid != 1 && common_pid != 2)')
    assert all(' if ' not in trigger for _event, trigger in tracehist.latency_commands('auditgap_lat_42', ['read'])['triggers'])
    with pytest.raises(ValueError):
        tracehist.latency_commands('auditgap_lat_42', [])
    with pytest.raises(ValueError):
        tracehist.latency_commands('bad name; rm', ['read'])
    for bad in ('read || 1', 'Read', '', 288, 'x' * 65):
        with pytest.raises(ValueError):
            tracehist.latency_commands('auditgap_lat_42', [bad])
    with pytest.raises(ValueError):
        tracehist.latency_commands('auditgap_lat_42', ['read'], pids=['1 || 1'])


def test_per_task_maps_hold_twice_the_named_tasks():
    assert [tracehist.per_task_size(n) for n in (1, 64, 65, 200)] == [128, 128, 256, 512]


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


def test_synthetic_event_uses_the_syscall_events_own_types():
    """6.1 refuses a synthetic field whose type is not the traced field's (error_log: "Param
    type doesn't match synthetic event field type"): the syscall events' ``int __syscall_nr``
    and ``int common_pid``."""
    cmds = tracehist.latency_commands('auditgap_lat_7', ['accept4'])
    assert cmds['synthetic'] == 'auditgap_lat_7 u64 lat; int id; int pid'
    assert 's64' not in cmds['synthetic'] and 'long' not in cmds['synthetic']


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


def _stale_instance(tmp_path, earlier=False):
    """A killed sample's instance with its triggers as 6.1's trigger files print them (two
    syscalls, and other syscall events without a trigger); ``earlier``: the raw_syscalls
    triggers an earlier version of the module hung (no per-syscall ones)."""
    inst = tmp_path / 'instances' / 'auditgap-42'
    where = ' if (common_pid == 7) [active]\n'
    if earlier:
        texts = {
            'events/raw_syscalls/sys_exit/trigger':
                '# Available triggers:\nhist:keys=common_pid:vals=hitcount:lat=common_timestamp.usecs-$ts0'
                ':sort=hitcount:size=2048:clock=global:onmatch(raw_syscalls.sys_enter)'
                '.trace(auditgap_lat_42,$lat,id,common_pid) if (id == 288) && (common_pid == 7) [active]\n',
            'events/raw_syscalls/sys_enter/trigger':
                'hist:keys=common_pid:vals=hitcount:ts0=common_timestamp.usecs:sort=hitcount:size=2048:clock=global'
                ' if (id == 288) && (common_pid == 7) [active]\n',
        }
    else:
        texts = {'events/syscalls/sys_%s_%s/trigger' % (kind, sc): '# Available triggers:\n'
                 for kind in ('enter', 'exit') for sc in ('read', 'write')}
        for sc in ('accept4', 'getppid'):
            # the per-task maps sized for the named task (size=128), as the kernel prints them
            texts['events/syscalls/sys_exit_%s/trigger' % sc] = (
                '# Available triggers:\nhist:keys=common_pid:vals=hitcount:lat_{sc}=common_timestamp.usecs-$ts0_{sc}'
                ':sort=hitcount:size=128:clock=global:onmatch(syscalls.sys_enter_{sc})'
                '.trace(auditgap_lat_42,$lat_{sc},__syscall_nr,common_pid)'.format(sc=sc) + where)
            texts['events/syscalls/sys_enter_%s/trigger' % sc] = (
                'hist:keys=common_pid:vals=hitcount:ts0_%s=common_timestamp.usecs:sort=hitcount:size=128'
                ':clock=global' % sc + where)
    # the sort keys printed with their modifier: 6.1 refuses that back ("Invalid sort modifier")
    texts['events/synthetic/auditgap_lat_42/trigger'] = \
        'hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id.syscall,lat:size=16384 [active]\n'
    for rel, text in texts.items():
        path = inst / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return inst


def test_stale_cleanup_removes_exit_enter_then_histogram_triggers_as_written(tmp_path):
    """Each trigger is removed with the text this module writes plus the filter the file shows
    (what the journal would have appended): every exit trigger, every enter trigger, then the
    synthetic event's histogram."""
    inst = _stale_instance(tmp_path)
    appended = []
    name = tracehist.stale_cleanup(str(inst), 42, lambda p, t: appended.append((os.path.relpath(p, str(inst)), t)),
                                   lambda p: open(p).read())
    assert name == 'auditgap_lat_42'
    written = tracehist.latency_commands('auditgap_lat_42', ['accept4', 'getppid'], pids=[7])
    trigger = dict(written['triggers'])
    assert appended == [
        ('events/syscalls/sys_exit_accept4/trigger', '!' + trigger['sys_exit_accept4']),
        ('events/syscalls/sys_exit_getppid/trigger', '!' + trigger['sys_exit_getppid']),
        ('events/syscalls/sys_enter_accept4/trigger', '!' + trigger['sys_enter_accept4']),
        ('events/syscalls/sys_enter_getppid/trigger', '!' + trigger['sys_enter_getppid']),
        ('events/synthetic/auditgap_lat_42/trigger', '!' + written['hist']),
    ]


def test_stale_cleanup_of_an_earlier_versions_raw_syscalls_triggers(tmp_path):
    """A sample of an earlier version hung its triggers on raw_syscalls: they go by their
    printed form, exit before enter, then the histogram."""
    inst = _stale_instance(tmp_path, earlier=True)
    appended = []
    tracehist.stale_cleanup(str(inst), 42, lambda p, t: appended.append((os.path.relpath(p, str(inst)), t)),
                            lambda p: open(p).read())
    assert [(path, text[:22]) for path, text in appended] == [
        ('events/raw_syscalls/sys_exit/trigger', '!hist:keys=common_pid:'),
        ('events/raw_syscalls/sys_enter/trigger', '!hist:keys=common_pid:'),
        ('events/synthetic/auditgap_lat_42/trigger', '!hist:keys=id.syscall,'),
    ]
    assert appended[0][1].endswith('.trace(auditgap_lat_42,$lat,id,common_pid) if (id == 288) && (common_pid == 7)')


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
    assert tried[0].startswith('!hist:keys=common_pid:lat_accept4=') and tried[1].startswith('!hist:keys=common_pid:vals=')
    assert tried[1].endswith(' if (common_pid == 7)')
    assert len(tried) == 6


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


def test_stale_removal_of_a_sample_of_every_task_has_no_size():
    """Without named tasks the per-task maps keep the kernel's default size (printed as 2048):
    the text written back is the one the sample wrote."""
    written = dict(tracehist.latency_commands('auditgap_lat_42', ['read'], exclude=[1])['triggers'])
    printed = ('hist:keys=common_pid:vals=hitcount:ts0_read=common_timestamp.usecs:sort=hitcount:size=2048'
               ':clock=global if (common_pid != 1) [active]')
    assert tracehist.stale_removals('auditgap_lat_42', 'enter', printed, 'read')[0] == '!' + written['sys_enter_read']
