"""history.html in a real browser (Debian's chromium, headless), as fleet.html is tested:
built from a real history database, the hosts, finding history and trend charts render."""
import re

import pytest

from auditgap import history, trends
from tests.integration.test_report_browser import CHROMIUM, chromium, visible_text

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='chromium not installed (apt-get install chromium)')


@pytest.fixture
def history_html(tmp_path):
    conn = history.connect(str(tmp_path / 'history.db'))
    pattern = [(), ('audit_consumer_throttled',), ('audit_consumer_throttled',), (), ('audit_events_lost',), (),
               ('audit_events_lost',), (), ('audit_events_lost',)]
    for n, found in enumerate(pattern):
        t = 1796119200 + n * 3600
        bad = bool(found)
        history.store_run(conn, {'run_id': '202612%02dT000000Z' % (n + 1), 'started_at': t, 'finished_at': t + 9,
                                 'outcome': 'regressions' if bad else 'ok'},
                          [{'host': 'web-01', 'state': 'regressed' if bad else 'ok', 'status': 'critical' if bad else 'ok',
                            'backlog_peak_ratio': 1.0 if bad else 0.05, 'throttled_ratio': 0.97 if bad else 0.0,
                            'lost_per_s': 3.0 if bad else 0.0,
                            'findings': [{'id': f, 'severity': 'critical'} for f in found]},
                           {'host': 'db-01', 'state': 'ok', 'status': 'ok', 'backlog_peak_ratio': 0.1,
                            'throttled_ratio': 0.0, 'lost_per_s': 0.0}])
    summaries = [trends.host_summary(h, history.host_timeline(conn, h)) for h in history.host_names(conn)]
    path = tmp_path / 'history.html'
    path.write_text(trends.render_html(summaries, '2026-12-10T00:00:00Z', str(tmp_path / 'history.db')))
    return path


def test_hosts_findings_and_trends_visible(tmp_path, history_html):
    proc = chromium(tmp_path, '--dump-dom', history_html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = visible_text(proc.stdout)
    assert 'auditgap history' in text and '2 host(s)' in text
    assert 'web-01 regressed' in text and 'db-01 ok' in text and '9 run(s), 20261201T000000Z .. 20261209T000000Z' in text
    assert re.search(r'audit_events_lost critical 20261205T000000Z 20261209T000000Z present 3 yes', text)
    assert re.search(r'audit_consumer_throttled critical 20261202T000000Z 20261203T000000Z 20261204T000000Z 1 no', text)
    for title in ('web-01: backlog peak ratio', 'web-01: consumer throttled ratio', 'web-01: lost/s',
                  'db-01: backlog peak ratio'):
        assert title in text, title
    assert 'No findings in these runs.' in text
    assert proc.stdout.count('<svg') == 6 and '<script' not in proc.stdout


def test_screenshot_renders(tmp_path, history_html):
    shot = tmp_path / 'history.png'
    proc = chromium(tmp_path, f'--screenshot={shot}', '--window-size=1200,1600', history_html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20000
