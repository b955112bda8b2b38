#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: cgroup_throttle
short_description: Measure CFS CPU throttling of processes, containers, units and cgroups
description:
  - Finds the CPU cgroup of each target (the registered audit consumer by default, pids,
    process names, systemd units, containers, cgroup paths), reads its CPU limit and
    throttling counters and those of every ancestor that has a limit (a pod or slice limit
    throttles too), names the tightest limit, and samples the counters over a window.
  - Works with cgroup v1 (C(cpu.cfs_quota_us), C(cpu.cfs_period_us), C(cpu.stat) with
    C(throttled_time) in ns, C(cpuacct.usage)) and cgroup v2 (C(cpu.max), C(cpu.max.burst),
    C(cpu.stat) with C(throttled_usec) and C(usage_usec), C(cpu.pressure)); hybrid hosts use
    the hierarchy that really holds the cpu controller. Times are normalised to microseconds.
  - Read only. A target that does not exist is reported with C(found=false) and a reason while
    the others are still measured. A host without a cgroup filesystem gives
    C(supported=false) and a reason, not a failure.
version_added: "0.1.0"
author: auditgap contributors (@auditgap)
options:
  audit_consumer:
    description:
      - Measure the registered audit consumer (the C(pid) of the kernel's audit status, read
        over netlink). When no consumer is registered this target is C(found=false) with the
        reason C(no audit consumer registered).
    type: bool
    default: true
  pids:
    description: Process ids to measure.
    type: list
    elements: int
    default: []
  process_names:
    description:
      - Processes by name, matched against C(comm) or the basename of C(exe). A name whose
        processes live in several cgroups gives one target entry per cgroup.
    type: list
    elements: str
    default: []
  systemd_units:
    description:
      - systemd units (C(foo) means C(foo.service)); found through the cgroup paths of processes
        (a path component equal to the unit) or a cgroup directory of that name. No systemctl
        needed.
    type: list
    elements: str
    default: []
  containers:
    description:
      - Containers by id (full or a unique prefix of at least 4 hex digits; docker, containerd,
        cri-o, podman ids found in cgroup paths) or by Docker name (resolved through the Docker
        socket C(/var/run/docker.sock), or the C(docker) CLI when only that answers).
    type: list
    elements: str
    default: []
  cgroup_paths:
    description:
      - cgroup paths, relative to the cpu hierarchy (C(/docker/ID), C(/system.slice)) or
        absolute under its mount point (C(/sys/fs/cgroup/cpu/docker/ID)).
    type: list
    elements: str
    default: []
  sample_seconds:
    description:
      - Window over which counters are sampled (deltas); 0 gives a snapshot only
        (C(sample) is null). 0..3600.
    type: float
    default: 5
  root:
    description:
      - Filesystem root under which C(/proc) and C(/sys/fs/cgroup) are read. Only for tests on
        fixture trees; the audit consumer and Docker names are still looked up on the live host.
    type: path
    default: /
notes:
  - Supports check mode (nothing is ever changed).
  - Needs read access to C(/proc/PID/cgroup) of the targets; the audit consumer lookup needs
    root (CAP_AUDIT_CONTROL) and the initial namespaces.
  - See docs/cgroup_throttle.md.
seealso:
  - module: auditgap.fleet.audit_status
  - module: auditgap.fleet.cpu_limit
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.read_only
'''

EXAMPLES = r'''
- name: Is the audit consumer throttled? (5 s sample)
  auditgap.fleet.cgroup_throttle:
  register: throttle

- name: A container by name and an agent by process name, snapshot only
  auditgap.fleet.cgroup_throttle:
    audit_consumer: false
    containers: [ids-agent]
    process_names: [auditd]
    sample_seconds: 0

- name: A systemd unit and a pod slice path, 10 s window
  auditgap.fleet.cgroup_throttle:
    systemd_units: [auditd.service]
    cgroup_paths: [/kubepods.slice]
    sample_seconds: 10
'''

RETURN = r'''
cgroup_throttle:
  description: CPU throttling facts, one entry per target (and per distinct cgroup of a target).
  returned: always
  type: dict
  contains:
    supported:
      description: Whether a cgroup hierarchy to read was found.
      type: bool
      returned: always
    reason:
      description: Why not supported (null when supported).
      type: str
      returned: always
    sample_seconds:
      description: The requested sampling window in seconds.
      type: float
      returned: always
    hierarchy:
      description:
        - Where the cpu controller is. Keys C(version) (1, 2 or null), C(cpu_controller) (bool),
          C(cpu_mount), C(cpuacct_mount), C(v2_mount), C(v2_controllers).
      type: dict
      returned: when /proc/self/mountinfo is readable
    targets:
      description: The measured targets.
      type: list
      elements: dict
      returned: always
      contains:
        kind:
          description: audit_consumer, pid, process_name, systemd_unit, container or cgroup_path.
          type: str
        name:
          description: The value asked for (a pid as a string; the consumer's pid for audit_consumer).
          type: str
        found:
          description: Whether the target was found and measured.
          type: bool
        reason:
          description: Why not found (null when found).
          type: str
        pids:
          description: The target's processes in this cgroup.
          type: list
          elements: int
        container:
          description: C({runtime, id, name}) (C(pod_uid) for Kubernetes) or null.
          type: dict
        systemd_unit:
          description: The systemd unit of the cgroup path, or null.
          type: str
        cgroup_version:
          description: 1 or 2, the version of the hierarchy holding the cpu controller.
          type: int
        cgroup_path:
          description: The processes' own cpu cgroup, relative to the hierarchy root.
          type: str
        limit_cores:
          description: The tightest CPU limit along the path in cores (null = unlimited).
          type: float
        limited_by:
          description: The cgroup path holding that tightest limit (null = none).
          type: str
        throttled_ratio_total:
          description: nr_throttled / nr_periods since creation, of the limited_by group (else the own group).
          type: float
        cgroups:
          description:
            - The own group first, then every ancestor with a limit. Each has C(path), C(quota_us),
              C(period_us), C(burst_us), C(limit_cores), C(nr_periods), C(nr_throttled),
              C(throttled_us), C(nr_bursts), C(usage_us), C(pressure) (PSI C({some, full}) with
              C(avg10), C(avg60), C(avg300) in percent and C(total_us); null without PSI),
              C(throttled_ratio_total) and C(sample) (as below, or null).
          type: list
          elements: dict
        sample:
          description:
            - Deltas over the window on the tightest limited group (or the own group when none is
              limited) - C(seconds), C(path), C(nr_periods_delta), C(nr_throttled_delta),
              C(throttled_ratio) (0.0 when there were no periods), C(throttled_seconds_per_s),
              C(cpu_usage_cores), C(limit_cores). Null when I(sample_seconds=0) or not found.
          type: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import (
    audit,
    cgroups,
    dockerctl,
)

docker_lookup = dockerctl.lookup_container


def main():
    module = AnsibleModule(
        argument_spec={
            'audit_consumer': {'type': 'bool', 'default': True},
            'pids': {'type': 'list', 'elements': 'int', 'default': []},
            'process_names': {'type': 'list', 'elements': 'str', 'default': []},
            'systemd_units': {'type': 'list', 'elements': 'str', 'default': []},
            'containers': {'type': 'list', 'elements': 'str', 'default': []},
            'cgroup_paths': {'type': 'list', 'elements': 'str', 'default': []},
            'sample_seconds': {'type': 'float', 'default': 5},
            'root': {'type': 'path', 'default': '/'},
        },
        supports_check_mode=True,
    )
    options = dict(module.params)
    error = cgroups.validate_options(options)
    if error:
        module.fail_json(msg=error)
    with audit.for_module(module) as client:
        facts = cgroups.collect(options, root=options['root'], container_lookup=docker_lookup,
                                audit_lookup=client.consumer)
    module.exit_json(changed=False, cgroup_throttle=facts)


if __name__ == '__main__':
    main()
