"""A fleet of real SSH hosts without VMs, for tests (root only).

Each host is a network namespace with its own ``sshd`` (Debian's
openssh-server) listening on the namespace's address. The hosts are joined
by veth pairs to a bridge in a hub namespace; the controller (ansible,
ansible-playbook) runs inside the hub namespace too (``SSHFleet.cmd()``
prefixes a command with ``nsenter --net=...``). Addresses come from a small
private range used only inside these namespaces (10.213.0.0/24 by default):
nothing outside them is ever contacted, and the root namespace gets no new
interface or route.

Only the network namespace is switched (``nsenter --net``, not
``ip netns exec``, which would remount /sys and hide cgroupfs and tracefs):
the hosts share the machine's filesystem, processes and kernel, so this
tests fleet fan-out over SSH, not per-host OS changes.

Everything is torn down on exit: sshd processes (killed by pid), the
namespaces (which takes their veths and the bridge with them) and the
temporary directory holding host keys, client key, configs and inventory.
A run that cannot tear down (its owner SIGKILLed) is reaped by the next
fleet's start: each fleet keeps a journal in ``JOURNAL_DIR`` (its owner's pid
and start time, its namespaces, sshd pids and directory), and ``reap_stale()``
ends what a journal whose owner is gone names (``reap_journal``).

Usage::

    with SSHFleet(hosts=3, unreachable=1) as fleet:
        subprocess.run(fleet.cmd(['ansible', '-i', fleet.inventory, 'all', '-m', 'ping']))

or the pytest fixture ``sshfleet`` (session scope) defined below.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

SSHD = '/usr/sbin/sshd'
PREFIX = 'agf-'
DEFAULT_NET = '10.213.0'
# one journal per live fleet (tmpfs: gone at reboot, with what it names)
JOURNAL_DIR = '/run/auditgap-sshfleet'


def _run(args, check=True):
    return subprocess.run(args, check=check, capture_output=True,
                          text=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid):
    """The start time of ``pid`` (clock ticks since boot, /proc/PID/stat field 22), None when gone
    or a zombie: a pid and its start time name one live process, also after the pid is reused."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    return None if fields[0] in ('Z', 'X') else int(fields[19])


def _net_inode(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _kill_in_namespaces(inodes):
    """SIGKILL every process whose network namespace is one of ``inodes`` (the sshds and their
    sessions, found also when the namespace's name is gone); returns the pids killed."""
    inodes = {i for i in inodes if i}
    killed = []
    if not inodes:
        return killed
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            link = os.readlink(f'/proc/{entry}/ns/net')
        except OSError:
            continue
        if link.startswith('net:[') and int(link[5:-1]) in inodes:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except ProcessLookupError:
                pass
    return killed


def journal_stale(doc):
    """True when the fleet a journal describes has no owner any more (its pid gone or reused)."""
    return _start_time(doc.get('owner', -1)) != doc.get('owner_start')


def _cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def reap_journal(doc):
    """End what one stale fleet's journal names: its sshds (by pid, when their command line
    still names the fleet's directory), every process left in its namespaces (sessions, and in
    the hub the dead run's controller and ssh masters), the namespaces, its directory. A
    namespace is acted on only while its name still points at the journaled namespace (an inode
    of a freed namespace can be reused by anyone's). Returns the pids killed."""
    tmp = doc.get('tmp') or ''
    ours = os.path.basename(tmp).startswith('agf-sshfleet-')
    killed = []
    for pid in doc.get('sshd_pids') or []:
        if ours and isinstance(pid, int) and f' {tmp}/' in _cmdline(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    live = [ns for ns in doc.get('namespaces') or []
            if ns.get('inode') and _net_inode(f"/run/netns/{ns['name']}") == ns['inode']]
    killed += _kill_in_namespaces(ns['inode'] for ns in live)
    for ns in reversed(live):
        _run(['ip', 'netns', 'del', ns['name']], check=False)
    if ours and os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    return killed


def reap_stale(journal_dir=None):
    """Reap every fleet whose journal's owner is gone (a SIGKILLed test run or benchmark);
    fleets of live owners are left alone. Returns the journals reaped."""
    journal_dir = journal_dir or JOURNAL_DIR
    reaped = []
    for path in sorted(glob.glob(os.path.join(journal_dir, PREFIX + '*.json'))):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (FileNotFoundError, ValueError):
            continue     # gone meanwhile (its owner stopped), or not a journal (written whole by rename)
        if not isinstance(doc, dict) or not journal_stale(doc):
            continue
        reap_journal(doc)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        reaped.append(path)
    return reaped


def cleanup_stale(prefix=PREFIX + 'f'):
    """Remove fleets a dead run left: those its journal names (``reap_stale``), then namespaces
    (``agf-f<pid>-*``) of a run whose process is gone and that no journal named, with whatever
    still runs in them."""
    reap_stale()
    for path in glob.glob(f'/run/netns/{prefix}*'):
        name = os.path.basename(path)
        try:
            pid = int(name[len(prefix):].split('-', 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            _kill_in_namespaces([_net_inode(path)])
            _run(['ip', 'netns', 'del', name], check=False)


class SSHFleet:
    """N namespace hosts with sshd, plus ``unreachable`` hosts with no sshd."""

    _count = 0   # fleets made by this process: each gets its own namespace names

    def __init__(self, hosts=3, unreachable=1, net=DEFAULT_NET, group='fleet',
                 extra_groups=None, python='/usr/bin/python3', blackhole=False, cgroup=None, bashrc=None):
        """``blackhole``: the unreachable hosts' addresses answer ARP from the hub (a static
        neighbour entry to a MAC nobody has), so their packets vanish and ssh waits for its
        ConnectTimeout, like a host that is down behind a router (without it: "No route to
        host" after ARP fails). ``cgroup``: directories of cgroup v1 hierarchies (e.g.
        ``/sys/fs/cgroup/cpuacct/x``) each sshd is put in, so its sessions and the modules they
        run are accounted there (benchmarks/bench_fleet.py). ``bashrc``: a file put over
        root's ``~/.bashrc`` for the sshds (bind-mounted in their own mount namespace; the rest
        of the machine sees no change): bash reads ``~/.bashrc`` for every command sshd runs, so
        this models a fleet host's rc instead of this machine's (benchmarks)."""
        if bashrc is not None and not os.path.isfile(bashrc):
            raise ValueError(f'bashrc {bashrc}: not a file')
        self.bashrc = bashrc
        if not 1 <= hosts <= 230 or not 0 <= unreachable <= 30 or hosts + unreachable > 239:
            raise ValueError('hosts must be 1..230 and unreachable 0..30 (239 in all)')
        self.blackhole = blackhole
        self.cgroups = list(cgroup or [])
        self.n_hosts = hosts
        self.n_unreachable = unreachable
        self.net = net
        self.group = group
        self.extra_groups = extra_groups or []
        self.python = python
        SSHFleet._count += 1
        self.tag = f'{PREFIX}f{os.getpid()}' + (f'-{SSHFleet._count}' if SSHFleet._count > 1 else '')
        self.hub = self.tag + '-hub'
        self.hub_addr = f'{net}.1'
        self.tmp = None
        self.hosts = []        # [{name, ns, addr, reachable, proc?, log?}]
        self.namespaces = []
        self.inventory = None
        self.key = None
        self.journal = os.path.join(JOURNAL_DIR, self.tag + '.json')

    # -- commands --------------------------------------------------------
    def cmd(self, args):
        """``args`` run inside the hub namespace (the controller's side)."""
        return ['nsenter', f'--net=/run/netns/{self.hub}'] + list(args)

    @property
    def reachable(self):
        return [h['name'] for h in self.hosts if h['reachable']]

    @property
    def unreachable(self):
        return [h['name'] for h in self.hosts if not h['reachable']]

    # -- set-up ----------------------------------------------------------
    def _netns(self, name):
        _run(['ip', 'netns', 'add', name])
        self.namespaces.append(name)
        self._write_journal()
        _run(['ip', '-n', name, 'link', 'set', 'lo', 'up'])

    def _write_journal(self):
        """What a later run needs to reap this fleet if this process dies without ``stop()``:
        written (atomically) before each namespace or sshd can outlive it."""
        os.makedirs(JOURNAL_DIR, mode=0o700, exist_ok=True)
        doc = {'owner': os.getpid(), 'owner_start': _start_time(os.getpid()), 'tmp': self.tmp,
               'namespaces': [{'name': ns, 'inode': _net_inode(f'/run/netns/{ns}')} for ns in self.namespaces],
               'sshd_pids': [h['proc'].pid for h in self.hosts if h.get('proc')]}
        part = self.journal + '.part'
        with open(part, 'w') as f:
            json.dump(doc, f)
        os.replace(part, self.journal)

    def start(self):
        if os.geteuid() != 0:
            raise PermissionError('SSHFleet needs root (network namespaces)')
        if not os.path.exists(SSHD):
            raise FileNotFoundError(f'{SSHD} missing: apt-get install openssh-server')
        cleanup_stale()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        self.tmp = tempfile.mkdtemp(prefix='agf-sshfleet-')
        os.chmod(self.tmp, 0o700)
        self._write_journal()
        # sshd's privilege separation directory (Debian's init script makes it).
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        self.key = os.path.join(self.tmp, 'id_ed25519')
        _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'auditgap-sshfleet', '-f', self.key])
        authorized = os.path.join(self.tmp, 'authorized_keys')
        shutil.copy(self.key + '.pub', authorized)

        self._netns(self.hub)
        _run(['ip', '-n', self.hub, 'link', 'add', 'br0', 'type', 'bridge'])
        _run(['ip', '-n', self.hub, 'addr', 'add', self.hub_addr + '/24', 'dev', 'br0'])
        _run(['ip', '-n', self.hub, 'link', 'set', 'br0', 'up'])

        total = self.n_hosts + self.n_unreachable
        for i in range(1, total + 1):
            reachable = i <= self.n_hosts
            name = f'fleet-h{i}' if reachable else f'fleet-down{i - self.n_hosts}'
            addr = f'{self.net}.{10 + i}'
            host = {'name': name, 'addr': addr, 'reachable': reachable, 'ns': None}
            self.hosts.append(host)
            if not reachable:
                # An address in the range that nobody holds: ARP fails (No route to host), or
                # with blackhole the frames go to a MAC nobody has (ssh times out).
                if self.blackhole:
                    _run(['ip', '-n', self.hub, 'neigh', 'replace', addr, 'lladdr',
                          '02:00:00:00:%02x:%02x' % (i >> 8 & 255, i & 255), 'dev', 'br0', 'nud', 'permanent'])
                continue
            ns = f'{self.tag}-h{i}'
            host['ns'] = ns
            self._netns(ns)
            veth = f'v{i}'
            _run(['ip', '-n', self.hub, 'link', 'add', veth, 'type', 'veth',
                  'peer', 'name', 'eth0', 'netns', ns])
            _run(['ip', '-n', self.hub, 'link', 'set', veth, 'master', 'br0'])
            _run(['ip', '-n', self.hub, 'link', 'set', veth, 'up'])
            _run(['ip', '-n', ns, 'addr', 'add', addr + '/24', 'dev', 'eth0'])
            _run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up'])
            self._start_sshd(host, authorized)

        deadline = time.monotonic() + 20
        for host in self.hosts:
            if host['reachable']:
                self._wait_listening(host, deadline)
        self._write_inventory()

    def _start_sshd(self, host, authorized):
        d = os.path.join(self.tmp, host['name'])
        os.makedirs(d)
        # one host key for every host (key generation is most of a host's start-up; the
        # clients do not check host keys)
        hostkey = os.path.join(self.tmp, 'ssh_host_ed25519_key')
        if not os.path.exists(hostkey):
            _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', hostkey])
        cfg = os.path.join(d, 'sshd_config')
        with open(cfg, 'w') as f:
            f.write('\n'.join([
                'Port 22',
                f"ListenAddress {host['addr']}",
                f'HostKey {hostkey}',
                f"PidFile {os.path.join(d, 'sshd.pid')}",
                f'AuthorizedKeysFile {authorized}',
                'PermitRootLogin prohibit-password',
                'PubkeyAuthentication yes',
                'PasswordAuthentication no',
                'KbdInteractiveAuthentication no',
                'UsePAM no',
                'StrictModes no',
                'UseDNS no',
                'MaxSessions 50',
                'MaxStartups 50:30:100',
                'Subsystem sftp /usr/lib/openssh/sftp-server',
                'LogLevel INFO',
                '',
            ]))
        log = os.path.join(d, 'sshd.log')
        host['log'] = log
        argv = [SSHD, '-D', '-f', cfg, '-E', log]
        if self.bashrc:
            # unshare and sh exec: sshd keeps the pid Popen returns
            home = os.path.expanduser('~root')
            argv = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                    'mount --bind "$1" "$2/.bashrc" && shift 2 && exec "$@"', 'sh', self.bashrc, home] + argv
        host['proc'] = subprocess.Popen(
            ['nsenter', f"--net=/run/netns/{host['ns']}"] + argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._write_journal()
        for cgroup in self.cgroups:
            # nsenter execs sshd (same pid); sshd forks sessions only once it listens
            with open(os.path.join(cgroup, 'cgroup.procs'), 'w') as f:
                f.write(str(host['proc'].pid))

    @staticmethod
    def _wait_listening(host, deadline):
        while time.monotonic() < deadline:
            if host['proc'].poll() is not None:
                break
            try:
                with open(host['log']) as f:
                    if 'Server listening on' in f.read():
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        log = ''
        if os.path.exists(host['log']):
            with open(host['log']) as f:
                log = f.read()
        raise RuntimeError(f"sshd for {host['name']} did not start: {log.strip()}")

    def _write_inventory(self):
        self.inventory = os.path.join(self.tmp, 'inventory.ini')
        lines = [f'[{self.group}]']
        for host in self.hosts:
            lines.append(f"{host['name']} ansible_host={host['addr']}")
        for group in self.extra_groups:
            lines += ['', f'[{group}:children]', self.group]
        lines += [
            '', f'[{self.group}:vars]',
            'ansible_connection=ssh',
            'ansible_user=root',
            'ansible_port=22',
            f'ansible_ssh_private_key_file={self.key}',
            ("ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=no -o ConnectTimeout=5 -o LogLevel=ERROR'"),
            f'ansible_python_interpreter={self.python}',
            '',
        ]
        with open(self.inventory, 'w') as f:
            f.write('\n'.join(lines))

    # -- teardown --------------------------------------------------------
    def stop(self):
        for host in self.hosts:
            proc = host.get('proc')
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # sshd session children (one per open connection) live in the host
        # namespaces: kill whatever is left in them before deleting them.
        for ns in self.namespaces:
            pids = _run(['ip', 'netns', 'pids', ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self.namespaces):
            _run(['ip', 'netns', 'del', ns], check=False)
        self.namespaces = []
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            os.unlink(self.journal)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def sshfleet_fixture(hosts=3, unreachable=1, **kwargs):
    """Make a session-scoped pytest fixture yielding a started SSHFleet.

    In a test module: ``sshfleet = sshfleet_fixture(hosts=3, unreachable=1)``.
    """
    import pytest

    @pytest.fixture(scope='session')
    def _fixture():
        if os.geteuid() != 0:
            pytest.skip('SSH fleet needs root (network namespaces)')
        if not os.path.exists(SSHD):
            pytest.skip(f'{SSHD} missing: apt-get install openssh-server')
        with SSHFleet(hosts=hosts, unreachable=unreachable, **kwargs) as fleet:
            yield fleet
    return _fixture
