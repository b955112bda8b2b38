# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side last step of remediate.yml: the hosts' before/after records into
remediation.json and remediation.md, written as the fleet reports are (report.write_atomic)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.auditgap.fleet.plugins.module_utils import report


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(('records', 'report_dir', 'applied'))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = self._task.args
        # check mode always wins: a dry run writes nothing
        applied = boolean(args.get('applied', False), strict=False) and not self._task.check_mode
        report_dir = os.path.abspath(os.path.expanduser(to_text(args.get('report_dir') or '.')))
        now = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')
        doc = report.remediation_document(args.get('records') or [], now, report_dir, applied)
        result.update({'changed': False, 'mode': doc['mode'], 'summary': doc['summary'], 'report': None, 'files': []})
        if not applied:
            return result
        try:
            os.makedirs(report_dir, mode=0o750, exist_ok=True)
            for name, text in (('remediation.md', report.remediation_markdown(doc)), ('remediation.json', report.to_json(doc))):
                report.write_atomic(os.path.join(report_dir, name), text, report.REPORT_MODE)
                result['files'].append(os.path.join(report_dir, name))
        except (IOError, OSError) as err:
            result.update({'failed': True, 'msg': 'cannot write the remediation report to %s: %s' % (report_dir, to_text(err))})
            return result
        result['report'] = os.path.join(report_dir, 'remediation.json')
        return result
