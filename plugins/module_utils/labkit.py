# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""labkit: the incident lab on a host (present/absent), shared by the lab module, the
tests' stall fixture (tests/support/stall.py) and the benchmark.

Every change the lab makes goes through the one undo model, the guard
(docs/safety.md): its undo step is written to the run's journal before the change
(audit settings, each rule, cgroups and their quota, the consumer, the workload, the
lab dir; Docker's daemon, image and container in labdocker.py). A failure or a
signal undoes the half-made lab at once; after a SIGKILL the next run of any auditgap
module replays the journal. A complete lab keeps its journal as its state file
(``state_path``, undo steps plus what the lab is), which no crash recovery replays;
``lab_absent`` adopts it as its own journal and replays it.

The workload daemon is the standalone script labworkload.py, written to the lab dir.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import signal
import sys
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import audit, cgroups, guard, labworkload, procinfo
from ansible_collections.auditgap.fleet.plugins.module_utils.guard import process_alive, proc_starttime

LAB_DIR = '/run/auditgap-lab'
STATE_FILE = LAB_DIR + '/state.json'
LAB_KEY = 'auditgap-lab'
# The lab's and the stall's default CFS period: with quota 1000 us the consumer
# runs 1 ms every 250 ms and stalls last ~250 ms (hundreds of ms, as in the
# incident); with 100 ms periods they stay under ~100 ms.
STALL_PERIOD_US = 250000
JOURNAL_DIR = guard.STATE_DIR  # where the lab's runs journal (tests point it elsewhere)

# The seed's rules (incident.md), with the lab key appended.
SEED_RULES = (
    ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'bind,listen,accept4', '-F', 'success=1'],
    ['-a', 'always,exit', '-F', 'arch=b64', '-S', 'clone,fork,execve'],
)
ACCEPT_RULE = SEED_RULES[0]
# What the lab creates in its dir (the dir itself goes only when empty: other runs'
# stall-* dirs may live beside them).
LAB_FILES = ('etc', 'plugins.d', 'auditd.out', 'audit.log', 'audit.log.1', 'audit.log.2', 'latency.jsonl',
             'latency.summary.json', 'latency.summary.json.tmp', 'timeline.jsonl', 'workload.json',
             'workload.json.tmp', 'workload.log', labworkload.SCRIPT_NAME, 'docker')


class LabRefused(RuntimeError):
    """The host cannot take the lab (another consumer, immutable audit)."""


class LabFailed(RuntimeError):
    """present failed; the guard undid the half-made lab (``restored``, ``restore_errors``)."""

    def __init__(self, message, rg):
        super(LabFailed, self).__init__(message)
        self.restored = rg.ok
        self.restore_errors = list(rg.restore_errors)


# --------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------
def get_status():
    """Audit status dict (the audit client: netlink, else ``auditctl -s``)."""
    with audit.Audit() as client:
        return client.status()


def set_status(**fields):
    """Audit status fields (netlink, auditctl when it is refused): the guard's audit_set."""
    guard.run_op('audit_set', {'fields': fields})


def rule_args(base, key):
    """A rule's auditctl -a arguments with the key appended (validated)."""
    if not key or not all(c.isalnum() or c in '-_.' for c in key):
        raise ValueError('bad audit key %r' % key)
    return list(base) + ['-k', key]


def add_rules(g, rules, key):
    """Each rule with ``key``, added through the audit client; its exact delete is journaled first."""
    with audit.Audit() as client:
        for base in rules:
            argv = rule_args(base, key)
            g.push_op('audit_rule_delete', 'delete the rule %s' % ' '.join(argv[1:]), argv=argv)
            client.add_rules([argv])


def set_audit(g, status, **fields):
    """Audit settings for the lab; the values in ``status`` (read before) are journaled first."""
    saved = dict((k, status[k]) for k in ('enabled', 'backlog_limit', 'backlog_wait_time'))
    g.push_op('audit_set', 'audit settings back to %s' % saved, fields=saved)
    set_status(**fields)


def wait_registered(pid, timeout_s=10.0):
    """Wait until the kernel's audit pid is ``pid``; True when it is."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if get_status().get('pid') == pid:
            return True
        if not process_alive(pid):
            return False
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# cgroups (the shared readers: cgroups.discover_hierarchies, procinfo.parse_proc_cgroup)
# --------------------------------------------------------------------------
def _hierarchies():
    with open('/proc/self/mountinfo') as handle:
        return cgroups.discover_hierarchies(handle.read())


def cpu_cgroup():
    """(1 or 2, root dir of the hierarchy holding the cpu controller); (None, reason) without one."""
    hier = _hierarchies()
    if not hier['supported'] or not hier['cpu_controller']:
        return None, hier['reason'] or 'no cgroup v1 cpu hierarchy and no cgroup v2 hierarchy with the cpu controller'
    return hier['version'], cgroups.cpu_mount(hier)['mount_point']


def cgroup_of_pid(pid):
    """Absolute cpu cgroup dir of a process."""
    hier = _hierarchies()
    with open('/proc/%d/cgroup' % int(pid)) as handle:
        paths = procinfo.parse_proc_cgroup(handle.read())
    path = cgroups.cpu_path_of(paths, hier)
    if path is None:
        raise RuntimeError('no cpu cgroup for pid %d' % pid)
    return cgroups.dir_for(cgroups.cpu_mount(hier), path)


def enable_v2_cpu(g, version, root):
    """cgroup v2: make the cpu controller available to the root's children (cpu.max).

    A systemd host does not always delegate it; ``-cpu`` is journaled first. No-op on v1
    or when already enabled.
    """
    if version != 2:
        return
    control = os.path.join(root, 'cgroup.subtree_control')
    with open(control) as handle:
        if 'cpu' in handle.read().split():
            return
    g.push_op('write_value', 'disable +cpu in %s' % control, path=control, value='-cpu')
    guard.write_value(control, '+cpu')


def make_cgroup(g, version, parent, name, period_us):
    """A new, unthrottled cpu group (its removal journaled first). Returns its dir."""
    path = os.path.join(parent, name)
    g.push_op('cgroup_remove', 'remove the cgroup %s' % path, path=path)
    if not os.path.isdir(path):
        os.mkdir(path)
    guard.set_cgroup_limit(version, path, None, period_us)
    return path


def throttle(g, version, path, quota_us, period_us):
    """The lab's quota on a group (lifting it journaled first: the consumer drains before it stops)."""
    g.push_op('cgroup_limit', 'lift the quota of %s' % path, version=version, directory=path,
              quota_us=None, period_us=period_us)
    guard.set_cgroup_limit(version, path, quota_us, period_us)


def spawn_daemon(argv, log_path, cgroup_procs=None, cwd='/', env=None):
    """Start argv as a daemon (double fork, setsid, stdio to log_path).

    ``cgroup_procs``: a cgroup.procs file the daemon joins before exec, so it
    never runs a moment outside its group. Returns (pid, starttime). The
    daemon is not our child: it outlives the caller (an Ansible module).
    """
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            os.setsid()
            second = os.fork()
            if second:
                os._exit(0)
            try:
                if cgroup_procs:
                    with open(cgroup_procs, 'w') as handle:
                        handle.write('0')
                os.chdir(cwd)
                null = os.open(os.devnull, os.O_RDONLY)
                log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.write(write_fd, ('%d\n' % os.getpid()).encode())
                os.set_inheritable(write_fd, False)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                os.closerange(3, write_fd)
                os.closerange(write_fd + 1, 65536)
                if env is None:
                    os.execv(argv[0], argv)
                os.execve(argv[0], argv, env)
            except BaseException as err:
                try:
                    os.write(write_fd, ('ERROR %s\n' % err).encode())
                finally:
                    os._exit(127)
        finally:
            os._exit(127)
    os.close(write_fd)
    os.waitpid(first, 0)
    chunks = []
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    lines = b''.join(chunks).decode('utf-8', 'replace').splitlines()
    if not lines or not lines[0].isdigit():
        raise RuntimeError('could not start %s: %s' % (argv[0], ' '.join(lines) or 'no pid'))
    pid = int(lines[0])
    if len(lines) > 1:
        raise RuntimeError('could not start %s: %s' % (argv[0], ' '.join(lines[1:])))
    return pid, proc_starttime(pid)


AUDITD_CONF = """\
# auditgap incident lab: private config, logs and plugins under the lab dir
local_events = yes
write_logs = yes
log_file = {workdir}/audit.log
log_group = root
log_format = RAW
flush = NONE
freq = 0
max_log_file = {max_log_mb}
num_logs = 2
priority_boost = 0
name_format = NONE
max_log_file_action = ROTATE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
use_libwrap = no
tcp_client_max_idle = 0
transport = TCP
distribute_network = no
q_depth = 2000
overflow_action = IGNORE
max_restarts = 0
plugin_dir = {workdir}/plugins.d
end_of_event_timeout = 2
"""


def write_auditd_config(confdir, workdir, max_log_mb=8, overrides=None):
    """A config dir for ``auditd -c``: logs under workdir, no plugins.

    ``overrides``: {setting: value} replacing the lab's values (e.g. ``{'flush': 'SYNC'}``)."""
    if not os.path.isdir(confdir):
        os.makedirs(confdir, 0o700)
    plugins = os.path.join(workdir, 'plugins.d')
    if not os.path.isdir(plugins):
        os.makedirs(plugins, 0o700)
    path = os.path.join(confdir, 'auditd.conf')
    lines = AUDITD_CONF.format(workdir=workdir, max_log_mb=int(max_log_mb)).splitlines()
    for key, value in (overrides or {}).items():
        lines = [line for line in lines if line.split('=', 1)[0].strip() != key] + ['%s = %s' % (key, value)]
    with open(path, 'w') as handle:
        handle.write('\n'.join(lines) + '\n')
    os.chmod(path, 0o640)
    return path


def find_auditd():
    for path in ('/usr/sbin/auditd', '/sbin/auditd'):
        if os.access(path, os.X_OK):
            return path
    return None


def consumer_check(status, allow_existing=False):
    """None when the lab may start its consumer, else the refusal reason (pure)."""
    pid = status.get('pid') or 0
    if pid and not allow_existing:
        return ('an audit consumer is already registered (pid %d); the lab refuses to '
                'replace it (allow_existing_consumer throttles it instead and restores it at absent)' % pid)
    if status.get('enabled') == 2:
        return 'audit configuration is immutable (enabled 2) until reboot'
    return None


def write_workload_script(workdir):
    """The standalone workload (labworkload.py) written into the lab dir, to run as a daemon
    (its source comes from the file, or from the AnsiballZ payload's loader)."""
    loader = getattr(labworkload, '__loader__', None)
    source = loader.get_source(labworkload.__name__) if loader is not None and hasattr(loader, 'get_source') else None
    if not source:
        with open(labworkload.__file__) as handle:
            source = handle.read()
    dest = os.path.join(workdir, labworkload.SCRIPT_NAME)
    with open(dest + '.tmp', 'w') as handle:
        handle.write(source)
    os.chmod(dest + '.tmp', 0o700)
    os.rename(dest + '.tmp', dest)
    return dest


def start_cgroup_consumer(g, workdir, quota_us, name, period_us=STALL_PERIOD_US, cgroup=None, auditd_conf=None):
    """Create a cpu group, start auditd -n inside it, wait for registration, throttle it.

    ``cgroup``: (version, parent dir) to create the group under (default the hierarchy's root);
    ``auditd_conf``: auditd.conf overrides (``write_auditd_config``).
    Returns {'pid', 'starttime', 'cgroup_path', 'cgroup_version', 'quota_us', 'period_us'}.
    """
    version, root = cgroup or cpu_cgroup()
    if version is None:
        raise RuntimeError(root)
    auditd = find_auditd()
    if not auditd:
        raise RuntimeError('auditd is not installed (Debian: apt-get install auditd)')
    if cgroup is None:
        enable_v2_cpu(g, version, root)
    # auditd starts unthrottled (startup at 1% of a CPU takes seconds); the quota
    # applies once it is registered.
    path = make_cgroup(g, version, root, name, period_us)
    confdir = os.path.join(workdir, 'etc')
    write_auditd_config(confdir, workdir, overrides=auditd_conf)
    argv = [auditd, '-n', '-s', 'nochange', '-c', confdir]
    # before the start, when its pid is not known yet: a crash right after it still stops it
    g.push_op('stop_process', 'stop the lab auditd', argv=argv, audit_consumer=True)
    pid, start = spawn_daemon(argv, os.path.join(workdir, 'auditd.out'),
                              cgroup_procs=os.path.join(path, 'cgroup.procs'))
    if not wait_registered(pid):
        raise RuntimeError('auditd (pid %d) did not register as the audit consumer; see %s/auditd.out'
                           % (pid, workdir))
    throttle(g, version, path, quota_us, period_us)
    return {'pid': pid, 'starttime': start, 'cgroup_path': path, 'cgroup_version': version,
            'quota_us': quota_us, 'period_us': period_us}


def throttle_existing_consumer(g, pid, quota_us, period_us, name):
    """allow_existing_consumer: move the registered consumer into a lab group, throttled;
    moving it back to its own cgroup is journaled first."""
    version, root = cpu_cgroup()
    if version is None:
        raise RuntimeError(root)
    original = cgroup_of_pid(pid)
    start = proc_starttime(pid)
    enable_v2_cpu(g, version, root)
    path = make_cgroup(g, version, root, name, period_us)
    g.push_op('move_process', 'move pid %d back to %s' % (pid, original), pid=pid, starttime=start,
              directory=original)
    guard.write_value(os.path.join(path, 'cgroup.procs'), str(pid))
    throttle(g, version, path, quota_us, period_us)
    return {'pid': pid, 'starttime': start, 'cgroup_path': path, 'cgroup_version': version,
            'quota_us': quota_us, 'period_us': period_us}


def start_workload(g, workdir, script_path, python=None, rate_per_s=0, cpu_stat_dir=None, clients=4,
                   timeout_s=10.0):
    """Start the workload daemon (client and server run the same argv: one journaled stop)."""
    python = python or sys.executable
    argv = [python, script_path, '--dir', workdir, '--rate', str(int(rate_per_s)), '--clients', str(int(clients))]
    if cpu_stat_dir:
        argv += ['--cpu-stat', cpu_stat_dir]
    info_path = os.path.join(workdir, 'workload.json')
    for name in ('workload.json', 'latency.jsonl', 'latency.summary.json', 'timeline.jsonl'):
        try:
            os.unlink(os.path.join(workdir, name))
        except OSError:
            pass
    g.push_op('stop_process', 'stop the workload', argv=argv)
    pid, start = spawn_daemon(argv, os.path.join(workdir, 'workload.log'))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.exists(info_path):
            with open(info_path) as handle:
                return json.load(handle)
        if not process_alive(pid, start):
            break
        time.sleep(0.05)
    raise RuntimeError('the workload did not start (see %s/workload.log)' % workdir)


# --------------------------------------------------------------------------
# the lab: present / absent (the module, the tests and the benchmark call these)
# --------------------------------------------------------------------------
LAB_DEFAULTS = {
    'backend': 'cgroup',
    'quota_us': 1000,
    'period_us': STALL_PERIOD_US,
    'backlog_limit': 64,
    'backlog_wait_time_jiffies': 250,
    'allow_existing_consumer': False,
    'workload': True,
    'clients': 1,
    'rate_per_s': 0,
    'key': LAB_KEY,
    'rules': 'seed',
    'state_path': STATE_FILE,
    'script_path': None,
}


def lab_rules(which):
    """'seed': the seed's two rules; 'accept': only the accept4 rule."""
    if which == 'seed':
        return [list(r) for r in SEED_RULES]
    if which == 'accept':
        return [list(ACCEPT_RULE)]
    raise ValueError('rules must be seed or accept, got %r' % which)


def validate_lab_params(params):
    """Merged, checked parameters (raises ValueError with a clear message)."""
    p = dict(LAB_DEFAULTS)
    p.update(dict((k, v) for k, v in params.items() if v is not None))
    if p['backend'] not in ('cgroup', 'docker'):
        raise ValueError('backend must be cgroup or docker, got %r' % p['backend'])
    for name, low, high in (('quota_us', 1000, 10 ** 7), ('period_us', 1000, 1000000),
                            ('backlog_limit', 1, 2 ** 31), ('backlog_wait_time_jiffies', 1, 60000),
                            ('clients', 1, 64), ('rate_per_s', 0, 10 ** 6)):
        try:
            p[name] = int(p[name])
        except (TypeError, ValueError):
            raise ValueError('%s must be an integer, got %r' % (name, p[name]))
        if not low <= p[name] <= high:
            raise ValueError('%s must be between %d and %d, got %d' % (name, low, high, p[name]))
    if p['quota_us'] > p['period_us'] * 64:
        raise ValueError('quota_us %d is not a throttle for period_us %d' % (p['quota_us'], p['period_us']))
    rule_args([], p['key'])
    lab_rules(p['rules'])
    if not os.path.isabs(p['state_path']):
        raise ValueError('state_path must be absolute')
    return p


def read_lab(state_path):
    """The kept journal of a complete lab (None when there is none)."""
    if not os.path.lexists(state_path):
        return None
    return guard.read_journal(state_path)


def lab_info(state_path):
    """What the state file says about a present lab (None when absent), with ``alive``."""
    data = read_lab(state_path)
    if data is None or not data.get('lab'):
        return None
    alive = all(process_alive(pid, start) for pid, start in data.get('processes') or [])
    return dict(data['lab'], alive=alive)


def lab_present(params, check_mode=False):
    """Create the incident lab. Returns (changed, result dict).

    Raises LabRefused (nothing changed) or LabFailed (the half-made lab undone).
    """
    p = validate_lab_params(params)
    info = lab_info(p['state_path'])
    if info and info['alive'] and info['backend'] == p['backend']:
        return False, dict(info, state='present', note='already present')
    status = get_status()
    if info is None:
        reason = consumer_check(status, p['allow_existing_consumer'])
        if reason:
            raise LabRefused(reason)
    if check_mode:
        return True, {'state': 'present', 'note': 'would create the lab (check mode)',
                      'existing_consumer_pid': status.get('pid') or None}
    if read_lab(p['state_path']) is not None:  # broken or other backend: clean up first
        errors = lab_absent(p['state_path'])[1]['errors']
        if errors:
            raise RuntimeError('could not clean up the previous lab: %s' % '; '.join(errors))
        status = get_status()
    rg = guard.RestoreGuard(journal='incident_lab', state_dir=JOURNAL_DIR)
    try:
        with rg:
            result, processes = _build(rg, p, status)
            data = dict(rg.journal.data, owner=None, lab=result, processes=processes)
            guard.write_journal(p['state_path'], data)
            rg.commit()
    except LabRefused:
        raise
    except Exception as err:
        raise LabFailed('%s; %s' % (err, 'everything it changed is undone' if rg.ok else
                                    'undo incomplete: %s' % '; '.join(rg.restore_errors)), rg)
    return True, result


def _build(g, p, status):
    workdir = os.path.dirname(p['state_path'])
    g.push_op('remove_files', 'remove the lab files in %s' % workdir, directory=workdir,
              names=list(LAB_FILES) + [os.path.basename(p['state_path'])])
    if not os.path.isdir(workdir):
        os.makedirs(workdir, 0o700)
    existing = status.get('pid') or 0
    set_audit(g, status, backlog_limit=p['backlog_limit'], backlog_wait_time=p['backlog_wait_time_jiffies'])
    if existing:
        if p['backend'] != 'cgroup':
            raise LabRefused('allow_existing_consumer works with the cgroup backend only '
                             '(the existing consumer pid %d is throttled in a lab cgroup)' % existing)
        consumer = throttle_existing_consumer(g, existing, p['quota_us'], p['period_us'], 'auditgap-lab')
    elif p['backend'] == 'cgroup':
        consumer = start_cgroup_consumer(g, workdir, p['quota_us'], 'auditgap-lab', period_us=p['period_us'])
    else:
        from ansible_collections.auditgap.fleet.plugins.module_utils import labdocker
        consumer = labdocker.start_docker_consumer(g, workdir, p)
    add_rules(g, lab_rules(p['rules']), p['key'])
    if status.get('enabled') != 1:
        g.checkpoint()
        set_status(enabled=1)
    result = {'state': 'present', 'backend': p['backend'], 'consumer_pid': consumer['pid'],
              'cgroup_path': consumer['cgroup_path'], 'container_id': consumer.get('container_id'),
              'quota_us': p['quota_us'], 'period_us': p['period_us'], 'key': p['key'],
              'existing_consumer': bool(existing), 'workdir': workdir,
              'latency_path': os.path.join(workdir, 'latency.jsonl'),
              'timeline_path': os.path.join(workdir, 'timeline.jsonl'),
              'server_pid': None, 'client_pid': None, 'port': None}
    processes = [[consumer['pid'], consumer['starttime']]]
    if p['workload']:
        script = p['script_path'] or write_workload_script(workdir)
        python = sys.executable if sys.executable and os.path.exists(sys.executable) else '/usr/bin/python3'
        wl = start_workload(g, workdir, script, python=python, rate_per_s=p['rate_per_s'],
                            clients=p['clients'], cpu_stat_dir=consumer['cgroup_path'])
        result.update(server_pid=wl['server_pid'], client_pid=wl['client_pid'], port=wl['port'])
        processes += [[wl['server_pid'], wl['server_starttime']], [wl['client_pid'], wl['client_starttime']]]
    return result, processes


def lab_absent(state_path=STATE_FILE, check_mode=False):
    """Undo what the lab's kept journal records, newest step first. Returns (changed, result).

    The kept journal becomes this run's own journal first: a SIGKILL half-way leaves the
    rest to the next auditgap run; steps that fail stay there for a retry.
    """
    data = read_lab(state_path)
    if data is None:
        return False, {'state': 'absent', 'undone': [], 'errors': []}
    steps = [e.get('description') or e['op'] for e in reversed(data.get('entries') or [])]
    if check_mode:
        return True, {'state': 'absent', 'undone': steps, 'errors': []}
    journal = guard.Journal('incident_lab', state_dir=JOURNAL_DIR)
    journal.data['entries'] = list(data.get('entries') or [])
    journal.adopt(state_path)
    undone, errors = guard.replay(journal)
    return True, {'state': 'absent', 'undone': undone, 'errors': errors}
