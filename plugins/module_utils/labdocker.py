# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: UP001, UP009, UP010, UP031
"""The incident lab's docker backend: the audit consumer in a real container.

Debian's auditd and the shared libraries ``ldd`` names are imported as an
image (no registry: ``dockerctl.import_image`` of a tarball built from host
files). The container runs ``auditd -n`` with:

- ``--pid host``: the kernel accepts audit netlink requests (AUDIT_SET pid,
  i.e. registering as the consumer) only from the initial pid namespace
  (and the initial user namespace: no userns remapping), so a container in
  its own pid namespace gets EPERM and never becomes the consumer;
- ``--network none``: audit netlink works from the container's own network
  namespace;
- ``--cap-add AUDIT_CONTROL --cap-add AUDIT_READ --cap-add AUDIT_WRITE``;
- the lab dir bind-mounted at the same path (config, log);
- CPU: it starts unthrottled (auditd's start at a tiny quota takes seconds)
  and gets ``--cpu-period``/``--cpu-quota`` (``docker update``) once it is
  registered. ``--cpus`` cannot go below 0.01 (1000 us per 100 ms); the
  period/quota pair expresses the same limit with the lab's longer period.

Every step is recorded in the lab state first (labkit.LabState); the undo
handlers below remove the container (stopped with SIGTERM first so auditd
deregisters cleanly), the image, and dockerd only when the lab started it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl
from ansible_collections.auditgap.fleet.plugins.module_utils import labkit

IMAGE = 'auditgap-lab-auditd:latest'
CONTAINER = 'auditgap-lab-auditd'
LABEL = 'auditgap.lab'
CAPS = ['AUDIT_CONTROL', 'AUDIT_READ', 'AUDIT_WRITE']


def image_spec(auditd, ddir):
    """dockerctl file spec: auditd (+ its libraries), minimal passwd/group, run dirs."""
    etc = os.path.join(ddir, 'rootfs-etc')
    if not os.path.isdir(etc):
        os.makedirs(etc, 0o755)
    files = {'/usr/sbin/auditd': auditd}
    for name, text in (('passwd', 'root:x:0:0:root:/root:/bin/false\n'),
                       ('group', 'root:x:0:\nadm:x:4:\n'),
                       ('keep', '')):
        path = os.path.join(etc, name)
        with open(path, 'w') as handle:
            handle.write(text)
        if name != 'keep':
            files['/etc/' + name] = path
    keep = os.path.join(etc, 'keep')
    for directory in ('/run', '/var/run', '/var/log/audit'):
        files[directory + '/.keep'] = keep
    return {'files': files, 'symlinks': {}}


def start_docker_consumer(state, workdir, params):
    """auditd in a container; returns labkit's consumer dict (+ container_id)."""
    auditd = labkit.find_auditd()
    if not auditd:
        raise RuntimeError('auditd is not installed (Debian: apt-get install auditd)')
    started = dockerctl.ensure_dockerd()
    state.record('dockerd', started=bool(started))
    ddir = os.path.join(workdir, 'docker')
    if not os.path.isdir(ddir):
        os.makedirs(ddir, 0o700)
    state.record('image', name=IMAGE)
    dockerctl.import_image(IMAGE, image_spec(auditd, ddir))
    confdir = os.path.join(ddir, 'etc')
    labkit.write_auditd_config(confdir, ddir)
    state.record('container', name=CONTAINER)
    dockerctl.remove_container(CONTAINER)  # a leftover of ours (same name, lab label)
    cid = dockerctl.run_container(
        IMAGE, ['/usr/sbin/auditd', '-n', '-s', 'nochange', '-c', confdir], name=CONTAINER,
        network='none', labels={LABEL: '1'},
        host_config={'PidMode': 'host', 'CapAdd': list(CAPS),
                     'Binds': ['%s:%s' % (ddir, ddir)]})
    entry = state.find('container')[-1]
    entry['id'] = cid
    state.save()
    info = dockerctl.docker_api('GET', '/containers/%s/json' % cid)
    pid = (info.get('State') or {}).get('Pid')
    if not pid:
        raise RuntimeError('the consumer container %s is not running: %s'
                           % (cid[:12], (info.get('State') or {}).get('Error')))
    start = labkit.proc_starttime(pid)
    state.record('consumer', name='auditd (container %s)' % cid[:12], pid=pid, starttime=start,
                 backend='docker')
    if not labkit.wait_registered(pid):
        raise RuntimeError('auditd in container %s (pid %d) did not register as the audit consumer'
                           % (cid[:12], pid))
    dockerctl.docker_api('POST', '/containers/%s/update' % cid,
                         body={'CpuPeriod': int(params['period_us']), 'CpuQuota': int(params['quota_us'])})
    cgroup_path = labkit.cgroup_of_pid(pid)
    entry['cgroup_path'] = cgroup_path
    state.save()
    return {'pid': pid, 'starttime': start, 'cgroup_path': cgroup_path,
            'cgroup_version': 'v1' if cgroup_path.startswith(labkit.CGROUP_V1_CPU) else 'v2',
            'container_id': cid, 'quota_us': params['quota_us'], 'period_us': params['period_us']}


def _undo_container(entry):
    if not dockerctl.ping():
        return
    ref = entry.get('id') or entry['name']
    found = dockerctl.container_by_name_or_id(ref, use_cli=False)
    if found is None:
        return
    try:  # lift the quota and stop with SIGTERM: auditd deregisters itself
        dockerctl.docker_api('POST', '/containers/%s/update' % found['id'], body={'CpuQuota': -1})
        dockerctl.docker_api('POST', '/containers/%s/stop' % found['id'], query={'t': '15'}, timeout=30)
    except dockerctl.DockerError:
        pass
    dockerctl.remove_container(found['id'])


def _undo_image(entry):
    if dockerctl.ping():
        dockerctl.remove_image(entry['name'])


def _undo_dockerd(entry):
    if entry.get('started'):
        dockerctl.stop_dockerd()


UNDO_HANDLERS = {'container': _undo_container, 'image': _undo_image, 'dockerd': _undo_dockerd}


def list_lab_containers():
    """Names of all containers (for snapshots); None when no daemon answers."""
    if not dockerctl.ping():
        return None
    return sorted((c.get('Names') or ['?'])[0].lstrip('/') for c in dockerctl.list_containers())
