"""Modules that read ``auditctl -s`` through auditparse.parse_status: both output
formats, and output without a status field is a clear failure, not a traceback."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, auditparse
from ansible_collections.auditgap.fleet.plugins.modules import audit_rule_narrow, audit_tune

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'audit')
REFUSED = 'Error sending status request (Operation not permitted)\n'


def text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class Failed(Exception):
    """What FakeModule.fail_json raises (AnsibleModule exits)."""


class FakeModule:
    """The AnsibleModule calls the modules make to run auditctl."""

    def __init__(self, outputs, auditctl='/sbin/auditctl'):
        self.outputs = outputs
        self.auditctl = auditctl
        self.calls = []

    def get_bin_path(self, name):
        return self.auditctl if name == 'auditctl' else None

    def run_command(self, argv):
        self.calls.append(argv)
        return self.outputs[argv[-1]]

    def fail_json(self, msg, **_kwargs):
        raise Failed(msg)


class NoNetlink:
    @staticmethod
    def get_status():
        raise auditnl.AuditNetlinkError('the kernel has no audit support', 93)


# -- audit_tune ---------------------------------------------------------------

def test_audit_tune_live_settings_same_from_netlink_and_auditctl():
    parsed = auditparse.parse_status(text('auditctl-s.during-stall.txt'))
    decoded = dict(parsed, feature_bitmap=0x7f)
    del decoded['loginuid_immutable']  # auditnl.decode_status has no such field
    want = {'enabled': 1, 'backlog_limit': 64, 'backlog_wait_time_jiffies': 250, 'rate_limit': 0}
    assert audit_tune.live_settings(parsed) == want
    assert audit_tune.Live._from_netlink(decoded) == want


def test_audit_tune_prefers_netlink(monkeypatch):
    class Netlink:
        @staticmethod
        def get_status():
            return auditparse.parse_status(text('auditctl-s.immutable.txt'))
    monkeypatch.setattr(audit_tune, 'auditnl', Netlink)
    module = FakeModule({})
    live = audit_tune.Live(module)
    assert live.get()['enabled'] == 2 and live.source == 'netlink' and module.calls == []


def test_audit_tune_reads_the_old_one_line_format(monkeypatch):
    monkeypatch.setattr(audit_tune, 'auditnl', NoNetlink)
    live = audit_tune.Live(FakeModule({'-s': (0, text('auditctl-s.old-one-line.txt'), '')}))
    assert live.get() == {'enabled': 1, 'backlog_limit': 320, 'backlog_wait_time_jiffies': None, 'rate_limit': 0}
    assert live.source == 'auditctl'


def test_audit_tune_older_multi_line_lacks_the_wait_time(monkeypatch):
    monkeypatch.setattr(audit_tune, 'auditnl', NoNetlink)
    live = audit_tune.Live(FakeModule({'-s': (0, text('auditctl-s.rhel7.txt'), '')}))
    assert live.get() == {'enabled': 1, 'backlog_limit': 8192, 'backlog_wait_time_jiffies': None, 'rate_limit': 0}


def test_audit_tune_output_without_status_fails_clearly(monkeypatch):
    monkeypatch.setattr(audit_tune, 'auditnl', NoNetlink)
    live = audit_tune.Live(FakeModule({'-s': (0, REFUSED, '')}))
    with pytest.raises(Failed, match='cannot read audit status: no audit status fields'):
        live.get()


# -- audit_rule_narrow ----------------------------------------------------------

@pytest.mark.parametrize('name,enabled', [
    ('auditctl-s.idle.txt', 0),
    ('auditctl-s.immutable.txt', 2),
    ('auditctl-s.old-one-line.txt', 1),
])
def test_audit_rule_narrow_enabled_in_both_formats(name, enabled):
    ctl = audit_rule_narrow.Auditctl(FakeModule({'-s': (0, text(name), '')}))
    assert ctl.enabled() == enabled


def test_audit_rule_narrow_output_without_status_is_its_runtime_error():
    ctl = audit_rule_narrow.Auditctl(FakeModule({'-s': (0, REFUSED, '')}))
    with pytest.raises(RuntimeError, match='auditctl -s: no audit status fields'):
        ctl.enabled()
