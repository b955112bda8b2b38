"""auditgap.history: schema and migrations, storing and reading runs, prune, the run lock,
and a process killed in the middle of a write (SIGKILL: the database stays valid)."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from auditgap import history

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(run_id, started, outcome='ok'):
    return {'run_id': run_id, 'started_at': started, 'finished_at': started + 5, 'outcome': outcome,
            'exit_code': 0, 'hosts_total': 1, 'coverage_ratio': 1.0, 'report_dir': '/r/' + run_id, 'version': '0.1.0'}


def host(name, state='ok', findings=(), **fields):
    return dict({'host': name, 'state': state, 'status': 'ok', 'findings': [{'id': f, 'severity': 'critical'}
                                                                             for f in findings]}, **fields)


def test_fresh_database_is_wal_at_the_current_schema(tmp_path):
    path = str(tmp_path / 'h.db')
    conn = history.connect(path)
    assert conn.execute('PRAGMA user_version').fetchone()[0] == history.SCHEMA_VERSION
    assert conn.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    conn.close()
    # opening again migrates nothing and keeps the data
    conn = history.connect(path)
    assert history.runs(conn) == []


def test_migrations_upgrade_an_older_database(tmp_path):
    path = str(tmp_path / 'h.db')
    conn = history.connect(path)
    history.store_run(conn, run('r1', 1000), [host('a', backlog_peak_ratio=0.5)])
    conn.close()
    newer = history.MIGRATIONS + [['ALTER TABLE runs ADD COLUMN note TEXT']]
    conn = history.connect(path, migrations=newer)
    assert conn.execute('PRAGMA user_version').fetchone()[0] == len(newer)
    assert [r['run_id'] for r in history.runs(conn)] == ['r1']
    assert 'note' in [c[1] for c in conn.execute('PRAGMA table_info(runs)')]


def test_failed_migration_leaves_the_old_schema(tmp_path):
    path = str(tmp_path / 'h.db')
    history.connect(path).close()
    broken = history.MIGRATIONS + [['ALTER TABLE runs ADD COLUMN ok TEXT', 'THIS IS NOT SQL']]
    with pytest.raises(history.HistoryError):
        history.connect(path, migrations=broken)
    conn = history.connect(path)
    assert 'ok' not in [c[1] for c in conn.execute('PRAGMA table_info(runs)')]


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / 'h.db')
    conn = sqlite3.connect(path)
    conn.execute('PRAGMA user_version = %d' % (history.SCHEMA_VERSION + 1))
    conn.close()
    with pytest.raises(history.HistoryError, match='newer than this auditgap'):
        history.connect(path)


def test_corrupt_database_is_refused_with_a_message(tmp_path):
    path = tmp_path / 'h.db'
    path.write_bytes(b'this is not a database at all' * 200)
    with pytest.raises(history.HistoryError, match='not usable'):
        history.connect(str(path))
    assert path.read_bytes().startswith(b'this is not')  # left as it was


def test_store_and_read_one_host(tmp_path):
    conn = history.connect(str(tmp_path / 'h.db'))
    history.store_run(conn, run('r1', 1000), [host('web', backlog_peak_ratio=0.1, kernel='6.1'),
                                              host('db', state='unknown', status='unreachable', error='x' * 500)])
    history.store_run(conn, run('r2', 2000, 'regressions'),
                      [host('web', state='regressed', regressed=True, findings=['audit_consumer_throttled'],
                            backlog_peak_ratio=1.0, limit_cores=0.01)])
    rows = history.host_history(conn, 'web')
    assert [r['run_id'] for r in rows] == ['r2', 'r1']
    assert rows[0]['findings'] == [{'id': 'audit_consumer_throttled', 'severity': 'critical'}]
    assert rows[0]['regressed'] == 1 and rows[0]['limit_cores'] == 0.01 and rows[1]['kernel'] == '6.1'
    assert history.host_history(conn, 'web', limit=1, before_run=rows[0]['run'])[0]['run_id'] == 'r1'
    db_row = history.host_history(conn, 'db')[0]
    assert len(db_row['error']) == history.ERROR_MAX and db_row['state'] == 'unknown'
    assert history.host_history(conn, 'nobody') == []
    assert history.run_counts(conn) == {'ok': 1, 'regressions': 1}
    assert history.last_success_at(conn) == 2005
    # web seen in the newest run, db only unknown: not "seen"
    assert history.recent_hosts(conn, 3) == {'web': 0}


def test_prune_keeps_recent_runs_and_the_counters(tmp_path):
    conn = history.connect(str(tmp_path / 'h.db'))
    day = 86400
    history.store_run(conn, run('old', 1000), [host('gone'), host('web')])
    history.store_run(conn, run('new', 1000 + 10 * day), [host('web')])
    assert history.prune(conn, keep_days=5, now=1000 + 11 * day) == 1
    assert [r['run_id'] for r in history.runs(conn)] == ['new']
    assert history.host_names(conn) == ['web']
    assert conn.execute('SELECT COUNT(*) FROM findings').fetchone()[0] == 0
    assert conn.execute('SELECT COUNT(*) FROM host_runs').fetchone()[0] == 1
    assert history.run_counts(conn) == {'ok': 2}
    with pytest.raises(ValueError):
        history.prune(conn, keep_days=-1)


def test_second_lock_holder_is_refused(tmp_path):
    path = str(tmp_path / 'h.db')
    with history.run_lock(path):
        with pytest.raises(history.LockedError, match='another auditgap audit is running.*pid %d' % os.getpid()):
            with history.run_lock(path):
                pass
    with history.run_lock(path):  # released
        pass


def test_process_killed_mid_write_leaves_a_valid_database(tmp_path):
    path = str(tmp_path / 'h.db')
    conn = history.connect(path)
    history.store_run(conn, run('r1', 1000), [host('web')])
    conn.close()
    # a writer that dies (SIGKILL) inside its transaction, after some inserts
    script = textwrap.dedent('''
        import os, signal, sys
        sys.path.insert(0, %r)
        from auditgap import history
        conn = history.connect(%r)
        conn.execute('BEGIN IMMEDIATE')
        conn.execute("INSERT INTO runs (run_id, started_at, outcome) VALUES ('half', 2000, 'ok')")
        conn.execute("INSERT INTO hosts (name) VALUES ('half-host')")
        os.kill(os.getpid(), signal.SIGKILL)
    ''' % (ROOT, path))
    proc = subprocess.run([sys.executable, '-c', script], check=False)
    assert proc.returncode == -signal.SIGKILL
    conn = history.connect(path)
    assert [r['run_id'] for r in history.runs(conn)] == ['r1']
    assert history.host_names(conn) == ['web']
    history.store_run(conn, run('r2', 3000), [host('web')])
    assert [r['run_id'] for r in history.runs(conn)] == ['r2', 'r1']
