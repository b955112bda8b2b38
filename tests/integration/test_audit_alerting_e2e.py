"""auditgap audit -> textfile -> node_exporter -> Prometheus (the project's alert rules) ->
Alertmanager -> a webhook receiver in this test, with Debian's real binaries on loopback
ports started here (no systemd), and the incident lab switched on between two audits:

1. audit on the healthy host: stored, nothing fires;
2. playbooks/lab.yml present (a real auditd throttled in a cgroup, accept4 audited);
3. audit again: the host regressed (audit_consumer_throttled new, the CPU limit that appeared
   ranked first as the probable cause), exit 4; the alert AuditgapRegression reaches the
   webhook naming the host and the finding;
4. playbooks/remediate.yml applies the fix from that audit's fleet.json;
5. audit again: the finding is resolved, and Alertmanager sends the resolved notification.
The lab is removed at the end (the audit settings and rules as before).
"""
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.integration.test_remediate_e2e import BIN, LAB_RATE_PER_S, ROOT, audit_state, playbook

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

BINARIES = ('prometheus', 'prometheus-node-exporter', 'prometheus-alertmanager')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Webhook:
    """Alertmanager's webhook receiver: keeps every notification posted to it."""

    def __init__(self):
        self.notifications = []
        received = self.notifications

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's name
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d/' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, status, alertname):
        return [a for n in self.notifications for a in n.get('alerts', [])
                if a.get('status') == status and a['labels'].get('alertname') == alertname]

    def wait(self, status, alertname, match, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [a for a in self.alerts(status, alertname) if match(a['labels'])]
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError('no %s %s notification in %ds; got: %s' % (status, alertname, timeout, self.notifications))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture
def monitoring(tmp_path):
    """node_exporter (textfile collector only), Alertmanager -> webhook, Prometheus with the rules."""
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip('not installed: %s (make test installs them)' % ', '.join(missing))
    textdir = tmp_path / 'textfile'
    textdir.mkdir()
    webhook = Webhook()
    ports = {name: free_port() for name in ('node', 'am', 'prom')}
    (tmp_path / 'am.yml').write_text(json.dumps({
        'route': {'receiver': 'test', 'group_by': ['alertname', 'host', 'id'], 'group_wait': '1s',
                  'group_interval': '1s', 'repeat_interval': '1h'},
        'receivers': [{'name': 'test', 'webhook_configs': [{'url': webhook.url, 'send_resolved': True}]}]}))
    (tmp_path / 'prometheus.yml').write_text(json.dumps({
        'global': {'scrape_interval': '1s', 'evaluation_interval': '1s'},
        'rule_files': [os.path.join(ROOT, 'prometheus', 'auditgap-alerts.yml')],
        'alerting': {'alertmanagers': [{'static_configs': [{'targets': ['127.0.0.1:%d' % ports['am']]}]}]},
        'scrape_configs': [{'job_name': 'node', 'static_configs': [{'targets': ['127.0.0.1:%d' % ports['node']]}]}]}))
    logs = {}
    procs = []
    commands = [
        ('node', ['prometheus-node-exporter', '--web.listen-address=127.0.0.1:%d' % ports['node'],
                  '--collector.disable-defaults', '--collector.textfile',
                  '--collector.textfile.directory=%s' % textdir]),
        ('am', ['prometheus-alertmanager', '--config.file=%s' % (tmp_path / 'am.yml'),
                '--storage.path=%s' % (tmp_path / 'am-data'), '--web.listen-address=127.0.0.1:%d' % ports['am'],
                '--cluster.listen-address=']),
        ('prom', ['prometheus', '--config.file=%s' % (tmp_path / 'prometheus.yml'),
                  '--storage.tsdb.path=%s' % (tmp_path / 'prom-data'), '--web.listen-address=127.0.0.1:%d' % ports['prom']]),
    ]
    try:
        for name, cmd in commands:
            logs[name] = open(tmp_path / ('%s.log' % name), 'w')
            procs.append(subprocess.Popen(cmd, stdout=logs[name], stderr=subprocess.STDOUT))
        wait_http('http://127.0.0.1:%d/metrics' % ports['node'])
        wait_http('http://127.0.0.1:%d/-/ready' % ports['am'])
        wait_http('http://127.0.0.1:%d/-/ready' % ports['prom'])
        yield {'textdir': textdir, 'webhook': webhook, 'ports': ports, 'logs': tmp_path}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for handle in logs.values():
            handle.close()
        webhook.close()


def audit(tmp_path, textdir):
    cmd = [os.path.join(BIN, 'auditgap'), 'audit', '--report-root', str(tmp_path / 'reports'),
           '--prom-dir', str(textdir), '--sample-seconds', '3', '--trace', 'never',
           # a whole core for the consumer, as in test_remediate_e2e (2 shared cores)
           '-e', 'diagnose_consumer_min_cores=1',
           # the lab's accept4 rule is loaded live (no rules.d file to narrow) and stays at
           # LAB_RATE_PER_S after the fix: this test is about the throttle's alert, not that rule
           '-e', 'diagnose_hot_syscall_per_s=%d' % (LAB_RATE_PER_S * 10)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    latest = tmp_path / 'reports' / 'latest'
    doc = None
    if (latest / 'fleet.json').is_file():
        with open(latest / 'fleet.json') as handle:
            doc = json.load(handle)
    return proc, doc


def prom_query(port, expr):
    url = 'http://127.0.0.1:%d/api/v1/query?query=%s' % (port, urllib.request.quote(expr))
    return json.loads(wait_http(url))['data']['result']


def test_audit_alert_fires_through_prometheus_and_resolves(tmp_path, monitoring):
    textdir, webhook, ports = monitoring['textdir'], monitoring['webhook'], monitoring['ports']
    before = audit_state()
    first, doc = audit(tmp_path, textdir)
    assert first.returncode in (0, 1), first.stdout + first.stderr
    local = {h['host']: h for h in doc['since_last_run']['hosts']}['localhost']
    assert local['state'] == 'ok' and local['first_run']
    deadline = time.time() + 30
    while not prom_query(ports['prom'], 'auditgap_scan_coverage_ratio'):
        assert time.time() < deadline, 'Prometheus never scraped the textfile through node_exporter'
        time.sleep(0.5)
    rc, out = playbook('lab.yml', '-e', 'lab_state=present', '-e', 'lab_backend=cgroup',
                       '-e', 'incident_lab_rate_per_s=%d' % LAB_RATE_PER_S)
    try:
        assert rc == 0, out[-4000:]
        time.sleep(3)
        second, doc = audit(tmp_path, textdir)
        assert second.returncode == 4, second.stdout + second.stderr
        local = {h['host']: h for h in doc['since_last_run']['hosts']}['localhost']
        why = '%s\n%s' % (second.stdout, json.dumps(local, indent=1))
        assert 'localhost: REGRESSED' in second.stdout and 'probable cause 1: consumer CPU limit added' in second.stdout, why
        assert local['regressed'] and 'audit_consumer_throttled' in {f['id'] for f in local['new_findings']}
        assert local['causes'][0]['change'] == 'cpu_limit_added'
        fired = webhook.wait('firing', 'AuditgapRegression',
                             lambda labels: labels.get('host') == 'localhost' and labels.get('id') == 'audit_consumer_throttled')
        assert fired[0]['labels']['severity'] in ('warning', 'critical')
        webhook.wait('firing', 'AuditgapConsumerThrottled', lambda labels: labels.get('host') == 'localhost')
        rules_d = tmp_path / 'rules.d'
        rules_d.mkdir()
        rc, out = playbook('remediate.yml', '-e', 'auditgap_apply=true', '-e', 'remediate_sample_seconds=3',
                           '-e', 'remediate_trace=never', '-e', 'remediate_report_dir=%s' % (tmp_path / 'reports' / 'latest'),
                           '-e', 'audit_backlog_rules_file=%s' % (rules_d / 'auditgap.rules'),
                           '-e', 'audit_rules_dir=%s' % rules_d)
        assert rc == 0, out[-4000:]
        time.sleep(3)
        third, doc = audit(tmp_path, textdir)
        assert third.returncode in (0, 1), third.stdout + third.stderr
        local = {h['host']: h for h in doc['since_last_run']['hosts']}['localhost']
        assert not local['regressed'] and 'audit_consumer_throttled' in {f['id'] for f in local['resolved_findings']}
        webhook.wait('resolved', 'AuditgapRegression',
                     lambda labels: labels.get('host') == 'localhost' and labels.get('id') == 'audit_consumer_throttled')
        text = (textdir / 'auditgap.prom').read_text()
        assert 'auditgap_finding_resolved{host="localhost",id="audit_consumer_throttled"} 1' in text
        assert 'auditgap_runs_total{outcome="regressions"} 1' in text
    finally:
        rc, out = playbook('lab.yml', '-e', 'lab_state=absent', '-e', 'lab_backend=cgroup')
    assert rc == 0, out[-4000:]
    assert audit_state() == before
