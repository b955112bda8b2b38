"""The lab-relevant host state, for a before/after comparison in the lab's tests.

``host_snapshot()``: audit settings, loaded rules, tracefs instances, cgroup dirs (top
level of each hierarchy), the auditd/dockerd/containerd and lab workload processes,
and (given) containers; ``snapshot_diff(before, after)``: the differences in words.
``delete_rules_by_key(key)``: remove a test's rules (exactly those with the key).
"""
import os

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, guard, labkit, labworkload

CGROUP_ROOTS = ('/sys/fs/cgroup/cpu', '/sys/fs/cgroup', '/sys/fs/cgroup/unified')


def list_rules():
    """The loaded rules as ``auditctl -l`` prints them (the audit client's auditctl source)."""
    with audit.Audit('auditctl') as client:
        return [rule['text'] for rule in client.rules()]


def delete_rules_by_key(key):
    """Delete every loaded rule or watch carrying exactly ``key`` (``-d``/``-W`` with its own fields)."""
    with audit.Audit('auditctl') as client:
        client.delete_rules([rule for rule in client.rules() if key in rule['keys']], missing_ok=True)


def list_lab_containers():
    """Names of all containers (for snapshots); None when no daemon answers."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import dockerctl, labdocker
    if not dockerctl.ping():
        return None
    return sorted((c.get('Names') or ['?'])[0].lstrip('/') for c in labdocker.list_containers())


SNAPSHOT_STATUS = ('enabled', 'failure', 'pid', 'rate_limit', 'backlog_limit', 'backlog_wait_time')


def host_snapshot(tracefs='/sys/kernel/tracing', cgroup_roots=CGROUP_ROOTS,
                  docker=None, daemons=('auditd', 'dockerd', 'containerd')):
    """The lab-relevant host state: audit settings, rules, tracefs instances,
    cgroup dirs (top two levels of each hierarchy), lab processes, containers."""
    status = labkit.get_status()
    snap = {'audit_status': dict((k, status.get(k)) for k in SNAPSHOT_STATUS),
            'rules': sorted(list_rules()),
            'tracefs_instances': [], 'cgroups': [], 'processes': [], 'containers': docker}
    instances = os.path.join(tracefs, 'instances')
    if os.path.isdir(instances):
        snap['tracefs_instances'] = sorted(os.listdir(instances))
    for root in cgroup_roots:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                snap['cgroups'].append(path)
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                cmd = handle.read().split(b'\0')
        except (IOError, OSError):
            continue
        words = [w.decode('utf-8', 'replace') for w in cmd if w]
        if not words or not guard.process_alive(int(pid)):
            continue
        text = ' '.join(words)
        workload = len(words) > 1 and os.path.basename(words[1]) == labworkload.SCRIPT_NAME
        if os.path.basename(words[0]) in daemons or workload:
            snap['processes'].append(text)
    snap['processes'].sort()
    return snap


def snapshot_diff(before, after):
    """Human-readable differences between two snapshots (empty list: equal)."""
    diffs = []
    keys = sorted(set(before) | set(after))
    for key in keys:
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append('%s.%s: %r -> %r' % (key, sub, a.get(sub), b.get(sub)))
        elif isinstance(a, list) and isinstance(b, list):
            for item in a:
                if item not in b:
                    diffs.append('%s: gone %r' % (key, item))
            for item in b:
                if item not in a:
                    diffs.append('%s: new %r' % (key, item))
        else:
            diffs.append('%s: %r -> %r' % (key, a, b))
    return diffs
