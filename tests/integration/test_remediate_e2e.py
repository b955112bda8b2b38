"""diagnose -> remediate (dry run, then apply) -> accept p99 back near the unthrottled
value and the findings gone -> the stall/lab removed leaves the host as it was.

The incident comes from ``playbooks/lab.yml`` (lab_state present|absent, lab_backend
cgroup|docker; accept latency per second in /run/auditgap-lab/latency.jsonl): a real auditd,
CPU-throttled in a cgroup v1 cpu group or a Docker container, and a loopback accept loop.

The persistent files of the remediation (auditgap.rules, rules.d) go to a temp dir: the
test never writes /etc/audit.
"""
import json
import os
import subprocess
import time

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import audit

from tests.support.hoststate import host_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, '.venv', 'bin')
LAB_LATENCY = '/run/auditgap-lab/latency.jsonl'
# generous: 2 shared cores; the stalled p99 is ~200 ms, the unthrottled ~1 ms
AFTER_P99_MAX_MS = 50.0

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


LAB_RATE_PER_S = 300
# The lab's consumer gets its 1 ms quota once per 500 ms here, not per 250 ms (the lab's
# default): at 250 ms an auditd that costs ~13 us per accept drains 300 accepts/s in some
# seconds and not in others, so the stalled p99 read anything from 26 to 250 ms; at 500 ms
# it falls behind in every second (p99 ~470 ms, measured), and "the fix brought p99 at
# least 3x below the stall" compares with a stall that is always there.
LAB_PERIOD_US = 500000


def playbook(name, *extra, timeout=300):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    cmd = [os.path.join(BIN, 'ansible-playbook'), os.path.join(ROOT, 'playbooks', name)] + list(extra)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def audit_state():
    status = audit.parse_status(
        subprocess.run(['auditctl', '-s'], capture_output=True, text=True, check=True).stdout)
    rules = subprocess.run(['auditctl', '-l'], capture_output=True, text=True, check=True).stdout
    keep = ('enabled', 'backlog_limit', 'backlog_wait_time', 'rate_limit', 'failure')
    return {k: status.get(k) for k in keep}, rules


def p99_of(records, since, until=None):
    chosen = sorted((r['p99_ms'], r['count']) for r in records
                    if r.get('count') and r['t'] >= since and (until is None or r['t'] <= until))
    total = sum(c for _v, c in chosen)
    seen = 0
    for value, count in chosen:
        seen += count
        if seen >= total * 0.99:
            return value
    return None


def lab_records():
    with open(LAB_LATENCY) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def diagnose_and_remediate(tmp_path):
    """Run the whole flow; returns (fleet doc, dry-run output, remediation doc, t_diagnosed,
    t_applied): the lab is stalled until t_diagnosed at least, fixed from t_applied."""
    report_dir = tmp_path / 'report'
    rules_d = tmp_path / 'rules.d'
    rules_d.mkdir(exist_ok=True)
    rc, out = playbook('diagnose.yml', '-e', 'report_dir=%s' % report_dir,
                       '-e', 'diagnose_audit_sample_seconds=3', '-e', 'diagnose_cgroup_sample_seconds=3',
                       '-e', 'diagnose_trace=never',
                       # a whole core for the consumer: on this shared 2-core machine the default
                       # 0.5 keeps up with the lab's flat-out workload only most of the time
                       '-e', 'diagnose_consumer_min_cores=1')
    assert rc == 0, out[-4000:]
    t_diagnosed = time.time()
    with open(report_dir / 'fleet.json') as handle:
        fleet = json.load(handle)
    persist = ['-e', 'remediate_report_dir=%s' % report_dir,
               '-e', 'audit_backlog_rules_file=%s' % (rules_d / 'auditgap.rules'),
               '-e', 'audit_rules_dir=%s' % rules_d]
    # dry run: check + diff, nothing changes
    state_before_dry = audit_state()
    rc, dry = playbook('remediate.yml', *persist)
    assert rc == 0, dry[-4000:]
    assert 'Dry run' in dry
    assert audit_state() == state_before_dry
    assert not (rules_d / 'auditgap.rules').exists()
    assert not (report_dir / 'remediation.json').exists()
    # apply, re-sample, report
    rc, applied = playbook('remediate.yml', '-e', 'auditgap_apply=true', '-e', 'remediate_sample_seconds=3',
                           '-e', 'remediate_trace=never', *persist)
    t_applied = time.time()
    assert rc == 0, applied[-4000:]
    with open(report_dir / 'remediation.json') as handle:
        remediation = json.load(handle)
    assert (report_dir / 'remediation.md').is_file()
    return fleet, dry, remediation, t_diagnosed, t_applied


def check_remediation(fleet, remediation):
    local = next(h for h in fleet['hosts'] if h['host'] == 'localhost')
    before_ids = {f['id'] for f in local['findings']}
    assert 'audit_consumer_throttled' in before_ids, sorted(before_ids)
    rec = next(h for h in remediation['hosts'] if h['host'] == 'localhost')
    assert remediation['mode'] == 'applied'
    roles = {r['role']: r for r in rec['remediations']}
    assert 'agent_cpu' in roles and roles['agent_cpu']['changed'] and not roles['agent_cpu']['failed']
    cpu = roles['agent_cpu']['result']
    assert cpu['after']['limit_cores'] > cpu['before']['limit_cores']
    status = {f['id']: f['status'] for f in rec['findings']}
    for fid in ('audit_consumer_throttled', 'audit_backlog_saturated'):
        if fid in before_ids:
            assert status[fid] == 'fixed', rec['findings']
    assert not [f for f in rec['findings'] if f['status'] == 'new' and f['after']['severity'] == 'critical']
    return rec


def check_container_named(fleet):
    """The consumer's own container (started with a name) is named in facts, chain and fix target."""
    from ansible_collections.auditgap.fleet.plugins.module_utils import labdocker
    local = next(h for h in fleet['hosts'] if h['host'] == 'localhost')
    assert local['facts']['audit_status']['consumer']['container']['name'] == labdocker.CONTAINER
    throttled = next(f for f in local['findings'] if f['id'] == 'audit_consumer_throttled')
    assert throttled['evidence']['container']['name'] == labdocker.CONTAINER
    assert 'in container %s' % labdocker.CONTAINER in local['chain']
    assert throttled['remediation']['vars']['agent_cpu_target'] == {'container': labdocker.CONTAINER}


@pytest.mark.parametrize('backend', ['cgroup', 'docker'])
def test_lab_diagnose_remediate_absent(tmp_path, backend):
    before = audit_state()
    # A web server's request rate is finite: at 300 accepts/s a consumer given
    # its CPU back keeps up on any machine, while the throttled one cannot.
    rc, out = playbook('lab.yml', '-e', 'lab_state=present', '-e', 'lab_backend=%s' % backend,
                       '-e', 'incident_lab_rate_per_s=%d' % LAB_RATE_PER_S,
                       '-e', 'incident_lab_period_us=%d' % LAB_PERIOD_US)
    t_present = time.time()
    try:
        assert rc == 0, out[-4000:]
        time.sleep(4)
        fleet, _dry, remediation, t_diagnosed, t_applied = diagnose_and_remediate(tmp_path)
        # the stall the diagnose saw: every second from the lab's first full one to the diagnose's end
        stalled_p99 = p99_of(lab_records(), since=t_present + 1, until=t_diagnosed)
        check_remediation(fleet, remediation)
        if backend == 'docker':
            check_container_named(fleet)
        time.sleep(4)
        after_p99 = p99_of(lab_records(), since=t_applied + 1)
        assert after_p99 is not None and after_p99 <= AFTER_P99_MAX_MS, (stalled_p99, after_p99)
        assert stalled_p99 is not None and after_p99 * 3 <= stalled_p99, (stalled_p99, after_p99)
    finally:
        rc, out = playbook('lab.yml', '-e', 'lab_state=absent', '-e', 'lab_backend=%s' % backend)
    assert rc == 0, out[-4000:]
    assert audit_state() == before


def test_check_mode_wins_over_auditgap_apply(tmp_path):
    """An AWX "Check" job with auditgap_apply set: `--check -e auditgap_apply=true` on the lab
    changes nothing on the host (audit, cgroup quotas, /etc/audit) and writes no report."""
    before = audit_state()
    rc, out = playbook('lab.yml', '-e', 'lab_state=present', '-e', 'lab_backend=cgroup',
                       '-e', 'incident_lab_rate_per_s=%d' % LAB_RATE_PER_S)
    try:
        assert rc == 0, out[-4000:]
        report_dir = tmp_path / 'report'
        rc, out = playbook('diagnose.yml', '-e', 'report_dir=%s' % report_dir,
                           '-e', 'diagnose_audit_sample_seconds=2', '-e', 'diagnose_cgroup_sample_seconds=2',
                           '-e', 'diagnose_trace=never')
        assert rc == 0, out[-4000:]
        with open(report_dir / 'fleet.json') as handle:
            fleet = json.load(handle)
        roles = {(f.get('remediation') or {}).get('role') for h in fleet['hosts'] for f in h['findings']}
        assert 'agent_cpu' in roles, roles
        state = host_state()
        # the role defaults: /etc/audit/rules.d is where audit_backlog and audit_rules would write
        rc, checked = playbook('remediate.yml', '--check', '-e', 'auditgap_apply=true',
                               '-e', 'remediate_report_dir=%s' % report_dir)
        assert rc == 0, checked[-4000:]
        assert '--check wins over auditgap_apply' in checked
        assert host_state() == state
        assert not (report_dir / 'remediation.json').exists()
    finally:
        rc, out = playbook('lab.yml', '-e', 'lab_state=absent', '-e', 'lab_backend=cgroup')
    assert rc == 0, out[-4000:]
    assert audit_state() == before
