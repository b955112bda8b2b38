"""What auditgap could change on this host, read for a before/after comparison.

``host_state()``: the audit settings and loaded rules, every cgroup v1 cpu quota and
period, the files under /etc/audit and the systemd drop-ins auditgap writes (content hash,
mode, mtime), and, given a tracefs root, the tracefs files a sample touches. Counters that
move by themselves (lost, backlog, backlog_wait_time_actual) are left out.
"""
import hashlib
import os
import subprocess

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, tracefs

AUDIT_SETTINGS = ('enabled', 'failure', 'pid', 'backlog_limit', 'backlog_wait_time', 'rate_limit')


def audit_state():
    """(audit settings, loaded rules text)."""
    status = audit.parse_status(
        subprocess.run(['auditctl', '-s'], capture_output=True, text=True, check=True).stdout)
    rules = subprocess.run(['auditctl', '-l'], capture_output=True, text=True, check=True).stdout
    return {k: status.get(k) for k in AUDIT_SETTINGS}, rules


def _files(top):
    out = {}
    for base, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if os.path.islink(path):
                out[path] = ('link', os.readlink(path))
                continue
            with open(path, 'rb') as handle:
                out[path] = (hashlib.sha256(handle.read()).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


def cgroup_quotas(top='/sys/fs/cgroup/cpu'):
    out = {}
    for base, _dirs, files in os.walk(top):
        for name in ('cpu.cfs_quota_us', 'cpu.cfs_period_us', 'cpu.max'):
            if name in files:
                with open(os.path.join(base, name)) as handle:
                    out[os.path.join(base, name)] = handle.read().strip()
    return out


def host_state(tracefs_root=None):
    state = {'audit': audit_state(), 'cgroups': cgroup_quotas(), 'etc_audit': _files('/etc/audit'),
             'systemd_dropins': {p: v for p, v in _files('/etc/systemd/system').items() if 'auditgap' in p}}
    if tracefs_root:
        state['tracefs'] = tracefs.snapshot(tracefs_root)
    return state
