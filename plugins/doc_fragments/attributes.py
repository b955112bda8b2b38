# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # The shared attribute descriptions, and the platform every module runs on (a module
    # overrides what differs). A module adds its check_mode/diff_mode support levels itself
    # or through READ_ONLY or CHANGES (extends_documentation_fragment:
    # auditgap.fleet.attributes.read_only); its own keys win over a fragment's.
    DOCUMENTATION = r'''
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: linux
'''

    # Modules that only read the host.
    READ_ONLY = r'''
options: {}
attributes:
  check_mode:
    support: full
    details: Read-only; check mode runs the same reads and measurements and changes nothing.
  diff_mode:
    support: none
'''

    # Modules that change the host: a prediction in check mode, before/after in diff mode
    # (each module details what it reports).
    CHANGES = r'''
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

    # For action plugins (auditgap.fleet.attributes.action): they run on the controller
    # (POSIX) and show no diff; each states its check mode support. List it before
    # auditgap.fleet.attributes: the first fragment naming a key wins.
    ACTION = r'''
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
'''
