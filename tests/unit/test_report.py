"""Fleet report rendering (pure) and the controller-side report step's pieces."""
import base64
import json
import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.auditgap.fleet.plugins.action import diagnose_report as action
from ansible_collections.auditgap.fleet.plugins.filter import findings as F
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
from ansible_collections.auditgap.fleet.plugins.module_utils import report as R

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings')
NAMES = ('healthy', 'seed_incident', 'no_audit', 'immutable', 'consumer_missing', 'throttled_only',
         'hot_syscall', 'lab_stall')


def load(name):
    with open(os.path.join(FIX, name + '.json')) as handle:
        return json.load(handle)


def fleet():
    hosts = [F.auditgap_host_summary(load(n), n) for n in NAMES]
    hosts.append(F.auditgap_host_summary({}, 'bogus', error='ssh: connect to host 127.0.0.1 port 1: Connection refused',
                                         reachable=False))
    return R.fleet_document(hosts, '2026-11-25T20:00:00Z', D.merge_thresholds(), '/tmp/r')


def test_fleet_document_sorted_and_counted():
    doc = fleet()
    assert doc['schema'] == 'auditgap.fleet/v1' and doc['auditgap_version'] == R.AUDITGAP_VERSION
    statuses = [h['status'] for h in doc['hosts']]
    assert statuses[:2] == ['critical', 'critical']
    assert statuses[-1] == 'ok'
    assert statuses.index('unreachable') > statuses.index('warning')
    summ = doc['summary']
    assert summ['hosts'] == 9 and summ['unreachable'] == 1 and summ['reachable'] == 8
    assert summ['by_status']['critical'] == 2 and summ['by_status']['ok'] == 1
    assert summ['by_id']['audit_consumer_throttled']['hosts'] == ['lab_stall', 'seed_incident', 'throttled_only']
    assert summ['worst_status'] == 'critical'
    json.loads(R.to_json(doc))


def test_version_matches_galaxy():
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    with open(os.path.join(root, 'galaxy.yml')) as handle:
        assert re.search(rf'^version:\s*{re.escape(R.AUDITGAP_VERSION)}\s*$', handle.read(), re.MULTILINE)


def test_collection_version_installed_and_in_the_tree(tmp_path):
    """Installed, the version comes from MANIFEST.json (galaxy.yml is not in the tarball);
    in the tree from galaxy.yml."""
    (tmp_path / 'galaxy.yml').write_text('namespace: auditgap\nversion: "1.2.3"  # bumped\n')
    assert R.collection_version(str(tmp_path)) == '1.2.3'
    (tmp_path / 'MANIFEST.json').write_text(json.dumps({'collection_info': {'version': '2.0.0'}}))
    assert R.collection_version(str(tmp_path)) == '2.0.0'
    assert R.collection_version(str(tmp_path / 'missing')) is None


def test_summary_lines():
    lines = R.summary_lines(fleet())
    assert lines[0].startswith('auditgap 2026-11-25T20:00:00Z: 9 host(s): 2 critical, 3 warning')
    text = '\n'.join(lines)
    assert 'UNREACHABLE bogus: ssh: connect to host 127.0.0.1 port 1' in text
    assert '-> raise its CPU limit (role agent_cpu' in text
    assert 'healthy' not in text
    assert R.summary_lines(fleet(), limit=1)[-2] == '... and more: see fleet.md'


def test_markdown():
    md = R.render_markdown(fleet())
    assert md.startswith('# auditgap fleet report')
    assert '### seed_incident: CRITICAL' in md
    assert '**Chain:** accept4 stalls (p99 212 ms' in md
    assert '**Error:** `ssh: connect to host 127.0.0.1 port 1: Connection refused`' in md
    assert '| `audit_backlog_saturated` | 2 | 0 | 0 | lab_stall, seed_incident |' in md
    assert '## Healthy hosts (1)' in md


def test_prometheus_textfile_format():
    text = R.render_prometheus(fleet())
    assert text.endswith('\n')
    line_re = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$')
    typed = set()
    for line in text.splitlines():
        if line.startswith('# TYPE '):
            name = line.split()[2]
            assert name not in typed, f'family {name} declared twice'
            typed.add(name)
        elif not line.startswith('# HELP '):
            assert line_re.match(line), line
            assert line.split('{')[0].split(' ')[0] in typed
    assert 'auditgap_host_reachable{host="bogus"} 0' in text
    assert 'auditgap_audit_backlog_peak_ratio{host="seed_incident"} 1' in text
    assert 'auditgap_consumer_throttled_ratio{host="seed_incident"} 0.97' in text
    assert 'auditgap_audit_wait_accrued_seconds{host="lab_stall"} 3.608' in text
    assert 'auditgap_audit_lost_per_second{host="seed_incident"} 1' in text
    assert 'auditgap_findings{host="seed_incident",id="audit_consumer_throttled",severity="critical"} 1' in text
    assert 'auditgap_fleet_hosts{status="unreachable"} 1' in text
    assert 'auditgap_report_timestamp_seconds 1795636800' in text


def test_prometheus_label_escaping():
    doc = R.fleet_document([F.auditgap_host_summary({}, 'we"ird\\host', error='x', reachable=False)], 'x')
    assert 'auditgap_host_reachable{host="we\\"ird\\\\host"} 0' in R.render_prometheus(doc)


def test_html_self_contained_and_complete():
    svg = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><title>lab timeline</title></svg>'
    html = R.render_html(fleet(), timeline_svg=svg)
    assert html.startswith('<!DOCTYPE html>')
    # one inline script (the host search), nothing loaded from anywhere
    assert html.count('<script') == 1 and not re.search(r'<script[^>]*src', html)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', html)
    assert '<link' not in html
    assert html.count('<svg') >= 10
    assert '<?xml' not in html
    # the lab timeline is an <img> with a data: URI (no script of it runs; still self-contained)
    data = re.search(r'<img alt="incident lab timeline" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)">', html)
    assert data and base64.b64decode(data.group(1)).decode() == svg
    assert html.index('id="count-critical"') < html.index('id="host-seed_incident"')
    assert html.index('id="host-lab_stall"') < html.index('id="host-bogus"')
    assert 'Audit consumer CPU-throttled' in html
    assert 'Connection refused' in html
    assert 'accept4 stalls (p99 212 ms' in html
    assert 'Sleep accrued by audited syscalls' in html  # seed: wait grew during the window
    # every inline SVG is well-formed XML
    for svg in re.findall(r'<svg.*?</svg>', html, re.DOTALL):
        ET.fromstring(svg)


def test_html_template_overridden_by_a_users_copy(tmp_path):
    """docs/reports.md: a copy that extends fleet.html.j2 and overrides a block, and a
    fleet_host.html.j2 beside it for each host's section; still autoescaped."""
    (tmp_path / 'mine.html.j2').write_text('{% extends "fleet.html.j2" %}{% block script %}<p id="mine">{{ host_count }}</p>'
                                           '{% endblock %}')
    (tmp_path / 'fleet_host.html.j2').write_text('{% macro host_section(h) %}<div class="mine">{{ h.host }}</div>'
                                                 '{% endmacro %}')
    doc = fleet()
    doc['hosts'][0] = dict(doc['hosts'][0], host='<b>x</b>')
    html = R.render_html(doc, template=str(tmp_path / 'mine.html.j2'))
    assert '<p id="mine">%d</p>' % len(doc['hosts']) in html and '<script' not in html
    assert '<div class="mine">&lt;b&gt;x&lt;/b&gt;</div>' in html and 'id="count-critical"' in html
    assert str(R.html_host(doc['hosts'][1], str(tmp_path / 'mine.html.j2'))).startswith('<div class="mine">')


def test_html_escapes_host_names_and_text():
    doc = R.fleet_document([F.auditgap_host_summary({}, '<b>x</b>', error='<script>alert(1)</script>', reachable=False)], 'x')
    html = R.render_html(doc)
    assert '<script>alert' not in html and '&lt;script&gt;' in html


def test_safe_filename_unique_and_bounded():
    assert R.safe_filename('web-01.example.com') == 'web-01.example.com'
    assert R.safe_filename('web_1') == 'web_1'
    # a cleaned name carries a hash of the real one: never another host's name, never a path
    assert re.fullmatch(r'web_1~[0-9a-f]{10}', R.safe_filename('web/1'))
    assert R.safe_filename('web/1') != R.safe_filename('web:1/') != R.safe_filename('web_1')
    assert re.fullmatch(r'_etc_passwd~[0-9a-f]{10}', R.safe_filename('../etc/passwd'))
    assert re.fullmatch(r'_~[0-9a-f]{10}', R.safe_filename(''))
    assert R.safe_filename('fleet') != 'fleet' and R.safe_filename('Remediation') != 'Remediation'
    long_names = ['h' * 259, 'h' * 258 + 'x']
    stems = [R.safe_filename(n) for n in long_names]
    assert stems[0] != stems[1] and all(len(x) <= R.NAME_MAX + 11 for x in stems)


def test_action_host_entry_from_registered_results():
    seed = load('seed_incident')
    results = {'audit_status': {'changed': False, 'audit_status': seed['audit_status']},
               'cgroup_throttle': {'changed': False, 'cgroup_throttle': seed['cgroup_throttle']},
               'ftrace_sample': {'skipped': True}}
    entry = D.host_entry('web-01', results, {})
    assert entry['status'] == 'critical' and 'ftrace_sample' not in entry['facts']
    down = D.host_entry('bogus', {'audit_status': load('unreachable_result')}, {})
    assert down['status'] == 'unreachable' and 'port 1' in down['error']
    failed = D.host_entry('x', {'audit_status': {'failed': True, 'msg': 'boom'}}, {})
    assert failed['status'] == 'failed' and failed['error'] == 'audit_status: boom'
    # a failing trace does not hide the audit findings
    results['ftrace_sample'] = {'failed': True, 'msg': 'tracer busy',
                                'ftrace_sample': {'supported': False, 'reason': 'tracer busy'}}
    entry = D.host_entry('web-01', results, {})
    assert entry['status'] == 'critical' and entry['error'] == 'ftrace_sample: tracer busy'
    nothing = D.host_entry('y', {}, {})
    assert nothing['status'] == 'failed'
    # the diagnose role's combined gather result carries both fact keys
    gathered = D.host_entry('web-01', {'gather': {'changed': False, 'audit_status': seed['audit_status'],
                                                       'cgroup_throttle': seed['cgroup_throttle']}}, {})
    assert gathered['status'] == 'critical'
    assert set(gathered['facts']) == {'audit_status', 'cgroup_throttle'}
    down = D.host_entry('bogus', {'gather': load('unreachable_result'), 'ftrace_sample': {'skipped': True}}, {})
    assert down['status'] == 'unreachable'
    broken = D.host_entry('z', {'gather': {'failed': True, 'msg': 'module crashed'}}, {})
    assert broken['status'] == 'failed' and broken['error'] == 'gather: module crashed'


def test_action_report_dir_and_latest(tmp_path):
    import datetime
    now = datetime.datetime(2026, 11, 25, 20, 0, 0, tzinfo=datetime.UTC)
    first = R.default_report_dir(now, base=str(tmp_path))
    assert first.endswith('20261125T200000Z')
    os.makedirs(first)
    second = R.default_report_dir(now, base=str(tmp_path))
    assert second.endswith('20261125T200000Z-2')
    os.makedirs(second)
    link = R.point_latest(first)
    assert link == str(tmp_path / 'latest') and os.readlink(link) == os.path.basename(first)
    link = R.point_latest(second)
    assert os.readlink(link) == os.path.basename(second)


def test_write_reports_all_files_fleet_json_last(tmp_path):
    doc = fleet()
    files = action.write_reports(doc, str(tmp_path / 'r'), ['json', 'md', 'html', 'prom'])
    assert os.path.basename(files[-1]) == 'fleet.json'
    names = sorted(os.listdir(str(tmp_path / 'r')))
    assert names == sorted(['fleet.json', 'fleet.md', 'fleet.html', 'fleet.prom'] + [n + '.json' for n in NAMES + ('bogus',)])
    modes = {n: os.stat(str(tmp_path / 'r' / n)).st_mode & 0o777 for n in names}
    # the facts hold the consumer's command line: owner and group only; fleet.prom is for node_exporter
    assert modes.pop('fleet.prom') == 0o644 and set(modes.values()) == {0o640}
    with open(str(tmp_path / 'r' / 'bogus.json')) as handle:
        bogus = json.load(handle)
    assert bogus['status'] == 'unreachable' and bogus['generated_at'] == doc['generated_at']
    assert not [n for n in os.listdir(str(tmp_path / 'r')) if n.endswith('.tmp')]


def test_fleet_json_streamed_is_the_same_document(tmp_path):
    doc = fleet()
    assert json.loads(''.join(R.fleet_json_chunks(doc))) == json.loads(R.to_json(doc))
    empty = R.fleet_document([], 'x')
    assert json.loads(''.join(R.fleet_json_chunks(empty))) == json.loads(R.to_json(empty))
    assert R.render_html(doc) == ''.join(R.render_html_chunks(doc))


def test_bad_input_fleet_every_host_reported(tmp_path):
    """Duplicated names, a huge result, malformed and non-dict results: every host is in every file."""
    from benchmarks.fleetgen import fleet_results
    inputs = list(fleet_results(30, bad=True))
    entries = action.host_entries(inputs, D.merge_thresholds())
    doc = R.fleet_document(entries, '2026-12-01T10:00:00Z')
    action.write_reports(doc, str(tmp_path), action.FORMATS)
    fleet_doc = json.loads((tmp_path / 'fleet.json').read_text())
    assert len(fleet_doc['hosts']) == len(inputs)
    html = (tmp_path / 'fleet.html').read_text()
    for host, _results in inputs:
        assert R.svgchart.esc(host.lower()) in html
    by_host = {e['host']: e for e in fleet_doc['hosts']}
    assert by_host['not-a-dict']['status'] == 'failed'
    assert len(html) < 2 * 1024 * 1024  # the 1 MB result is not copied into the page


def test_compiled_templates_are_kept_in_a_private_cache_only(tmp_path, monkeypatch):
    """fleet.html's templates compiled once and kept (usercache), rendering the same page; a
    cache directory others can write to is never used."""
    doc = fleet()
    plain = R.render_html(doc)
    cache = tmp_path / 'cache'
    for _ in range(2):      # compiled and kept, then loaded from the cache by a fresh environment
        monkeypatch.setattr(R, '_TEMPLATES', {})
        R.html_template(cache_dir=str(cache))
        assert R.render_html(doc) == plain
        assert os.stat(str(cache)).st_mode & 0o777 == 0o700
        assert len([n for n in os.listdir(str(cache)) if n.startswith('report-jinja-')]) == 2
    shared = tmp_path / 'shared'
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(R, '_TEMPLATES', {})
    R.html_template(cache_dir=str(shared))
    assert R.render_html(doc) == plain
    assert os.listdir(str(shared)) == []


def test_run_stats_as_set_stats_sets_them(tmp_path):
    """The report task's custom stats: auditgap_report always, remediate_findings (every finding of
    the fleet.json just written, with its host) only when asked for and written."""
    doc = fleet()
    out = str(tmp_path / 'r')
    action.write_reports(doc, out, ['json'])
    result = {'report_dir': out, 'summary': doc['summary'], 'summary_lines': R.summary_lines(doc)}
    stats = action.run_stats(result, out, ['json'], findings=False)
    assert stats['per_host'] is False and stats['aggregate'] is False
    assert stats['data'] == {'auditgap_report': result}
    findings = action.run_stats(result, out, ['json'], findings=True)['data']['remediate_findings']
    every = [(h['host'], f['id']) for h in doc['hosts'] for f in h['findings']]
    assert [(f['host'], f['id']) for f in findings] == every and every
    assert 'remediate_findings' not in action.run_stats(result, out, ['md'], findings=True)['data']
