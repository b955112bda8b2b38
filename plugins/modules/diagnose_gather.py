#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

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
notes:
  - Needs root (C(CAP_AUDIT_CONTROL)) on the host, like M(auditgap.fleet.audit_status).
  - Supports check mode; the module never changes anything.
seealso:
  - module: auditgap.fleet.audit_status
  - module: auditgap.fleet.cgroup_throttle
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.read_only
  - auditgap.fleet.diagnose_gather
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, diagnosegather


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
    error = diagnosegather.validate(params)
    if error:
        module.fail_json(msg=error)

    module.exit_json(changed=False, **diagnosegather.gather(params, audit.for_module(module, params['source'])))


if __name__ == '__main__':
    main()
