#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: diagnose_fanout
short_description: The diagnose gather step for every host of the play at once, from one controller process
version_added: 0.1.0
description:
  - Action plugin (runs on the controller, once per play, like M(ansible.builtin.add_host)). For every
    host of the play it opens an SSH session from this one process, all at once (up to I(concurrency)),
    and sends one compact payload over the session's stdin in a single round trip - the code of
    M(auditgap.fleet.diagnose_gather) (C(module_utils/diagnosegather.py) and the module_utils it
    imports, zlib-compressed) and its parameters. The host's python3 runs it from memory (nothing is
    written on the host) and prints the same result M(auditgap.fleet.diagnose_gather) returns.
  - No Ansible worker, module wrapper or C(ansible.module_utils) import per host; per host it costs
    the SSH session and the payload, 0.24-0.7x the CPU of Ansible's own C(ping) as measured in
    docs/scale.md (the SSH key exchange and the hosts' login shell decide where in that range).
  - Used by C(playbooks/diagnose.yml) when C(diagnose_transport=fanout); the report step reads its
    per-host results exactly as it reads the per-host C(diagnose_gather_result), so both paths write
    the same report for the same facts.
  - Connection variables of each host are honoured as Ansible's ssh connection reads them -
    C(ansible_host), C(ansible_port), C(ansible_user), C(ansible_ssh_private_key_file),
    C(ansible_ssh_common_args), C(ansible_ssh_extra_args), C(ansible_ssh_timeout) (ssh's
    C(ConnectTimeout)), C(ansible_python_interpreter), C(ansible_become) (sudo without password) -
    and so are C(ssh_args) (C(ansible_ssh_args), C([ssh_connection] ssh_args), by default
    C(-o ControlMaster=auto -o ControlPersist=60s); its C(-C) is left out, the payload is compressed
    already), C(control_path) and C(control_path_dir). The ControlPath is the one Ansible's ssh
    connection computes for the host, so a later task on the same host (the bounded trace) reuses
    the fan-out's connection, and a ControlPersist longer than the interval of scheduled runs keeps
    one SSH login per host across runs (docs/scale.md). C(ansible_connection=local) runs the
    payload on the controller.
  - A host the fan-out cannot serve (another connection plugin, a password login, a become method
    other than sudo) gets a failed result naming why; an unreachable host an unreachable result with
    ssh's words, after at most its connect timeout; a malformed or oversized answer a failed result.
    Every host of the play has a result.
  - The gather options (I(audit_sample_seconds), I(cgroup_sample_seconds), I(sample_interval_ms), I(source),
    I(consumer_cgroup)) are M(auditgap.fleet.diagnose_gather)'s, passed on to every host. A host's
    C(diagnose_audit_sample_seconds) and C(diagnose_cgroup_sample_seconds) variables override the sample
    windows for that host.
options:
  transport:
    description:
      - C(fanout) gathers; C(ansible) returns a skipped result at once (the play gathers per host with
        M(auditgap.fleet.diagnose_gather)), so a playbook can always call this task once.
    type: str
    choices: [ansible, fanout]
    default: fanout
  hosts:
    description: Inventory hosts to gather from. Default is the play's current batch (C(ansible_play_batch)).
    type: list
    elements: str
  trace:
    description:
      - Which hosts are listed in C(trace_hosts) for the bounded trace, as the C(auditgap.fleet.diagnose)
        role decides it - C(auto) reachable hosts whose audit facts suggest a stall, C(always) every
        reachable host, C(never) none. A host's C(diagnose_trace) variable overrides it for that host.
    type: str
    choices: [auto, always, never]
    default: auto
  backlog_saturated_ratio:
    description:
      - Backlog peak over backlog_limit from which C(auto) traces a host (0 to 1). A host's
        C(diagnose_backlog_saturated_ratio) variable overrides it. Default is the findings' default
        (docs/findings.md, 0.8).
    type: float
  concurrency:
    description:
      - Hosts worked on at once (0 to 2000); each is one ssh process on the controller. 0 is
        Ansible's C(forks) setting. More at once than the machines' cores can serve makes every
        session dearer (docs/scale.md).
    type: int
    default: 0
  timeout:
    description:
      - Seconds a host may take beyond its connect timeout and sample window before its session is
        stopped and the host is reported as failed (1 to 86400).
    type: float
    default: 120
  max_result_bytes:
    description: Largest answer read from one host; a bigger one is stopped and the host reported as failed.
    type: int
    default: 16777216
author:
  - auditgap contributors (@auditgap)
notes:
  - The hosts need python3 (3.6 or later) and, for the facts, root (C(ansible_user=root) or C(ansible_become)).
  - Check mode gathers as well - the gather only reads (as M(auditgap.fleet.diagnose_gather) in check mode);
    the bounded trace that may follow runs through M(auditgap.fleet.ftrace_sample) and its guard.
  - Register the result (C(diagnose.yml) registers C(diagnose_fanout_result)); C(results) holds one
    entry per host.
seealso:
  - module: auditgap.fleet.diagnose_gather
  - module: auditgap.fleet.diagnose_report
attributes:
  check_mode:
    support: full
  platform:
    details: Runs on the controller (OpenSSH client); the hosts it gathers from are Linux.
extends_documentation_fragment:
  - auditgap.fleet.attributes.action
  - auditgap.fleet.attributes
  - auditgap.fleet.diagnose_gather
'''

EXAMPLES = r'''
- name: Gather every host of the play at once from the controller
  auditgap.fleet.diagnose_fanout:
    audit_sample_seconds: 1
    cgroup_sample_seconds: 1
  register: diagnose_fanout_result

- name: Hosts that did not answer
  ansible.builtin.debug:
    msg: "{{ diagnose_fanout_result.results | dict2items | selectattr('value.unreachable', 'defined') | map(attribute='key') }}"
'''

RETURN = r'''
transport:
  description: The transport asked for (C(fanout), or C(ansible) with a skipped result).
  returned: always
  type: str
results:
  description:
    - One entry per host - what M(auditgap.fleet.diagnose_gather) returns (C(audit_status),
      C(cgroup_throttle)), or C(unreachable) true with C(msg), or C(failed) true with C(msg).
  returned: when transport is fanout
  type: dict
trace_hosts:
  description: Hosts that go on to the bounded trace (see I(trace)), in play order.
  returned: when transport is fanout
  type: list
  elements: str
summary:
  description: Counts of C(hosts), C(gathered), C(unreachable) and C(failed).
  returned: when transport is fanout
  type: dict
elapsed_s:
  description: Seconds the sessions took, from the first start to the last result.
  returned: when transport is fanout
  type: float
payload_bytes:
  description: Size of the compressed code sent to each host.
  returned: when transport is fanout
  type: int
'''
