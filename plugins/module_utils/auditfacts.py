# -*- coding: utf-8 -*-
# Copyright: auditgap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""audit_status facts: reading status/rules/consumer, sampling, the contract shape.

``gather(...)`` builds the ``audit_status`` dict of docs/contracts.md; the
module is a thin wrapper around it. Pure helpers (``build_status``,
``summarize_sample``, ``validate_params``) are unit-tested without root.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import time

from ansible_collections.auditgap.fleet.plugins.module_utils import (
    audit,
    auditnl,
    auditreadlog,
    kernelhz,
    procinfo,
)

SOURCES = audit.SOURCES
MAX_SAMPLE_SECONDS = 300
MIN_INTERVAL_MS = 10
MAX_INTERVAL_MS = 60000


def validate_params(source, sample_seconds, sample_interval_ms):
    """Error message for bad options, or None."""
    if source not in SOURCES:
        return 'source must be one of %s, got %r' % (', '.join(SOURCES), source)
    try:
        seconds = float(sample_seconds)
    except (TypeError, ValueError):
        return 'sample_seconds must be a number, got %r' % (sample_seconds,)
    if math.isnan(seconds) or seconds < 0 or seconds > MAX_SAMPLE_SECONDS:
        return 'sample_seconds must be between 0 and %d, got %s' % (MAX_SAMPLE_SECONDS, sample_seconds)
    try:
        interval = int(sample_interval_ms)
    except (TypeError, ValueError):
        return 'sample_interval_ms must be an integer, got %r' % (sample_interval_ms,)
    if interval < MIN_INTERVAL_MS or interval > MAX_INTERVAL_MS:
        return 'sample_interval_ms must be between %d and %d, got %s' % (
            MIN_INTERVAL_MS, MAX_INTERVAL_MS, sample_interval_ms)
    return None


def utc_now(clock=time.time):
    """``2026-12-01T20:01:43.123456Z`` (UTC, microseconds), without the datetime module: its import was
    a twentieth of the diagnose fan-out's payload on the host (docs/scale.md)."""
    now = clock()
    seconds = int(now)
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)) + '.%06dZ' % int((now - seconds) * 1e6)


def kernel_release():
    return os.uname()[2]


def build_status(raw, hz):
    """Raw status (auditnl.decode_status / audit.parse_status) -> contract ``status``."""
    enabled = raw.get('enabled')
    wait = raw.get('backlog_wait_time')
    actual = raw.get('backlog_wait_time_actual')
    bitmap = raw.get('feature_bitmap')
    status = {
        'enabled': enabled,
        'immutable': enabled == 2,
        'failure': raw.get('failure'),
        'pid': raw.get('pid'),
        'rate_limit': raw.get('rate_limit'),
        'backlog_limit': raw.get('backlog_limit'),
        'lost': raw.get('lost'),
        'backlog': raw.get('backlog'),
        'backlog_wait_time_jiffies': wait,
        'backlog_wait_time_ms': kernelhz.jiffies_to_ms(wait, hz),
        'backlog_wait_time_actual_jiffies': actual,
        'backlog_wait_time_actual_ms': kernelhz.jiffies_to_ms(actual, hz),
        'feature_bitmap': bitmap,
        'features': auditnl.features_from_bitmap(bitmap),
    }
    if 'loginuid_immutable' in raw:
        status['loginuid_immutable'] = raw['loginuid_immutable']
    return status


def _counter_delta(first, last):
    """Growth of a u32 kernel counter; a reset (auditd clearing lost) counts from 0."""
    if first is None or last is None:
        return None
    if last >= first:
        return last - first
    return last


def summarize_sample(timeline, hz, backlog_limit, interval_ms):
    """Timeline entries ``{t_s, backlog, lost, backlog_wait_time_actual_jiffies}`` -> ``sample``."""
    if not timeline:
        return None
    seconds = timeline[-1]['t_s'] - timeline[0]['t_s']
    backlogs = [entry['backlog'] for entry in timeline if entry['backlog'] is not None]
    peak = max(backlogs) if backlogs else None
    lost_delta = _counter_delta(timeline[0]['lost'], timeline[-1]['lost'])
    actual_delta = _counter_delta(timeline[0]['backlog_wait_time_actual_jiffies'],
                                  timeline[-1]['backlog_wait_time_actual_jiffies'])
    return {
        'seconds': round(seconds, 3),
        'samples': len(timeline),
        'interval_ms': interval_ms,
        'backlog_peak': peak,
        'backlog_peak_ratio': (round(float(peak) / backlog_limit, 4)
                               if peak is not None and backlog_limit else None),
        'lost_delta': lost_delta,
        'lost_per_s': (round(lost_delta / seconds, 3)
                       if lost_delta is not None and seconds > 0 else None),
        'backlog_wait_time_actual_delta_jiffies': actual_delta,
        'backlog_wait_time_actual_delta_ms': kernelhz.jiffies_to_ms(actual_delta, hz),
        'timeline': timeline,
    }


def read_consumer(pid, proc_root='/proc', container_lookup=None):
    """The registered consumer's identity (contract ``consumer``), or None without one.

    ``container_lookup(id) -> (info, reason)`` (dockerctl.lookup_container) names the
    consumer's container: ``container.name`` and, for a pod, ``container.kubernetes``.
    """
    if not pid:
        return None
    info = procinfo.read_process(pid, proc_root)
    if info is None:
        return dict(procinfo.unknown_process(pid), found=False)
    info['found'] = True
    container = info.get('container')
    if container is not None:
        container.setdefault('name', None)
        if container_lookup is not None and container.get('id'):
            found, _reason = container_lookup(container['id'])
            if found:
                container['name'] = found.get('name')
                if found.get('kubernetes'):
                    container['kubernetes'] = found['kubernetes']
                if container.get('runtime') == 'unknown' and found.get('source') != 'crictl':
                    container['runtime'] = 'docker'
    return info


AUDITD_CONF = '/etc/audit/auditd.conf'
# auditd.conf settings that decide how fast auditd drains the backlog
AUDITD_SETTINGS = ('log_file', 'write_logs', 'flush', 'freq', 'disk_full_action', 'disk_error_action',
                   'space_left_action', 'priority_boost', 'q_depth', 'overflow_action', 'plugin_dir')


def parse_auditd_conf(text):
    """auditd.conf text -> {key: value} (keys lower case, comments and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        key, sep, value = line.partition('=')
        if sep and key.strip():
            out[key.strip().lower()] = value.strip()
    return out


def auditd_conf_path(cmdline):
    """The auditd.conf an auditd command line reads (``-c DIR``), else the default."""
    args = list(cmdline or [])
    for index, arg in enumerate(args):
        if arg == '-c' and index + 1 < len(args):
            return os.path.join(args[index + 1], 'auditd.conf')
    return AUDITD_CONF


def _block_device(path):
    """Name of the block device holding ``path`` (vda, sda1, dm-0), or None."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    sysfs = '/sys/dev/block/%d:%d' % (os.major(dev), os.minor(dev))
    return os.path.basename(os.path.realpath(sysfs)) if os.path.exists(sysfs) else None


def read_auditd_config(consumer, proc_root='/proc'):
    """auditd's drain-relevant settings as the consumer sees them (through /proc/PID/root),
    or None when the consumer is not auditd. ``log_device``: the block device of log_file,
    ``log_free_ratio``: free space there; ``plugins``: active plugin names."""
    consumer = consumer or {}
    name = consumer.get('comm') or os.path.basename(consumer.get('exe') or '')
    if name != 'auditd' or not consumer.get('pid'):
        return None
    root = os.path.join(proc_root, str(consumer['pid']), 'root')
    path = auditd_conf_path(consumer.get('cmdline'))
    out = {'path': path}
    try:
        with open(root + path) as handle:
            conf = parse_auditd_conf(handle.read())
    except (IOError, OSError) as err:
        out['error'] = str(err)
        return out
    out.update((key, conf.get(key)) for key in AUDITD_SETTINGS)
    log_dir = os.path.dirname(conf.get('log_file') or '/var/log/audit/audit.log')
    out['log_device'] = _block_device(root + log_dir)
    try:
        vfs = os.statvfs(root + log_dir)
        out['log_free_ratio'] = round(vfs.f_bavail / float(vfs.f_blocks), 4) if vfs.f_blocks else None
    except OSError:
        out['log_free_ratio'] = None
    plugins = []
    plugin_dir = conf.get('plugin_dir') or '/etc/audit/plugins.d'
    try:
        names = sorted(os.listdir(root + plugin_dir))
    except OSError:
        names = []
    for entry in names:
        if not entry.endswith('.conf'):
            continue
        try:
            with open(os.path.join(root + plugin_dir, entry)) as handle:
                plugin = parse_auditd_conf(handle.read())
        except (IOError, OSError):
            continue
        if plugin.get('active', '').lower() == 'yes':
            plugins.append(entry[:-len('.conf')])
    out['plugins'] = plugins
    return out


def run_sample(client, seconds, interval_ms, hz, backlog_limit, clock=time.monotonic,
               sleep=time.sleep, on_tick=None):
    """Poll the status every ``interval_ms`` for ``seconds``; contract ``sample``.

    ``on_tick()`` runs after each status read (the consumer's activity sampler)."""
    timeline = []
    start = clock()
    tick = 0
    while True:
        now = clock()
        raw = client.status()
        timeline.append({'t_s': round(now - start, 4), 'backlog': raw.get('backlog'),
                         'lost': raw.get('lost'),
                         'backlog_wait_time_actual_jiffies': raw.get('backlog_wait_time_actual')})
        if raw.get('backlog_limit') is not None:
            backlog_limit = raw['backlog_limit']
        if on_tick is not None:
            on_tick()
        if now - start >= seconds:
            break
        tick += 1
        target = start + min(tick * interval_ms / 1000.0, seconds)
        delay = target - clock()
        if delay > 0:
            sleep(delay)
    return summarize_sample(timeline, hz, backlog_limit, interval_ms)


def unsupported(reason, hz=None):
    return {'supported': False, 'reason': reason, 'source': None, 'status': None,
            'hz': hz, 'rules': [], 'rules_source': None, 'consumer': None, 'sample': None,
            'collected_at': utc_now(), 'kernel_release': kernel_release()}


def _d(value):
    return value if isinstance(value, dict) else {}


def open_readlog():
    """(ReadlogSocket, None) joined to the audit multicast group, or (None, why not)."""
    try:
        return auditreadlog.ReadlogSocket(), None
    except auditreadlog.ReadlogError as err:
        return None, str(err)


def record_rates_summary(readlog, seconds):
    """The sample's ``record_rates`` from a ReadlogSocket that read the window."""
    rates = readlog.counter.summary(seconds, user_names=auditreadlog.user_names)
    rates['overruns'] = readlog.overruns
    rates['complete'] = readlog.overruns == 0
    return rates


def gather(source='auto', sample_seconds=0, sample_interval_ms=100, rules=True, consumer=True,
           run_command=None, auditctl_path=None, proc_root='/proc', root='/', euid=None,
           cgroup_root='/sys/fs/cgroup', container_lookup=None, record_rates=True, client=None, first=None):
    """The ``audit_status`` facts. Never raises for a host that lacks audit or root.

    ``record_rates``: read the audit multicast group during the sample window
    (``sample.record_rates``, module_utils/auditreadlog.py). ``client``: an ``audit.Audit``
    (default: one for ``source``, ``run_command`` and ``auditctl_path``, None is not
    installed), closed at the end; ``first``: what the caller's ``client.status()``
    returned (a status dict or the AuditError): one read."""
    hz = kernelhz.detect_hz(root)
    client = client or audit.Audit(source, run_command or audit.run_command, auditctl_path)
    try:
        if (os.geteuid() if euid is None else euid) != 0:
            return unsupported('needs root (CAP_AUDIT_CONTROL) to read the audit status; '
                               'run with become: true', hz)
        try:
            raw = client.status() if first is None else first
        except audit.AuditError as err:
            raw = err
        if isinstance(raw, audit.AuditError):
            return unsupported('audit status not readable: %s' % '; '.join(raw.errors), hz)
        facts = {
            'supported': True,
            'source': client.source,
            'hz': hz,
            'status': build_status(raw, hz['value']),
            'rules': [],
            'rules_source': None,
            'consumer': None,
            'sample': None,
            'collected_at': utc_now(),
            'kernel_release': kernel_release(),
        }
        if client.errors:
            facts['source_errors'] = client.errors
        if rules:
            try:
                facts['rules'] = client.rules()
                facts['rules_source'] = client.source
            except audit.AuditError as err:
                facts['rules_error'] = str(err)
        activity = None
        if consumer:
            facts['consumer'] = read_consumer(raw.get('pid'), proc_root, container_lookup)
            if facts['consumer'] is not None:
                facts['consumer']['auditd_config'] = read_auditd_config(facts['consumer'], proc_root)
            facts['consumer_activity'] = None
        if sample_seconds and float(sample_seconds) > 0:
            if consumer and _d(facts['consumer']).get('found'):
                activity = procinfo.ActivitySampler(raw['pid'], proc_root=proc_root, cgroup_root=cgroup_root)
            readlog, readlog_error = open_readlog() if record_rates else (None, None)
            try:
                facts['sample'] = run_sample(client, float(sample_seconds), int(sample_interval_ms),
                                             hz['value'], raw.get('backlog_limit'),
                                             on_tick=activity.tick if activity else None,
                                             sleep=readlog.read_for if readlog else time.sleep)
                if readlog is not None and facts['sample']:
                    readlog.drain()
                    facts['sample']['record_rates'] = record_rates_summary(readlog, facts['sample']['seconds'])
                elif facts['sample'] is not None:
                    facts['sample']['record_rates'] = None
                    if readlog_error:
                        facts['sample']['record_rates_error'] = readlog_error
            except (audit.AuditError, RuntimeError, ValueError, OSError) as err:
                facts['sample_error'] = str(err)
            finally:
                if readlog is not None:
                    readlog.close()
            if activity is not None:
                facts['consumer_activity'] = activity.summary()
        return facts
    finally:
        client.close()
