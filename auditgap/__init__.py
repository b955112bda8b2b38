"""auditgap: find and fix kernel-side syscall stalls across a Linux fleet (CLI package).

The CLI is built on the collection auditgap.fleet (the diagnosis, the reports, the metrics
writer), imported as ``ansible_collections.auditgap.fleet``: from the source tree's
``collections/`` link when there is one. It is put on sys.path here, before any module of
this package imports from it.
"""
import os
import re
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COLLECTIONS = os.path.join(_ROOT, 'collections')
if os.path.isdir(_COLLECTIONS) and _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)


def _galaxy_version():
    """The version in the tree's galaxy.yml, the one place a release changes it
    (pyproject.toml reads it from here, the reports from galaxy.yml or MANIFEST.json)."""
    with open(os.path.join(_ROOT, 'galaxy.yml')) as handle:
        return re.search(r'^version:\s*["\']?([^"\'\s#]+)', handle.read(), re.M).group(1)


__version__ = _galaxy_version()
