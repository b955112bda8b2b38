"""Session-scoped Docker for tests: a daemon, a tiny local image, cleanup.

The fixture ``docker_engine`` (tests/integration/conftest.py) is ``engine_session()``::

    def test_x(docker_engine):
        cid = docker_engine.run(['sh', '-c', 'while :; do :; done'], cpus=0.05)

It starts Debian's dockerd when no daemon answers (and stops it
again at the end of the session, unless another process still uses it),
imports an image built from local files (static busybox from the
busybox-static package, else the host's /bin/sh with its libraries), and
removes every container it ran and the image. Containers carry the label
``auditgap-test=<pid>``; leftovers of earlier crashed runs (label present,
its pid dead) are removed at start.
"""
import os
import shutil
import uuid

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl, labdocker

LABEL = 'auditgap-test'


class DockerSession:
    def __init__(self, image, started_daemon):
        self.image = image
        self.started_daemon = started_daemon
        self.containers = []

    def run(self, cmd, name=None, cpus=None, network='none', **kwargs):
        """Run a detached container from the session image; returns its id."""
        name = name or f'auditgap-test-{uuid.uuid4().hex[:10]}'
        cid = labdocker.run_container(self.image, cmd, name=name, cpus=cpus, network=network,
                                      labels={LABEL: str(os.getpid())}, **kwargs)
        self.containers.append(cid)
        return cid

    def inspect(self, ref):
        return dockerctl.container_by_name_or_id(ref)

    def remove(self, ref):
        dockerctl.remove_container(ref)
        self.containers = [c for c in self.containers if c != ref and not c.startswith(ref)]

    def cleanup_containers(self):
        for cid in list(self.containers):
            try:
                dockerctl.remove_container(cid)
            except dockerctl.DockerError:
                pass
        self.containers = []


def _remove_stale_containers():
    try:
        stale = labdocker.list_containers(filters={'label': [LABEL]})
    except dockerctl.DockerError:
        return
    for container in stale:
        owner = (container.get('Labels') or {}).get(LABEL, '')
        if owner.isdigit() and owner != str(os.getpid()) and os.path.exists(f'/proc/{owner}'):
            continue  # another live test run's container
        dockerctl.remove_container(container['Id'])


def minimal_rootfs():
    """A spec for ``import_image``: /bin/sh and core tools.

    Static busybox (Debian's busybox-static) when installed, as /bin/busybox
    with /bin/sh etc. linked to it; otherwise the host's /bin/sh with its
    shared libraries. Enough for ``sh -c 'while :; do :; done'``.
    """
    busybox = '/bin/busybox'
    if os.path.exists(busybox) and not labdocker.ldd_libraries(busybox):
        return {'files': {'/bin/busybox': busybox},
                'symlinks': {f'/bin/{applet}': 'busybox'
                             for applet in ('sh', 'sleep', 'cat', 'ls', 'true', 'yes', 'echo')}}
    return {'files': {'/bin/sh': os.path.realpath('/bin/sh')}, 'symlinks': {}}


def engine_session():
    """Yields a DockerSession for the test session (skips without root or Docker)."""
    if os.geteuid() != 0:
        pytest.skip('needs root (starts dockerd, creates containers)')
    if not dockerctl.ping() and not shutil.which('dockerd'):
        pytest.skip('no Docker daemon and no dockerd binary (apt-get install docker.io)')
    started = labdocker.ensure_dockerd()
    image = f'auditgap-test-busy:{os.getpid()}'
    session = None
    try:
        _remove_stale_containers()
        labdocker.import_image(image, minimal_rootfs())
        session = DockerSession(image, started)
        yield session
    finally:
        if session is not None:
            session.cleanup_containers()
        try:
            dockerctl.remove_image(image)
        except dockerctl.DockerError:
            pass
        labdocker.stop_dockerd()
