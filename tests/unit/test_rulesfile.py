"""rules.d parsing, narrowing and backlog settings (pure, no root)."""
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import audit
from ansible_collections.auditgap.fleet.plugins.module_utils import rulesfile as rf

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'remediation')
SEED = ('-a always,exit -F arch=b64 -S clone,fork,execve,adjtimex,settimeofday -k lab\n'
        '-a always,exit -F arch=b64 -S bind,listen,accept4 -F success=1 -k lab\n')


def spec(**kw):
    return rf.validate_spec(kw)


def test_parse_rule_forms_compare_equal_to_auditctl_output():
    file_rule = rf.parse_rule('-a exit,always -F arch=b64 -S accept4,bind -F success=1 -k lab')
    listed = rf.parse_rule('-a always,exit -F arch=b64 -S bind,accept4 -F success=1 -F key=lab')
    assert rf.canonical(file_rule) == rf.canonical(listed)
    assert file_rule['keys'] == ['lab'] and file_rule['syscalls'] == ['accept4', 'bind']


def test_comments_and_blank_lines_are_not_rules():
    assert rf.parse_rule('  # -a always,exit -S accept4') is None
    assert rf.parse_rule('') is None
    assert rf.parse_rule('-b 8192')['kind'] == 'control'
    assert rf.parse_rule('-w /etc/passwd -p wa -k x')['kind'] == 'watch'


def test_seed_rules_from_auditctl_list():
    with open(os.path.join(FIX, 'auditctl-l.seed-rules.txt')) as handle:
        rules = rf.loaded_syscall_rules(audit.parse_rules(handle.read()))
    assert len(rules) == 2
    assert 'accept4' in rules[0]['syscalls'] and rules[0]['keys'] == ['lab']


def test_narrow_without_scope_takes_the_syscall_out():
    text, changes = rf.narrow_text(SEED, [spec(syscall='accept4')])
    assert '-a always,exit -F arch=b64 -S bind,listen -F success=1 -k lab\n' in text
    assert 'accept4' not in text
    assert len(changes) == 1 and changes[0]['line'] == 2
    again, changes2 = rf.narrow_text(text, [spec(syscall='accept4')])
    assert again == text and changes2 == []


def test_narrow_only_syscall_removes_rule_as_comment():
    text, changes = rf.narrow_text('-a always,exit -F arch=b64 -S accept4 -k hot\n', [spec(syscall='accept4')])
    assert text.startswith('# auditgap: removed (narrowed accept4): -a always,exit')
    assert changes[0]['new'] == []


def test_narrow_with_scope_splits_the_rule_and_is_idempotent():
    s = spec(syscall='accept4', key='lab', scope={'exe': '!=/usr/bin/node'})
    text, _changes = rf.narrow_text(SEED, [s])
    lines = text.splitlines()
    assert lines[1] == '-a always,exit -F arch=b64 -S bind,listen -F success=1 -k lab'
    assert lines[2] == '-a always,exit -F arch=b64 -S accept4 -F success=1 -F exe!=/usr/bin/node -k lab'
    again, changes2 = rf.narrow_text(text, [s])
    assert again == text and changes2 == []


def test_scope_replaces_field_of_same_name():
    s = spec(syscall='accept4', scope={'success': 0, 'uid': '>=1000'})
    text, _ = rf.narrow_text('-a always,exit -F arch=b64 -S accept4 -F success=1 -k k\n', [s])
    rule = rf.parse_rule(text)
    assert sorted(rule['fields']) == [('arch', '=', 'b64'), ('success', '=', '0'), ('uid', '>=', '1000')]
    assert "'" not in text  # auditctl -R does not unquote: never quote
    assert rf.rule_argv(rule)[-4:] == ['-F', 'uid>=1000', '-k', 'k']


def test_key_filter_limits_narrowing():
    text, changes = rf.narrow_text(SEED, [spec(syscall='accept4', key='other')])
    assert text == SEED and changes == []


@pytest.mark.parametrize('bad', [
    {'syscall': ''}, {'syscall': 'all'}, {'syscall': 'accept4; rm'}, {'syscall': 'accept4', 'scope': {'comm': 'x'}},
    {'syscall': 'accept4', 'scope': {'exe': 'relative'}}, {'syscall': 'accept4', 'scope': {'uid': 'abc'}},
    {'syscall': 'accept4', 'scope': {'success': 2}}, {'syscall': 'accept4', 'key': 'a b'}, 'accept4',
    {'syscall': 'accept4', 'extra': 1},
])
def test_bad_specs_are_refused(bad):
    with pytest.raises(rf.RulesError):
        rf.validate_spec(bad)


def test_merge_like_augenrules_and_effective_settings():
    files = [('10-base.rules', '-D\n-b 8192\n--backlog_wait_time 60000\n-f 1\n'),
             ('auditgap.rules', '# ours\n-b 32768\n--backlog_wait_time 250\n-r 0\n'),
             ('99-finalize.rules', '-e 2\n')]
    merged = rf.merge_rules(files)
    assert merged[0] == '-D' and merged[1] == '-b 32768' and merged[-1] == '-e 2'
    assert rf.effective_settings(files) == {'backlog_limit': 32768, 'backlog_wait_time_jiffies': 250, 'rate_limit': 0}
    assert rf.rules_files(['b.rules', '2-x.rules', '10-y.rules', 'x.bak']) == ['2-x.rules', '10-y.rules', 'b.rules']


def test_render_settings_is_deterministic_and_keeps_other_lines():
    header = '# managed by auditgap\n'
    first = rf.render_settings_text('', {'backlog_limit': 8192, 'rate_limit': None}, header)
    assert first == '# managed by auditgap\n-b 8192\n'
    second = rf.render_settings_text(first, {'backlog_limit': 8192}, header)
    assert second == first
    third = rf.render_settings_text(first, {'backlog_wait_time_jiffies': 250, 'rate_limit': 0}, header)
    assert third == '# managed by auditgap\n-b 8192\n--backlog_wait_time 250\n-r 0\n'
    fourth = rf.render_settings_text(third, {'backlog_limit': 16384}, header)
    assert fourth.splitlines()[1] == '-b 16384'


def test_syscall_rules_keeps_only_syscall_rules():
    text = ('## comment\n-D\n-b 8192\n-w /etc/passwd -p wa -k passwd\n'
            '-a always,exit -F arch=b64 -S accept4 -F success=1 -k hot\n'
            '-A always,exit -F arch=b64 -S execve -k exec\n')
    rules = rf.syscall_rules(text)
    assert [r['flag'] for r in rules] == ['-a', '-A']
    assert all(r['kind'] == 'syscall' for r in rules)


def _parsed(*lines):
    return [rf.parse_rule(line) for line in lines]


def test_restore_plan_deletes_exactly_and_keeps_the_order():
    a = '-a always,exit -F arch=b64 -S clone -F key=k'
    b = '-a always,exit -F arch=b64 -S bind,listen,accept4 -F success=1 -F key=k'
    b2 = '-a always,exit -F arch=b64 -S bind,listen -F success=1 -F key=k'
    c = '-a always,exit -F arch=b64 -S execve -F key=other'
    # narrowed half-way: b deleted, b2 added at the end; the restore puts b back in place
    plan = rf.restore_plan(_parsed(a, c, b2), _parsed(a, b, c))
    assert plan == [['-d', 'always,exit', '-F', 'arch=b64', '-S', 'bind,listen', '-F', 'success=1', '-k', 'k'],
                    ['-d', 'always,exit', '-F', 'arch=b64', '-S', 'execve', '-k', 'other'],
                    ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'bind,listen,accept4', '-F', 'success=1', '-k', 'k'],
                    ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'execve', '-k', 'other']]
    assert rf.restore_plan(_parsed(a, b, c), _parsed(a, b, c)) == []


def test_other_lines_are_the_watches():
    listing = ('-w /etc/passwd -p wa -k auditgap-test\n'
               '-a always,exit -F arch=b64 -S accept4 -F key=auditgap-test\nNo rules\n')
    assert rf.other_lines(audit.parse_rules(listing)) == ['-w /etc/passwd -p wa -k auditgap-test']
