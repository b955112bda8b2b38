"""auditctl -s / -l text parsers on real captures and documented formats."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl, auditparse

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'audit')


def text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


# -- auditctl -s ------------------------------------------------------------

def test_status_during_stall_capture():
    status = auditparse.parse_status(text('auditctl-s.during-stall.txt'))
    assert status['enabled'] == 1 and status['failure'] == 1 and status['pid'] == 6398
    assert status['backlog_limit'] == 64 and status['lost'] == 4 and status['backlog'] == 0
    assert status['backlog_wait_time'] == 250
    assert status['backlog_wait_time_actual'] == 12828
    assert status['loginuid_immutable'] == 0
    assert status['feature_bitmap'] is None  # auditctl -s does not print it


def test_status_idle_capture():
    status = auditparse.parse_status(text('auditctl-s.idle.txt'))
    assert status['enabled'] == 0 and status['pid'] == 0
    assert status['backlog_wait_time'] == 15000 and status['backlog_wait_time_actual'] == 11926


def test_status_old_one_line_format():
    status = auditparse.parse_status(text('auditctl-s.old-one-line.txt'))
    assert status['enabled'] == 1
    assert status['failure'] == 1  # "flag" in the old format
    assert status['pid'] == 0 and status['rate_limit'] == 0
    assert status['backlog_limit'] == 320 and status['lost'] == 0 and status['backlog'] == 0
    assert status['backlog_wait_time'] is None
    assert status['backlog_wait_time_actual'] is None


def test_status_one_line_without_prefix():
    status = auditparse.parse_status('enabled=1 flag=2 pid=99 rate_limit=5 backlog_limit=64 '
                                     'lost=3 backlog=1 backlog_wait_time=250')
    assert status['failure'] == 2 and status['pid'] == 99 and status['backlog_wait_time'] == 250


def test_status_older_multiline_without_wait_times():
    status = auditparse.parse_status(text('auditctl-s.rhel7.txt'))
    assert status['pid'] == 812 and status['backlog_limit'] == 8192
    assert status['backlog_wait_time'] is None and status['backlog_wait_time_actual'] is None


def test_status_immutable():
    status = auditparse.parse_status(text('auditctl-s.immutable.txt'))
    assert status['enabled'] == 2 and status['loginuid_immutable'] == 1


def test_status_garbage_raises():
    with pytest.raises(ValueError):
        auditparse.parse_status('Error sending status request (Operation not permitted)\n')
    with pytest.raises(ValueError):
        auditparse.parse_status('')


# -- auditctl -l ------------------------------------------------------------

def test_seed_rules_parse():
    rules = auditparse.parse_rules(text('auditctl-l.seed-rules.txt'))
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
    assert auditparse.parse_rules('No rules\n') == []
    assert auditparse.parse_rules('') == []


def by_text(rules):
    return {rule['text']: rule for rule in rules}


def test_variants():
    rules = auditparse.parse_rules(text('auditctl-l.variants.txt'))
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
    for rule in auditparse.parse_rules(text('auditctl-l.probe-rules.txt')):
        assert 'parse_error' not in rule
        assert auditnl.render_rule(rule) == rule['text']


def test_unparseable_line_is_kept_with_error():
    rules = auditparse.parse_rules('-a always,exit -F arch=b64 -S bind -F success=1 -k x\n'
                                   'something odd\n-a always,exit -X foo\n')
    assert rules[0]['key'] == 'x'
    assert rules[1]['text'] == 'something odd' and 'parse_error' in rules[1]
    assert dict(rules[1], parse_error=None) == {'list': None, 'action': None, 'arch': None, 'syscalls': [],
                                                'fields': [], 'key': None, 'keys': [], 'text': 'something odd',
                                                'parse_error': None}
    assert 'unknown option' in rules[2]['parse_error']
