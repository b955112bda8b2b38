"""Run history of ``auditgap audit`` in SQLite (stdlib sqlite3, WAL).

Schema (``PRAGMA user_version`` holds its version; ``MIGRATIONS`` brings an
older database up to date, a newer one is refused):

- ``runs``: one row per audit run (UTC run id, start/end, outcome, exit code,
  coverage ratio, report dir).
- ``hosts``: host names (one row per name; the other tables point at it).
- ``host_runs``: one row per host and run: coverage state, status, the
  per-host metrics that regressions compare and the stored state that
  "what changed" diffs (limits, rules hash, backlog_limit, kernel, consumer).
- ``findings``: finding id and severity per host and run.
- ``run_counts``: runs per outcome since the database was created (never
  pruned: the ``auditgap_runs_total`` counter).

A run is stored in one transaction: a process killed half-way leaves the
previous state (SQLite's WAL journal), and the next run works.
"""
import contextlib
import errno
import fcntl
import itertools
import operator
import os
import sqlite3
import time

HOST_FIELDS = ('state', 'status', 'severity', 'regressed', 'error', 'backlog_peak_ratio', 'lost_per_s',
               'wait_accrued_s', 'throttled_ratio', 'limit_cores', 'usage_cores', 'backlog_limit',
               'rules_hash', 'rules_count', 'kernel', 'consumer_exe', 'consumer_version')
RUN_FIELDS = ('run_id', 'started_at', 'finished_at', 'outcome', 'exit_code', 'hosts_total',
              'coverage_ratio', 'report_dir', 'version', 'message')
ERROR_MAX = 200

MIGRATIONS = [
    # 1: the first schema
    [
        'CREATE TABLE runs (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, started_at REAL NOT NULL, '
        'finished_at REAL, outcome TEXT NOT NULL, exit_code INTEGER, hosts_total INTEGER, coverage_ratio REAL, '
        'report_dir TEXT, version TEXT, message TEXT)',
        'CREATE INDEX runs_started ON runs (started_at)',
        'CREATE TABLE hosts (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)',
        'CREATE TABLE host_runs (host INTEGER NOT NULL REFERENCES hosts (id), '
        'run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, '
        'state TEXT NOT NULL, status TEXT, severity TEXT, regressed INTEGER NOT NULL DEFAULT 0, error TEXT, '
        'backlog_peak_ratio REAL, lost_per_s REAL, wait_accrued_s REAL, throttled_ratio REAL, '
        'limit_cores REAL, usage_cores REAL, backlog_limit INTEGER, rules_hash TEXT, rules_count INTEGER, '
        'kernel TEXT, consumer_exe TEXT, consumer_version TEXT, PRIMARY KEY (host, run)) WITHOUT ROWID',
        'CREATE INDEX host_runs_run ON host_runs (run)',
        'CREATE TABLE findings (host INTEGER NOT NULL REFERENCES hosts (id), '
        'run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE, '
        'finding TEXT NOT NULL, severity TEXT NOT NULL, PRIMARY KEY (host, run, finding)) WITHOUT ROWID',
        'CREATE INDEX findings_run ON findings (run)',
        'CREATE TABLE run_counts (outcome TEXT PRIMARY KEY, n INTEGER NOT NULL)',
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class HistoryError(Exception):
    """A history database that cannot be used (corrupt, newer schema, not writable)."""


class LockedError(HistoryError):
    """Another audit run holds the lock."""


@contextlib.contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (the connection is in autocommit mode)."""
    conn.execute('BEGIN IMMEDIATE')
    try:
        yield conn
    except BaseException:
        conn.execute('ROLLBACK')
        raise
    conn.execute('COMMIT')


def migrate(conn, migrations=MIGRATIONS):
    """Bring the schema to ``len(migrations)``; returns (from_version, to_version)."""
    current = conn.execute('PRAGMA user_version').fetchone()[0]
    target = len(migrations)
    if current > target:
        raise HistoryError('the history database has schema version %d, newer than this auditgap knows (%d): '
                           'use a newer auditgap or another --db' % (current, target))
    for version in range(current, target):
        with transaction(conn):
            for statement in migrations[version]:
                conn.execute(statement)
            conn.execute('PRAGMA user_version = %d' % (version + 1))
    return current, target


def connect(path, migrations=MIGRATIONS, readonly=False):
    """Open (creating when missing, unless ``readonly``) and migrate the history database."""
    if readonly and not os.path.isfile(path):
        raise HistoryError('no history database at %s (run auditgap audit first, or give --db)' % path)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as err:
        raise HistoryError('cannot open the history database %s: %s' % (path, err)) from err
    try:
        conn.execute('PRAGMA foreign_keys = ON')
        if not readonly:
            mode = conn.execute('PRAGMA journal_mode = WAL').fetchone()[0]
            if mode.lower() != 'wal':
                raise HistoryError('the history database %s cannot use WAL (journal mode %s)' % (path, mode))
            conn.execute('PRAGMA synchronous = NORMAL')
            migrate(conn, migrations)
        else:
            version = conn.execute('PRAGMA user_version').fetchone()[0]
            if version > len(migrations):
                raise HistoryError('the history database has schema version %d, newer than this auditgap '
                                   'knows (%d)' % (version, len(migrations)))
            if version < len(migrations):
                raise HistoryError('the history database %s has an old schema (%d): run auditgap audit once '
                                   'to migrate it' % (path, version))
        quick = conn.execute('PRAGMA quick_check').fetchone()[0]
        if quick != 'ok':
            raise HistoryError('the history database %s is damaged: %s' % (path, quick))
    except sqlite3.DatabaseError as err:
        conn.close()
        raise HistoryError('the history database %s is not usable (%s): move it away or give another --db'
                           % (path, err)) from err
    except HistoryError:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def run_lock(db_path):
    """An exclusive, non-blocking lock beside the database (``<db>.lock``): one audit at a time."""
    lock_path = db_path + '.lock'
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise HistoryError('cannot open the lock file %s: %s' % (lock_path, err.strerror)) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                holder = ''
                try:
                    holder = os.pread(fd, 64, 0).decode('ascii', 'replace').strip()
                except OSError:
                    pass
                raise LockedError('another auditgap audit is running (lock %s%s)'
                                  % (lock_path, ', pid %s' % holder if holder else '')) from err
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, ('%d\n' % os.getpid()).encode(), 0)
        yield lock_path
    finally:
        os.close(fd)


def _host_id(conn, name):
    row = conn.execute('SELECT id FROM hosts WHERE name = ?', (name,)).fetchone()
    if row:
        return row[0]
    return conn.execute('INSERT INTO hosts (name) VALUES (?)', (name,)).lastrowid


def store_run(conn, run, host_rows):
    """Store one run in one transaction.

    ``run``: RUN_FIELDS; ``host_rows``: [{'host', HOST_FIELDS..., 'findings': [{'id', 'severity'}]}].
    Returns the run's row id.
    """
    with transaction(conn):
        cur = conn.execute('INSERT INTO runs (%s) VALUES (%s)' % (', '.join(RUN_FIELDS), ', '.join('?' * len(RUN_FIELDS))),
                           [run.get(k) for k in RUN_FIELDS])
        run_pk = cur.lastrowid
        for row in host_rows:
            host = _host_id(conn, row['host'])
            values = [row.get(k) for k in HOST_FIELDS]
            values[HOST_FIELDS.index('regressed')] = 1 if row.get('regressed') else 0
            error = row.get('error')
            if error and len(error) > ERROR_MAX:
                values[HOST_FIELDS.index('error')] = error[:ERROR_MAX - 3] + '...'
            conn.execute('INSERT INTO host_runs (host, run, %s) VALUES (?, ?, %s)'
                         % (', '.join(HOST_FIELDS), ', '.join('?' * len(HOST_FIELDS))), [host, run_pk] + values)
            for finding in row.get('findings') or []:
                conn.execute('INSERT OR REPLACE INTO findings (host, run, finding, severity) VALUES (?, ?, ?, ?)',
                             (host, run_pk, finding['id'], finding['severity']))
        conn.execute('INSERT INTO run_counts (outcome, n) VALUES (?, 1) '
                     'ON CONFLICT (outcome) DO UPDATE SET n = n + 1', (run['outcome'],))
    return run_pk


def _run_dict(row):
    return dict(zip(('pk',) + RUN_FIELDS, row))


def runs(conn, limit=None):
    """Runs, newest first."""
    sql = 'SELECT id, %s FROM runs ORDER BY id DESC' % ', '.join(RUN_FIELDS)
    if limit:
        sql += ' LIMIT %d' % int(limit)
    return [_run_dict(r) for r in conn.execute(sql)]


def host_history(conn, host, limit=None, before_run=None):
    """One host's rows, newest first: HOST_FIELDS + run_id, started_at, run pk and its findings."""
    row = conn.execute('SELECT id FROM hosts WHERE name = ?', (host,)).fetchone()
    if not row:
        return []
    host_id = row[0]
    sql = ('SELECT hr.run, r.run_id, r.started_at, %s FROM host_runs hr JOIN runs r ON r.id = hr.run '
           'WHERE hr.host = ?' % ', '.join('hr.' + f for f in HOST_FIELDS))
    params = [host_id]
    if before_run is not None:
        sql += ' AND hr.run < ?'
        params.append(before_run)
    sql += ' ORDER BY hr.run DESC'
    if limit:
        sql += ' LIMIT %d' % int(limit)
    rows = [dict(zip(('run', 'run_id', 'started_at') + HOST_FIELDS, r)) for r in conn.execute(sql, params)]
    if rows:
        found = {}
        for run_pk, finding, severity in conn.execute(
                'SELECT run, finding, severity FROM findings WHERE host = ? AND run BETWEEN ? AND ? ORDER BY finding',
                (host_id, rows[-1]['run'], rows[0]['run'])):
            found.setdefault(run_pk, []).append({'id': finding, 'severity': severity})
        for r in rows:
            r['host'] = host
            r['findings'] = found.get(r['run'], [])
    return rows


TIMELINE_FIELDS = ('run', 'run_id', 'started_at', 'state', 'status', 'backlog_peak_ratio', 'throttled_ratio', 'lost_per_s')


def host_timeline(conn, host, limit=None):
    """What ``auditgap history`` shows of one host, oldest first: dicts of TIMELINE_FIELDS plus
    ``findings``: [(id, severity)].

    Two indexed range reads (host_runs and findings by host, both in primary-key order) and few
    columns: fast over many runs (benchmarks/bench_audit.py).
    """
    row = conn.execute('SELECT id FROM hosts WHERE name = ?', (host,)).fetchone()
    if not row:
        return []
    host_id = row[0]
    sql = ('SELECT hr.run, r.run_id, r.started_at, hr.state, hr.status, hr.backlog_peak_ratio, hr.throttled_ratio, '
           'hr.lost_per_s FROM host_runs hr JOIN runs r ON r.id = hr.run WHERE hr.host = ? ORDER BY hr.run DESC')
    if limit:
        sql += ' LIMIT %d' % int(limit)
    rows = conn.execute(sql, (host_id,)).fetchall()
    if not rows:
        return []
    rows.reverse()
    found = {}
    cursor = conn.execute('SELECT run, finding, severity FROM findings WHERE host = ? AND run >= ? ORDER BY run',
                          (host_id, rows[0][0]))
    for run_pk, group in itertools.groupby(cursor, key=operator.itemgetter(0)):
        found[run_pk] = [(finding, severity) for _run, finding, severity in group]
    fields = TIMELINE_FIELDS + ('findings',)
    return [dict(zip(fields, r + (found.get(r[0], []),))) for r in rows]


def host_names(conn):
    return [r[0] for r in conn.execute('SELECT name FROM hosts ORDER BY name')]


def recent_hosts(conn, runs_back):
    """{host: runs since it was last seen diagnosed (0 = the newest stored run)} over the last ``runs_back`` runs."""
    pks = [r[0] for r in conn.execute('SELECT id FROM runs ORDER BY id DESC LIMIT ?', (int(runs_back),))]
    if not pks:
        return {}
    out = {}
    for name, run_pk, state in conn.execute(
            'SELECT h.name, hr.run, hr.state FROM host_runs hr JOIN hosts h ON h.id = hr.host '
            'WHERE hr.run >= ? ORDER BY hr.run DESC', (pks[-1],)):
        if state != 'unknown' and name not in out:
            out[name] = pks.index(run_pk)
    return out


def last_success_at(conn):
    row = conn.execute("SELECT MAX(finished_at) FROM runs WHERE outcome != 'failed'").fetchone()
    return row[0] if row else None


def run_counts(conn):
    return dict(conn.execute('SELECT outcome, n FROM run_counts'))


def prune(conn, keep_days, now=None):
    """Delete runs that started more than ``keep_days`` ago (and hosts left without runs); returns the count."""
    if keep_days < 0:
        raise ValueError('--keep-days must be >= 0')
    cutoff = (now if now is not None else time.time()) - keep_days * 86400
    with transaction(conn):
        removed = conn.execute('DELETE FROM runs WHERE started_at < ?', (cutoff,)).rowcount
        conn.execute('DELETE FROM hosts WHERE id NOT IN (SELECT DISTINCT host FROM host_runs)')
    conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    return removed
