"""Modules that read ``auditctl -s`` through the audit client's fallback (audit.parse_status):
both output formats, and output without a status field is a clear failure, not a traceback."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, auditnl
from ansible_collections.auditgap.fleet.plugins.modules import audit_tune, cpu_limit

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

    def run_command(self, argv, environ_update=None):
        self.calls.append(argv)
        return self.outputs[argv[-1]]

    def fail_json(self, msg, **_kwargs):
        raise Failed(msg)


class NoAudit:
    """auditnl.AuditSocket on a kernel without audit."""

    def __init__(self, *args, **kwargs):
        raise auditnl.AuditNetlinkError('the kernel has no audit support', 93)


# -- audit_tune ---------------------------------------------------------------

def test_audit_tune_live_settings_same_from_netlink_and_auditctl():
    parsed = audit.parse_status(text('auditctl-s.during-stall.txt'))
    decoded = dict(parsed, feature_bitmap=0x7f)
    del decoded['loginuid_immutable']  # auditnl.decode_status has no such field
    want = {'enabled': 1, 'backlog_limit': 64, 'backlog_wait_time_jiffies': 250, 'rate_limit': 0}
    assert audit_tune.live_settings(parsed) == want
    assert audit_tune.live_settings(decoded) == want


def test_audit_tune_prefers_netlink(monkeypatch):
    class Netlink:
        def get_status(self):
            return audit.parse_status(text('auditctl-s.immutable.txt'))

        def close(self):
            pass
    module = FakeModule({})
    client = audit.for_module(module, netlink=Netlink)
    assert audit_tune.read_live(module, client)['enabled'] == 2 and client.source == 'netlink' and module.calls == []


@pytest.mark.parametrize('name,backlog_limit', [
    ('auditctl-s.old-one-line.txt', 320),  # the old one-line format
    ('auditctl-s.rhel7.txt', 8192),  # an older multi-line one, without the wait time
])
def test_audit_tune_reads_older_formats_without_the_wait_time(name, backlog_limit):
    module = FakeModule({'-s': (0, text(name), '')})
    client = audit.for_module(module, netlink=NoAudit)
    assert audit_tune.read_live(module, client) == {'enabled': 1, 'backlog_limit': backlog_limit,
                                                    'backlog_wait_time_jiffies': None, 'rate_limit': 0}
    assert client.source == 'auditctl'


def test_audit_tune_output_without_status_fails_clearly():
    module = FakeModule({'-s': (0, REFUSED, '')})
    with pytest.raises(Failed, match='cannot read the audit status: .*auditctl: no audit status fields'):
        audit_tune.read_live(module, audit.for_module(module, netlink=NoAudit))


# -- audit_rule_narrow ----------------------------------------------------------

@pytest.mark.parametrize('name,enabled', [
    ('auditctl-s.idle.txt', 0),
    ('auditctl-s.immutable.txt', 2),
    ('auditctl-s.old-one-line.txt', 1),
])
def test_audit_rule_narrow_enabled_in_both_formats(name, enabled):
    client = audit.for_module(FakeModule({'-s': (0, text(name), '')}), netlink=NoAudit)
    assert client.status()['enabled'] == enabled


def test_audit_rule_narrow_output_without_status_is_an_audit_error():
    client = audit.for_module(FakeModule({'-s': (0, REFUSED, '')}), netlink=NoAudit)
    with pytest.raises(audit.AuditError, match='auditctl: no audit status fields'):
        client.status()


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
