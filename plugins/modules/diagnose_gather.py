#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: UP001, UP009, UP010, UP031, EXE001

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: diagnose_gather
short_description: audit_status and cgroup_throttle of the audit consumer in one run, sampled over the same window
version_added: 0.1.0
description:
  - The gather step of C(playbooks/diagnose.yml). Returns exactly what M(auditgap.fleet.audit_status)
    and M(auditgap.fleet.cgroup_throttle) (with C(audit_consumer=true)) return, under the same keys
    C(audit_status) and C(cgroup_throttle), from the same module_utils.
  - Both sample windows run at the same time (two threads), so the backlog and the consumer's
    throttling are measured over the same seconds, in one module run per host (one round trip
    instead of two, and the window once instead of twice).
  - Read-only. Without root or without audit, C(audit_status.supported) is false with a reason;
    never fails for that.
author:
  - auditgap contributors (@auditgap)
options:
  audit_sample_seconds:
    description: Sample window of the audit status (backlog peak, lost, wait time), 0 to 300; 0 takes no sample.
    type: float
    default: 5
  cgroup_sample_seconds:
    description: Sample window of the consumer's cpu.stat, 0 to 3600; 0 gives counters since the cgroup was created.
    type: float
    default: 5
  sample_interval_ms:
    description: Polling interval of the audit sample in milliseconds (10 to 60000).
    type: int
    default: 100
  source:
    description: Where to read the audit status and rules from (as M(auditgap.fleet.audit_status)).
    type: str
    choices: [auto, netlink, auditctl]
    default: auto
  consumer_cgroup:
    description: Measure the CPU throttling of the registered audit consumer (C(cgroup_throttle) key).
    type: bool
    default: true
notes:
  - Needs root (C(CAP_AUDIT_CONTROL)) on the host, like M(auditgap.fleet.audit_status).
  - Supports check mode; the module never changes anything.
seealso:
  - module: auditgap.fleet.audit_status
  - module: auditgap.fleet.cgroup_throttle
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.read_only
'''

EXAMPLES = r'''
- name: Audit status and the consumer's throttling over the same 5 s
  auditgap.fleet.diagnose_gather:
    audit_sample_seconds: 5
    cgroup_sample_seconds: 5
  register: gathered
'''

RETURN = r'''
audit_status:
  description: The facts of M(auditgap.fleet.audit_status) (docs/contracts.md).
  returned: always
  type: dict
cgroup_throttle:
  description:
    - The facts of M(auditgap.fleet.cgroup_throttle) with the single target C(audit_consumer) (docs/contracts.md).
      Absent when I(consumer_cgroup=false).
  returned: when consumer_cgroup is true
  type: dict
'''

import threading

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import (
    auditfacts,
    auditnl,
    cgroups,
)


audit_consumer_pid = auditnl.consumer_pid


def docker_lookup(*args, **kwargs):
    """dockerctl.lookup_container, imported only when a consumer sits in a container: its
    HTTP and tar imports were a third of this module's start-up on every host (docs/scale.md)."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl
    return dockerctl.lookup_container(*args, **kwargs)


def cgroup_options(seconds):
    return {'audit_consumer': True, 'pids': [], 'process_names': [], 'systemd_units': [],
            'containers': [], 'cgroup_paths': [], 'sample_seconds': seconds, 'root': '/'}


def gather_both(params, audit_fn, cgroup_fn):
    """Run both collectors at once; an exception becomes ``supported: false``, never a crash."""
    results = {}

    def audit():
        try:
            results['audit_status'] = audit_fn()
        except Exception as err:  # noqa: BLE001
            results['audit_status'] = auditfacts.unsupported(
                'unexpected error reading audit status: %s: %s' % (type(err).__name__, err))

    def cgroup():
        try:
            results['cgroup_throttle'] = cgroup_fn()
        except Exception as err:  # noqa: BLE001
            results['cgroup_throttle'] = {'supported': False, 'targets': [],
                                          'reason': 'cgroup_throttle failed: %s: %s' % (type(err).__name__, err)}

    threads = [threading.Thread(target=audit)]
    if params['consumer_cgroup']:
        threads.append(threading.Thread(target=cgroup))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main():
    module = AnsibleModule(
        argument_spec={
            'audit_sample_seconds': {'type': 'float', 'default': 5},
            'cgroup_sample_seconds': {'type': 'float', 'default': 5},
            'sample_interval_ms': {'type': 'int', 'default': 100},
            'source': {'type': 'str', 'default': 'auto', 'choices': ['auto', 'netlink', 'auditctl']},
            'consumer_cgroup': {'type': 'bool', 'default': True},
        },
        supports_check_mode=True,
    )
    params = module.params
    error = auditfacts.validate_params(params['source'], params['audit_sample_seconds'], params['sample_interval_ms'])
    options = cgroup_options(params['cgroup_sample_seconds'])
    error = error or cgroups.validate_options(options)
    if error:
        module.fail_json(msg=error)

    def run_command(argv):
        return module.run_command(argv, environ_update={'LC_ALL': 'C'})

    def audit():
        return auditfacts.gather(source=params['source'], sample_seconds=params['audit_sample_seconds'],
                                 sample_interval_ms=params['sample_interval_ms'], rules=True, consumer=True,
                                 run_command=run_command, auditctl_path=module.get_bin_path('auditctl'),
                                 container_lookup=docker_lookup)

    def cgroup():
        return cgroups.collect(options, root='/', container_lookup=docker_lookup, audit_lookup=audit_consumer_pid)

    module.exit_json(changed=False, **gather_both(params, audit, cgroup))


if __name__ == '__main__':
    main()
