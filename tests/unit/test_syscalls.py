"""Syscall tables per architecture and the arch of a rule choosing one (no root).

x86_64 hosts: b64 = x86_64, b32 = i386. aarch64 hosts: b64 = aarch64, b32 = arm.
The aarch64 `auditctl -l` fixture (tests/fixtures/audit/auditctl-l.aarch64.txt) is
written by hand in auditctl's format (no aarch64 host here); its numeric syscalls
stand for what an auditctl older than the kernel prints for syscalls it does not
know (names for the rest). The tables are generated from ausyscall
(scripts/gen-syscall-tables); the last test compares them with the installed one.
"""
import os
import shutil
import subprocess

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, rulesfile, syscalls
from ansible_collections.auditgap.fleet.plugins.module_utils.syscall_tables import TABLES

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'audit')

# (table, number of accept4, of execve, the name of 5): from each arch's unistd table
KNOWN = [('x86_64', 288, 59, 'fstat'), ('i386', 364, 11, 'open'),
         ('aarch64', 242, 221, 'setxattr'), ('arm', 366, 11, 'open')]


@pytest.mark.parametrize('table,accept4,execve,five', KNOWN)
def test_each_table_is_its_own_architectures(table, accept4, execve, five):
    assert syscalls.syscall_name(table, accept4) == 'accept4'
    assert syscalls.syscall_name(table, execve) == 'execve'
    assert syscalls.syscall_name(table, 5) == five
    # complete up to the newest the generator's auditd knows, the shared numbers (424+) too
    assert syscalls.syscall_name(table, 435) == 'clone3'
    assert syscalls.syscall_name(table, 450) == 'set_mempolicy_home_node'
    assert syscalls.syscall_name(table, 100000) == '100000'
    assert len(TABLES[table]) > 300


def test_unknown_table_keeps_numbers():
    assert syscalls.syscall_name(None, 5) == '5' and syscalls.syscall_name('s390x', 5) == '5'


@pytest.mark.parametrize('arch,machine,table', [
    ('b64', 'x86_64', 'x86_64'), ('b32', 'x86_64', 'i386'), (None, 'x86_64', 'x86_64'),
    ('b64', 'aarch64', 'aarch64'), ('b32', 'aarch64', 'arm'), (None, 'aarch64', 'aarch64'),
    ('b32', 'i686', 'i386'), ('b64', 'i686', None), ('b32', 'armv7l', 'arm'), (None, 'armv7l', 'arm'),
    ('x86_64', 'aarch64', 'x86_64'), ('aarch64', 'x86_64', 'aarch64'), ('i686', 'x86_64', 'i386'),
    ('b64', 'ppc64le', None), (None, 'riscv64', None), ('0xc00000b7', 'x86_64', None),
])
def test_table_for_a_rules_arch_on_a_host(arch, machine, table):
    assert syscalls.table_for(arch, machine) == table


def test_arch_label_and_audit_arch():
    assert [syscalls.arch_label(v) for v in ('x86_64', 'i686', 'aarch64', 'arm', 'b64', 'b32', '0x1')] == \
        ['b64', 'b32', 'b64', 'b32', 'b64', 'b32', '0x1']
    assert syscalls.audit_arch(syscalls.AUDIT_ARCH_AARCH64) == ('b64', 'aarch64')
    assert syscalls.audit_arch(syscalls.AUDIT_ARCH_ARM) == ('b32', 'arm')
    assert syscalls.audit_arch(syscalls.AUDIT_ARCH_I386) == ('b32', 'i386')
    assert syscalls.audit_arch(0x80000016) == ('0x80000016', None)


def test_aarch64_auditctl_list():
    with open(os.path.join(FIXTURES, 'auditctl-l.aarch64.txt')) as handle:
        text = handle.read()
    lab, lab2, lab32, numbers, numbers32, native, watch = audit.parse_rules(text, machine='aarch64')
    assert lab['arch'] == 'b64' and lab['syscalls'] == ['bind', 'listen', 'accept4']
    assert lab2['syscalls'] == ['clone', 'execve', 'adjtimex', 'settimeofday']
    assert lab32['arch'] == 'b32' and lab32['syscalls'] == ['bind', 'listen', 'accept4']
    # b64 on aarch64 is the aarch64 table (242 accept4; x86_64's 242 is mq_timedsend)
    assert numbers['arch'] == 'b64' and numbers['syscalls'] == ['accept4', 'clone3']
    assert numbers['text'] == '-a always,exit -F arch=b64 -S 242,435 -F key=numbers'
    # b32 on aarch64 is arm (366 accept4; i386's 366 is not)
    assert numbers32['syscalls'] == ['accept4']
    # no arch: the host's own table (221 execve on aarch64)
    assert native['arch'] is None and native['syscalls'] == ['execve']
    assert watch['syscalls'] == ['all']
    # the same text read as an x86_64 host's: the x86_64 and i386 tables
    on_x86 = audit.parse_rules(text, machine='x86_64')
    assert on_x86[3]['syscalls'] == ['mq_timedsend', 'clone3']
    assert on_x86[4]['syscalls'] == [syscalls.syscall_name('i386', 366)]
    assert on_x86[5]['syscalls'] == [syscalls.syscall_name('x86_64', 221)]


def test_narrowing_by_name_finds_numbered_rules_of_the_hosts_arch():
    text = ('-a always,exit -F arch=b64 -S bind,242 -F success=1 -k net\n'
            '-a always,exit -F arch=b32 -S 366 -k net32\n')
    spec = rulesfile.validate_spec({'syscall': 'accept4'})
    new_text, changes = rulesfile.narrow_text(text, [spec], machine='aarch64')
    assert [c['line'] for c in changes] == [1, 2]
    assert new_text.splitlines()[0] == '-a always,exit -F arch=b64 -S bind -F success=1 -k net'
    assert new_text.splitlines()[1].startswith('# auditgap: removed (narrowed accept4)')
    # on x86_64, 242 and 366 are other syscalls: nothing to narrow
    assert rulesfile.narrow_text(text, [spec], machine='x86_64') == (text, [])
    # a file's -S 242 and auditctl's -S accept4 are one rule on aarch64; -F arch=aarch64 loads as b64
    from_file = rulesfile.parse_rule('-a always,exit -F arch=aarch64 -S 242 -F key=numbers')
    loaded = rulesfile.parse_rule('-a always,exit -F arch=b64 -S accept4 -F key=numbers')
    assert rulesfile.canonical(from_file, 'aarch64') == rulesfile.canonical(loaded, 'aarch64')
    assert rulesfile.canonical(from_file, 'x86_64') == rulesfile.canonical(loaded, 'x86_64')  # explicit arch
    assert rulesfile.canonical(rulesfile.parse_rule('-a always,exit -F arch=b64 -S 242 -F key=numbers'), 'x86_64') \
        != rulesfile.canonical(loaded, 'x86_64')


@pytest.mark.skipif(not shutil.which('ausyscall'), reason='ausyscall (Debian auditd) not installed')
@pytest.mark.parametrize('table', sorted(TABLES))
def test_tables_agree_with_ausyscall(table):
    out = subprocess.run(['ausyscall', table, '--dump'], check=True, capture_output=True, text=True).stdout
    dumped = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            dumped[int(parts[0])] = parts[1]
    # every number both know has the same name (a newer auditd may know more: regenerate then)
    assert {nr: name for nr, name in TABLES[table].items() if nr in dumped} == \
        {nr: dumped[nr] for nr in TABLES[table] if nr in dumped}
    assert set(TABLES[table]) <= set(dumped)
