"""Fixtures of the kernel tests (the test policy is tests/conftest.py)."""
import pytest

from tests.support import docker


@pytest.fixture(scope='session')
def docker_engine():
    """Session Docker: a daemon, a tiny local image, every container removed (tests/support/docker.py)."""
    yield from docker.engine_session()
