# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # The gather options of diagnose_gather (module_utils/diagnosegather.py OPTIONS: their
    # types and defaults), which the action diagnose_fanout passes on to every host.
    DOCUMENTATION = r'''
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
'''
