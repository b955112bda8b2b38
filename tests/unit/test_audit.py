"""auditctl -s / -l text parsers on real captures and documented formats."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, auditnl

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'audit')


def text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


# -- auditctl -s ------------------------------------------------------------

def test_status_during_stall_capture():
    status = audit.parse_status(text('auditctl-s.during-stall.txt'))
    assert status['enabled'] == 1 and status['failure'] == 1 and status['pid'] == 6398
    assert status['backlog_limit'] == 64 and status['lost'] == 4 and status['backlog'] == 0
    assert status['backlog_wait_time'] == 250
    assert status['backlog_wait_time_actual'] == 12828
    assert status['loginuid_immutable'] == 0
    assert status['feature_bitmap'] is None  # auditctl -s does not print it


def test_status_idle_capture():
    status = audit.parse_status(text('auditctl-s.idle.txt'))
    assert status['enabled'] == 0 and status['pid'] == 0
    assert status['backlog_wait_time'] == 15000 and status['backlog_wait_time_actual'] == 11926


def test_status_old_one_line_format():
    status = audit.parse_status(text('auditctl-s.old-one-line.txt'))
    assert status['enabled'] == 1
    assert status['failure'] == 1  # "flag" in the old format
    assert status['pid'] == 0 and status['rate_limit'] == 0
    assert status['backlog_limit'] == 320 and status['lost'] == 0 and status['backlog'] == 0
    assert status['backlog_wait_time'] is None
    assert status['backlog_wait_time_actual'] is None


def test_status_one_line_without_prefix():
    status = audit.parse_status('enabled=1 flag=2 pid=99 rate_limit=5 backlog_limit=64 '
                                     'lost=3 backlog=1 backlog_wait_time=250')
    assert status['failure'] == 2 and status['pid'] == 99 and status['backlog_wait_time'] == 250


def test_status_older_multiline_without_wait_times():
    status = audit.parse_status(text('auditctl-s.rhel7.txt'))
    assert status['pid'] == 812 and status['backlog_limit'] == 8192
    assert status['backlog_wait_time'] is None and status['backlog_wait_time_actual'] is None


def test_status_immutable():
    status = audit.parse_status(text('auditctl-s.immutable.txt'))
    assert status['enabled'] == 2 and status['loginuid_immutable'] == 1


def test_status_garbage_raises():
    with pytest.raises(ValueError):
        audit.parse_status('Error sending status request (Operation not permitted)\n')
    with pytest.raises(ValueError):
        audit.parse_status('')


# -- auditctl -l ------------------------------------------------------------

def test_seed_rules_parse():
    rules = audit.parse_rules(text('auditctl-l.seed-rules.txt'))
    assert len(rules) == 2
    first, second = rules
    assert first['list'] == 'exit' and first['action'] == 'always' and first['arch'] == 'b64'
    assert first['syscalls'] == ['bind', 'listen', 'accept4']
    assert first['fields'] == [{'name': 'arch', 'op': '=', 'value': 'b64'},
                               {'name': 'success', 'op': '=', 'value': '1'}]
    assert first['key'] == 'lab'
    assert second['syscalls'] == ['clone', 'fork', 'execve', 'adjtimex', 'settimeofday']
    assert second['key'] == 'lab'
    for rule in rules:
        assert 'parse_error' not in rule
        assert auditnl.render_rule(rule) == rule['text']


def test_no_rules():
    assert audit.parse_rules('No rules\n') == []
    assert audit.parse_rules('') == []


def by_text(rules):
    return {rule['text']: rule for rule in rules}


def test_variants():
    rules = audit.parse_rules(text('auditctl-l.variants.txt'))
    assert not [rule for rule in rules if 'parse_error' in rule]
    r = by_text(rules)

    watch = r['-w /etc/passwd -p wa -k x']
    assert (watch['list'], watch['action'], watch['syscalls']) == ('exit', 'always', ['all'])
    assert watch['fields'] == [{'name': 'path', 'op': '=', 'value': '/etc/passwd'},
                               {'name': 'perm', 'op': '=', 'value': 'wa'}]
    assert watch['key'] == 'x' and watch['arch'] is None

    dirwatch = r['-w /etc/sudoers.d/ -p wa -k scope']
    assert dirwatch['fields'][0] == {'name': 'dir', 'op': '=', 'value': '/etc/sudoers.d/'}

    never = r['-a never,exit -F arch=b64 -S all -F exe=/usr/bin/node']
    assert never['action'] == 'never' and never['syscalls'] == ['all'] and never['key'] is None
    assert {'name': 'exe', 'op': '=', 'value': '/usr/bin/node'} in never['fields']

    auid = r['-a always,exit -F arch=b64 -S execve -F auid>=1000 -F auid!=-1 -F key=exec']
    assert {'name': 'auid', 'op': '>=', 'value': '1000'} in auid['fields']
    assert {'name': 'auid', 'op': '!=', 'value': '-1'} in auid['fields']
    unset = r['-a always,exit -F arch=b64 -S execve -F auid>=1000 -F auid!=unset -k exec2']
    assert {'name': 'auid', 'op': '!=', 'value': 'unset'} in unset['fields']
    assert unset['key'] == 'exec2'

    assert r['-a always,exit -F arch=b64 -S all -F key=everything']['syscalls'] == ['all']

    appdir = r['-a always,exit -F dir=/var/lib/app/ -F perm=wa -F key=appdir']
    assert appdir['syscalls'] == ['all'] and appdir['arch'] is None
    assert appdir['fields'] == [{'name': 'dir', 'op': '=', 'value': '/var/lib/app/'},
                                {'name': 'perm', 'op': '=', 'value': 'wa'}]

    path = r['-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -F key=priv']
    assert [f['name'] for f in path['fields']] == ['path', 'perm', 'auid', 'auid']

    access = r['-a always,exit -F arch=b32 -S open,openat -F exit=-EACCES -F key=access']
    assert access['arch'] == 'b32'
    assert {'name': 'exit', 'op': '=', 'value': '-EACCES'} in access['fields']

    setuid = r['-a always,exit -F arch=b64 -S openat -C uid!=euid -F euid=0 -F key=setuid']
    assert {'name': 'compare', 'op': '!=', 'value': 'uid:euid'} in setuid['fields']

    swapped = r['-a exit,always -F arch=b64 -S adjtimex,settimeofday -k time-change']
    assert (swapped['list'], swapped['action']) == ('exit', 'always')
    assert swapped['key'] == 'time-change'

    exclude = r['-a never,exclude -F msgtype=CWD']
    assert exclude['list'] == 'exclude' and exclude['syscalls'] == []
    assert exclude['fields'] == [{'name': 'msgtype', 'op': '=', 'value': 'CWD'}]

    user = r['-a always,user -F uid=0']
    assert user['list'] == 'user' and user['syscalls'] == []

    net = r['-a always,exit -F arch=b64 -S connect -F a0=0x2 -F success=1 -F key=net -F key=second']
    assert net['keys'] == ['net', 'second'] and net['key'] == 'net'
    assert {'name': 'a0', 'op': '=', 'value': '0x2'} in net['fields']


def test_probe_rules_agree_with_netlink_renderer():
    """Every auditctl -l line captured on this kernel parses and renders back identically."""
    for rule in audit.parse_rules(text('auditctl-l.probe-rules.txt')):
        assert 'parse_error' not in rule
        assert auditnl.render_rule(rule) == rule['text']


def test_unparseable_line_is_kept_with_error():
    rules = audit.parse_rules('-a always,exit -F arch=b64 -S bind -F success=1 -k x\n'
                                   'something odd\n-a always,exit -X foo\n')
    assert rules[0]['key'] == 'x'
    assert rules[1]['text'] == 'something odd' and 'parse_error' in rules[1]
    assert dict(rules[1], parse_error=None) == {'list': None, 'action': None, 'arch': None, 'syscalls': [],
                                                'fields': [], 'key': None, 'keys': [], 'text': 'something odd',
                                                'parse_error': None}
    assert 'unknown option' in rules[2]['parse_error']


# -- the client: source order, fallback, the kept source, errors by step ------------

REFUSED = 'Error sending status request (Operation not permitted)\n'


class NoAudit:
    """auditnl.AuditSocket on a kernel without audit (or in a container): cannot open."""

    def __init__(self, *args, **kwargs):
        raise auditnl.AuditNetlinkError('the kernel has no audit support', 93)


class FakeSocket:
    """A netlink socket answering one status and one rule list; records set_status calls."""

    def __init__(self, status, rules=()):
        self.answer = status
        self.rules = list(rules)
        self.opened = 0
        self.closed = 0
        self.sets = []

    def __call__(self, *args, **kwargs):
        self.opened += 1
        return self

    def get_status(self):
        return dict(self.answer)

    def list_rules(self):
        return self.rules

    def set_status(self, **fields):
        self.sets.append(fields)

    def close(self):
        self.closed += 1


def fake_run(outputs, default=(0, '', '')):
    """run_command answering by the arguments (``-s``, ``-b 64``, a whole rule), else ``default``."""
    calls = []

    def run(argv):
        calls.append(argv)
        return outputs.get(' '.join(argv[1:]), default)
    run.calls = calls
    return run


def client(outputs=None, netlink=NoAudit, auditctl='/sbin/auditctl', source='auto'):
    run = fake_run(outputs or {})
    return audit.Audit(source, run, auditctl, netlink=netlink), run


def test_source_order():
    assert audit.source_order('auto') == ['netlink', 'auditctl']
    assert audit.source_order('auditctl') == ['auditctl']
    with pytest.raises(ValueError, match='source must be one of'):
        audit.source_order('dbus')


def test_consumer_from_status():
    assert audit.consumer_from_status({'pid': 6398}) == (6398, None)
    assert audit.consumer_from_status({'pid': 0}) == (None, 'no audit consumer registered')
    assert audit.consumer_from_status({'pid': None}) == (None, 'no audit consumer registered')


def test_netlink_first_and_kept_for_status_rules_and_samples():
    sock = FakeSocket({'enabled': 1, 'pid': 642}, rules=['r'])
    ac, run = client(netlink=sock)
    assert ac.consumer() == (642, None) and ac.source == 'netlink' and ac.errors == []
    assert ac.rules() == ['r'] and ac.status()['pid'] == 642
    assert sock.opened == 1 and run.calls == []  # one socket, auditctl never run
    ac.close()
    assert sock.closed == 1


@pytest.mark.parametrize('name,expected', [
    ('auditctl-s.during-stall.txt', (6398, None)),
    ('auditctl-s.rhel7.txt', (812, None)),
    ('auditctl-s.idle.txt', (None, 'no audit consumer registered')),
    ('auditctl-s.old-one-line.txt', (None, 'no audit consumer registered')),
])
def test_consumer_falls_back_to_auditctl_in_both_formats(name, expected):
    ac, run = client({'-s': (0, text(name), '')})
    assert ac.consumer() == expected
    assert run.calls == [['/sbin/auditctl', '-s']]
    assert ac.source == 'auditctl' and ac.errors == ['netlink: the kernel has no audit support']


def test_the_kept_source_reads_the_rules():
    ac, run = client({'-s': (0, text('auditctl-s.during-stall.txt'), ''),
                      '-l': (0, text('auditctl-l.seed-rules.txt'), '')})
    ac.status()
    rules = ac.rules()
    assert [rule['key'] for rule in rules] == ['lab', 'lab'] and ac.source == 'auditctl'
    assert run.calls == [['/sbin/auditctl', '-s'], ['/sbin/auditctl', '-l']]


@pytest.mark.parametrize('auditctl,outputs,words', [
    (None, {}, ['no audit support', 'auditctl: not installed']),
    ('/sbin/auditctl', {'-s': (1, '', REFUSED)}, ['no audit support', 'rc=1', 'Operation not permitted']),
    ('/sbin/auditctl', {'-s': (0, REFUSED, '')}, ['no audit support', 'no audit status fields']),
    ('/sbin/auditctl', {'-s': (0, '', '')}, ['no audit support', 'auditctl -s printed nothing']),
])
def test_unreadable_status_is_an_error_naming_the_step_and_each_source(auditctl, outputs, words):
    ac, _run = client(outputs, auditctl=auditctl)
    with pytest.raises(audit.AuditError) as err:
        ac.status()
    assert err.value.step == 'status' and len(err.value.errors) == 2
    assert str(err.value).startswith('cannot read the audit status: netlink: ')
    assert all(word in str(err.value) for word in words), str(err.value)
    pid, reason = ac.consumer()  # never raises
    assert pid is None and reason.startswith('cannot read the audit status: netlink: ')


def test_one_source_only_when_asked():
    ac, run = client({'-s': (0, text('auditctl-s.idle.txt'), '')}, source='netlink')
    with pytest.raises(audit.AuditError, match='^cannot read the audit status: netlink: [^;]*$'):
        ac.status()
    assert run.calls == []
    sock = FakeSocket({'enabled': 1})
    ac, _run = client(netlink=sock, source='auditctl', outputs={'-s': (0, text('auditctl-s.idle.txt'), '')})
    assert ac.status()['enabled'] == 0 and ac.source == 'auditctl' and sock.opened == 0


def test_set_through_netlink_with_field_named_setters():
    sock = FakeSocket({'enabled': 1})
    ac, run = client(netlink=sock)
    ac.set_backlog_limit(8192)
    ac.set_backlog_wait_time(250)
    ac.set(rate_limit=0, failure=None)
    assert sock.sets == [{'backlog_limit': 8192}, {'backlog_wait_time': 250}, {'rate_limit': 0}]
    assert run.calls == [] and ac.source == 'netlink'


def test_set_through_auditctl_enabled_last():
    ac, run = client({'-s': (0, text('auditctl-s.idle.txt'), '')})
    ac.set(enabled=1, backlog_limit=64, backlog_wait_time=250, rate_limit=0, failure=1)
    assert run.calls[1:] == [['/sbin/auditctl', '-f', '1'], ['/sbin/auditctl', '-r', '0'],
                             ['/sbin/auditctl', '-b', '64'], ['/sbin/auditctl', '--backlog_wait_time', '250'],
                             ['/sbin/auditctl', '-e', '1']]


@pytest.mark.parametrize('fields,message', [
    ({'enabled': 2}, 'locks the audit configuration'),
    ({'backlog_limit': -1}, 'between 0 and'),
    ({'rate_limit': 'many'}, 'must be an integer'),
    ({'lost': 0}, 'cannot set audit status field'),
    ({'pid': 0}, 'pid registers the socket'),
])
def test_bad_set_is_refused_before_anything_is_read_or_sent(fields, message):
    sock = FakeSocket({'enabled': 1})
    ac, run = client(netlink=sock)
    with pytest.raises(ValueError, match=message):
        ac.set(**fields)
    assert sock.opened == 0 and sock.sets == [] and run.calls == []


def test_set_failures_name_the_step_and_source():
    ac, _run = client({'-s': (0, text('auditctl-s.idle.txt'), ''), '-b 64': (1, '', 'Operation not permitted')})
    with pytest.raises(audit.AuditError, match=r'^cannot set the audit status: auditctl: auditctl -b 64: Operation not permitted$'):
        ac.set_backlog_limit(64)
    ac, _run = client(auditctl=None)
    with pytest.raises(audit.AuditError) as err:
        ac.set_backlog_limit(64)
    assert err.value.step == 'set' and err.value.errors[-1] == 'auditctl: not installed'


RULE = '-a always,exit -F arch=b64 -S accept4 -F success=1 -F exe=/usr/bin/node -F key=auditgap-test'


def test_delete_rules_is_exact_and_tries_the_other_exe_spelling():
    missing = (1, '', 'Error deleting rule (No such file or directory)')
    ac, run = client({RULE.replace('-a ', '-d ', 1): missing})
    ac.delete_rules([audit.parse_rule_line(RULE)])
    assert [call[1:] for call in run.calls] == [
        ['-d', 'always,exit', '-F', 'arch=b64', '-S', 'accept4', '-F', 'success=1', '-F', 'exe=/usr/bin/node',
         '-F', 'key=auditgap-test'],
        ['-d', 'always,exit', '-F', 'arch=b64', '-S', 'accept4', '-F', 'success=1', '-F', 'exe!=/usr/bin/node',
         '-F', 'key=auditgap-test']]
    assert not any('-D' in call for call in run.calls)


def test_delete_rules_missing_and_watches():
    ac = audit.Audit(run_command=fake_run({}, default=(1, '', 'Error deleting rule (No rule matches)')),
                     auditctl='/sbin/auditctl', netlink=NoAudit)
    with pytest.raises(audit.AuditError, match='^cannot delete audit rules: auditctl: '):
        ac.delete_rules([['-a', 'always,exit', '-S', 'getppid', '-k', 'x']])
    ac.delete_rules([['-a', 'always,exit', '-S', 'getppid', '-k', 'x']], missing_ok=True)
    ac, run = client()
    ac.delete_rules([audit.parse_rule_line('-w /etc/passwd -p wa -k auditgap-test')])
    assert run.calls == [['/sbin/auditctl', '-W', '/etc/passwd', '-p', 'wa', '-k', 'auditgap-test']]
    with pytest.raises(ValueError, match='not an audit rule'):
        ac.delete_rules([['-D']])


def test_add_rules_in_order_and_exists_ok():
    exists = (1, '', 'Error sending add rule data request (Rule exists)')
    ac, run = client({'-a always,exit -S getppid -k x': exists})
    ac.add_rules([['-a', 'always,exit', '-S', 'getpid', '-k', 'x'], ['-a', 'always,exit', '-S', 'getppid', '-k', 'x']],
                 exists_ok=True)
    assert [call[4] for call in run.calls] == ['getpid', 'getppid']
    with pytest.raises(audit.AuditError, match='^cannot add audit rules: auditctl: .*Rule exists'):
        ac.add_rules([['-a', 'always,exit', '-S', 'getppid', '-k', 'x']])
