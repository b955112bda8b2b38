#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: diagnose_report
short_description: Write auditgap's fleet reports from a diagnose run (controller side)
version_added: 0.1.0
description:
  - Action plugin run on the controller (no code is sent to hosts). Reads the results the
    C(auditgap.fleet.diagnose) role registered on every host (C(diagnose_gather_result) with
    C(audit_status) and C(cgroup_throttle), C(diagnose_ftrace_sample_result); also
    C(diagnose_audit_status_result) and C(diagnose_cgroup_throttle_result) when a play registers those; with
    C(diagnose_transport=fanout) the host's entry of C(diagnose_fanout_result.results), see
    M(auditgap.fleet.diagnose_fanout)) from hostvars,
    computes the findings of each host and writes C(fleet.json), C(fleet.md), C(fleet.html),
    C(fleet.prom) and one C(<host>.json) per host.
  - Unreachable or failed hosts are reported with their error; the fleet report is always written.
  - See docs/reports.md for the schema and docs/findings.md for the findings.
options:
  report_dir:
    description:
      - Directory for the reports (created). When not given, C(<base_dir>/<UTC timestamp>/) and
        C(<base_dir>/latest) is pointed at it.
    type: path
  base_dir:
    description:
      - Where the timestamped report directories and the C(latest) link go when I(report_dir) is not
        given (created). Relative paths are relative to the playbook run's working directory. Point it at
        persistent storage where the controller is a throwaway container (an AWX execution environment).
    type: path
    default: reports
  hosts:
    description:
      - Inventory hosts to report on. Default is every host on which the C(auditgap.fleet.diagnose) role
        registered C(diagnose_gather_result) (or C(diagnose_audit_status_result)), or the fan-out gathered, in this run.
    type: list
    elements: str
  thresholds:
    description:
      - Threshold overrides for every host (keys as in docs/findings.md). Per-host values come from
        the host's C(diagnose_<key>) variables (inventory, group_vars, extra vars), else the defaults.
    type: dict
    default: {}
  timeline_svg:
    description:
      - An SVG file embedded in C(fleet.html) (e.g. the incident lab's timeline).
        Default is C(<report_dir>/lab-timeline.svg) when that file exists.
    type: path
  html_template:
    description:
      - A Jinja2 template for C(fleet.html) instead of the role's own
        (C(roles/report/templates/fleet.html.j2)). Copy that file, edit it and give its path. Autoescaped.
      - Templates beside it are found first, so a copy may extend C(fleet.html.j2) and override
        a block, and a C(fleet_host.html.j2) beside it replaces each host's section (docs/reports.md).
    type: path
  latest_link:
    description:
      - Point C(<parent of report_dir>/latest) at the report directory. Default is true when
        C(report_dir) is not given, false otherwise.
    type: bool
  formats:
    description:
      - Fleet formats to write besides the per-host JSON files.
    type: list
    elements: str
    choices: [json, md, html, prom]
    default: [json, md, html, prom]
  print_summary:
    description:
      - Print the short fleet summary (worst hosts first, each with its causal chain).
    type: bool
    default: true
  stats:
    description:
      - Expose C(auditgap_report) (C(report_dir), C(summary), C(summary_lines)) as the run's custom
        stats, as M(ansible.builtin.set_stats) does (not per host, not aggregated); AWX keeps them
        as the job's artifacts. Done by this task itself, so a diagnose run needs no task of its own for it.
    type: bool
    default: false
  stats_findings:
    description:
      - With O(stats), also expose C(remediate_findings) (every finding of C(fleet.json) with its host,
        after checking C(fleet.json) against its schema), when C(json) is among O(formats).
    type: bool
    default: false
author:
  - auditgap contributors (@auditgap)
notes:
  - Check mode writes the reports too (they are the controller's output, nothing changes on hosts).
extends_documentation_fragment:
  - auditgap.fleet.attributes.action
  - auditgap.fleet.attributes
attributes:
  check_mode:
    support: partial
    details:
      - Check mode writes the reports on the controller too (they are the output of the run);
        nothing changes on the hosts.
  platform:
    details: Runs on the controller; the hosts it reports on are Linux.
'''

EXAMPLES = r'''
- name: Write the fleet reports
  auditgap.fleet.diagnose_report:
    report_dir: /var/lib/auditgap/reports/today
  register: report_result

- name: Print the fleet summary
  ansible.builtin.debug:
    msg: "{{ report_result.summary_lines }}"
'''

RETURN = r'''
report_dir:
  description: Absolute path of the report directory.
  returned: always
  type: str
files:
  description: Files written.
  returned: always
  type: list
  elements: str
summary:
  description: The fleet summary of fleet.json (counts by status, severity and finding id).
  returned: always
  type: dict
summary_lines:
  description: The short fleet summary as lines of text.
  returned: always
  type: list
  elements: str
ansible_stats:
  description: The custom stats set (C(data), C(per_host), C(aggregate)), as M(ansible.builtin.set_stats) returns them.
  returned: when O(stats) is true
  type: dict
latest:
  description: Path of the C(latest) symlink when it was updated.
  returned: when the latest link is updated
  type: str
'''
