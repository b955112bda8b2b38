# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller user's cache of things a diagnose run would otherwise build on every run
(docs/scale.md): the fan-out's payload (plugin_utils/fanout.py) and the report's compiled
fleet.html templates (module_utils/report.py). One directory, ``$XDG_CACHE_HOME/auditgap``,
else ``~/.cache/auditgap``; what it holds is code that runs (as root on the hosts, or in the
controller), so a directory other users can write to is never read."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat


def cache_dir(environ=None):
    """$XDG_CACHE_HOME/auditgap, else ~/.cache/auditgap."""
    environ = os.environ if environ is None else environ
    base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'auditgap')


def private_dir(path):
    """True for a directory (not a symlink) this user owns and only this user can write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def make_private_dir(path):
    """``path`` made (0700) when missing; True when it is private (``private_dir``)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return False
    return private_dir(path)
