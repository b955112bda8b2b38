"""Fixture trees with /proc/<pid>/exe links, made when the tests run.

A captured ``/proc/<pid>/exe`` is a symlink to a path on the captured host
(``/opt/ids/bin/ids-agent``, ...) that does not exist here. Tracked as broken
symlinks they break the tools that copy the tree (``ansible-galaxy collection
build``, ``antsibull-changelog release``), so the tree stores each link's
target in a text file ``exe.link``; ``materialize()`` copies a tree to a
temporary directory (removed at exit) and turns every ``<name>.link`` into the
symlink ``<name>``.
"""
import atexit
import os
import shutil
import tempfile

LINK_SUFFIX = '.link'


def materialize(src):
    """A copy of the fixture tree ``src`` with its ``*.link`` files made symlinks; returns its path."""
    top = tempfile.mkdtemp(prefix='auditgap-fixture-')
    atexit.register(shutil.rmtree, top, True)
    dest = os.path.join(top, os.path.basename(src))
    shutil.copytree(src, dest, symlinks=True)
    for dirpath, _dirs, files in os.walk(dest):
        for name in files:
            if name.endswith(LINK_SUFFIX):
                path = os.path.join(dirpath, name)
                with open(path) as handle:
                    target = handle.read().rstrip('\n')
                os.remove(path)
                os.symlink(target, path[:-len(LINK_SUFFIX)])
    return dest
