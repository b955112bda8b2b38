# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gather step of diagnose.yml (audit_status + cgroup_throttle of the audit
consumer, both windows over the same seconds), without AnsibleModule.

Two callers: the module ``diagnose_gather`` (Ansible's per-host task) and the
controller fan-out (action ``diagnose_fanout``), which ships this file and the
module_utils it imports to each host and calls :func:`fanout_main` there
(docs/scale.md). Nothing here may import ``ansible.module_utils``: the fan-out
payload carries only this collection's module_utils.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import threading

from ansible_collections.auditgap.fleet.plugins.module_utils import (
    audit,
    auditfacts,
    cgroups,
)

SOURCES = audit.SOURCES
# option -> (type, default): the module's argument_spec and the fan-out's parameters
OPTIONS = {
    'audit_sample_seconds': (float, 5.0),
    'cgroup_sample_seconds': (float, 5.0),
    'sample_interval_ms': (int, 100),
    'source': (str, 'auto'),
    'consumer_cgroup': (bool, True),
}
SBIN_DIRS = ('/sbin', '/usr/sbin', '/usr/local/sbin')


def docker_lookup(*args, **kwargs):
    """dockerctl.lookup_container, imported only when a consumer sits in a container: its
    HTTP and tar imports were a third of the gather's start-up on every host (docs/scale.md)."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl
    return dockerctl.lookup_container(*args, **kwargs)


def cgroup_options(seconds):
    return {'audit_consumer': True, 'pids': [], 'process_names': [], 'systemd_units': [],
            'containers': [], 'cgroup_paths': [], 'sample_seconds': seconds, 'root': '/'}


def check_params(params):
    """(full params with defaults, error or None) for a parameter mapping (fan-out input:
    JSON from the controller, so types are checked here as AnsibleModule would)."""
    if not isinstance(params, dict):
        return None, 'parameters must be a mapping'
    unknown = sorted(k for k in params if k not in OPTIONS)
    if unknown:
        return None, 'unknown parameter(s): %s (known: %s)' % (', '.join(unknown), ', '.join(sorted(OPTIONS)))
    full = {}
    for name, (kind, default) in OPTIONS.items():
        value = params.get(name, default)
        if value is None:
            value = default
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            return None, '%s must be a %s, got %r' % (name, kind.__name__, value)
        full[name] = value
    if full['source'] not in SOURCES:
        return None, 'source must be one of %s, got %r' % (', '.join(SOURCES), full['source'])
    return full, validate(full)


def validate(params):
    """The error of a full parameter set, or None."""
    error = auditfacts.validate_params(params['source'], params['audit_sample_seconds'], params['sample_interval_ms'])
    return error or cgroups.validate_options(cgroup_options(params['cgroup_sample_seconds']))


def gather_both(params, audit_fn, cgroup_fn):
    """Run both collectors at once; an exception becomes ``supported: false``, never a crash."""
    results = {}

    def audit():
        try:
            results['audit_status'] = audit_fn()
        except Exception as err:
            results['audit_status'] = auditfacts.unsupported(
                'unexpected error reading audit status: %s: %s' % (type(err).__name__, err))

    def cgroup():
        try:
            results['cgroup_throttle'] = cgroup_fn()
        except Exception as err:
            results['cgroup_throttle'] = {'supported': False, 'targets': [],
                                          'reason': 'cgroup_throttle failed: %s: %s' % (type(err).__name__, err)}

    threads = [threading.Thread(target=audit)]
    if params['consumer_cgroup']:
        threads.append(threading.Thread(target=cgroup))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def gather(params, client):
    """{audit_status, cgroup_throttle} for full, valid params, with one audit client
    (``audit.Audit``): the status is read once, here, for the facts and for the consumer
    whose cgroup is sampled (netlink, else auditctl -s, as everywhere)."""
    try:
        first = client.status()
        consumer = audit.consumer_from_status(first)
    except audit.AuditError as err:
        first, consumer = err, (None, str(err))

    def audit_facts():
        return auditfacts.gather(sample_seconds=params['audit_sample_seconds'],
                                 sample_interval_ms=params['sample_interval_ms'], rules=True, consumer=True,
                                 client=client, first=first, container_lookup=docker_lookup)

    def cgroup():
        return cgroups.collect(cgroup_options(params['cgroup_sample_seconds']), root='/',
                               container_lookup=docker_lookup, audit_lookup=lambda: consumer)

    return gather_both(params, audit_facts, cgroup)


def run_command(argv):
    """(rc, stdout, stderr) as text, LC_ALL=C: what the collectors get from AnsibleModule.run_command."""
    return audit.run_command(argv, env=dict(os.environ, LC_ALL='C'), timeout=None)


def find_bin(name):
    """The executable ``name`` on PATH or in the sbin directories (AnsibleModule.get_bin_path), or None."""
    dirs = [d for d in os.environ.get('PATH', '').split(os.pathsep) if d] + list(SBIN_DIRS)
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def fanout_main(params):
    """The fan-out payload's entry point on the host: the module's result, as a dict."""
    full, error = check_params(params)
    if error:
        return {'failed': True, 'changed': False, 'msg': error}
    result = gather(full, audit.Audit(full['source'], run_command, find_bin('auditctl')))
    result['changed'] = False
    return result
