# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd drop-in precedence for one unit setting (pure functions, no systemd needed).

systemd applies a unit's drop-ins (``systemctl show -p DropInPaths``) in the
order of their file names across all directories; for the same setting the
last assignment wins, an empty one resets it. So an ``override.conf``
(``systemctl edit``) beats ``50-auditgap-cpu.conf``, whatever directory it
is in. ``systemctl set-property --runtime`` applies a value at once and hides
that until the next ``daemon-reload``.

  - ``unit_section(unit)``: the section a resource setting of the unit lives in
  - ``assignments(text, section, key)``: the values a unit file assigns, in order
  - ``winning_dropin(dropins, section, key)``: the drop-in whose assignment counts
  - ``overriding_dropin(ours, dropins, section)``: judged from the files alone
    (check mode), the drop-in that overrides ours, or None
  - ``quota_verdict(ours, wanted_us, effective_us, dropins, section)``: after
    ``daemon-reload``, None when the effective CPU quota is ours, else the
    reason, naming the file that overrides it
  - ``runtime_dropin(unit, key, transient)``: the drop-in ``systemctl set-property --runtime``
    writes for a setting (``/run/systemd/system.control/<unit>.d/50-<key>.conf``; for a
    transient unit, one made by ``systemd-run`` or a scope, ``/run/systemd/transient/<unit>.d/``)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

RUNTIME_CONTROL_DIR = '/run/systemd/system.control'
TRANSIENT_DIR = '/run/systemd/transient'


def runtime_dropin(unit, key, transient=False):
    """The drop-in ``systemctl set-property --runtime UNIT KEY=...`` writes (and that
    systemd reads back at every ``daemon-reload``): systemd keeps a transient unit's
    settings (``systemctl show -p Transient``: yes) beside the unit, in its transient directory."""
    return os.path.join(TRANSIENT_DIR if transient else RUNTIME_CONTROL_DIR, unit + '.d', '50-%s.conf' % key)


def unit_section(unit):
    """``Scope`` for a .scope, ``Slice`` for a .slice, else ``Service``."""
    if unit.endswith('.scope'):
        return 'Scope'
    if unit.endswith('.slice'):
        return 'Slice'
    return 'Service'


def parse_dropin_paths(value):
    """``DropInPaths=`` value of ``systemctl show`` -> [path]."""
    return [p for p in (value or '').split() if p.startswith('/')]


def assignments(text, section, key):
    """The values of ``key=`` in ``[section]`` of a unit file text, in order ('' resets)."""
    current = None
    values = []
    for raw in (text or '').splitlines():
        line = raw.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('[') and line.endswith(']'):
            current = line[1:-1].strip()
            continue
        if current != section or '=' not in line:
            continue
        name, value = line.split('=', 1)
        if name.strip() == key:
            values.append(value.strip())
    return values


def application_order(dropins):
    """[(path, text)] in the order systemd applies them: by file name, first seen wins a name.

    ``DropInPaths`` already lists one file per name (the one of the directory
    with the highest priority); a name seen again is skipped here.
    """
    seen = set()
    unique = []
    for path, text in dropins:
        name = os.path.basename(path)
        if name not in seen:
            seen.add(name)
            unique.append((path, text))
    return sorted(unique, key=lambda item: os.path.basename(item[0]))


def winning_dropin(dropins, section, key):
    """(path, value) of the drop-in whose ``key`` takes effect, or None when none sets it."""
    winner = None
    for path, text in application_order(dropins):
        values = assignments(text, section, key)
        if values:
            winner = (path, values[-1])
    return winner


def _us_text(us):
    return 'infinity' if us is None else '%gms' % (us / 1000.0)


def overriding_dropin(ours, dropins, section):
    """Why ``ours`` does not set the unit's CPUQuota judging from the files alone, or None.

    ``dropins``: [(path, text)] of the unit's drop-ins with ours among them.
    Names the drop-in whose ``CPUQuota=`` wins instead (check mode uses this:
    nothing is written, so systemd cannot be asked).
    """
    winner = winning_dropin(dropins, section, 'CPUQuota')
    if winner is None or winner[0] == ours:
        return None
    return ('drop-in %s sets CPUQuota=%s and overrides %s (systemd applies drop-ins in file-name order, '
            'the last one wins): raise or remove it there'
            % (winner[0], winner[1] or '(reset)', os.path.basename(ours)))


def quota_verdict(ours, wanted_us, effective_us, dropins, section):
    """None when the unit's effective CPU quota is the one ``ours`` sets, else why not.

    ``wanted_us``/``effective_us``: CPUQuotaPerSecUSec in us (None = infinity),
    the effective one read after ``daemon-reload``; ``dropins``: [(path, text)]
    of the unit's ``DropInPaths`` read at the same time. The reason names the
    drop-in that overrides ours when the files show one.
    """
    if effective_us is not None and wanted_us is not None \
            and abs(effective_us - wanted_us) <= max(100, wanted_us * 0.001):
        return None
    return overriding_dropin(ours, dropins, section) or (
        'after daemon-reload the effective CPU quota is %s, not the %s that %s sets (DropInPaths: %s)'
        % (_us_text(effective_us), _us_text(wanted_us), ours,
           ' '.join(path for path, _text in dropins) or 'none'))
