# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the diagnose fan-out (action ``diagnose_fanout``, docs/scale.md).

One controller process opens SSH to many hosts at once and sends each one
compact, self-contained payload over the session's stdin: the parameters (one
JSON line) and the gather code (``module_utils/diagnosegather.py`` and the
module_utils it imports, found by reading their imports, zlib-compressed). A
short bootstrap given to the host's python3 with ``-c`` imports that code from
memory (nothing is written on the host) and prints the result as JSON, which
is the same dictionary the ``diagnose_gather`` module returns. One SSH session
and one Python start-up per host; no Ansible worker, no AnsiballZ wrapper, no
``ansible.module_utils`` import on the host.

Everything here is a small function of its inputs (argv, payload, result
parsing, per-host settings) except :func:`run_all`, the event loop that runs
the ssh processes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import errno
import fcntl
import functools
import hashlib
import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
import zlib

from ansible_collections.auditgap.fleet.plugins.module_utils import usercache

PACKAGE = 'ansible_collections.auditgap.fleet.plugins.module_utils'
ENTRY = PACKAGE + '.diagnosegather'
ENTRY_FUNCTION = 'fanout_main'
# ansible_connection values the fan-out serves; any other is reported per host, never guessed
SSH_CONNECTIONS = ('ssh', 'smart', 'ansible.builtin.ssh')
LOCAL_CONNECTIONS = ('local', 'ansible.builtin.local')
# what Ansible's ssh connection plugin passes besides ssh_args (ansible-core connection/ssh.py)
AUTH_OPTIONS = ('-o', 'KbdInteractiveAuthentication=no',
                '-o', 'PreferredAuthentications=gssapi-with-mic,gssapi-keyex,hostbased,publickey',
                '-o', 'PasswordAuthentication=no')
MSG_TAIL = 2000
# ansible-core's default ssh_args (connection/ssh.py), used when the configuration gives none
SSH_ARGS = '-C -o ControlMaster=auto -o ControlPersist=60s'
# ssh_args the fan-out leaves out: compression (its payload is zlib-compressed already, its answers are small)
SSH_ARGS_DROPPED = ('-C',)
# ansible-core's words for a host its pipelined ssh session could not reach (the report shows them)
UNREACHABLE = 'Task failed: Data could not be sent to remote host "%s". Make sure this host can be reached over ssh: %s'

# Runs on the host as `python3 -E -S -c BOOTSTRAP`. stdin: one JSON line {"p": params, "e": entry
# module, "f": function, "n": [package names], "t": cache tag of the bytecode, "c": its length} then
# the bytecode (zlib-compressed marshal of {module name: code}), then the sources (zlib-compressed
# JSON {module name: source}). A host whose Python has the controller's cache tag (same minor
# version) loads the bytecode, any other compiles the sources. A meta path finder serves those
# modules from memory. Python 3 (and 2.7): no f-strings.
BOOTSTRAP = r'''
import sys,json,zlib,marshal
def main():
    raw=getattr(sys.stdin,'buffer',sys.stdin).read()
    head,_,rest=raw.partition(b'\n')
    h=json.loads(head.decode('utf-8'))
    tag=getattr(getattr(sys,'implementation',None),'cache_tag',None)
    if tag and tag==h['t']:
        code=marshal.loads(zlib.decompress(rest[:h['c']]))
    else:
        src=json.loads(zlib.decompress(rest[h['c']:]).decode('utf-8'))
        code=dict((k,compile(v,'<auditgap>/'+k.replace('.','/')+'.py','exec',dont_inherit=True,optimize=2)) for k,v in src.items())
    pkgs=set(h['n'])
    ModuleSpec=type(sys.__spec__)
    class Finder(object):
        @staticmethod
        def find_spec(name,path=None,target=None):
            if name in code or name in pkgs:
                return ModuleSpec(name,Finder,is_package=name in pkgs)
        @staticmethod
        def create_module(spec):
            return None
        @staticmethod
        def exec_module(mod):
            if mod.__name__ in code:
                exec(code[mod.__name__],mod.__dict__)
    sys.meta_path.insert(0,Finder)
    try:
        mod=__import__(h['e'],fromlist=['_'])
        res=getattr(mod,h['f'])(h['p'])
    except BaseException as err:
        res={'failed':True,'changed':False,'msg':'auditgap fan-out payload failed on the host: %s: %s'%(type(err).__name__,err)}
    out=json.dumps(res)
    getattr(sys.stdout,'buffer',sys.stdout).write(out.encode('utf-8'))
main()
'''.strip()


class FanoutError(Exception):
    """Bad input or an unusable payload: the task fails with this message, nothing runs."""


# -- payload ------------------------------------------------------------------
def module_utils_imports(source, package=PACKAGE):
    """Names (last part) of this collection's module_utils that ``source`` imports, anywhere in
    the file (function-level lazy imports included); raises FanoutError on an
    ``ansible.module_utils`` import, which the payload cannot carry."""
    names = set()
    for node in _statements(_tree(source).body):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module
            if mod == package:
                names.update(alias.name for alias in node.names)
            elif mod.startswith(package + '.'):
                names.add(mod[len(package) + 1:].split('.')[0])
            elif mod == 'ansible.module_utils' or mod.startswith('ansible.module_utils.'):
                raise FanoutError('imports %s, which the fan-out payload does not carry' % mod)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + '.'):
                    names.add(alias.name[len(package) + 1:].split('.')[0])
                elif alias.name.startswith('ansible.module_utils'):
                    raise FanoutError('imports %s, which the fan-out payload does not carry' % alias.name)
    return names


@functools.lru_cache(maxsize=64)
def _tree(source):
    """The parsed module, once per run: read here for its imports, compiled by Blob."""
    return ast.parse(source)


def _statements(body):
    """Every statement, nested ones included (imports are statements: the expressions, most
    of a module's nodes, are not walked)."""
    for node in body:
        yield node
        for field in ('body', 'orelse', 'finalbody', 'handlers', 'cases'):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _statements(inner)


def collect_sources(directory, entry='diagnosegather', package=PACKAGE):
    """{dotted module name: source} of ``entry`` and every module_utils it imports, transitively."""
    sources, todo = {}, [entry]
    while todo:
        name = todo.pop()
        dotted = '%s.%s' % (package, name)
        if dotted in sources:
            continue
        path = os.path.join(directory, name + '.py')
        try:
            with open(path, 'rb') as f:
                text = f.read().decode('utf-8')
        except (IOError, OSError) as err:
            raise FanoutError('module_utils %s for the fan-out payload: %s' % (name, err))
        try:
            deps = module_utils_imports(text, package)
        except FanoutError as err:
            raise FanoutError('module_utils %s %s' % (name, err))
        except SyntaxError as err:
            raise FanoutError('module_utils %s: %s' % (name, err))
        sources[dotted] = text
        todo.extend(sorted(deps))
    return sources


def packages(package=PACKAGE):
    """The package names above the module_utils (each needs a module object on the host)."""
    parts = package.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]


class Blob:
    """The part of the payload that is the same for every host: the bytecode for the
    controller's Python (``tag``) and the sources for any other, each zlib-compressed."""

    def __init__(self, sources, tag=None):
        import marshal
        self.tag = tag or sys.implementation.cache_tag
        # optimize=2: no docstrings (a third of the bytecode) and no asserts (the payload has none)
        code = {name: compile(_tree(text), '<auditgap>/%s.py' % name.replace('.', '/'), 'exec', dont_inherit=True,
                              optimize=2)
                for name, text in sources.items()}
        self.code = zlib.compress(marshal.dumps(code), 6)
        self.sources = zlib.compress(json.dumps(sources, sort_keys=True).encode('utf-8'), 9)

    def __len__(self):
        return len(self.code) + len(self.sources)


def build_blob(sources):
    """The compressed part of the payload, the same for every host."""
    return Blob(sources)


# A built blob is kept between runs (building it, reading the imports and compiling every
# module_util, is 0.2 CPU s, a tenth of a diagnose run's fixed cost: docs/scale.md). Its name is
# the hash of what it is built from (kept in module_utils/usercache.py's directory): the Python's cache tag, every .py of the module_utils
# directory and this file (the payload's format), so any change builds a new one.
BLOB_CACHE_PREFIX = 'fanout-blob-'
BLOB_CACHE_KEEP = 4


def blob_key(directory, tag):
    """The hash naming the blob built from ``directory``'s module_utils for cache tag ``tag``."""
    digest = hashlib.sha256(('%s\0%s\0' % (tag, PACKAGE)).encode('utf-8'))
    names = sorted(n for n in os.listdir(directory) if n.endswith('.py'))
    for path in [os.path.join(directory, n) for n in names] + [os.path.abspath(__file__)]:
        with open(path, 'rb') as f:
            data = f.read()
        digest.update(('%s\0%d\0' % (os.path.basename(path), len(data))).encode('utf-8'))
        digest.update(data)
    return digest.hexdigest()[:32]


def cached_blob(directory, entry='diagnosegather', cache_dir=None):
    """The blob of ``entry`` and the module_utils it imports, from the cache when one was built
    from the same files, else built (and kept, best effort: a cache that cannot be written or
    is not private to this user is left alone, the run goes on with the blob it built)."""
    tag = sys.implementation.cache_tag
    cache_dir = usercache.cache_dir() if cache_dir is None else cache_dir
    try:
        key = blob_key(directory, tag)
    except (IOError, OSError):
        key = None
    path = os.path.join(cache_dir, '%s%s-%s' % (BLOB_CACHE_PREFIX, entry, key))
    if key and usercache.private_dir(cache_dir):
        blob = _read_blob(path, tag)
        if blob is not None:
            return blob
    blob = build_blob(collect_sources(directory, entry=entry))
    if key:
        _write_blob(cache_dir, path, blob)
    return blob


def _read_blob(path, tag):
    try:
        with open(path, 'rb') as f:
            if os.fstat(f.fileno()).st_uid != os.geteuid():
                return None
            data = f.read()
        head, rest = data.split(b'\n', 1)
        length, digest = head.split(b' ')
        length = int(length)
    except (IOError, OSError, ValueError):
        return None
    # a blob that is not what was written (truncated, damaged) is built again, never sent
    if length > len(rest) or hashlib.sha256(rest).hexdigest().encode('ascii') != digest:
        return None
    blob = Blob.__new__(Blob)
    blob.tag, blob.code, blob.sources = tag, rest[:length], rest[length:]
    return blob


def _write_blob(cache_dir, path, blob):
    try:
        if not usercache.make_private_dir(cache_dir):
            return
        tmp = '%s.%d.tmp' % (path, os.getpid())
        with open(tmp, 'wb') as f:
            body = blob.code + blob.sources
            f.write(b'%d %s\n' % (len(blob.code), hashlib.sha256(body).hexdigest().encode('ascii')) + body)
        os.rename(tmp, path)
        old = sorted((os.path.join(cache_dir, n) for n in os.listdir(cache_dir) if n.startswith(BLOB_CACHE_PREFIX)),
                     key=os.path.getmtime, reverse=True)
        for stale in old[BLOB_CACHE_KEEP:]:
            os.unlink(stale)
    except (IOError, OSError):
        pass


def payload(params, blob, entry=ENTRY, function=ENTRY_FUNCTION, package=PACKAGE):
    """The bytes one host reads on stdin."""
    head = json.dumps({'p': params, 'e': entry, 'f': function, 'n': packages(package),
                       't': blob.tag, 'c': len(blob.code)}, sort_keys=True)
    return head.encode('utf-8') + b'\n' + blob.code + blob.sources


# -- per-host settings ---------------------------------------------------------
def _first(hostvars, names, default=None):
    for name in names:
        if name in hostvars and hostvars[name] is not None:
            return hostvars[name]
    return default


def host_settings(name, hostvars, defaults):
    """How to reach one host, from its variables (the inventory's connection variables, as
    Ansible's ssh and local connections read them); ``defaults`` holds what the controller's
    configuration says (remote_user, private_key_file, timeout, host_key_checking,
    become, become_user, ssh_args, control_path, control_path_dir). Returns ``{'error': msg}`` for a host the fan-out
    cannot serve."""
    connection = str(_first(hostvars, ('ansible_connection',), defaults.get('connection') or 'ssh'))
    if connection in LOCAL_CONNECTIONS:
        kind = 'local'
    elif connection in SSH_CONNECTIONS:
        kind = 'ssh'
    else:
        return {'error': 'ansible_connection %s: the fan-out runs over ssh or local only '
                         '(set diagnose_transport=ansible for this host)' % connection}
    if _first(hostvars, ('ansible_password', 'ansible_ssh_pass', 'ansible_ssh_password')) is not None:
        return {'error': 'password logins are not supported by the fan-out (keys or an agent only; '
                         'set diagnose_transport=ansible for this host)'}
    become = _bool(_first(hostvars, ('ansible_become',), defaults.get('become', False)))
    method = str(_first(hostvars, ('ansible_become_method',), defaults.get('become_method') or 'sudo'))
    if become and method not in ('sudo', 'ansible.builtin.sudo'):
        return {'error': 'become_method %s is not supported by the fan-out (sudo only)' % method}
    if become and _first(hostvars, ('ansible_become_password', 'ansible_become_pass', 'ansible_sudo_pass')):
        return {'error': 'become with a password is not supported by the fan-out (NOPASSWD sudo only)'}
    python = _first(hostvars, ('ansible_python_interpreter',))
    if python is None or str(python).startswith('auto'):
        python = 'python3'
    timeout = _first(hostvars, ('ansible_ssh_timeout', 'ansible_timeout'), defaults.get('timeout', 10))
    port = _first(hostvars, ('ansible_port', 'ansible_ssh_port'), defaults.get('port'))
    settings = {
        'kind': kind,
        'address': str(_first(hostvars, ('ansible_host', 'ansible_ssh_host'), name)),
        'port': port,
        'user': _first(hostvars, ('ansible_user', 'ansible_ssh_user'), defaults.get('remote_user')),
        'key': _first(hostvars, ('ansible_ssh_private_key_file', 'ansible_private_key_file'),
                      defaults.get('private_key_file')),
        'common_args': _first(hostvars, ('ansible_ssh_common_args',), defaults.get('ssh_common_args')) or '',
        'extra_args': _first(hostvars, ('ansible_ssh_extra_args',), defaults.get('ssh_extra_args')) or '',
        'host_key_checking': _bool(_first(hostvars, ('ansible_ssh_host_key_checking', 'ansible_host_key_checking'),
                                          defaults.get('host_key_checking', True))),
        'python': str(python),
        'become': become,
        'become_user': str(_first(hostvars, ('ansible_become_user',), defaults.get('become_user') or 'root')),
        'ssh_args': _first(hostvars, ('ansible_ssh_args',), defaults.get('ssh_args', SSH_ARGS)) or '',
        'control_path': _first(hostvars, ('ansible_control_path',), defaults.get('control_path')),
        'control_path_dir': _first(hostvars, ('ansible_control_path_dir',), defaults.get('control_path_dir')),
    }
    try:
        settings['timeout'] = int(timeout)
        if settings['timeout'] < 1:
            raise ValueError(timeout)
        settings['port'] = None if port in (None, '') else int(port)
        if settings['port'] is not None and not 0 < settings['port'] < 65536:
            raise ValueError(port)
        split = shlex.split(str(settings['common_args'])) + shlex.split(str(settings['extra_args']))
        ssh_args = [a for a in shlex.split(str(settings['ssh_args'])) if a not in SSH_ARGS_DROPPED]
        settings['control_path'] = control_path(ssh_args + split, settings)
    except (ValueError, TypeError, KeyError) as err:
        return {'error': 'bad connection variable for the fan-out: %s' % err}
    settings['args'] = split
    settings['ssh_args'] = ssh_args
    return settings


def control_path(args, settings):
    """The ControlPath Ansible's ssh connection adds for this host (connection/ssh.py), or None:
    only when the arguments ask for ControlPersist and name no ControlPath themselves; the
    configured ``control_path`` (``%(directory)s`` is ``control_path_dir``), else Ansible's
    hash of address, port and user in ``control_path_dir``. Same path, same master: the
    fan-out's connection is the one Ansible's tasks on the host reuse, and the reverse."""
    lowered = [a.lower() for a in args]
    if not any('controlpersist' in a for a in lowered) or any('controlpath' in a for a in lowered):
        return None
    directory = settings.get('control_path_dir')
    if not directory:
        return None
    if settings.get('control_path'):
        return str(settings['control_path']) % {'directory': directory}
    digest = hashlib.sha1(('%s-%s-%s' % (settings['address'], settings['port'], settings['user'])).encode('utf-8'))
    return '%s/%s' % (directory, digest.hexdigest()[:10])


def _bool(value):
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ('1', 'true', 'yes', 'on', 'y', 't')


def remote_argv(settings):
    """The command the host runs (as a list; ssh gets it quoted)."""
    # -E -S: no PYTHON* variables, no site-packages (the payload is stdlib and itself only); less start-up
    argv = shlex.split(settings['python']) + ['-E', '-S', '-c', BOOTSTRAP]
    if settings['become']:
        argv = ['sudo', '-n', '-H', '-u', settings['become_user']] + argv
    return argv


def command(settings, ssh='ssh'):
    """argv of the local process for one host: ssh with the options Ansible's ssh connection
    would use for it (same order: the first value of an option wins in ssh), or the payload
    run locally for ansible_connection=local."""
    if settings['kind'] == 'local':
        return remote_argv(settings)
    argv = [ssh, '-T'] + list(settings.get('ssh_args', ()))
    if not settings['host_key_checking']:
        argv += ['-o', 'StrictHostKeyChecking=no']
    if settings['port'] is not None:
        argv += ['-o', 'Port=%d' % settings['port']]
    if settings['key']:
        argv += ['-o', 'IdentityFile="%s"' % settings['key']]
    argv += list(AUTH_OPTIONS)
    if settings['user']:
        argv += ['-o', 'User="%s"' % settings['user']]
    argv += ['-o', 'ConnectTimeout=%d' % settings['timeout'], '-o', 'BatchMode=yes']
    argv += settings['args']
    if settings.get('control_path'):
        argv += ['-o', 'ControlPath="%s"' % settings['control_path']]
    argv += ['--', settings['address'], ' '.join(shlex.quote(a) for a in remote_argv(settings))]
    return argv


# -- results --------------------------------------------------------------------
def _tail(text, limit=MSG_TAIL):
    text = (text or '').strip()
    return text if len(text) <= limit else '...' + text[-limit:]


def parse_result(kind, rc, out, err, timed_out=False, too_big=None, address=None):
    """One host's registered result, shaped like a diagnose_gather task result:
    the module's dict, or ``{unreachable: true, msg}`` (worded as Ansible's ssh connection
    words it, with ssh's own message), or ``{failed: true, msg}``."""
    text = out.decode('utf-8', 'replace') if isinstance(out, bytes) else (out or '')
    err_text = err.decode('utf-8', 'replace') if isinstance(err, bytes) else (err or '')
    if too_big:
        return {'failed': True, 'changed': False,
                'msg': 'result larger than %d bytes: stopped reading (a malformed or hostile answer)' % too_big}
    if timed_out:
        return {'failed': True, 'changed': False, 'msg': 'no result within %s s: the fan-out stopped the session'
                % timed_out}
    if kind == 'ssh' and rc == 255 and not text.strip():
        return {'unreachable': True, 'changed': False, 'msg': UNREACHABLE % (address, _tail(err_text))}
    start = text.find('{')
    end = text.rfind('}')
    if start < 0 or end < start:
        what = 'no result' if not text.strip() else 'malformed result (not JSON): %r' % _tail(text, 200)
        return {'failed': True, 'changed': False,
                'msg': '%s (rc %s)%s' % (what, rc, ': %s' % _tail(err_text) if err_text.strip() else '')}
    try:
        value = json.loads(text[start:end + 1])
    except ValueError as exc:
        return {'failed': True, 'changed': False,
                'msg': 'malformed result (rc %s): %s: %r' % (rc, exc, _tail(text, 200))}
    if not isinstance(value, dict):
        return {'failed': True, 'changed': False, 'msg': 'malformed result: a JSON %s, not an object'
                % type(value).__name__}
    value.setdefault('changed', False)
    if rc not in (0, None) and not value.get('failed'):
        value.update({'failed': True, 'msg': 'the payload exited with rc %s: %s' % (rc, _tail(err_text))})
    return value


def trace_wanted(result, trace, suspected):
    """Whether a host goes on to the bounded trace, as roles/diagnose decides it on the
    Ansible path: reachable, and trace always, or auto with a suspected stall."""
    if not isinstance(result, dict) or result.get('unreachable') or trace == 'never':
        return False
    if trace == 'always':
        return True
    status = result.get('audit_status')
    return bool(suspected(status if isinstance(status, dict) else {}))


# -- the event loop ----------------------------------------------------------------
class Job:
    """One host's process: its argv, the bytes for its stdin, what it printed."""

    def __init__(self, host, kind, argv, data, timeout_s, address=None):
        self.host, self.kind, self.argv, self.data, self.timeout_s = host, kind, argv, data, timeout_s
        self.address = address or host
        self.proc = None
        self.sent = 0
        self.out, self.err = [], []
        self.out_bytes = 0
        self.started = None
        self.timed_out = False
        self.too_big = None
        self.open = set()
        self.result = None
        self.spawn_error = None


def _nonblock(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def run_all(jobs, concurrency=100, max_result_bytes=16 << 20, clock=time.monotonic, env=None):
    """Run every job's process, at most ``concurrency`` at once, from this one process; sets
    each job's ``result`` (parse_result). A process that outlives its ``timeout_s`` or prints
    more than ``max_result_bytes`` is killed (its process group)."""
    sel = selectors.DefaultSelector()
    pending = list(reversed(jobs))
    running = []
    try:
        while pending or running:
            while pending and len(running) < concurrency:
                job = pending.pop()
                _spawn(job, sel, clock, env)
                if job.proc is not None:
                    running.append(job)
            timeout = 0.05
            if running:
                now = clock()
                timeout = max(0.0, min(timeout, min(j.started + j.timeout_s - now for j in running)))
            for key, events in sel.select(timeout):
                _service(key, events, sel, max_result_bytes)
            now = clock()
            still = []
            for job in running:
                if job.too_big is None and now - job.started > job.timeout_s and not job.timed_out:
                    job.timed_out = job.timeout_s
                    _kill(job)
                if job.too_big is not None and job.proc.poll() is None:
                    _kill(job)
                if job.proc.poll() is not None:
                    _finish(job, sel)     # not waiting for EOF: a ControlPersist master may hold stderr
                else:
                    still.append(job)
            running = still
    finally:
        for job in running:
            _kill(job)
            _finish(job, sel)
        sel.close()
    return jobs


def _spawn(job, sel, clock, env):
    try:
        job.proc = subprocess.Popen(job.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    close_fds=True, start_new_session=True, env=env)
    except OSError as err:
        job.result = {'failed': True, 'changed': False, 'msg': 'cannot start %s: %s' % (job.argv[0], err)}
        return
    job.started = clock()
    for name, pipe, events in (('in', job.proc.stdin, selectors.EVENT_WRITE),
                               ('out', job.proc.stdout, selectors.EVENT_READ),
                               ('err', job.proc.stderr, selectors.EVENT_READ)):
        _nonblock(pipe.fileno())
        sel.register(pipe, events, (job, name))
        job.open.add(name)


def _close(job, name, sel):
    if name in job.open:
        pipe = {'in': job.proc.stdin, 'out': job.proc.stdout, 'err': job.proc.stderr}[name]
        sel.unregister(pipe)
        pipe.close()
        job.open.discard(name)


def _service(key, events, sel, max_result_bytes):
    job, name = key.data
    fd = key.fileobj.fileno()
    if name == 'in':
        try:
            job.sent += os.write(fd, job.data[job.sent:job.sent + 65536])
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            job.sent = len(job.data)      # EPIPE: the other side is gone; its exit says why
        if job.sent >= len(job.data):
            _close(job, 'in', sel)
        return
    try:
        chunk = os.read(fd, 65536)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return
        chunk = b''
    if not chunk:
        _close(job, name, sel)
        return
    if name == 'out':
        job.out_bytes += len(chunk)
        if job.out_bytes > max_result_bytes:
            job.too_big = max_result_bytes
            _close(job, 'out', sel)
            return
        job.out.append(chunk)
    elif sum(len(c) for c in job.err) < 65536:
        job.err.append(chunk)


def _kill(job):
    try:
        os.killpg(job.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _finish(job, sel):
    """The process has exited (or was killed): read what is left, close, parse."""
    for name in ('out', 'err'):
        if name in job.open:
            pipe = job.proc.stdout if name == 'out' else job.proc.stderr
            try:
                while True:
                    chunk = os.read(pipe.fileno(), 65536)
                    if not chunk:
                        break
                    (job.out if name == 'out' else job.err).append(chunk)
            except OSError:
                pass  # EAGAIN: a ControlPersist master still holds stderr; what was written is read
            _close(job, name, sel)
    _close(job, 'in', sel)
    rc = job.proc.wait()
    job.ended = time.time()
    job.result = parse_result(job.kind, rc, b''.join(job.out), b''.join(job.err),
                              timed_out=job.timed_out, too_big=job.too_big, address=job.address)
