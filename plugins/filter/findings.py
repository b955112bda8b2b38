# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Findings filters (``auditgap.fleet.<name>``) over the diagnosis (module_utils/diagnosis.py):

- ``auditgap_findings(host_facts, hostname, thresholds=None)`` -> [finding]
- ``auditgap_host_summary(host_facts, hostname, thresholds=None, error=None,
  reachable=True)`` -> {host, reachable, error, status, severity, findings,
  chain, metrics, facts}
- ``auditgap_stall_suspected(audit_status, thresholds=None)`` -> bool (drives
  ``diagnose_trace: auto``)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis


def auditgap_findings(host_facts, hostname, thresholds=None):
    return diagnosis.evaluate(host_facts, hostname, thresholds)[0]


def auditgap_host_summary(host_facts, hostname, thresholds=None, error=None, reachable=True):
    return diagnosis.host_summary(host_facts, hostname, thresholds, error=error, reachable=reachable)


def auditgap_stall_suspected(audit_status, thresholds=None):
    return diagnosis.stall_suspected(audit_status, thresholds)


class FilterModule(object):
    """auditgap findings filters."""

    def filters(self):
        return {
            'auditgap_findings': auditgap_findings,
            'auditgap_host_summary': auditgap_host_summary,
            'auditgap_stall_suspected': auditgap_stall_suspected,
        }
