# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small Docker helper: the Engine API over the UNIX socket, stdlib only.

What the modules need on a host: audit_status, cgroup_throttle and diagnose_gather
(container names and ids, CRI labels), cpu_limit (a container's CPU limit), and the undo
steps of the guard journal (a container or image the lab made). Starting and stopping
dockerd, images built from host files and running containers are the lab's and the
tests' (labdocker.py).

- ``docker_api(method, path, body=None)``: one HTTP request to the Engine
  API over ``/var/run/docker.sock``; JSON in, JSON (or text) out;
  ``DockerError`` (with ``status``) for HTTP errors, ``DockerUnavailable``
  when nothing answers. ``ping()``.
- ``container_by_name_or_id(ref)`` / ``lookup_container(ref)``: inspect a container
  (Docker, then the CRI for a full id), None when absent.
- ``update_cpu(ref, ...)``: ``docker update`` of the CPU limit.
- ``remove_container(ref)``, ``remove_image(name)``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import socket
import subprocess
from http.client import HTTPConnection
from urllib.parse import quote, urlencode

DOCKER_SOCK = '/var/run/docker.sock'


class DockerError(Exception):
    """The Engine API answered with an HTTP error."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class DockerUnavailable(DockerError):
    """No daemon answers on the socket (absent, refused, timed out)."""


class _UnixHTTPConnection(HTTPConnection):
    def __init__(self, socket_path, timeout):
        HTTPConnection.__init__(self, 'localhost', timeout=timeout)
        self._socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except Exception:
            sock.close()
            raise
        self.sock = sock


def docker_api(method, path, body=None, socket_path=DOCKER_SOCK, timeout=30,
               query=None, content_type=None, raw=False):
    """One Engine API request over the UNIX socket.

    ``path`` starts with ``/`` (``/containers/json``); ``query`` a dict
    appended as a query string. ``body``: a dict/list (sent as JSON) or
    bytes (sent as is, ``content_type`` defaults to ``application/x-tar``).
    Returns the decoded JSON, or the text when the answer is not JSON, or
    the bytes with ``raw=True``; None for an empty answer.
    """
    if query:
        path = path + ('&' if '?' in path else '?') + urlencode(query)
    headers = {}
    data = None
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers['Content-Type'] = content_type or 'application/x-tar'
        else:
            data = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = content_type or 'application/json'
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            raise DockerUnavailable(f'docker socket {socket_path}: {exc}')
    finally:
        conn.close()
    if response.status >= 400:
        message = payload.decode('utf-8', 'replace').strip()
        try:
            message = json.loads(message).get('message', message)
        except (ValueError, AttributeError):
            pass
        raise DockerError(f'{method} {path}: HTTP {response.status}: {message}',
                          status=response.status)
    if raw:
        return payload
    if not payload:
        return None
    text = payload.decode('utf-8', 'replace')
    try:
        return json.loads(text)
    except ValueError:
        return text


def ping(socket_path=DOCKER_SOCK, timeout=2):
    """True when a daemon answers ``/_ping`` on the socket."""
    if not os.path.exists(socket_path):
        return False
    try:
        return docker_api('GET', '/_ping', socket_path=socket_path, timeout=timeout) == 'OK'
    except DockerError:
        return False


# -- images and containers ----------------------------------------------------

def remove_image(name, socket_path=DOCKER_SOCK, force=True):
    """Remove an image; False when it did not exist."""
    try:
        docker_api('DELETE', '/images/{}'.format(quote(name, safe=':')), socket_path=socket_path,
                   query={'force': 'true' if force else 'false'})
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def update_cpu(ref, nano_cpus=None, quota_us=None, period_us=None, socket_path=DOCKER_SOCK):
    """``docker update`` of a container's CPU limit; only the given fields change.

    ``nano_cpus``: ``--cpus`` x 1e9 (0 lifts it); ``quota_us``/``period_us``:
    ``--cpu-quota``/``--cpu-period`` (quota -1 lifts it).
    """
    fields = (('NanoCpus', nano_cpus), ('CpuQuota', quota_us), ('CpuPeriod', period_us))
    body = dict((name, int(value)) for name, value in fields if value is not None)
    return docker_api('POST', '/containers/{}/update'.format(quote(ref, safe='')), body=body,
                      socket_path=socket_path)


def remove_container(ref, socket_path=DOCKER_SOCK, force=True):
    """Remove a container (killing it when ``force``); False when absent."""
    try:
        docker_api('DELETE', '/containers/{}'.format(quote(ref, safe='')), socket_path=socket_path,
                   query={'force': 'true' if force else 'false', 'v': 'true'})
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _summary(info):
    state = info.get('State') or {}
    host_config = info.get('HostConfig') or {}
    return {
        'id': info.get('Id'),
        'name': (info.get('Name') or '').lstrip('/') or None,
        'pid': state.get('Pid') or None,
        'running': bool(state.get('Running')),
        'image': (info.get('Config') or {}).get('Image'),
        'nano_cpus': host_config.get('NanoCpus') or 0,
        'cpu_quota_us': host_config.get('CpuQuota') or 0,
        'cpu_period_us': host_config.get('CpuPeriod') or 0,
        'cgroup_parent': host_config.get('CgroupParent') or None,
        'labels': (info.get('Config') or {}).get('Labels') or {},
        'source': 'socket',
    }


# CRI labels the kubelet puts on every container (docker via dockershim/cri-dockerd, containerd, cri-o)
KUBERNETES_LABELS = (('namespace', 'io.kubernetes.pod.namespace'), ('pod', 'io.kubernetes.pod.name'),
                     ('container', 'io.kubernetes.container.name'))


def kubernetes_from_labels(labels):
    """{namespace, pod, container} from a container's CRI labels, or None when it is no pod's."""
    labels = labels or {}
    found = dict((key, labels.get(label)) for key, label in KUBERNETES_LABELS)
    return found if found['pod'] else None


def _cri_inspect(cid, crictl='crictl', timeout=10):
    """A container by id through crictl (containerd, cri-o): {id, name, labels, source: crictl} or None."""
    answer = _cli(['inspect', '--output', 'json', cid], crictl, timeout)
    if answer is None or answer[0] != 0:
        return None
    try:
        status = (json.loads(answer[1].decode('utf-8', 'replace')) or {}).get('status') or {}
    except ValueError:
        return None
    return {'id': status.get('id') or cid, 'name': (status.get('metadata') or {}).get('name'),
            'labels': status.get('labels') or {}, 'source': 'crictl'}


def _cli(args, docker_cli='docker', timeout=10):
    """(returncode, stdout) of one docker CLI command; None when there is no CLI or it hangs."""
    binary = shutil.which(docker_cli)
    if not binary:
        return None
    try:
        proc = subprocess.run([binary] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.returncode, proc.stdout


def _cli_inspect(ref, docker_cli='docker', timeout=10):
    answer = _cli(['inspect', '--type', 'container', '--format', '{{json .}}', ref], docker_cli, timeout)
    if answer is None or answer[0] != 0:
        return None
    try:
        summary = _summary(json.loads(answer[1].decode('utf-8', 'replace')))
    except ValueError:
        return None
    summary['source'] = 'cli'
    return summary


def lookup_container(ref):
    """(info or None, reason): a container by name or id; never raises.

    Docker first (Engine API, else the CLI); a full container id Docker does not
    know is asked of the CRI (``crictl inspect``: containerd, cri-o). ``info``
    has ``kubernetes: {namespace, pod, container}`` when the CRI labels name a pod.
    """
    reason = None
    try:
        info = container_by_name_or_id(ref)
    except DockerError as exc:
        info, reason = None, 'no Docker daemon to resolve names: %s' % exc
    except Exception as exc:  # lookup problems are reasons, not crashes
        info, reason = None, 'docker lookup failed: %s' % exc
    if info is None and ref and len(ref) == 64 and all(c in '0123456789abcdef' for c in ref):
        info = _cri_inspect(ref)
        if info is not None:
            reason = None
    if info is not None:
        info['kubernetes'] = kubernetes_from_labels(info.get('labels'))
    return info, reason


def container_by_name_or_id(ref, socket_path=DOCKER_SOCK, use_cli=True):
    """Inspect a container by name, full id or unique id prefix.

    Returns ``{id, name, pid, running, image, nano_cpus, cpu_quota_us,
    cpu_period_us, cgroup_parent, source: socket|cli}`` or None when no
    such container exists. The socket is preferred; the docker CLI is the
    fallback (e.g. a DOCKER_HOST elsewhere). Raises DockerUnavailable when
    neither answers.
    """
    if not ref or '/' in ref.lstrip('/'):
        return None
    ref = ref.lstrip('/')
    if os.path.exists(socket_path):
        try:
            info = docker_api('GET', '/containers/{}/json'.format(quote(ref, safe='')),
                              socket_path=socket_path, timeout=10)
            return _summary(info)
        except DockerUnavailable:
            pass
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
    if use_cli and socket_path == DOCKER_SOCK:  # the CLI talks to the default daemon only
        found = _cli_inspect(ref)
        if found is not None:
            return found
        if _cli_answers():
            return None
    raise DockerUnavailable(f'no Docker daemon answers (socket {socket_path}, docker CLI)')


def _cli_answers(docker_cli='docker', timeout=10):
    """True when the docker CLI reaches a daemon."""
    answer = _cli(['version', '--format', '{{.Server.Version}}'], docker_cli, timeout)
    return answer is not None and answer[0] == 0
