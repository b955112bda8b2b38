#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: incident_lab
short_description: Create the audit-backlog incident on a test host, and remove every trace of it
description:
  - C(state=present) reproduces the incident of docs/incident_lab.md on this host, for real
    a small audit C(backlog_limit) and short C(backlog_wait_time), the seed's audit rules (keyed
    with I(key)), an audit consumer (Debian's C(auditd -n) with a private config under the lab
    directory) throttled by a tiny CPU quota, and a loopback TCP server and client whose accept
    latency is recorded every second.
  - Backends for the consumer; C(cgroup) runs it in a cgroup v1 C(cpu) group (or a cgroup v2
    group with C(cpu.max)); C(docker) runs it in a container (image imported from the host's
    auditd and its libraries, C(--pid host), C(--network none), audit capabilities, CPU quota),
    starting Debian's dockerd with C(--bridge=none --iptables=false) when none answers.
  - Every change is written to the auditgap undo journal (docs/safety.md) before it is made, as
    one step each (audit settings, each rule, cgroups and quotas, the consumer, the workload,
    container, image, dockerd when the lab started it, the lab's files). A failure removes the
    half-made lab at once; after a SIGKILL the next run of any auditgap module that changes the
    kernel does (C(recovered_from_crash)). A complete lab keeps its journal as the state file;
    C(state=absent) undoes what it records and nothing else; it is safe to run twice and after
    a crash half-way.
  - C(present) and C(absent) take the auditgap host lock (C(/run/auditgap/host.lock), waiting up to
    60 s).
  - When another audit consumer is registered the lab refuses, unless
    I(allow_existing_consumer) is true; the existing consumer is then moved into the lab's
    throttled cgroup and moved back at C(state=absent).
version_added: "0.1.0"
author: auditgap contributors (@auditgap)
options:
  state:
    description: C(present) creates the lab, C(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description: Where the throttled consumer runs.
    type: str
    choices: [cgroup, docker]
    default: cgroup
  quota_us:
    description: CPU quota of the consumer per period, in microseconds (1000 is the kernel's minimum).
    type: int
    default: 1000
  period_us:
    description:
      - CFS period in microseconds. With I(quota_us=1000) and 250000 the consumer runs 1 ms every
        250 ms and accept stalls last hundreds of ms.
    type: int
    default: 250000
  backlog_limit:
    description: Audit backlog limit while the lab is present.
    type: int
    default: 64
  backlog_wait_time_jiffies:
    description: Audit backlog wait time while the lab is present, in jiffies (keep it short).
    type: int
    default: 250
  allow_existing_consumer:
    description: Throttle an already registered consumer instead of refusing (cgroup backend only).
    type: bool
    default: false
  workload:
    description: Start the loopback TCP server and client recording accept latency.
    type: bool
    default: true
  clients:
    description: Concurrent client connections of the workload.
    type: int
    default: 1
  rate_per_s:
    description: Connections per second of the workload (0 = as fast as it goes).
    type: int
    default: 0
  rules:
    description: C(seed) adds the seed's accept4 and clone/fork/execve rules, C(accept) only the accept4 rule.
    type: str
    choices: [seed, accept]
    default: seed
  key:
    description: Audit key of the lab's rules; absent removes rules with this key only.
    type: str
    default: auditgap-lab
  state_path:
    description: The lab's state file (its kept undo journal); its directory holds the lab's files (config, logs, latency).
    type: path
    default: /run/auditgap-lab/state.json
notes:
  - Needs root, Debian's auditd, and for the docker backend docker.io.
  - While the lab is present every audited syscall on the host can wait up to the CFS period.
extends_documentation_fragment:
  - auditgap.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether the lab would be created or which recorded changes would be undone; changes nothing.
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Create the incident
  auditgap.fleet.incident_lab:
    state: present
    backend: cgroup

- name: Remove it again
  auditgap.fleet.incident_lab:
    state: absent
'''

RETURN = r'''
incident_lab:
  description: What the lab is (present) or what was undone (absent).
  returned: always
  type: dict
  contains:
    state:
      description: present or absent.
      type: str
    backend:
      description: cgroup or docker (present).
      type: str
    consumer_pid:
      description: The throttled audit consumer's pid (present).
      type: int
    cgroup_path:
      description: Absolute dir of the consumer's cpu cgroup (present).
      type: str
    container_id:
      description: The consumer's container (docker backend).
      type: str
    server_pid:
      description: The workload's accept-loop server (audited accept4 calls).
      type: int
    client_pid:
      description: The workload's client process.
      type: int
    port:
      description: Loopback port of the workload server.
      type: int
    key:
      description: Audit key of the lab's rules.
      type: str
    latency_path:
      description: Per-second accept latency records (JSON lines t, count, p50_ms, p99_ms, max_ms).
      type: str
    timeline_path:
      description: Per-second timeline (t, p99_ms, backlog, lost, throttled_ratio).
      type: str
    workdir:
      description: The lab's directory.
      type: str
    existing_consumer:
      description: True when an existing consumer was throttled instead of starting one.
      type: bool
    quota_us:
      description: Consumer CPU quota per period.
      type: int
    period_us:
      description: CFS period.
      type: int
    note:
      description: Why nothing changed, or what check mode would do.
      type: str
    undone:
      description: The changes undone (absent).
      type: list
      elements: str
    errors:
      description: Changes that could not be undone (absent; they stay in the undo journal, the next auditgap run retries them).
      type: list
      elements: str
    recovered_from_crash:
      description: >-
        Undo journals of auditgap runs that died (SIGKILL) which this run replayed first (a lab
        whose C(state=present) died half-way is removed this way), one entry per journal
        {journal, module, owner_pid, since, undone, errors}; [] when none.
      type: list
      elements: dict
    restored:
      description: After a failed C(present), true when everything the half-made lab changed was undone.
      type: bool
    restore_errors:
      description: After a failed C(present), the undo steps that failed.
      type: list
      elements: str
'''

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.auditgap.fleet.plugins.module_utils import guard, labkit

LOCK_WAIT_S = 60


def main():
    D = labkit.LAB_DEFAULTS  # the lab's defaults, in one place (the tests and benchmarks use them too)
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            backend=dict(type='str', choices=['cgroup', 'docker'], default=D['backend']),
            quota_us=dict(type='int', default=D['quota_us']),
            period_us=dict(type='int', default=D['period_us']),
            backlog_limit=dict(type='int', default=D['backlog_limit']),
            backlog_wait_time_jiffies=dict(type='int', default=D['backlog_wait_time_jiffies']),
            allow_existing_consumer=dict(type='bool', default=D['allow_existing_consumer']),
            workload=dict(type='bool', default=D['workload']),
            clients=dict(type='int', default=D['clients']),
            rate_per_s=dict(type='int', default=D['rate_per_s']),
            rules=dict(type='str', choices=['seed', 'accept'], default=D['rules']),
            key=dict(type='str', default=D['key'], no_log=False),
            state_path=dict(type='path', default=D['state_path']),
        ),
        supports_check_mode=True,
    )
    params = dict(module.params)
    wanted = params.pop('state')
    if os.geteuid() != 0:
        module.fail_json(msg='incident_lab needs root', incident_lab={'state': None})
    if wanted == 'absent':
        if module.check_mode:
            changed, result = labkit.lab_absent(params['state_path'], check_mode=True)
            module.exit_json(changed=changed, incident_lab=result)
        with _locked(module) as lock:
            changed, result = labkit.lab_absent(params['state_path'])
            result['recovered_from_crash'] = lock.recovered
        if result['errors']:
            module.fail_json(msg='some lab changes could not be undone (the next auditgap run retries them): %s'
                             % '; '.join(result['errors']), changed=changed, incident_lab=result)
        module.exit_json(changed=changed, incident_lab=result)
    try:
        labkit.validate_lab_params(params)
    except ValueError as err:
        module.fail_json(msg=str(err), incident_lab={'state': None})
    if not labkit.find_auditd() and params['backend'] == 'cgroup':
        module.fail_json(msg='auditd is not installed (Debian: apt-get install auditd)',
                         incident_lab={'state': None})
    if module.check_mode:
        try:
            changed, result = labkit.lab_present(params, check_mode=True)
        except labkit.LabRefused as err:
            module.fail_json(msg=str(err), incident_lab={'state': None})
        module.exit_json(changed=changed, incident_lab=result)
    with _locked(module) as lock:
        # every change is journaled before it is made: a failure undoes the half-made lab at
        # once, a SIGKILL leaves it to the next auditgap run; a complete lab keeps its journal
        try:
            changed, result = labkit.lab_present(params)
        except labkit.LabRefused as err:
            module.fail_json(msg=str(err), incident_lab={'state': None, 'recovered_from_crash': lock.recovered})
        except labkit.LabFailed as err:  # never leave a stall behind
            module.fail_json(msg='could not create the lab: %s' % err,
                             incident_lab={'state': 'absent' if err.restored else None, 'restored': err.restored,
                                           'restore_errors': err.restore_errors,
                                           'recovered_from_crash': lock.recovered})
        except Exception as err:
            module.fail_json(msg='could not create the lab: %s' % err,
                             incident_lab={'state': None, 'recovered_from_crash': lock.recovered})
        result['recovered_from_crash'] = lock.recovered
    module.exit_json(changed=changed, incident_lab=result)


@contextlib.contextmanager
def _locked(module):
    """The host lock (waited for; dead runs' journals replayed), or the task fails."""
    lock = guard.locked('incident_lab', wait_s=guard.lock_wait(LOCK_WAIT_S))
    try:
        lock.__enter__()
    except (guard.LockBusy, guard.UnsafePath) as err:
        module.fail_json(msg='%s; nothing changed' % err, incident_lab={'state': None})
    try:
        yield lock
    finally:
        lock.__exit__(None, None, None)


if __name__ == '__main__':
    main()
