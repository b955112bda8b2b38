"""systemd drop-in precedence: which drop-in's CPUQuota= counts (pure, no systemd)."""
import os

from ansible_collections.auditgap.fleet.plugins.module_utils import dropins

OURS = '/etc/systemd/system/auditd.service.d/50-auditgap-cpu.conf'
OVERRIDE = '/etc/systemd/system/auditd.service.d/override.conf'
RUNTIME = '/run/systemd/system.control/auditd.service.d/50-CPUQuota.conf'
OURS_TEXT = '# Managed by auditgap\n[Service]\nCPUQuota=50%\n'


def test_unit_section():
    assert dropins.unit_section('auditd.service') == 'Service'
    assert dropins.unit_section('ids.scope') == 'Scope'
    assert dropins.unit_section('machine.slice') == 'Slice'


def test_parse_dropin_paths():
    assert dropins.parse_dropin_paths('%s %s' % (OURS, OVERRIDE)) == [OURS, OVERRIDE]
    assert dropins.parse_dropin_paths('') == [] and dropins.parse_dropin_paths(None) == []


def test_assignments_section_comments_and_reset():
    text = ('[Unit]\nCPUQuota=1%\n# CPUQuota=2%\n; CPUQuota=3%\n[Service]\nCPUQuota=10%\n'
            'CPUQuotaPeriodSec=50ms\n CPUQuota = 20% \nCPUQuota=\n')
    assert dropins.assignments(text, 'Service', 'CPUQuota') == ['10%', '20%', '']
    assert dropins.assignments(text, 'Unit', 'CPUQuota') == ['1%']
    assert dropins.assignments('', 'Service', 'CPUQuota') == []


def test_override_conf_sorts_later_and_wins_wherever_it_lives():
    files = [(OURS, OURS_TEXT), (OVERRIDE, '[Service]\nCPUQuota=5%\n')]
    assert dropins.winning_dropin(files, 'Service', 'CPUQuota') == (OVERRIDE, '5%')
    # the runtime control drop-in sorts before ours ('C' < 'a'): ours wins over it
    files = [(RUNTIME, '[Service]\nCPUQuota=1%\n'), (OURS, OURS_TEXT)]
    assert dropins.winning_dropin(files, 'Service', 'CPUQuota') == (OURS, '50%')
    # a later drop-in that sets something else does not override the quota
    files = [(OURS, OURS_TEXT), (OVERRIDE, '[Service]\nNice=5\n')]
    assert dropins.winning_dropin(files, 'Service', 'CPUQuota') == (OURS, '50%')
    # directory order does not matter, the file name does
    files = [('/run/systemd/system/auditd.service.d/10-early.conf', '[Service]\nCPUQuota=5%\n'), (OURS, OURS_TEXT)]
    assert dropins.winning_dropin(files, 'Service', 'CPUQuota') == (OURS, '50%')
    assert dropins.winning_dropin([], 'Service', 'CPUQuota') is None


def test_first_file_of_a_name_counts():
    files = [('/etc/systemd/system/x.service.d/override.conf', '[Service]\nCPUQuota=5%\n'),
             ('/usr/lib/systemd/system/x.service.d/override.conf', '[Service]\nNice=1\n'),
             (OURS, OURS_TEXT)]
    assert dropins.winning_dropin(files, 'Service', 'CPUQuota') == (files[0][0], '5%')


def test_overriding_dropin_names_the_file_and_a_reset():
    msg = dropins.overriding_dropin(OURS, [(OURS, OURS_TEXT), (OVERRIDE, '[Service]\nCPUQuota=5%\n')], 'Service')
    assert msg.startswith('drop-in %s sets CPUQuota=5%% and overrides 50-auditgap-cpu.conf' % OVERRIDE)
    msg = dropins.overriding_dropin(OURS, [(OURS, OURS_TEXT), (OVERRIDE, '[Service]\nCPUQuota=\n')], 'Service')
    assert 'sets CPUQuota=(reset)' in msg
    assert dropins.overriding_dropin(OURS, [(RUNTIME, '[Service]\nCPUQuota=1%\n'), (OURS, OURS_TEXT)], 'Service') is None


def test_quota_verdict_after_reload():
    ok = [(RUNTIME, '[Service]\nCPUQuota=1%\n'), (OURS, OURS_TEXT)]
    assert dropins.quota_verdict(OURS, 500000, 500000, ok, 'Service') is None
    assert dropins.quota_verdict(OURS, 333000, 333100, ok, 'Service') is None       # rounding of 33.30%
    over = ok + [(OVERRIDE, '[Service]\nCPUQuota=5%\n')]
    msg = dropins.quota_verdict(OURS, 500000, 50000, over, 'Service')
    assert msg.startswith('drop-in %s sets CPUQuota=5%%' % OVERRIDE)
    # systemd says otherwise and no file explains it: the numbers and the drop-ins are named
    msg = dropins.quota_verdict(OURS, 500000, None, ok, 'Service')
    assert msg == ('after daemon-reload the effective CPU quota is infinity, not the 500ms that %s sets '
                   '(DropInPaths: %s %s)' % (OURS, RUNTIME, OURS))
    assert 'DropInPaths: none' in dropins.quota_verdict(OURS, 500000, 10000, [], 'Service')


def test_undo_step_leaves_the_runtime_property_alone_until_it_was_set(tmp_path, monkeypatch):
    """guard's systemd_dropin undo step: the file back, daemon-reload, and set-property only
    when the run had set the runtime property (systemctl faked: no systemd as PID 1 here;
    the VM scenario runs the real one)."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import guard
    calls = tmp_path / 'calls'
    fake = tmp_path / 'systemctl'
    fake.write_text('#!/bin/sh\necho "$@" >> %s\n' % calls)
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (tmp_path, os.environ['PATH']))
    dropin = tmp_path / '50-auditgap-cpu.conf'
    dropin.write_text(OURS_TEXT)
    guard.run_op('systemd_dropin', {'path': str(dropin), 'unit': 'auditd.service', 'text': None, 'cpu_quota': None})
    assert not dropin.exists() and calls.read_text().splitlines() == ['daemon-reload']
    guard.run_op('systemd_dropin', {'path': str(dropin), 'unit': 'auditd.service', 'text': 'old\n', 'cpu_quota': '1%'})
    assert dropin.read_text() == 'old\n'
    assert calls.read_text().splitlines()[1:] == ['daemon-reload', 'set-property --runtime auditd.service CPUQuota=1%']


def test_runtime_dropin_of_a_unit_and_of_a_transient_unit():
    assert dropins.runtime_dropin('auditd.service', 'CPUQuota') == \
        '/run/systemd/system.control/auditd.service.d/50-CPUQuota.conf'
    assert dropins.runtime_dropin('run-u7.service', 'CPUQuota', transient=True) == \
        '/run/systemd/transient/run-u7.service.d/50-CPUQuota.conf'
