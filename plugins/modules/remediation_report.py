#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: remediation_report
short_description: Write auditgap's remediation report (controller side)
version_added: 0.2.0
description:
  - Action plugin run on the controller (no code is sent to hosts), the last step of
    C(playbooks/remediate.yml). Wraps the hosts' before/after records
    (P(auditgap.fleet.auditgap_remediation_host#filter)) into the remediation document with its
    summary (hosts, fixed, not fixed, new, not remediated, failed role runs) and, when the
    remediation was applied, writes C(remediation.json) and C(remediation.md) into I(report_dir)
    the way the fleet reports are written (a temp file made with O_EXCL, then renamed; mode 0640).
  - See docs/remediation.md.
options:
  records:
    description: The hosts' records (P(auditgap.fleet.auditgap_remediation_host#filter)).
    type: list
    elements: dict
    required: true
  report_dir:
    description: The directory of the diagnosis the remediation is based on; the report goes there (created, mode 0750).
    type: path
    required: true
  applied:
    description:
      - Whether the remediation was applied (C(mode) C(applied), else C(dry-run)). Only an applied run
        writes the files; in check mode nothing is written whatever this says.
    type: bool
    default: false
author:
  - auditgap contributors (@auditgap)
extends_documentation_fragment:
  - auditgap.fleet.attributes.action
  - auditgap.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode writes nothing (a dry run); the document's summary is still returned.
  platform:
    details: Runs on the controller.
'''

EXAMPLES = r'''
- name: Write remediation.json and remediation.md beside the diagnosis
  auditgap.fleet.remediation_report:
    records: "{{ groups['all'] | map('extract', hostvars) | selectattr('remediate_record', 'defined')
                 | map(attribute='remediate_record') | list }}"
    report_dir: reports/latest
    applied: true
  register: remediation_report
'''

RETURN = r'''
files:
  description: Files written.
  returned: always
  type: list
  elements: str
mode:
  description: C(applied) or C(dry-run).
  returned: always
  type: str
report:
  description: Path of remediation.json; null when nothing was written (a dry run).
  returned: always
  type: str
summary:
  description: The summary of remediation.json (hosts, fixed, not_fixed, new, not_remediated, failed_roles).
  returned: always
  type: dict
'''
