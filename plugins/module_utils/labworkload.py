# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident lab's workload: a standalone script, stdlib only.

The lab (labkit.start_workload) writes this file's source to the lab dir and runs it
as a daemon: ``python3 labworkload.py --dir DIR [--port N] [--rate N] [--clients N]
[--cpu-stat CGROUP_DIR]``. It imports nothing from the project, so it runs the same
from the tree, a collection, or an AnsiballZ payload.

- a loopback TCP server (every ``accept()`` is an audited ``accept4``) forked off, and
  clients measuring, per connection, the time from "connection established" to
  "server answered" (the incident's gap);
- every second: ``latency.jsonl`` (count, p50/p99/max, errors), ``latency.summary.json``
  (cumulative, log histogram) and ``timeline.jsonl`` (p99, audit backlog peak sampled
  every ~50 ms, lost, backlog_wait_time_actual, the consumer group's throttled ratio);
- the latency math the tests and reports use on those files: ``percentile``,
  ``summarize``, ``LogHistogram``, ``read_jsonl``, ``window_summary``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import math
import os
import signal
import socket
import struct
import threading
import time

NETLINK_AUDIT = 9
AUDIT_GET = 1000
NLMSG_ERROR = 2
STATUS_FIELDS = ('mask', 'enabled', 'failure', 'pid', 'rate_limit', 'backlog_limit',
                 'lost', 'backlog', 'feature_bitmap', 'backlog_wait_time',
                 'backlog_wait_time_actual')
SCRIPT_NAME = 'labworkload.py'


# --------------------------------------------------------------------------
# latency math (pure)
# --------------------------------------------------------------------------
def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = int(math.ceil(pct / 100.0 * len(sorted_values)))
    rank = min(max(rank, 1), len(sorted_values))
    return sorted_values[rank - 1]


def summarize(values_ms):
    """{count, p50_ms, p99_ms, max_ms} of a list of latencies in ms."""
    values = sorted(values_ms)
    if not values:
        return {'count': 0, 'p50_ms': None, 'p99_ms': None, 'max_ms': None}
    return {'count': len(values),
            'p50_ms': round(percentile(values, 50), 3),
            'p99_ms': round(percentile(values, 99), 3),
            'max_ms': round(values[-1], 3)}


class LogHistogram:
    """Cumulative latency histogram with ~1% wide log buckets (bounded memory).

    Percentiles are reported as the upper edge of the bucket holding the
    nearest-rank sample (at most 1% high); max is exact.
    """

    BASE = 1.01
    MIN_MS = 0.001

    def __init__(self):
        self.buckets = {}
        self.count = 0
        self.max_ms = None

    def bucket_of(self, value_ms):
        if value_ms <= self.MIN_MS:
            return 0
        return int(math.log(value_ms / self.MIN_MS, self.BASE)) + 1

    def upper_edge(self, index):
        return self.MIN_MS * self.BASE ** index

    def add(self, value_ms):
        index = self.bucket_of(value_ms)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        if self.max_ms is None or value_ms > self.max_ms:
            self.max_ms = value_ms

    def percentile(self, pct):
        if not self.count:
            return None
        rank = min(max(int(math.ceil(pct / 100.0 * self.count)), 1), self.count)
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.upper_edge(index), self.max_ms)
        return self.max_ms

    def summary(self):
        if not self.count:
            return {'count': 0, 'p50_ms': None, 'p99_ms': None, 'max_ms': None}
        return {'count': self.count,
                'p50_ms': round(self.percentile(50), 3),
                'p99_ms': round(self.percentile(99), 3),
                'max_ms': round(self.max_ms, 3)}


def read_jsonl(path):
    """Records of a JSON-lines file; a torn last line is skipped."""
    records = []
    try:
        with open(path) as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except (IOError, OSError):
        pass
    return records


def window_summary(records, since=None, until=None):
    """Combine per-second records into one {count, p50_ms, p99_ms, max_ms, seconds}.

    Per-second percentiles cannot be merged exactly: p50/p99 of the window are
    the count-weighted nearest-rank over the seconds' p50/p99 values (a good
    estimate for steady windows); count and max are exact.
    """
    chosen = [r for r in records
              if r.get('count') and (since is None or r['t'] >= since)
              and (until is None or r['t'] <= until)]
    if not chosen:
        return {'count': 0, 'p50_ms': None, 'p99_ms': None, 'max_ms': None, 'seconds': 0}
    out = {'count': sum(r['count'] for r in chosen), 'seconds': len(chosen),
           'max_ms': max(r['max_ms'] for r in chosen)}
    for key in ('p50_ms', 'p99_ms'):
        weighted = sorted((r[key], r['count']) for r in chosen)
        total = out['count']
        rank = total * (0.5 if key == 'p50_ms' else 0.99)
        seen = 0
        for value, count in weighted:
            seen += count
            if seen >= rank:
                out[key] = value
                break
    return out


def proc_starttime(pid, proc_root='/proc'):
    """Start time (clock ticks since boot) of a live, non-zombie process; None otherwise."""
    try:
        with open('%s/%d/stat' % (proc_root, int(pid))) as handle:
            text = handle.read()
    except (IOError, OSError, ValueError):
        return None
    fields = text[text.rfind(')') + 2:].split()
    if not fields or fields[0] in ('Z', 'X'):
        return None
    return int(fields[19])


# --------------------------------------------------------------------------
# audit backlog sampler and consumer cpu.stat
# --------------------------------------------------------------------------
def netlink_get_status():
    """Minimal AUDIT_GET over NETLINK_AUDIT (read only). Raises OSError.

    No bind(2): the kernel binds the socket on its first send. The lab's rules audit
    ``bind`` (the seed's ``-S bind,listen,accept4``), so a sampler calling bind would
    itself sleep in audit_log_start during the stall and miss the samples it is there for.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    try:
        sock.settimeout(2.0)
        sock.send(struct.pack('=IHHII', 16, AUDIT_GET, 1, 1, 0))  # NLM_F_REQUEST
        while True:
            data = sock.recv(65536)
            length, mtype = struct.unpack('=IH', data[:6])
            payload = data[16:length]
            if mtype == NLMSG_ERROR:
                code = struct.unpack('=i', payload[:4])[0]
                if code:
                    raise OSError(-code, os.strerror(-code))
                continue
            if mtype == AUDIT_GET:
                count = min(len(payload) // 4, len(STATUS_FIELDS))
                values = struct.unpack('=%dI' % count, payload[:count * 4])
                return dict(zip(STATUS_FIELDS[:count], values))
    finally:
        sock.close()


def parse_cpu_stat(text):
    stat = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            stat[parts[0]] = int(parts[1])
    return stat


def read_cpu_stat(path):
    try:
        with open(os.path.join(path, 'cpu.stat')) as handle:
            return parse_cpu_stat(handle.read())
    except (IOError, OSError):
        return {}


def throttled_ratio(before, after):
    """nr_throttled / nr_periods between two cpu.stat readings; None without periods."""
    periods = after.get('nr_periods', 0) - before.get('nr_periods', 0)
    if periods <= 0:
        return None
    return round((after.get('nr_throttled', 0) - before.get('nr_throttled', 0)) / float(periods), 3)


# --------------------------------------------------------------------------
# the workload: server + client on loopback
# --------------------------------------------------------------------------
def serve(listener):  # pragma: no cover - runs in the workload daemon
    """Accept loop: every accept() is an accept4 syscall; answer one byte, close."""
    while True:
        try:
            conn = listener.accept()[0]
        except InterruptedError:
            continue
        except OSError:
            time.sleep(0.01)
            continue
        try:
            # a plain close (FIN): the client closes with RST, so neither
            # side keeps TIME_WAIT sockets at thousands of connections/s
            conn.sendall(b'.')
        except OSError:
            pass
        conn.close()


def one_request(port, timeout_s=10.0):
    """Connect, wait for the server's byte: ms from established to answered."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sock.connect(('127.0.0.1', port))
        start = time.monotonic()
        data = sock.recv(1)
        elapsed = (time.monotonic() - start) * 1000.0
        return elapsed if data else None
    finally:
        sock.close()


class Recorder:
    """Per-second latency records + cumulative histogram + optional timeline."""

    def __init__(self, workdir, cpu_stat_dir=None, timeline=True):
        self.workdir = workdir
        self.latency_path = os.path.join(workdir, 'latency.jsonl')
        self.summary_path = os.path.join(workdir, 'latency.summary.json')
        self.timeline_path = os.path.join(workdir, 'timeline.jsonl') if timeline else None
        self.cpu_stat_dir = cpu_stat_dir
        self.hist = LogHistogram()
        self.second = []
        self.errors = 0
        self.started = time.time()
        self.last_flush = int(time.time())
        self.last_cpu = read_cpu_stat(cpu_stat_dir) if cpu_stat_dir else {}
        self.backlog_peak = None
        self.backlog_samples = 0

    def sample_backlog(self):
        """Called every ~50 ms: keep the second's backlog peak (a 1 s sample misses the fills)."""
        if not self.timeline_path:
            return
        try:
            backlog = netlink_get_status().get('backlog')
        except (OSError, socket.error, struct.error):
            return
        if backlog is not None:
            self.backlog_samples += 1
            if self.backlog_peak is None or backlog > self.backlog_peak:
                self.backlog_peak = backlog

    def add(self, value_ms):
        if value_ms is None:
            self.errors += 1
            return
        self.second.append(value_ms)
        self.hist.add(value_ms)

    def maybe_flush(self, now=None):
        now = time.time() if now is None else now
        if int(now) <= self.last_flush:
            return False
        self.flush(int(now))
        return True

    def flush(self, second):
        record = dict(summarize(self.second), t=second, errors=self.errors)
        self.second = []
        self.errors = 0
        self.last_flush = second
        _append_line(self.latency_path, record)
        summary = dict(self.hist.summary(), since=round(self.started, 3), t=second)
        _atomic_json(self.summary_path, summary)
        if self.timeline_path:
            point = {'t': second, 'p99_ms': record['p99_ms'], 'max_ms': record['max_ms'], 'count': record['count'],
                     'backlog': None, 'lost': None, 'throttled_ratio': None,
                     'backlog_peak': self.backlog_peak, 'backlog_samples': self.backlog_samples}
            self.backlog_peak = None
            self.backlog_samples = 0
            try:
                status = netlink_get_status()
                point['backlog'] = status.get('backlog')
                point['lost'] = status.get('lost')
                point['backlog_wait_time_actual'] = status.get('backlog_wait_time_actual')
                point['backlog_limit'] = status.get('backlog_limit')
            except (OSError, socket.error, struct.error):
                pass
            if self.cpu_stat_dir:
                cpu = read_cpu_stat(self.cpu_stat_dir)
                ratio = throttled_ratio(self.last_cpu, cpu)
                # no CFS periods in a second: no quota (or idle), so nothing throttled
                point['throttled_ratio'] = 0.0 if ratio is None and cpu else ratio
                self.last_cpu = cpu
            _append_line(self.timeline_path, point)


def _append_line(path, record):
    with open(path, 'a') as handle:
        handle.write(json.dumps(record, sort_keys=True) + '\n')


def _atomic_json(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(data, handle, sort_keys=True)
    os.rename(tmp, path)


def run_workload(workdir, port=0, rate_per_s=0, cpu_stat_dir=None, clients=4):  # pragma: no cover - daemon
    """The workload daemon: fork the server, run the client here."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(('127.0.0.1', port))
    listener.listen(128)
    port = listener.getsockname()[1]
    server = os.fork()
    if server == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            serve(listener)
        finally:
            os._exit(0)
    listener.close()

    def stop(signum, frame):
        try:
            os.kill(server, signal.SIGTERM)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    info = {'server_pid': server, 'server_starttime': proc_starttime(server),
            'client_pid': os.getpid(), 'client_starttime': proc_starttime(os.getpid()),
            'port': port}
    _atomic_json(os.path.join(workdir, 'workload.json'), info)
    recorder = Recorder(workdir, cpu_stat_dir=cpu_stat_dir)
    lock = threading.Lock()
    per_client = float(rate_per_s) / clients if rate_per_s else 0.0

    def client():
        interval = 1.0 / per_client if per_client else 0.0
        next_at = time.monotonic()
        while True:
            try:
                value = one_request(port)
            except (OSError, socket.timeout):
                value = None
                time.sleep(0.05)
            with lock:
                recorder.add(value)
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()

    for dummy in range(max(1, int(clients))):
        thread = threading.Thread(target=client)
        thread.daemon = True
        thread.start()
    while True:
        time.sleep(0.05)
        recorder.sample_backlog()
        if int(time.time()) > recorder.last_flush:
            if proc_starttime(server) is None:
                os._exit(0)
            with lock:
                recorder.maybe_flush()


def main(argv=None):  # pragma: no cover - daemon entry point
    import argparse
    parser = argparse.ArgumentParser(prog=SCRIPT_NAME, description='the incident lab workload')
    parser.add_argument('--dir', required=True)
    parser.add_argument('--port', type=int, default=0)
    parser.add_argument('--rate', type=int, default=0)
    parser.add_argument('--cpu-stat', default=None)
    parser.add_argument('--clients', type=int, default=4)
    args = parser.parse_args(argv)
    run_workload(args.dir, port=args.port, rate_per_s=args.rate, cpu_stat_dir=args.cpu_stat,
                 clients=args.clients)


if __name__ == '__main__':  # pragma: no cover
    main()
