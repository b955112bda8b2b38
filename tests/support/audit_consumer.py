#!/usr/bin/env python3
"""A small audit consumer for tests: registers itself as the audit daemon.

    audit_consumer.py [--rcvbuf BYTES] [--paused] [--slow-ms N]

Registers its netlink socket with AUDIT_SET pid (like auditd), prints
``ready <pid>`` on stdout, then reads and discards audit records.
SIGUSR1 stops reading (the kernel's backlog then fills: the incident's
slow consumer, made deterministic), SIGUSR2 resumes. ``--slow-ms N``
reads one datagram every N ms instead of everything at once. SIGTERM/SIGINT drain
the socket, unregister (pid 0) and exit 0; when unregistering fails the
socket is closed and the kernel drops the registration on its next send.
"""
import errno
import os
import select
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), 'collections'))

from ansible_collections.auditgap.fleet.plugins.module_utils import auditnl  # noqa: E402

STATE = {'paused': False, 'stop': False, 'records': 0}


def on_signal(signum, frame):
    if signum == signal.SIGUSR1:
        STATE['paused'] = True
    elif signum == signal.SIGUSR2:
        STATE['paused'] = False
    else:
        STATE['stop'] = True


def drain(sock, limit=None):
    """Read what is queued without blocking (at most ``limit`` datagrams); returns the count."""
    count = 0
    reads = 0
    while limit is None or reads < limit:
        reads += 1
        try:
            data = sock.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return count
        except OSError as err:
            if err.errno == errno.ENOBUFS:   # records dropped while we did not read
                continue
            return count
        count += sum(1 for _ in auditnl.iter_nlmsgs(data))
    return count


def unregister(sock):
    for _attempt in range(5):
        drain(sock, limit=10000)
        try:
            sock.set_status(pid=0)
            return True
        except auditnl.AuditNetlinkError as err:
            if err.errno not in (errno.ENOBUFS, errno.ETIMEDOUT):
                sys.stderr.write('unregister failed: %s\n' % err)
                return False
    return False


def main(argv):
    rcvbuf = None
    if '--rcvbuf' in argv:
        rcvbuf = int(argv[argv.index('--rcvbuf') + 1])
    STATE['paused'] = '--paused' in argv
    slow_s = float(argv[argv.index('--slow-ms') + 1]) / 1000.0 if '--slow-ms' in argv else 0.0
    for name in ('SIGUSR1', 'SIGUSR2', 'SIGTERM', 'SIGINT', 'SIGHUP'):
        signal.signal(getattr(signal, name), on_signal)
    sock = auditnl.AuditSocket(timeout_s=1.0, rcvbuf=rcvbuf)
    try:
        sock.set_status(pid=os.getpid())
    except (auditnl.AuditNetlinkError, ValueError) as err:
        sys.stdout.write('error %s\n' % err)
        sys.stdout.flush()
        return 2
    sys.stdout.write('ready %d\n' % os.getpid())
    sys.stdout.flush()
    try:
        while not STATE['stop']:
            if STATE['paused']:
                time.sleep(0.02)
                continue
            try:
                readable, _, _ = select.select([sock.sock], [], [], 0.1)
            except InterruptedError:
                continue
            if readable and slow_s:
                try:
                    sock.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                    STATE['records'] += 1
                except OSError:
                    pass
                time.sleep(slow_s)
            elif readable:
                # bounded, so a pause signal is seen even under a flood of records
                STATE['records'] += drain(sock, limit=64)
    finally:
        ok = unregister(sock)
        sock.close()
        sys.stderr.write('consumer exit: records=%d unregistered=%s\n' % (STATE['records'], ok))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
