"""fleet.html in a real browser (Debian's chromium, headless): the key numbers and
finding titles are visible, nothing is fetched from outside."""
import json
import os
import re
import shutil
import subprocess

import pytest
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
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
    doc = R.fleet_document(hosts, '2026-11-25T20:00:00Z', D.merge_thresholds(), str(tmp_path))
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


# ---------------------------------------------------------------- 10,000 hosts (issue 17)

PROBE = """<script>
(function(){
var out={};
var worst=document.querySelector('#worst tr:nth-child(2) a');
out.worst_host=worst?worst.textContent:null;
out.worst_top=worst?worst.getBoundingClientRect().bottom:null;
out.viewport=window.innerHeight;
out.hosts_listed=document.querySelectorAll('[data-host]').length;
out.details_open=document.querySelectorAll('details.host[open]').length;
var q=document.getElementById('search');
q.value=%s;q.dispatchEvent(new Event('input'));
var shown=[];document.querySelectorAll('[data-host]').forEach(function(el){if(!el.hidden){shown.push(el.getAttribute('data-host'));}});
out.search_shown=shown;out.search_count=document.getElementById('search-count').textContent;
out.healthy_open=document.getElementById('healthy').open;
var pre=document.createElement('pre');pre.id='probe';pre.textContent=JSON.stringify(out);document.body.appendChild(pre);
})();
</script></body>"""


@pytest.fixture(scope='module')
def fleet_10k(tmp_path_factory):
    """fleet.html of 10,000 synthetic hosts (benchmarks/fleetgen.py) through the report step."""
    from ansible_collections.auditgap.fleet.plugins.action import diagnose_report as A

    from benchmarks.fleetgen import fleet_results
    tmp = tmp_path_factory.mktemp('fleet10k')
    entries = A.host_entries(fleet_results(10000, bad=True), D.merge_thresholds())
    doc = R.fleet_document(entries, '2026-12-01T10:00:00Z', D.merge_thresholds(), str(tmp / 'r'))
    A.write_reports(doc, str(tmp / 'r'), A.FORMATS)
    return doc, tmp / 'r' / 'fleet.html'


def test_10k_hosts_open_worst_first_and_search(tmp_path, fleet_10k):
    doc, html = fleet_10k
    assert html.stat().st_size < 25 * 1024 * 1024
    healthy = next(e['host'] for e in doc['hosts'] if e['status'] == 'ok' and e['host'].startswith('host'))
    probed = tmp_path / 'probed.html'
    probed.write_text(html.read_text().replace('</body>', PROBE % json.dumps(healthy.upper()), 1))
    proc = chromium(tmp_path, '--window-size=1280,900', '--dump-dom', probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, proc.stdout[-2000:]
    out = json.loads(found.group(1).replace('&quot;', '"').replace('&lt;', '<').replace('&gt;', '>').replace('&amp;', '&'))
    worst = doc['hosts'][0]
    assert worst['status'] == 'critical'
    # the worst host is named and linked on the first screen
    assert out['worst_host'] == worst['host']
    assert 0 < out['worst_top'] <= out['viewport'], out
    # every host is in the page once (the duplicated name twice), only the worst are open
    assert out['hosts_listed'] == len(doc['hosts'])
    assert out['details_open'] == R.HTML_WORST
    # the search (inline script, no network) narrows 10,000 hosts to the one asked for, healthy ones unfolded
    assert out['search_shown'] == [healthy.lower()], out['search_shown'][:5]
    assert out['search_count'] == '1 match(es)'
    assert out['healthy_open'] is True


def test_10k_hosts_screenshot(tmp_path, fleet_10k):
    shot = tmp_path / 'fleet10k.png'
    proc = chromium(tmp_path, f'--screenshot={shot}', '--window-size=1280,900', fleet_10k[1].as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20000
