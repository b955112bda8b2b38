"""Modules that read ``auditctl -s`` through auditparse.parse_status (cpu_limit via
auditfacts.consumer_pid): both output formats, and output without a status
field is a clear failure, not a traceback."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, auditparse
from ansible_collections.auditgap.fleet.plugins.modules import audit_rule_narrow, audit_tune, cpu_limit

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


class NoAudit:
    """auditnl.AuditSocket on a kernel without audit."""

    def __init__(self, *args, **kwargs):
        raise auditnl.AuditNetlinkError('the kernel has no audit support', 93)


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


@pytest.mark.parametrize('name,backlog_limit', [
    ('auditctl-s.old-one-line.txt', 320),  # the old one-line format
    ('auditctl-s.rhel7.txt', 8192),  # an older multi-line one, without the wait time
])
def test_audit_tune_reads_older_formats_without_the_wait_time(monkeypatch, name, backlog_limit):
    monkeypatch.setattr(audit_tune, 'auditnl', NoNetlink)
    live = audit_tune.Live(FakeModule({'-s': (0, text(name), '')}))
    assert live.get() == {'enabled': 1, 'backlog_limit': backlog_limit, 'backlog_wait_time_jiffies': None, 'rate_limit': 0}
    assert live.source == 'auditctl'


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


# -- cpu_limit: the audit consumer as the default target -----------------------------

@pytest.mark.parametrize('name,pid', [
    ('auditctl-s.during-stall.txt', 6398),
    ('auditctl-s.immutable.txt', 642),
])
def test_cpu_limit_consumer_from_auditctl(monkeypatch, name, pid):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    module = FakeModule({'-s': (0, text(name), '')})
    assert cpu_limit.audit_consumer_pid(module) == pid
    assert module.calls == [['/sbin/auditctl', '-s']]


def test_cpu_limit_old_one_line_format_without_a_consumer(monkeypatch):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    module = FakeModule({'-s': (0, text('auditctl-s.old-one-line.txt'), '')})
    with pytest.raises(cpu_limit.Failure, match='^no audit consumer registered; name the agent with agent_cpu_target$'):
        cpu_limit.audit_consumer_pid(module)


@pytest.mark.parametrize('auditctl,outputs,words', [
    (None, {}, ['no audit support', 'auditctl: not installed']),
    ('/sbin/auditctl', {'-s': (1, '', 'Error sending status request (Operation not permitted)\n')},
     ['no audit support', 'Operation not permitted']),
    ('/sbin/auditctl', {'-s': (0, REFUSED, '')}, ['no audit support', 'no audit status fields']),
])
def test_cpu_limit_unreadable_audit_is_a_failure(monkeypatch, auditctl, outputs, words):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    with pytest.raises(cpu_limit.Failure) as err:
        cpu_limit.audit_consumer_pid(FakeModule(outputs, auditctl))
    message = str(err.value)
    assert message.startswith('cannot read the audit status: ') and message.endswith('name the agent with agent_cpu_target')
    assert all(word in message for word in words), message


def test_cpu_limit_default_target_is_the_consumer(monkeypatch):
    monkeypatch.setattr(auditnl, 'AuditSocket', NoAudit)
    module = FakeModule({'-s': (0, 'AUDIT_STATUS: enabled=1 flag=1 pid=%d rate_limit=0 backlog_limit=320 lost=0 backlog=0\n'
                                % os.getpid(), '')})
    target = cpu_limit.resolve_target(module, None)
    assert target['kind'] == 'audit_consumer' and target['pid'] == os.getpid() and target['name'] == str(os.getpid())
