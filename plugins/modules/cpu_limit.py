#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: cpu_limit
short_description: Raise the CPU limit of the audit consumer (or a named agent)
description:
  - Finds the target (by default the process registered as the audit daemon), reads its
    current CPU limit and raises it to I(limit_cores) through the backend that owns it.
  - C(docker) updates the container in place (Engine API C(POST /containers/{id}/update),
    like C(docker update --cpus)); the container keeps running. A container limited with
    C(--cpus) keeps that form; any other gets C(--cpu-quota) in its own period, the only
    form Docker can lift again (C(--cpus 0) is ignored), so that a failed or killed change
    can be put back.
  - C(systemd) writes a drop-in with C(CPUQuota=), runs C(systemctl daemon-reload) and
    applies it at runtime with C(systemctl set-property --runtime). Needs systemd as PID 1.
    systemd applies drop-ins in file-name order and the last one wins, so before the runtime
    change the module reads C(DropInPaths) and the effective C(CPUQuotaPerSecUSec) after the
    reload, and when another drop-in (such as an C(override.conf) from C(systemctl edit))
    overrides the limit it puts its own drop-in back as it was, reloads, and fails naming
    that file. Check mode judges the same from the drop-in files.
  - C(cgroup) writes the cgroup directly (v1 C(cpu.cfs_quota_us), v2 C(cpu.max)), for
    processes no manager owns. When a process's own group has no limit, the tightest
    limited ancestor (the group that throttles it) is the one raised.
  - C(auto) picks docker for a process in a Docker container, systemd for a process in a
    C(.service) unit when systemd runs, cgroup otherwise.
  - Lowering a limit (including limiting an unlimited target) is refused unless I(force).
    A tighter limit on a parent cgroup is reported in C(limited_by) with a warning, since
    raising the target alone does not help then.
version_added: "0.1.0"
author: auditgap contributors (@auditgap)
options:
  backend:
    description: Who applies the limit.
    type: str
    choices: [auto, docker, systemd, cgroup]
    default: auto
  target:
    description:
      - A mapping with one of C(pid) (a process id above 1), C(container) (name or id),
        C(systemd_unit), C(cgroup_path) (an absolute path in the cpu hierarchy, as in
        /proc/PID/cgroup, without C(.) or C(..) components). Empty or C(audit_consumer) means
        the process registered as the audit daemon.
      - Only a mapping is accepted; the C(key=value) string form (C(pid=1)) is refused, so a
        mistyped target never silently names another process.
    type: raw
  limit_cores:
    description: The new limit in CPU cores (0.01..1024).
    type: float
    required: true
  force:
    description: Allow lowering the limit.
    type: bool
    default: false
  period_us:
    description: CFS period for the cgroup backend (default keep the current one, else 100000).
    type: int
  docker_socket:
    description: Docker Engine API socket.
    type: path
    default: /var/run/docker.sock
  systemd_dropin_dir:
    description: Where unit drop-ins go (C(<dir>/<unit>.d/50-auditgap-cpu.conf)).
    type: path
    default: /etc/systemd/system
notes:
  - Supports check mode and diff mode.
  - Kubernetes DaemonSets are changed through their spec, not on the node; see docs/remediation.md.
extends_documentation_fragment:
  - auditgap.fleet.attributes
  - auditgap.fleet.attributes.changes
attributes:
  check_mode:
    details: Finds the target and its current limit, reports the limit it would set and changes nothing.
  diff_mode:
    details: The CPU limit before and after (cores, quota/period, and the drop-in for systemd).
'''

EXAMPLES = r'''
- name: Give the audit consumer two cores, whatever owns it
  auditgap.fleet.cpu_limit:
    limit_cores: 2

- name: A named container
  auditgap.fleet.cpu_limit:
    backend: docker
    target: {container: ids-agent}
    limit_cores: 1.5
'''

RETURN = r'''
cpu_limit:
  description: What was found and done.
  returned: always
  type: dict
  contains:
    backend:
      description: The backend used (docker, systemd or cgroup).
      type: str
    target:
      description:
        - The target as resolved (kind, name, pid, container, systemd_unit, cgroup_path, cgroup_version,
          own_cgroup_path when a limited ancestor was raised).
      type: dict
    before:
      description: The limit before (limit_cores null = unlimited, quota_us, period_us, or the backend's own fields).
      type: dict
    after:
      description: The limit after (as requested in check mode).
      type: dict
    limited_by:
      description: An ancestor cgroup whose limit is tighter than the new one (path, limit_cores), or null.
      type: dict
    dropin:
      description: The systemd drop-in path (systemd backend), else null.
      type: str
'''

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.auditgap.fleet.plugins.module_utils import audit, dockerctl, dropins, procinfo
from ansible_collections.auditgap.fleet.plugins.module_utils import cgroups as cg
from ansible_collections.auditgap.fleet.plugins.module_utils import guard

TARGET_KINDS = ('pid', 'container', 'systemd_unit', 'cgroup_path', 'audit_consumer')
DEFAULT_PERIOD_US = 100000
DROPIN_NAME = '50-auditgap-cpu.conf'
LOCK_WAIT_S = 30


class Failure(Exception):
    pass


class Overridden(Failure):
    """After daemon-reload another drop-in sets the unit's CPU quota (the guard rolls back)."""


def audit_consumer_pid(module):
    """PID of the registered audit consumer (netlink, else auditctl -s); Failure without one."""
    with audit.for_module(module) as client:
        pid, reason = client.consumer()
    if not pid:
        raise Failure('%s; name the agent with agent_cpu_target' % reason)
    return pid


TARGET_SPEC = ArgumentSpecValidator(
    {'pid': {'type': 'int'}, 'container': {'type': 'str'}, 'systemd_unit': {'type': 'str'},
     'cgroup_path': {'type': 'str'}, 'audit_consumer': {'type': 'bool'}},
    mutually_exclusive=[list(TARGET_KINDS)])
CONTAINER_RE = re.compile(r'^/?[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$')


def check_target(target):
    """(kind, value) of a target mapping (None, {} or audit_consumer: the audit consumer);
    Failure with the reason for anything else, before anything is looked up."""
    if target is None:
        target = {}
    if not isinstance(target, dict):
        raise Failure('target must be a mapping such as {pid: 1234} or {container: ids-agent}, got %s %r'
                      % (type(target).__name__, target))
    # unset keys (null, '', audit_consumer: false) name nothing; 0 stays (and is refused below)
    target = {k: v for k, v in target.items() if v is not None and v is not False and not (isinstance(v, str) and not v)}
    checked = TARGET_SPEC.validate(target)
    if checked.error_messages:
        raise Failure('target: %s' % '; '.join(checked.error_messages))
    given = [(k, checked.validated_parameters[k]) for k in TARGET_KINDS if k in target]
    kind, name = given[0] if given else ('audit_consumer', True)
    if kind == 'pid' and name < 2:
        raise Failure('target pid must be a process id above 1 (PID 1 is init), got %d' % name)
    if kind == 'container' and not CONTAINER_RE.match(name):
        raise Failure('target container %r is not a container name or id' % name)
    if kind == 'systemd_unit' and not cg.UNIT_RE.match(name):
        raise Failure('target systemd_unit %r is not a unit name' % name)
    if kind == 'cgroup_path':
        error = cg.cgroup_path_error(name)
        if error:
            raise Failure('target cgroup_path %s' % error)
    return kind, name


def check_args(params):
    """Failure for out-of-range numbers or a bad target, before anything is looked up."""
    if not 0.01 <= params['limit_cores'] <= 1024:
        raise Failure('limit_cores %g out of range 0.01..1024' % params['limit_cores'])
    if params['period_us'] is not None and not 1000 <= params['period_us'] <= 1000000:
        raise Failure('period_us %s out of range 1000..1000000' % params['period_us'])
    check_target(params['target'])


def resolve_target(module, target):
    """-> {kind, name, pid, info (procinfo), container, systemd_unit}"""
    kind, name = check_target(target)
    out = {'kind': kind, 'name': str(name), 'pid': None, 'info': None, 'container': None, 'systemd_unit': None}
    if kind == 'audit_consumer':
        pid = audit_consumer_pid(module)
        out['name'] = str(pid)
        kind = 'pid'
        name = pid
    if kind == 'pid':
        pid = int(name)
        info = procinfo.read_process(pid)
        if info is None:
            raise Failure('target process %d not found' % pid)
        out.update(pid=pid, info=info, container=info['container'], systemd_unit=info['systemd_unit'])
    elif kind == 'container':
        out['container'] = {'runtime': 'docker', 'id': str(name)}
    elif kind == 'systemd_unit':
        out['systemd_unit'] = str(name)
    return out


def systemd_running():
    return os.path.isdir('/run/systemd/system')


def pick_backend(requested, tgt):
    if requested != 'auto':
        return requested
    if tgt['kind'] == 'container':
        return 'docker'
    if tgt['kind'] == 'systemd_unit':
        return 'systemd'
    if tgt['kind'] == 'cgroup_path':
        return 'cgroup'
    container = tgt.get('container')
    if container and container.get('runtime') == 'docker':
        return 'docker'
    unit = tgt.get('systemd_unit') or ''
    if unit.endswith('.service') and systemd_running():
        return 'systemd'
    return 'cgroup'


def fmt_cores(cores):
    return 'unlimited' if cores is None else '%g cores' % cores


def decide(before_cores, wanted, force):
    """(change?, error) for a limit change; None = unlimited."""
    if before_cores is not None and abs(before_cores - wanted) < 1e-6:
        return False, None
    lowering = before_cores is None or wanted < before_cores
    if lowering and not force:
        return False, ('refusing to lower the CPU limit from %s to %s (set agent_cpu_force / force=true to allow)'
                       % (fmt_cores(before_cores), fmt_cores(wanted)))
    return True, None


# -- cgroup backend -----------------------------------------------------------

def cgroup_backend(module, tgt, wanted, result):
    with open('/proc/self/mountinfo') as handle:
        hier = cg.discover_hierarchies(handle.read())
    if not hier['supported'] or not hier['cpu_controller']:
        raise Failure('no cgroup cpu controller here: %s' % (hier.get('reason') or 'cgroup2 without the cpu controller'))
    if tgt['kind'] == 'cgroup_path':
        path = tgt['name']
    else:
        path = cg.cpu_path_of(tgt['info']['cgroups'], hier)
        if not path:
            raise Failure('process %s has no cpu cgroup' % tgt['pid'])
    chain = cg.limited_chain(hier, path)  # the group first, then its limited ancestors
    if not chain:
        raise Failure('cgroup %s not found in the cpu hierarchy' % path)
    group = chain[0]
    if group['limit_cores'] is None and tgt['kind'] != 'cgroup_path':
        # the process's own group is unlimited: the limit that throttles it sits on an
        # ancestor (a pod, a slice); that is the one to raise
        tight = cg.tightest(chain[1:])
        if tight is not None:
            result['target']['own_cgroup_path'] = group['path']
            chain = chain[chain.index(tight):]
            path, group = tight['path'], tight
    version = hier['version']
    directory = cg.dir_for(cg.cpu_mount(hier), path)
    if path.strip('/') == '':
        raise Failure('the target is in the root cpu cgroup, which has no CPU limit to raise '
                      '(move it into its own group or use backend docker/systemd)')
    result['target'].update(cgroup_path=group['path'], cgroup_version=version, directory=directory)
    period = module.params['period_us'] or group['period_us'] or DEFAULT_PERIOD_US
    if not 1000 <= period <= 1000000:
        raise Failure('period_us %s out of range 1000..1000000' % period)
    quota = round(wanted * period)
    if quota < 1000:
        raise Failure('limit %g cores at period %s us gives a quota below the kernel minimum 1000 us' % (wanted, period))
    before = {'limit_cores': group['limit_cores'], 'quota_us': group['quota_us'], 'period_us': group['period_us']}
    after = {'limit_cores': cg.limit_cores(quota, period), 'quota_us': quota, 'period_us': period}
    parents = [g for g in chain[1:] if g['limit_cores'] is not None and g['limit_cores'] < wanted]
    tight = cg.tightest(parents)
    if tight:
        result['limited_by'] = {'path': tight['path'], 'limit_cores': tight['limit_cores']}
    change, err = decide(group['limit_cores'], wanted, module.params['force'])
    if change is False and err is None and group['period_us'] != period and module.params['period_us']:
        change = True
    if err:
        raise Failure(err)

    def describe(v):
        return 'cgroup v%s %s: %s (quota %s us / period %s us)\n' % (
            version, directory, fmt_cores(v['limit_cores']), v['quota_us'] if v['quota_us'] is not None else 'max', v['period_us'])
    apply = None
    if change:
        def apply(rg):
            # one undo step puts quota and period back together, in the order the kernel accepts
            rg.push_op('cgroup_limit', 'restore the CPU limit of %s' % directory, version=version,
                       directory=directory, quota_us=group['quota_us'], period_us=group['period_us'])
            guard.set_cgroup_limit(version, directory, quota, period)

    def reread():
        g = cg.read_group(hier, path)
        return {'limit_cores': g['limit_cores'], 'quota_us': g['quota_us'], 'period_us': g['period_us']}
    return before, after, change, describe, apply, reread


# -- docker backend -----------------------------------------------------------

def docker_limit(info):
    """The CPU limit of a container (dockerctl.container_by_name_or_id): NanoCpus, else CpuQuota/CpuPeriod."""
    if info['nano_cpus']:
        cores = info['nano_cpus'] / 1e9
    elif info['cpu_quota_us'] and info['cpu_quota_us'] > 0:
        cores = info['cpu_quota_us'] / float(info['cpu_period_us'] or DEFAULT_PERIOD_US)
    else:
        cores = None
    return {'limit_cores': round(cores, 6) if cores is not None else None, 'nano_cpus': info['nano_cpus'],
            'cpu_quota_us': info['cpu_quota_us'], 'cpu_period_us': info['cpu_period_us']}


def docker_updates(info, wanted):
    """(change, undo): dockerctl.update_cpu arguments that set ``wanted`` cores and that put
    the container's limit back. A limit set with ``--cpus`` (NanoCpus) stays that; any other
    becomes a quota in the container's period (which stays): dockerd ignores NanoCpus 0, so
    only a quota can be lifted again (quota -1: unlimited, as before)."""
    if info['nano_cpus']:
        return {'nano_cpus': round(wanted * 1e9)}, {'nano_cpus': info['nano_cpus']}
    period = info['cpu_period_us'] or DEFAULT_PERIOD_US
    old = info['cpu_quota_us'] if info['cpu_quota_us'] and info['cpu_quota_us'] > 0 else -1
    return {'quota_us': round(wanted * period)}, {'quota_us': old}


def docker_backend(module, tgt, wanted, result):
    sock = module.params['docker_socket']
    ref = tgt['container']['id'] if tgt.get('container') else None
    if not ref:
        raise Failure('target %s %s is not in a Docker container (use backend cgroup or systemd)' % (tgt['kind'], tgt['name']))
    try:
        info = dockerctl.container_by_name_or_id(ref, socket_path=sock)
    except dockerctl.DockerUnavailable as err:
        raise Failure('Docker is not running (or not reachable): %s' % err)
    except dockerctl.DockerError as err:
        raise Failure('Docker error: %s' % err)
    if info is None:
        raise Failure('container %s not found' % ref)
    result['target'].update(container={'runtime': 'docker', 'id': info['id'], 'name': info['name']},
                            running=info['running'], pid=tgt.get('pid') or info['pid'])
    before = docker_limit(info)
    update, undo = docker_updates(info, wanted)
    if 'quota_us' in update:
        period = info['cpu_period_us'] or DEFAULT_PERIOD_US
        after = dict(before, limit_cores=round(update['quota_us'] / float(period), 6), cpu_quota_us=update['quota_us'])
    else:
        after = dict(before, limit_cores=round(wanted, 6), nano_cpus=update['nano_cpus'])
    change, err = decide(before['limit_cores'], wanted, module.params['force'])
    if err:
        raise Failure(err)

    def describe(v):
        return 'docker container %s (%s): %s\n' % (info['name'], info['id'][:12], fmt_cores(v['limit_cores']))

    def apply(rg):
        rg.push_op('docker_update', 'restore the CPU limit of container %s' % info['name'], container=info['id'],
                   limit=undo, socket_path=sock)
        try:
            dockerctl.update_cpu(info['id'], socket_path=sock, **update)
        except dockerctl.DockerError as err2:
            raise Failure('docker update failed: %s' % err2)

    def reread():
        return docker_limit(dockerctl.container_by_name_or_id(info['id'], socket_path=sock))
    return before, after, change, describe, apply if change else None, reread


# -- systemd backend ----------------------------------------------------------

def parse_timespan_us(text):
    """systemd timespan (``1s``, ``500ms``, ``1.500000s``, ``infinity``) -> us or None."""
    text = (text or '').strip()
    if not text or text == 'infinity':
        return None
    units = (('min', 60e6), ('ms', 1e3), ('us', 1.0), ('s', 1e6))
    total = 0.0
    for part in text.split():
        for suffix, factor in units:
            if part.endswith(suffix):
                total += float(part[:-len(suffix)]) * factor
                break
        else:
            total += float(part)
    return round(total)


def quota_percent(cores):
    pct = cores * 100
    return ('%d%%' % round(pct)) if abs(pct - round(pct)) < 1e-9 else ('%.2f%%' % pct)


def dropin_text(unit, cores):
    return ('# Managed by auditgap (agent_cpu role): CPU limit of the audit consumer.\n'
            '[%s]\nCPUQuota=%s\n' % (dropins.unit_section(unit), quota_percent(cores)))


def write_text(module, path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.auditgap-')
    with os.fdopen(fd, 'w') as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)


def systemd_show(module, systemctl, unit):
    """LoadState, CPUQuotaPerSecUSec (us, None = infinity), [(path, text)] of DropInPaths and
    whether the unit is transient (systemd-run, scopes: its runtime settings live elsewhere)."""
    rc, out, err = module.run_command([systemctl, 'show', unit, '-p', 'LoadState', '-p', 'CPUQuotaPerSecUSec',
                                       '-p', 'DropInPaths', '-p', 'Transient'])
    if rc != 0:
        raise Failure('systemctl show %s failed: %s' % (unit, (err or out).strip()))
    props = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
    paths = dropins.parse_dropin_paths(props.get('DropInPaths'))
    return (props.get('LoadState'), parse_timespan_us(props.get('CPUQuotaPerSecUSec')),
            [(path, procinfo.read_text(path) or '') for path in paths], props.get('Transient') == 'yes')


def systemd_backend(module, tgt, wanted, result):
    unit = tgt.get('systemd_unit')
    if not unit:
        raise Failure('target %s %s is not in a systemd unit (use backend cgroup or docker)' % (tgt['kind'], tgt['name']))
    if not systemd_running():
        raise Failure('systemd is not running on this host (PID 1 is not systemd); use backend cgroup')
    systemctl = module.get_bin_path('systemctl')
    if not systemctl:
        raise Failure('systemctl not found')
    load_state, per_sec, unit_dropins, transient = systemd_show(module, systemctl, unit)
    if load_state in ('not-found', None, ''):
        raise Failure('systemd unit %s not found' % unit)
    current = round(per_sec / 1e6, 6) if per_sec is not None else None
    path = os.path.join(module.params['systemd_dropin_dir'], unit + '.d', DROPIN_NAME)
    result['dropin'] = path
    section = dropins.unit_section(unit)
    old_text = procinfo.read_text(path)
    new_text = dropin_text(unit, wanted)
    before = {'limit_cores': current, 'cpu_quota': quota_percent(current) if current else 'infinity', 'dropin': old_text}
    after = {'limit_cores': round(wanted, 6), 'cpu_quota': quota_percent(wanted), 'dropin': new_text}
    change, err = decide(current, wanted, module.params['force'])
    if err:
        raise Failure(err)
    change = change or old_text != new_text
    if change and module.check_mode:
        # nothing is written in check mode: judge the drop-in order from the files
        err = dropins.overriding_dropin(path, [d for d in unit_dropins if d[0] != path] + [(path, new_text)], section)
        if err:
            raise Failure(err)

    def describe(v):
        return 'systemd unit %s: CPUQuota=%s\n%s' % (unit, v['cpu_quota'], v['dropin'] or '')

    def daemon_reload():
        rc2, out2, err2 = module.run_command([systemctl, 'daemon-reload'])
        if rc2 != 0:
            raise Failure('systemctl daemon-reload failed: %s' % (err2 or out2).strip())

    def apply(rg):
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            rg.push_op('rmdir', 'remove %s' % directory, path=directory)
            os.makedirs(directory)
        # first only the file (cpu_quota None: the runtime property is not touched yet)
        rg.push_op('systemd_dropin', 'restore %s and daemon-reload' % path, path=path, unit=unit,
                   text=old_text, cpu_quota=None)
        write_text(module, path, new_text)
        daemon_reload()
        # what systemd made of all drop-ins: a later one (override.conf) may win
        _state, effective, now_dropins, _transient = systemd_show(module, systemctl, unit)
        verdict = dropins.quota_verdict(path, round(wanted * 1e6), effective, now_dropins, section)
        if verdict:
            raise Overridden(verdict)  # the guard puts the drop-in back and reloads
        # set-property --runtime writes a drop-in of its own: put that back as it was too
        runtime = dropins.runtime_dropin(unit, 'CPUQuota', transient)
        rg.push_op('systemd_dropin', 'restore %s, %s and daemon-reload' % (path, runtime), path=path, unit=unit,
                   text=old_text, runtime_path=runtime, runtime_text=procinfo.read_text(runtime))
        args = [systemctl, 'set-property', '--runtime', unit, 'CPUQuota=%s' % quota_percent(wanted)]
        rc2, out2, err2 = module.run_command(args)
        if rc2 != 0:
            raise Failure('%s failed: %s' % (' '.join(args), (err2 or out2).strip()))

    def reread():
        _state, us, _dropins, _transient = systemd_show(module, systemctl, unit)
        cores = round(us / 1e6, 6) if us is not None else None
        return {'limit_cores': cores, 'cpu_quota': quota_percent(cores) if cores else 'infinity', 'dropin': new_text}
    return before, after, change, describe, apply if change else None, reread


def main():
    module = AnsibleModule(
        argument_spec={
            'backend': {'type': 'str', 'default': 'auto', 'choices': ['auto', 'docker', 'systemd', 'cgroup']},
            'target': {'type': 'raw'},
            'limit_cores': {'type': 'float', 'required': True},
            'force': {'type': 'bool', 'default': False},
            'period_us': {'type': 'int'},
            'docker_socket': {'type': 'path', 'default': '/var/run/docker.sock'},
            'systemd_dropin_dir': {'type': 'path', 'default': '/etc/systemd/system'},
        },
        supports_check_mode=True,
    )
    out = {'backend': None, 'target': {}, 'before': None, 'after': None, 'limited_by': None, 'dropin': None,
           'recovered_from_crash': [], 'restored': None, 'restore_errors': []}
    result = {'changed': False, 'cpu_limit': out}
    try:
        check_args(module.params)  # bad input fails before the lock and any lookup
    except Failure as err:
        module.fail_json(msg='%s; nothing changed' % err, **result)
    guard.run_locked(module, 'cpu_limit', lambda: run(module, result), out, result, LOCK_WAIT_S)


def run(module, result):
    """Resolve, decide and (not in check mode) apply; ends the module."""
    p = module.params
    out = result['cpu_limit']
    wanted = p['limit_cores']
    try:
        check_args(p)
        tgt = resolve_target(module, p['target'])
        out['target'] = {'kind': tgt['kind'], 'name': tgt['name'], 'pid': tgt['pid'],
                         'container': tgt['container'], 'systemd_unit': tgt['systemd_unit']}
        out['backend'] = pick_backend(p['backend'], tgt)
        backend = {'cgroup': cgroup_backend, 'docker': docker_backend, 'systemd': systemd_backend}[out['backend']]
        before, after, change, describe, apply, reread = backend(module, tgt, wanted, out)
    except Failure as err:
        module.fail_json(msg='%s; nothing changed' % err, **result)
    out['before'] = before
    out['after'] = after if change else before
    if out['limited_by']:
        module.warn('a parent cgroup %s limits the target to %g cores, below the %g asked: raise it too'
                    % (out['limited_by']['path'], out['limited_by']['limit_cores'], wanted))
    result['changed'] = bool(change)
    if change and module._diff:
        result['diff'] = {'before_header': 'cpu limit', 'after_header': 'cpu limit',
                          'before': describe(before), 'after': describe(after)}
    if not change or module.check_mode:
        module.exit_json(**result)
    err = guard.journaled('cpu_limit', out, apply)  # a failure, or a crash (the next run), puts the old limit back
    if err is not None:
        if isinstance(err, Overridden) and out['restored']:
            result['changed'] = False
            out['after'] = before
            module.fail_json(msg='applying the CPU limit failed: %s; rolled back, nothing changed' % err, **result)
        module.fail_json(msg='applying the CPU limit failed: %s; %s' % (
            err, 'rolled back' if out['restored'] else 'roll-back incomplete: %s' % '; '.join(out['restore_errors'])),
            **result)
    out['after'] = reread()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
