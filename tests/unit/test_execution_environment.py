"""The execution environment definition for AWX (execution-environment.yml) and the
collection's own EE metadata (meta/execution-environment.yml), checked with ansible-builder:
`create` writes the build context (no image is pulled or built here), `introspect` reads
the collection's dependencies the way an image build does."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILDER = os.path.join(os.path.dirname(sys.executable), 'ansible-builder')

pytestmark = pytest.mark.skipif(not os.path.exists(BUILDER), reason='ansible-builder not installed (make setup)')


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


def test_create_writes_the_build_context(tmp_path):
    context = tmp_path / 'context'
    proc = subprocess.run([BUILDER, 'create', '-f', 'execution-environment.yml', '-c', str(context),
                           '--output-filename', 'Containerfile'], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (context / 'Containerfile').read_text()
    definition = yaml.safe_load(read('execution-environment.yml'))
    assert 'ARG EE_BASE_IMAGE="%s"' % definition['images']['base_image']['name'] in containerfile
    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="(.*)"$', containerfile, re.M).group(1)
    # the same ansible-core range as the project's own (pyproject.toml), and ansible-runner
    core = re.search(r'"(ansible-core[^"]*)"', read('pyproject.toml')).group(1)
    assert core in refs.split() and any(r.startswith('ansible-runner') for r in refs.split())
    # the collection's requirement files are the image's, and the build installs them
    assert (context / '_build' / 'bindep.txt').read_text() == read('meta', 'ee-bindep.txt')
    assert (context / '_build' / 'requirements.txt').read_text() == read('meta', 'ee-requirements.txt')
    assert 'introspect --user-pip=requirements.txt --user-bindep=bindep.txt' in containerfile
    assert 'install-from-bindep' in containerfile


def test_introspect_reads_the_collections_metadata():
    proc = subprocess.run([BUILDER, 'introspect', '--sanitize', 'collections'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deps = yaml.safe_load(proc.stdout[proc.stdout.index('---'):])
    system = [line.split('#')[0].strip() for line in deps['system'] if 'auditgap.fleet' in line]
    # audit userspace (auditctl) on both package families
    assert 'audit [platform:rpm]' in system and 'auditd [platform:dpkg]' in system
    assert deps['python'] == []   # stdlib only besides ansible-core


@pytest.mark.skipif(not shutil.which('dpkg-query'), reason='not a Debian host')
def test_the_debian_packages_named_exist():
    names = [line.split()[0] for line in read('meta', 'ee-bindep.txt').splitlines()
             if line.strip() and not line.startswith('#') and 'platform:dpkg' in line]
    assert names
    proc = subprocess.run(['apt-cache', 'show'] + names, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
