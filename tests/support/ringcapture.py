"""Record a short events sample in a private tracefs instance and keep both forms of the
same buffer: the text (``trace``, which does not consume) and then each CPU's binary
pages (``per_cpu/cpuN/trace_pipe_raw``, which does), with the format files that describe
them. Used by the live test of the raw reader and to record the unit tests' fixtures
(tests/fixtures/ftrace/ring/):

    .venv/bin/python tests/support/ringcapture.py DIR [seconds] [buffer_kb]

The workload is a child process: loopback connect/accept4 (audited syscall of the
incident), a 1 ms sleep every 20 accepts (sched_switch with a stacktrace trigger), and one
200 ms pause (a time extend record on its CPU). The instance is removed afterwards.
"""
import os
import re
import shutil
import subprocess
import sys
import time

_COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'collections')
if _COLLECTIONS not in sys.path:  # run as a script (below), not under pytest
    sys.path.insert(0, _COLLECTIONS)
from ansible_collections.auditgap.fleet.plugins.module_utils import tracering  # noqa: E402

WORKLOAD = r'''
import os, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(64)
port = srv.getsockname()[1]
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
end = time.monotonic() + float(sys.argv[1])
n = 0
paused = False
while time.monotonic() < end:
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = srv.accept()
    s.close(); c.close()
    os.getppid()
    n += 1
    if n % 20 == 0:
        time.sleep(0.001)
    if not paused and time.monotonic() > end - float(sys.argv[1]) / 2:
        paused = True
        time.sleep(0.2)
'''

SYSCALLS = ('accept4', 'getppid')


def _write(path, value):
    with open(path, 'w') as handle:
        handle.write(value)


def _read_raw(path, page_size):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return tracering.read_available(fd, page_size)
    finally:
        os.close(fd)


def capture(root, out, seconds=1.0, buffer_kb=64, syscalls=SYSCALLS):
    """Record into ``out`` (a directory): events/... format files, trace_clock, trace.txt,
    cpuN.raw; returns {'pid': workload pid, 'syscalls': [...], 'cpus': N, 'read_cpu_s': {'text':
    CPU seconds (user + system) reading ``trace``, 'raw': the same for every trace_pipe_raw}}."""
    name = 'auditgap-%d' % os.getpid()
    inst = os.path.join(root, 'instances', name)
    child = subprocess.Popen([sys.executable, '-c', WORKLOAD, str(seconds)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    enabled = []
    trigger = None
    os.mkdir(inst)
    try:
        child.stdout.readline()
        _write(os.path.join(inst, 'tracing_on'), '0')
        _write(os.path.join(inst, 'buffer_size_kb'), str(buffer_kb))
        flt = 'common_pid == %d' % child.pid
        events = []
        for sys_name in syscalls:
            for prefix in ('sys_enter_', 'sys_exit_'):
                rel = 'events/syscalls/%s%s' % (prefix, sys_name)
                events.append(rel)
                _write(os.path.join(inst, rel, 'filter'), flt)
                _write(os.path.join(inst, rel, 'enable'), '1')
                enabled.append(rel)
        rel = 'events/sched/sched_switch'
        events.append(rel)
        _write(os.path.join(inst, rel, 'filter'), 'prev_pid == %d || next_pid == %d' % (child.pid, child.pid))
        trigger = 'stacktrace if prev_pid == %d' % child.pid
        with open(os.path.join(inst, rel, 'trigger'), 'a') as handle:
            handle.write(trigger)
        _write(os.path.join(inst, rel, 'enable'), '1')
        enabled.append(rel)
        _write(os.path.join(inst, 'tracing_on'), '1')
        child.stdin.write('go\n')
        child.stdin.flush()
        child.wait(timeout=seconds + 30)
        _write(os.path.join(inst, 'tracing_on'), '0')
        os.makedirs(out, exist_ok=True)
        for rel in ['events/header_page', 'events/header_event', 'events/ftrace/kernel_stack/format',
                    'trace_clock'] + [e + '/format' for e in events]:
            dst = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(inst, rel), dst)
        read_cpu = {}
        start = time.process_time()   # user + system: the kernel prints the text in our read
        shutil.copyfile(os.path.join(inst, 'trace'), os.path.join(out, 'trace.txt'))
        read_cpu['text'] = time.process_time() - start
        page_size = os.sysconf('SC_PAGE_SIZE')
        subbuf = os.path.join(inst, 'buffer_subbuf_size_kb')
        if os.path.exists(subbuf):
            with open(subbuf) as handle:
                page_size = int(handle.read().split()[0]) * 1024
        cpus = sorted(int(d[3:]) for d in os.listdir(os.path.join(inst, 'per_cpu')) if d[3:].isdigit())
        read_cpu['raw'] = 0.0
        for cpu in cpus:
            start = time.process_time()
            data = _read_raw(os.path.join(inst, 'per_cpu', 'cpu%d' % cpu, 'trace_pipe_raw'), page_size)
            read_cpu['raw'] += time.process_time() - start
            with open(os.path.join(out, 'cpu%d.raw' % cpu), 'wb') as handle:
                handle.write(data)
        return {'pid': child.pid, 'syscalls': list(syscalls), 'cpus': len(cpus), 'read_cpu_s': read_cpu}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for rel in enabled:
            try:
                _write(os.path.join(inst, rel, 'enable'), '0')
            except OSError:
                pass
        if trigger:
            try:
                _write(os.path.join(inst, 'events/sched/sched_switch/trigger'), '!' + trigger)
            except OSError:
                pass
        for _attempt in range(20):
            try:
                os.rmdir(inst)
                break
            except OSError:
                time.sleep(0.1)


LINE_RE = re.compile(r'^\s*(.*)-(\d+)\s+\[(\d+)\]\s+\S+\s+(\d+)\.(\d{6}): (.*)$')


def text_events(text):
    """The ``trace`` text as [(cpu, ts_us, pid, body, frames)]: one entry per event (a
    ``<stack trace>`` with its `` => `` frames)."""
    out = []
    for line in text.splitlines():
        if line.startswith(' => ') and out:
            out[-1][4].append(line[4:].strip())
            continue
        match = LINE_RE.match(line)
        if match:
            _comm, pid, cpu, secs, usecs, body = match.groups()
            out.append((int(cpu), int(secs) * 1000000 + int(usecs), int(pid), body, []))
    return out


def kallsyms_excerpt(out, addresses, path='/proc/kallsyms'):
    """Write the kallsyms lines that name ``addresses`` (the nearest text symbol at or
    below each) to ``out``: enough to symbolise a recorded fixture after a reboot."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                    'collections'))
    from ansible_collections.auditgap.fleet.plugins.module_utils import tracering
    symbols = tracering.Symbols.at(path)
    symbols.name(0)
    import bisect
    keep = set()
    for address in addresses:
        index = bisect.bisect_right(symbols.addresses, address) - 1
        if index >= 0:
            keep.add(index)
    with open(out, 'w') as handle:
        for index in sorted(keep):
            handle.write('%016x T %s\n' % (symbols.addresses[index], symbols.names[index]))


if __name__ == '__main__':
    target = sys.argv[1]
    info = capture('/sys/kernel/tracing', target, float(sys.argv[2]) if len(sys.argv) > 2 else 1.0,
                   int(sys.argv[3]) if len(sys.argv) > 3 else 64)
    print(info)
