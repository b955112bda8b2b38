"""guard.write_value against a file that takes one word per write(2).

The kernel's tracefs list files (set_graph_function, set_ftrace_filter,
set_event) consume one word per write(2) and return a short count. The
function_graph tracer is not in this host's kernel, so os.write is replaced
here by a stand-in with that behaviour; tests/integration/test_ftrace_sample.py
checks the same on the real set_event, and the molecule `ftrace` scenario on
the real set_graph_function.
"""
import os

import pytest

from ansible_collections.auditgap.fleet.plugins.module_utils import guard as guard_mod


def _one_word_per_write(calls):
    real = os.write

    def write(fd, data):
        data = bytes(data)
        calls.append(data)
        stripped = data.lstrip(b' ')
        space = stripped.find(b' ')
        if space < 0:
            return real(fd, data)
        consumed = len(data) - len(stripped) + space + 1
        real(fd, data[:consumed])
        return consumed
    return write


def test_write_value_writes_every_word(tmp_path, monkeypatch):
    target = tmp_path / 'set_graph_function'
    target.write_text('old\n')
    calls = []
    monkeypatch.setattr(guard_mod.os, 'write', _one_word_per_write(calls))
    guard_mod.write_value(str(target), '__x64_sys_accept4 syscall_exit_work')
    assert target.read_text() == '__x64_sys_accept4 syscall_exit_work'
    assert len(calls) == 2


def test_write_value_single_and_empty(tmp_path):
    target = tmp_path / 'tracing_on'
    target.write_text('1\n')
    guard_mod.write_value(str(target), '0')
    assert target.read_text() == '0'
    guard_mod.write_value(str(target), '')
    assert target.read_text() == ''


def test_write_value_no_progress_is_an_error(tmp_path, monkeypatch):
    target = tmp_path / 'cpu.max'
    target.write_text('')
    monkeypatch.setattr(guard_mod.os, 'write', lambda fd, data: 0)
    with pytest.raises(OSError, match='short write'):
        guard_mod.write_value(str(target), 'max 100000')


def test_restore_guard_restores_a_word_list(tmp_path, monkeypatch):
    target = tmp_path / 'set_ftrace_filter'
    target.write_text('a b c')
    monkeypatch.setattr(guard_mod.os, 'write', _one_word_per_write([]))
    with guard_mod.RestoreGuard(signals=False) as guard:
        guard.write_file(str(target), 'x y')
        assert target.read_text() == 'x y'
    assert target.read_text() == 'a b c' and guard.restore_errors == []
