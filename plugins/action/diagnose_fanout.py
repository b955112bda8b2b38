# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""diagnose_fanout: the gather step of diagnose.yml for every host of the play at once,
from this one controller process (plugins/plugin_utils/fanout.py, docs/scale.md).
Documentation: plugins/modules/diagnose_fanout.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import time

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.auditgap.fleet.plugins.module_utils.diagnosis import DEFAULT_THRESHOLDS, stall_suspected
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosegather
from ansible_collections.auditgap.fleet.plugins.plugin_utils import fanout

TRANSPORTS = ('ansible', 'fanout')
TRACES = ('auto', 'always', 'never')
# argument -> host variable that overrides it per host (inventory, group_vars), as on the Ansible path
HOST_VARS = {'audit_sample_seconds': 'diagnose_audit_sample_seconds',
             'cgroup_sample_seconds': 'diagnose_cgroup_sample_seconds',
             'trace': 'diagnose_trace',
             'backlog_saturated_ratio': 'diagnose_backlog_saturated_ratio'}
# the gather options checked here as numbers (templated values arrive as text): (low, high, type)
RANGES = {'audit_sample_seconds': (0, 300, float), 'cgroup_sample_seconds': (0, 3600, float),
          'sample_interval_ms': (10, 60000, int)}
_ARGS = frozenset(('transport', 'hosts', 'audit_sample_seconds', 'cgroup_sample_seconds', 'sample_interval_ms',
                   'source', 'consumer_cgroup', 'trace', 'backlog_saturated_ratio', 'concurrency', 'timeout',
                   'max_result_bytes'))


def _number(name, value, low, high, kind=float):
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = kind(value)
    except (TypeError, ValueError):
        raise AnsibleActionFail('diagnose_fanout: %s must be a number, got %r' % (name, value))
    if isinstance(number, float) and not math.isfinite(number) or not low <= number <= high:
        raise AnsibleActionFail('diagnose_fanout: %s must be between %s and %s, got %r' % (name, low, high, value))
    return number


def check_args(args):
    """Validated arguments with defaults (AnsibleActionFail names the bad one; nothing runs)."""
    transport = to_text(args.get('transport', 'fanout'))
    if transport not in TRANSPORTS:
        raise AnsibleActionFail('diagnose_fanout: transport must be one of %s, got %r' % (', '.join(TRANSPORTS), transport))
    trace = to_text(args.get('trace', 'auto'))
    if trace not in TRACES:
        raise AnsibleActionFail('diagnose_fanout: trace must be one of %s, got %r' % (', '.join(TRACES), trace))
    hosts = args.get('hosts')
    if hosts is not None and (isinstance(hosts, (str, bytes)) or not isinstance(hosts, (list, tuple))
                              or not all(isinstance(h, str) for h in hosts)):
        raise AnsibleActionFail('diagnose_fanout: hosts must be a list of inventory host names')
    params = dict((name, args.get(name, default)) for name, (_kind, default) in diagnosegather.OPTIONS.items())
    for name, (low, high, kind) in RANGES.items():
        params[name] = _number(name, params[name], low, high, kind)
    params['consumer_cgroup'] = boolean(params['consumer_cgroup'], strict=True)
    full, error = diagnosegather.check_params(params)
    if error:
        raise AnsibleActionFail('diagnose_fanout: %s' % error)
    return {'transport': transport, 'trace': trace, 'hosts': list(hosts) if hosts is not None else None,
            'params': full,
            'backlog_saturated_ratio': _number('backlog_saturated_ratio', args.get(
                'backlog_saturated_ratio', DEFAULT_THRESHOLDS['backlog_saturated_ratio']), 0, 1),
            'concurrency': _number('concurrency', args.get('concurrency', 0), 0, 2000, int) or C.DEFAULT_FORKS,
            'timeout': _number('timeout', args.get('timeout', 120), 1, 86400),
            'max_result_bytes': _number('max_result_bytes', args.get('max_result_bytes', 16 << 20), 1024, 1 << 30, int)}


def config_defaults():
    """The controller configuration the ssh connection would fall back to (ssh_args,
    control_path and control_path_dir as its configuration gives them)."""
    ssh = {}
    try:
        from ansible.plugins.loader import connection_loader
        from ansible.utils.path import unfrackpath
        connection_loader.get('ssh', class_only=True)   # loads the plugin's configuration definitions
        for name in ('ssh_args', 'control_path', 'control_path_dir'):
            ssh[name] = C.config.get_config_value(name, plugin_type='connection', plugin_name='ssh')
        if ssh.get('control_path_dir'):
            ssh['control_path_dir'] = unfrackpath(to_text(ssh['control_path_dir']))
            os.makedirs(ssh['control_path_dir'], mode=0o700, exist_ok=True)
    except Exception:  # no multiplexing then, the fan-out still works
        ssh['control_path_dir'] = None
    return {'connection': C.DEFAULT_TRANSPORT, 'remote_user': C.DEFAULT_REMOTE_USER,
            'private_key_file': C.DEFAULT_PRIVATE_KEY_FILE, 'timeout': C.DEFAULT_TIMEOUT,
            'host_key_checking': C.HOST_KEY_CHECKING, 'become_user': C.DEFAULT_BECOME_USER,
            'become_method': C.DEFAULT_BECOME_METHOD, 'ssh_args': ssh.get('ssh_args', fanout.SSH_ARGS),
            'control_path': ssh.get('control_path'), 'control_path_dir': ssh.get('control_path_dir')}


def host_params(base, host_vars):
    """The gather parameters for one host: the task's, with the host's own diagnose_* variables."""
    params = dict(base)
    for key in ('audit_sample_seconds', 'cgroup_sample_seconds'):
        var = HOST_VARS[key]
        if var in host_vars and host_vars[var] is not None:
            low, high, kind = RANGES[key]
            params[key] = _number(var, host_vars[var], low, high, kind)
    return params


def host_plan(host_vars, args):
    """{trace, ratio}: when this host goes on to the trace (its own diagnose_trace and
    diagnose_backlog_saturated_ratio, else the task's)."""
    trace = args['trace']
    if HOST_VARS['trace'] in host_vars and host_vars[HOST_VARS['trace']] is not None:
        trace = to_text(host_vars[HOST_VARS['trace']])
        if trace not in TRACES:
            raise AnsibleActionFail('diagnose_trace must be one of %s, got %r' % (', '.join(TRACES), trace))
    ratio = args['backlog_saturated_ratio']
    var = HOST_VARS['backlog_saturated_ratio']
    if var in host_vars and host_vars[var] is not None:
        ratio = _number(var, host_vars[var], 0, 1)
    return {'trace': trace, 'ratio': ratio}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    BYPASS_HOST_LOOP = True     # one run for the whole play, like add_host
    _requires_connection = False
    _VALID_ARGS = _ARGS

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        args = check_args(self._task.args)
        if args['transport'] == 'ansible':
            result.update({'changed': False, 'skipped': True, 'transport': 'ansible',
                           'skip_reason': 'transport ansible: each host gathers in its own task'})
            return result
        hosts = args['hosts'] if args['hosts'] is not None else list(task_vars.get('ansible_play_batch') or [])
        hostvars = task_vars.get('hostvars') or {}
        defaults = config_defaults()
        defaults['become'] = bool(self._play_context.become)
        defaults['become_user'] = self._play_context.become_user or defaults['become_user']
        defaults['become_method'] = self._play_context.become_method or defaults['become_method']
        blob = fanout.cached_blob(os.path.dirname(diagnosegather.__file__))

        results, jobs, plans = {}, [], {}
        for host in hosts:
            if host in results or host in plans:
                continue
            try:
                hv = hostvars[host] if host in hostvars else {}
                settings = fanout.host_settings(host, hv, defaults)
                params = host_params(args['params'], hv)
                plan = host_plan(hv, args)
            except Exception as err:  # one host's bad variable never stops the others
                results[host] = {'failed': True, 'changed': False,
                                 'msg': to_text(err)}
                continue
            if 'error' in settings:
                results[host] = {'failed': True, 'changed': False, 'msg': settings['error']}
                continue
            plans[host] = plan
            window = max(params['audit_sample_seconds'], params['cgroup_sample_seconds'] if params['consumer_cgroup'] else 0)
            jobs.append(fanout.Job(host, settings['kind'], fanout.command(settings),
                                   fanout.payload(params, blob), settings['timeout'] + window + args['timeout'],
                                   address=settings.get('address')))
        started = time.monotonic()
        fanout.run_all(jobs, concurrency=args['concurrency'], max_result_bytes=args['max_result_bytes'])
        for job in jobs:
            results[job.host] = job.result

        trace_hosts = []
        for host in hosts:
            plan = plans.get(host)
            if plan is None or host in trace_hosts:
                continue
            try:
                wanted = fanout.trace_wanted(
                    results[host], plan['trace'],
                    lambda status, ratio=plan['ratio']: stall_suspected(status, {'backlog_saturated_ratio': ratio}))
            except Exception:  # a malformed result is reported, not traced
                wanted = False
            if wanted:
                trace_hosts.append(host)
        counts = {'hosts': len(results), 'unreachable': sum(1 for r in results.values() if r.get('unreachable')),
                  'failed': sum(1 for r in results.values() if r.get('failed'))}
        counts['gathered'] = counts['hosts'] - counts['unreachable'] - counts['failed']
        result.update({'changed': False, 'transport': 'fanout', 'results': results, 'trace_hosts': trace_hosts,
                       'summary': counts, 'elapsed_s': round(time.monotonic() - started, 3),
                       'payload_bytes': len(blob)})
        return result
