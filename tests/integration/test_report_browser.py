"""fleet.html in a real browser (Debian's chromium, headless): the key numbers and
finding titles are visible, nothing is fetched from outside."""
import json
import os
import re
import shutil
import subprocess

import pytest
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import report as R

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'findings')
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='chromium not installed (apt-get install chromium)')


def chromium(tmp_path, *args):
    cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync',
           '--user-data-dir=%s' % (tmp_path / 'profile')] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def fleet_html(tmp_path):
    hosts = []
    for name in ('seed_incident', 'healthy', 'no_audit', 'throttled_only'):
        with open(os.path.join(FIX, name + '.json')) as handle:
            hosts.append(F.auditgap_host_summary(json.load(handle), name))
    hosts.append(F.auditgap_host_summary({}, 'bogus', error='ssh: connect to host 127.0.0.1 port 1: Connection refused',
                                         reachable=False))
    doc = R.fleet_document(hosts, '2026-11-25T20:00:00Z', F.merge_thresholds(), str(tmp_path))
    path = tmp_path / 'fleet.html'
    path.write_text(R.render_html(doc))
    return path


def visible_text(dom):
    dom = re.sub(r'<style.*?</style>', ' ', dom, flags=re.DOTALL)
    dom = re.sub(r'<title>.*?</title>', ' ', dom, flags=re.DOTALL)
    text = re.sub(r'<[^>]+>', ' ', dom)
    return ' '.join(text.replace('&gt;', '>').replace('&lt;', '<').replace('&amp;', '&').split())


def test_key_numbers_and_titles_visible(tmp_path, fleet_html):
    proc = chromium(tmp_path, '--dump-dom', fleet_html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = visible_text(proc.stdout)
    for title in ('Audit backlog saturated', 'Audit consumer CPU-throttled', 'Audit events lost',
                  'Syscall stall observed in audit_log_start', 'Hot syscall audited',
                  'Audited syscalls slept (backlog wait time accrued)'):
        assert title in text, title
    assert 'Fleet summary' in text
    assert '1 critical' in text and '1 warning' in text and '1 unreachable' in text
    # key numbers: backlog 64/64, throttled 97%, accept4 p99, the chain, the unreachable host's error
    assert 'backlog peak / limit: 64 / 64' in text
    assert 'consumer throttled: 97%' in text
    assert 'accept4 stalls (p99 212 ms, max 702 ms) <- audit backlog at limit (64/64)' in text
    assert 'throttled 97% of periods (limit 0.01 CPU)' in text
    assert 'Connection refused' in text
    assert text.index('seed_incident CRITICAL') < text.index('bogus UNREACHABLE')


def test_screenshot_renders(tmp_path, fleet_html):
    shot = tmp_path / 'fleet.png'
    proc = chromium(tmp_path, f'--screenshot={shot}', '--window-size=1200,1600', fleet_html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20000
