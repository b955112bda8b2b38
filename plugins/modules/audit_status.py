#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: audit_status
short_description: Read the Linux audit status, rules, consumer and backlog pressure
version_added: "0.1.0"
description:
  - Reads the kernel audit status over netlink (C(AUDIT_GET) on a C(NETLINK_AUDIT)
    socket; no auditctl needed), or from C(auditctl -s) as a fallback.
  - Reports enabled, failure, pid (the registered consumer), rate_limit,
    backlog_limit, lost, backlog, backlog_wait_time and backlog_wait_time_actual
    (jiffies, and in ms with the kernel's real HZ), and the feature bitmap.
  - Lists the loaded rules, parsed (netlink C(AUDIT_LIST_RULES) or C(auditctl -l)).
  - Identifies the consumer process (comm, exe, cmdline, cgroups, container, systemd unit).
  - Optionally samples the status for a window to measure peak backlog, lost
    events and time audited tasks spent waiting on a full backlog.
  - During the window it also reads the audit multicast group (C(AUDIT_NLGRP_READLOG), needs
    C(CAP_AUDIT_READ)) and reports the records per second per rule key, syscall, executable and
    user (C(sample.record_rates)); the group gets copies, nothing is taken from the consumer.
  - Read-only. Without root, or without audit in the kernel or the container,
    returns C(supported=false) with a reason instead of failing.
author:
  - auditgap contributors (@auditgap)
options:
  source:
    description:
      - Where to read the status and rules from.
      - C(auto) tries netlink first, then C(auditctl).
    type: str
    choices: [auto, netlink, auditctl]
    default: auto
  sample_seconds:
    description:
      - Length of the sampling window in seconds; C(0) takes no sample.
      - Between 0 and 300.
    type: float
    default: 0
  sample_interval_ms:
    description:
      - Polling interval during the sampling window, in milliseconds (10 to 60000).
    type: int
    default: 100
  record_rates:
    description:
      - Whether to read the audit multicast group during the sample window (C(sample.record_rates)).
      - Only with I(sample_seconds) above 0. Where the group cannot be joined (no C(CAP_AUDIT_READ),
        kernels before 3.16) C(sample.record_rates) is null and C(sample.record_rates_error) says why.
    type: bool
    default: true
  rules:
    description:
      - Whether to list and parse the loaded audit rules.
    type: bool
    default: true
  consumer:
    description:
      - Whether to identify the registered audit consumer process.
    type: bool
    default: true
notes:
  - Needs root (C(CAP_AUDIT_CONTROL)) in the initial user and pid namespace.
  - Supports check mode; the module never changes anything.
  - HZ comes from C(/proc/config.gz), C(/boot/config-<release>), a short
    measurement of the jiffies counter, or is assumed to be 250; C(hz.source) says which.
seealso:
  - name: auditctl(8)
    description: The audit control utility.
    link: https://man7.org/linux/man-pages/man8/auditctl.8.html
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.read_only
'''

EXAMPLES = r'''
- name: Read the audit status, rules and consumer
  auditgap.fleet.audit_status:
  become: true
  register: audit

- name: Sample backlog pressure for 10 seconds
  auditgap.fleet.audit_status:
    sample_seconds: 10
    sample_interval_ms: 100
  become: true
  register: audit

- name: Warn when events are being lost
  ansible.builtin.debug:
    msg: "{{ audit.audit_status.sample.lost_per_s }} audit events lost per second"
  when:
    - audit.audit_status.supported
    - audit.audit_status.sample.lost_delta | default(0) > 0

- name: Use auditctl only, without the rules
  auditgap.fleet.audit_status:
    source: auditctl
    rules: false
  become: true
'''

RETURN = r'''
audit_status:
  description: The audit facts of this host (see docs/contracts.md).
  returned: always
  type: dict
  contains:
    supported:
      description: Whether the audit status could be read.
      type: bool
      returned: always
    reason:
      description: Why not, when I(supported) is false.
      type: str
      returned: when supported is false
    source:
      description: Where the status came from (C(netlink) or C(auditctl)); null when unsupported.
      type: str
      returned: always
    source_errors:
      description: Errors of the sources tried before the one that answered (C(source=auto)).
      type: list
      elements: str
      returned: when a source failed
    collected_at:
      description: When the facts were read, UTC ISO 8601.
      type: str
      returned: always
      sample: "2026-11-25T20:15:00.123456Z"
    kernel_release:
      description: The running kernel's release (C(uname -r)); history compares it between runs.
      type: str
      returned: always
      sample: "6.1.0-27-amd64"
    hz:
      description: The kernel HZ used to convert jiffies, and how it was found.
      type: dict
      returned: always
      contains:
        value:
          description: Jiffies per second.
          type: int
          sample: 250
        source:
          description: C(/proc/config.gz), C(/boot/config-<release>), C(measured) or C(assumed).
          type: str
    status:
      description: The kernel audit status; null when unsupported.
      type: dict
      returned: always
      contains:
        enabled:
          description: 0 disabled, 1 enabled, 2 enabled and locked until reboot.
          type: int
        immutable:
          description: True when I(enabled) is 2.
          type: bool
        failure:
          description: Failure action (0 silent, 1 printk, 2 panic).
          type: int
        pid:
          description: Pid of the registered audit consumer, 0 when none.
          type: int
        rate_limit:
          description: Messages per second limit, 0 unlimited.
          type: int
        backlog_limit:
          description: Maximum records queued for the consumer.
          type: int
        lost:
          description: Records lost since boot (or since the consumer last reset it).
          type: int
        backlog:
          description: Records queued now.
          type: int
        backlog_wait_time_jiffies:
          description: How long an audited task waits on a full backlog, in jiffies; null on kernels before 3.14.
          type: int
        backlog_wait_time_ms:
          description: The same in milliseconds.
          type: float
        backlog_wait_time_actual_jiffies:
          description: Total time tasks spent waiting on a full backlog, in jiffies; null on kernels before 5.10.
          type: int
        backlog_wait_time_actual_ms:
          description: The same in milliseconds.
          type: float
        feature_bitmap:
          description: The kernel's audit feature bitmap; null when not reported.
          type: int
        features:
          description: Names of the feature bits set.
          type: list
          elements: str
        loginuid_immutable:
          description: Only with C(source=auditctl) when printed.
          type: int
    rules:
      description: Loaded rules, in kernel order.
      type: list
      elements: dict
      returned: always
      contains:
        list:
          description: Filter list (exit, user, task, exclude, filesystem, io_uring, entry).
          type: str
        action:
          description: never, possible or always.
          type: str
        arch:
          description: C(b64), C(b32), another arch value, or null.
          type: str
        syscalls:
          description: Syscall names; C([all]) for all; empty for lists without syscalls.
          type: list
          elements: str
        fields:
          description: Fields as C({name, op, value}); C(-C a!=b) is C({name compare, op !=, value a:b}).
          type: list
          elements: dict
        key:
          description: The first key, or null.
          type: str
        keys:
          description: All keys.
          type: list
          elements: str
        text:
          description: The rule as C(auditctl -l) prints it.
          type: str
        parse_error:
          description: Only when an auditctl line could not be parsed.
          type: str
    rules_source:
      description: Where the rules came from; null when not read.
      type: str
      returned: always
    rules_error:
      description: Why the rules could not be read.
      type: str
      returned: when listing the rules failed
    consumer:
      description: The registered consumer process; null when none is registered (or I(consumer=false)).
      type: dict
      returned: always
      contains:
        pid:
          description: Its pid.
          type: int
        found:
          description: False when the pid is not visible in /proc here.
          type: bool
        comm:
          description: /proc/PID/comm.
          type: str
        exe:
          description: /proc/PID/exe target.
          type: str
        exe_build:
          description: Identity of the consumer's executable, C(<size>:<mtime>); an agent upgrade changes it.
          type: str
        cmdline:
          description: Arguments.
          type: list
          elements: str
        cgroups:
          description: C({v1 {controller path}, v2 path}).
          type: dict
        container:
          description:
            - C({runtime, id, name, pod_uid?, kubernetes?}) when it runs in a container, else null.
            - C(name) is resolved through the Docker API (else C(crictl inspect)); C(kubernetes) is
              C({namespace, pod, container}) from the CRI labels of a pod's container.
          type: dict
        systemd_unit:
          description: The systemd service or scope, or null.
          type: str
    sample:
      description: The sampling window; null when I(sample_seconds=0).
      type: dict
      returned: always
      contains:
        seconds:
          description: Length of the window actually sampled.
          type: float
        samples:
          description: Number of status reads.
          type: int
        interval_ms:
          description: Polling interval.
          type: int
        backlog_peak:
          description: Highest backlog seen.
          type: int
        backlog_peak_ratio:
          description: backlog_peak / backlog_limit (0..1), null when unlimited.
          type: float
        lost_delta:
          description: Records lost during the window.
          type: int
        lost_per_s:
          description: lost_delta per second.
          type: float
        backlog_wait_time_actual_delta_jiffies:
          description: Growth of backlog_wait_time_actual; null on kernels without it.
          type: int
        backlog_wait_time_actual_delta_ms:
          description: The same in milliseconds.
          type: float
        timeline:
          description: Each read as C({t_s, backlog, lost, backlog_wait_time_actual_jiffies}).
          type: list
          elements: dict
        record_rates:
          description:
            - The records the kernel handed to the consumer during the window, read from the audit multicast
              group (docs/audit_status.md, "Record rates"); null when I(record_rates=false) or the group
              could not be joined.
            - C(by_key), C(by_syscall), C(by_exe), C(by_user) rank C({<field>, events, records, records_per_s,
              share}) (top 10, most records first); C(by_user) rows also have C(user) (the login name, when known).
          type: dict
          returned: when a sample was taken
          contains:
            seconds:
              description: Length of the window.
              type: float
            records:
              description: Records delivered in the window (all types).
              type: int
            events:
              description: Events (one per serial number, e.g. one audited syscall's SYSCALL, PROCTITLE, EOE records).
              type: int
            records_per_s:
              description: records / seconds.
              type: float
            events_per_s:
              description: events / seconds.
              type: float
            records_per_event:
              description: records / events.
              type: float
            peak_records_per_s:
              description: Most records made within any one second, counted by the records' own time stamps.
              type: int
            drain_gap_max_ms:
              description: Longest time a record waited while nothing was delivered (the consumer not draining); 0 when
                no record waited 10 ms or more.
              type: int
            drain_gaps:
              description: How many records waited 10 ms or more with nothing delivered.
              type: int
            burst_records:
              description: Most records made within any span of C(drain_gap_max_ms) (what the backlog must hold
                through the worst gap); null without a gap.
              type: int
            unparsed:
              description: Records without the C(audit(stamp:serial)) header (counted by type).
              type: int
            by_key:
              description: Per rule key (C(null) for records of rules without a key, C(type:NAME) for records
                of no syscall event).
              type: list
              elements: dict
            by_syscall:
              description: Per syscall name (the record's arch table).
              type: list
              elements: dict
            by_exe:
              description: Per executable.
              type: list
              elements: dict
            by_user:
              description: Per uid.
              type: list
              elements: dict
            by_type:
              description: C({type, records}) per record type (SYSCALL, PROCTITLE, EOE, ...).
              type: list
              elements: dict
            top_talkers:
              description: C({key, syscall, exe, uid, user, events, records, records_per_s, events_per_s, share}),
                the talkers with the most records.
              type: list
              elements: dict
            overruns:
              description: Times the reader's own socket overflowed (C(ENOBUFS)); the counts are then lower
                bounds. The consumer loses nothing either way.
              type: int
            complete:
              description: True when C(overruns) is 0.
              type: bool
        record_rates_error:
          description: Why C(record_rates) is null although asked for.
          type: str
          returned: when the multicast group could not be joined
    sample_error:
      description: Why the sampling window stopped early.
      type: str
      returned: when sampling failed
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, auditfacts, dockerctl


def main():
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type='str', default='auto', choices=['auto', 'netlink', 'auditctl']),
            sample_seconds=dict(type='float', default=0),
            sample_interval_ms=dict(type='int', default=100),
            rules=dict(type='bool', default=True),
            consumer=dict(type='bool', default=True),
            record_rates=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    error = auditfacts.validate_params(params['source'], params['sample_seconds'],
                                       params['sample_interval_ms'])
    if error:
        module.fail_json(msg=error)

    try:
        facts = auditfacts.gather(
            sample_seconds=params['sample_seconds'],
            sample_interval_ms=params['sample_interval_ms'],
            rules=params['rules'],
            consumer=params['consumer'],
            record_rates=params['record_rates'],
            client=audit.for_module(module, params['source']),
            container_lookup=dockerctl.lookup_container,
        )
    except Exception as err:  # never a traceback: a host without audit still gets a report
        facts = auditfacts.unsupported('unexpected error reading audit status: %s: %s'
                                       % (type(err).__name__, err))
    module.exit_json(changed=False, audit_status=facts)


if __name__ == '__main__':
    main()
