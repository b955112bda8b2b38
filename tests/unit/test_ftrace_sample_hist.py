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
    assert fs.choose_aggregation('events', root, ['accept4'], 'x86_64') == ('events', None)
    assert fs.choose_aggregation('auto', root, [], 'x86_64') == ('events', None)


def test_auto_uses_hist_where_the_kernel_and_the_table_allow(tmp_path):
    assert fs.choose_aggregation('auto', _tracefs(tmp_path), ['accept4', 'read'], 'x86_64') == ('hist', None)


@pytest.mark.parametrize('hist,machine,syscalls,why', [
    (False, 'x86_64', ['accept4'], 'the kernel has no hist triggers'),
    (True, 's390x', ['accept4'], 'no syscall table for this machine (s390x)'),
    (True, 'aarch64', ['accept4', 'fork'], 'no aarch64 syscall number for fork'),
])
def test_auto_falls_back_with_the_reason_and_hist_refuses(tmp_path, hist, machine, syscalls, why):
    root = _tracefs(tmp_path, hist)
    mode, note = fs.choose_aggregation('auto', root, syscalls, machine)
    assert mode == 'events' and note.startswith(why), note
    with pytest.raises(fs.SampleError) as err:
        fs.choose_aggregation('hist', root, syscalls, machine)
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
