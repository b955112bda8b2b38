"""ftrace_sample's choice between the kernel's histogram and the events (aggregation), and
the stale synthetic events of dead samples, on a tracefs tree built in a temporary directory
(this machine's kernel has no hist triggers; the ftrace VM scenario runs them live)."""
import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs
from ansible_collections.auditgap.fleet.plugins.modules import ftrace_sample as fs


def _tracefs(tmp_path, hist=True):
    (tmp_path / 'events' / 'raw_syscalls' / 'sys_enter').mkdir(parents=True)
    if hist:
        (tmp_path / 'synthetic_events').write_text('')
        (tmp_path / 'events' / 'raw_syscalls' / 'sys_enter' / 'hist').write_text('')
    return str(tmp_path)


def test_events_asked_or_no_syscall_is_events_without_a_note(tmp_path):
    root = _tracefs(tmp_path)
    assert fs.choose_aggregation('events', root, ['accept4']) == ('events', None)
    assert fs.choose_aggregation('auto', root, []) == ('events', None)


def test_auto_uses_hist_where_the_kernel_allows_it(tmp_path):
    # no machine or syscall table in the choice: the kernel names the syscalls in the histogram
    assert fs.choose_aggregation('auto', _tracefs(tmp_path), ['accept4', 'read']) == ('hist', None)


def test_auto_falls_back_with_the_reason_and_hist_refuses(tmp_path):
    root = _tracefs(tmp_path, hist=False)
    mode, note = fs.choose_aggregation('auto', root, ['accept4'])
    assert mode == 'events' and note.startswith('the kernel has no hist triggers'), note
    with pytest.raises(fs.SampleError) as err:
        fs.choose_aggregation('hist', root, ['accept4'])
    assert str(err.value) == 'aggregation hist: %s; nothing changed' % note


def test_stale_synthetic_events_of_dead_samples_only(tmp_path, monkeypatch):
    (tmp_path / 'synthetic_events').write_text(
        'auditgap_lat_10 u64 lat; long id; int pid\nauditgap_lat_11 u64 lat; long id; int pid\n'
        'wakeup_latency u64 lat; pid_t pid\n')
    appended = []
    monkeypatch.setattr(tracefs, '_append', lambda path, text: appended.append(text))
    assert tracefs.stale_synthetics(str(tmp_path), alive=lambda pid: pid == 11) == ['auditgap_lat_10']
    assert tracefs.remove_stale_instances(str(tmp_path), alive=lambda pid: pid == 11) == ['auditgap_lat_10']
    assert appended == ['!auditgap_lat_10']
    with pytest.raises(tracefs.TracefsError):
        tracefs.remove_synthetic(str(tmp_path), 'wakeup_latency')


def _killed_hist_sample(tmp_path, monkeypatch, busy=False):
    """tracefs with a dead sample's instance, its triggers and its synthetic event; the kernel's
    file writes and rmdir recorded in order (``busy``: deleting the synthetic event fails with
    EBUSY, as 6.1 does once its histogram trigger went with an rmdir instead of a ``!hist``)."""
    import errno
    import os
    (tmp_path / 'synthetic_events').write_text('auditgap_lat_42 u64 lat; long id; int pid\n')
    inst = tmp_path / 'instances' / 'auditgap-42'
    trigger = inst / 'events' / 'synthetic' / 'auditgap_lat_42' / 'trigger'
    trigger.parent.mkdir(parents=True)
    trigger.write_text('hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id.syscall,lat:size=16384 [active]\n')
    done = []

    def append(path, text):
        if busy and path.endswith('synthetic_events'):
            raise OSError(errno.EBUSY, 'Device or resource busy')
        done.append((os.path.relpath(path, str(tmp_path)), text))
        if path.endswith('synthetic_events'):
            with open(path) as handle:
                kept = [line for line in handle if line.split()[0] != text[1:]]
            with open(path, 'w') as handle:
                handle.write(''.join(kept))

    real_rmdir = os.rmdir

    def rmdir(path):
        done.append(('rmdir', os.path.relpath(path, str(tmp_path))))
        for top, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(top, name))
            for name in dirs:
                real_rmdir(os.path.join(top, name))
        real_rmdir(path)

    monkeypatch.setattr(tracefs, '_append', append)
    monkeypatch.setattr(tracefs, 'write_value', lambda path, value: None)
    monkeypatch.setattr(tracefs.os, 'rmdir', rmdir)
    return done


def test_a_dead_samples_synthetic_event_goes_before_its_instance(tmp_path, monkeypatch):
    """The journal's order, which 6.1 takes (a VM run of the stale path found the other order
    failing): the histogram trigger removed with a ``!hist``, the synthetic event deleted, then
    the instance removed."""
    done = _killed_hist_sample(tmp_path, monkeypatch)
    assert tracefs.remove_stale_instances(str(tmp_path), alive=lambda pid: False) == ['auditgap-42']
    assert [step[0] for step in done] == ['instances/auditgap-42/events/synthetic/auditgap_lat_42/trigger',
                                          'synthetic_events', 'rmdir']
    assert done[0][1] == '!hist:keys=id.syscall,pid,lat:vals=hitcount:sort=id,lat:size=16384'
    assert done[1][1] == '!auditgap_lat_42'


def test_a_synthetic_event_the_kernel_keeps_busy_does_not_fail_the_sample(tmp_path, monkeypatch):
    _killed_hist_sample(tmp_path, monkeypatch, busy=True)
    errors = []
    assert tracefs.remove_stale_instances(str(tmp_path), alive=lambda pid: False, errors=errors) == []
    # reported once, under the instance's name (not again as a synthetic event left on its own)
    assert len(errors) == 1 and errors[0].startswith('auditgap-42: ') and 'busy' in errors[0], errors
    assert not (tmp_path / 'instances' / 'auditgap-42').exists()
    with pytest.raises(OSError):
        tracefs.remove_stale_instances(str(tmp_path), alive=lambda pid: False)
