# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Syscall names for audit rules, per architecture (pure functions).

An audit rule's syscalls are numbers of one architecture's table. Which
table depends on the rule's arch and on the host:

  - netlink gives the rule's ``AUDIT_ARCH_*`` value, which names the table
    itself (``audit_arch``); ``auditctl -l`` prints it as ``b64``/``b32``;
  - ``-F arch=b64`` means the host's 64-bit table (x86_64 on x86_64 hosts,
    aarch64 on aarch64 hosts), ``b32`` its 32-bit one (i386, arm);
    ``-F arch=x86_64`` (a machine name) names the table directly;
  - a rule without an arch field uses the host's native table.

The tables (x86_64, i386, aarch64, arm) are generated from auditd's
``ausyscall``: module_utils/syscall_tables.py, scripts/gen-syscall-tables.
Numbers a table lacks stay numbers (as text), as auditctl prints them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.auditgap.fleet.plugins.module_utils.syscall_tables import TABLES

# include/uapi/linux/audit.h: EM_* | __AUDIT_ARCH_64BIT (0x80000000) | __AUDIT_ARCH_LE (0x40000000)
AUDIT_ARCH_64BIT = 0x80000000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
AUDIT_ARCHES = {AUDIT_ARCH_X86_64: 'x86_64', AUDIT_ARCH_I386: 'i386',
                AUDIT_ARCH_AARCH64: 'aarch64', AUDIT_ARCH_ARM: 'arm'}

# machine names (uname -m, auditctl -F arch=) -> the table they use
MACHINE_TABLES = {'x86_64': 'x86_64', 'i386': 'i386', 'i486': 'i386', 'i586': 'i386', 'i686': 'i386',
                  'aarch64': 'aarch64', 'arm64': 'aarch64',
                  'arm': 'arm', 'armeb': 'arm', 'armv5tejl': 'arm', 'armv6l': 'arm', 'armv7l': 'arm',
                  'armv8l': 'arm'}
# a host's table -> the tables of its b64 and b32 rules
WIDTH_TABLES = {'x86_64': {'b64': 'x86_64', 'b32': 'i386'},
                'i386': {'b32': 'i386'},
                'aarch64': {'b64': 'aarch64', 'b32': 'arm'},
                'arm': {'b32': 'arm'}}
_WIDTH = {'x86_64': 'b64', 'aarch64': 'b64', 'i386': 'b32', 'arm': 'b32'}


def host_machine():
    """This host's machine name (uname -m)."""
    return os.uname()[4]


def arch_label(value):
    """A ``-F arch=`` value as auditctl -l prints it: machine names -> b64/b32, others unchanged."""
    table = MACHINE_TABLES.get(value)
    return _WIDTH[table] if table else value


def audit_arch(raw):
    """An ``AUDIT_ARCH_*`` value -> (label as auditctl prints it, table or None)."""
    table = AUDIT_ARCHES.get(raw)
    if table is None:
        return '0x%x' % raw, None
    return ('b64' if raw & AUDIT_ARCH_64BIT else 'b32'), table


def table_for(arch, machine=None):
    """The table of a rule's arch (b64, b32, a machine name or None = native) on a host of ``machine``.

    ``machine`` is uname -m of the host the rule was read on (default: this host).
    None when no table fits (another architecture): names stay numbers.
    """
    if arch in MACHINE_TABLES:
        return MACHINE_TABLES[arch]
    native = MACHINE_TABLES.get(machine or host_machine())
    if native is None:
        return None
    if arch is None:
        return native
    return WIDTH_TABLES[native].get(arch)


def syscall_name(table, nr):
    """Name of syscall ``nr`` in ``table`` (as table_for gives it), or str(nr) when unknown."""
    return TABLES.get(table, {}).get(nr, str(nr))


def named(syscalls, arch, machine=None):
    """A rule's syscalls with numbers (text) turned into names of its arch's table."""
    table = TABLES.get(table_for(arch, machine), {})
    return [table.get(int(s), s) if s.isdigit() else s for s in syscalls]


def syscall_number(table, name):
    """Number of syscall ``name`` in ``table`` (as table_for gives it), or None when unknown."""
    for nr, known in TABLES.get(table, {}).items():
        if known == name:
            return nr
    return None
