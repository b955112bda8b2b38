"""auditgap: find and fix kernel-side syscall stalls across a Linux fleet (CLI package)."""
import os
import re


def _galaxy_version():
    """The version in the tree's galaxy.yml, the one place a release changes it
    (pyproject.toml reads it from here, the reports from galaxy.yml or MANIFEST.json)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'galaxy.yml')
    with open(path) as handle:
        return re.search(r'^version:\s*["\']?([^"\'\s#]+)', handle.read(), re.M).group(1)


__version__ = _galaxy_version()
