"""Fixes sized from measurement (module_utils/sizing.py): the arithmetic at its boundaries."""
from ansible_collections.auditgap.fleet.plugins.filter import findings
from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as F
from ansible_collections.auditgap.fleet.plugins.module_utils import sizing as S


def test_cpu_limit_is_cpu_per_record_times_peak_rate_times_headroom():
    # 0.004 cores for 40 records/s = 0.0001 s/record; peak 3000 records/s x 2 = 0.6 cores
    out = S.cpu_limit(0.004, 40.0, 3000.0, 2.0, 0.004, fallback=0.5)
    assert out['measured'] and out['value'] == 0.6
    assert out['inputs']['cpu_seconds_per_record'] == 0.0001
    assert out['formula'] == ('0.0001 CPU s/record (0.004 cores / 40 records/s) x 3000 records/s peak x 2 headroom'
                              ' = 0.6 -> 0.6 cores')


def test_cpu_limit_rounds_up_to_a_hundredth_of_a_core():
    assert S.cpu_limit(0.001, 100.0, 1001.0, 1.0, 0.001, 0.5)['value'] == 0.02    # 0.01001 -> 0.02
    assert S.cpu_limit(0.01, 100.0, 1000.0, 1.0, 0.01, 0.5)['value'] == 0.1       # exactly 0.1 stays
    assert S.round_up(0.10000000001) == 0.1 and S.round_up(0.1001) == 0.11
    assert S.round_up(0.1001, 0.05) == 0.15


def test_cpu_limit_falls_back_when_unmeasured_or_capped_by_the_throttle():
    for used, rate, peak in ((None, 40.0, 100.0), (0.004, 0, 100.0), (0.004, 40.0, None)):
        out = S.cpu_limit(used, rate, peak, 2.0, 0.01, fallback=0.5)
        assert (out['value'], out['measured']) == (0.5, False) and 'fallback 0.5 cores' in out['formula']
    # at or below the current limit: the throttle capped the rate seen
    out = S.cpu_limit(0.01, 100.0, 100.0, 1.0, 0.01, fallback=0.5)
    assert (out['value'], out['measured']) == (0.5, False) and 'not above the current limit 0.01' in out['formula']
    assert S.cpu_limit(0.01, 100.0, 1e12, 2.0, 0.01, 0.5)['value'] == 1024.0      # within what agent_cpu takes


def test_peak_record_rate_takes_the_stamps_peak_or_what_was_offered():
    assert S.peak_record_rate(None) is None and S.peak_record_rate({}) is None
    assert S.peak_record_rate({'peak_records_per_s': 900, 'records_per_s': 500}) == 900
    # the average plus what the backlog grew by and what was lost, when that is higher
    assert S.peak_record_rate({'peak_records_per_s': 900, 'records_per_s': 500}, 300, 200) == 1000
    assert S.peak_record_rate({'records_per_s': 500}, None, -100) == 500       # a draining backlog adds nothing


def test_backlog_limit_holds_the_burst_over_the_worst_drain_gap():
    out = S.backlog_limit(3000, 240, 2.0, 64, fallback=8192)
    assert (out['value'], out['measured']) == (6000, True)
    assert out['formula'] == '3000 records made within the worst drain gap of 240 ms x 2 headroom = 6000 -> 6000'
    held = S.backlog_limit(100, 50, 2.0, 8192, fallback=8192)
    assert held['value'] == 8192 and held['formula'].endswith('(the current limit already holds it)')
    assert S.backlog_limit(None, None, 2.0, 64, 8192)['value'] == 8192
    assert S.backlog_limit(2, 10, 1.5, None, 8192)['value'] == 3
    assert S.backlog_limit(10 ** 9, 10, 2.0, 64, 8192)['value'] == 1048576


def throttled_facts(records_per_s=40.0, peak=3000.0, usage=0.004, limit=0.004):
    return {
        'audit_status': {'supported': True, 'status': {'enabled': 1, 'pid': 900, 'backlog_limit': 64, 'lost': 5,
                                                       'backlog': 64},
                         'rules': [], 'consumer': {'pid': 900, 'comm': 'auditd'},
                         'sample': {'seconds': 3.0, 'backlog_peak': 65, 'backlog_peak_ratio': 1.0, 'lost_delta': 3,
                                    'lost_per_s': 1.0,
                                    'timeline': [{'t_s': 0, 'backlog': 64}, {'t_s': 3.0, 'backlog': 64}],
                                    'record_rates': {'seconds': 3.0, 'records_per_s': records_per_s,
                                                     'peak_records_per_s': peak, 'burst_records': 700,
                                                     'drain_gap_max_ms': 245}}},
        'cgroup_throttle': {'supported': True, 'targets': [{
            'kind': 'audit_consumer', 'found': True, 'pids': [900], 'cgroup_path': '/lab', 'limited_by': '/lab',
            'limit_cores': limit, 'sample': {'throttled_ratio': 1.0, 'nr_periods_delta': 12,
                                             'cpu_usage_cores': usage, 'limit_cores': limit}}]}}


def test_throttled_consumer_gets_the_measured_limit_and_the_arithmetic():
    findings, chain = F.evaluate(throttled_facts(), 'h')
    throttled = [f for f in findings if f['id'] == 'audit_consumer_throttled'][0]
    sizing = throttled['evidence']['sizing']
    # 0.0001 s/record x max(3000, 40 + 0 + 1) records/s x 2 = 0.6
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 0.6 and sizing['measured']
    assert sizing['inputs']['peak_records_per_s'] == 3000.0
    assert 'limit sized: 0.0001 CPU s/record' in throttled['summary']
    assert 'agent_cpu_limit_cores=0.6' in chain


def test_throttled_consumer_without_record_rates_keeps_the_old_rule():
    facts = throttled_facts()
    del facts['audit_status']['sample']['record_rates']
    throttled = [f for f in findings.auditgap_findings(facts, 'h') if f['id'] == 'audit_consumer_throttled'][0]
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 0.5      # consumer_min_cores
    assert throttled['evidence']['sizing']['measured'] is False


def test_backlog_fix_sized_from_the_burst_when_the_consumer_is_not_the_cause():
    facts = throttled_facts()
    del facts['cgroup_throttle']
    saturated = [f for f in findings.auditgap_findings(facts, 'h') if f['id'] == 'audit_backlog_saturated'][0]
    # 700 x 2 = 1400, under the floor backlog_limit_suggested (8192)
    assert saturated['remediation'] == {'role': 'audit_backlog', 'vars': {'audit_backlog_limit': 8192}}
    assert saturated['evidence']['sizing']['inputs']['drain_gap_ms'] == 245
    assert ('backlog_limit sized: 700 records made within the worst drain gap of 245 ms x 2 headroom = 1400 -> 8192 '
            '(the floor, backlog_limit_suggested)') in saturated['summary']
    saturated = [f for f in findings.auditgap_findings(facts, 'h', {'backlog_limit_suggested': 0})
                 if f['id'] == 'audit_backlog_saturated'][0]
    assert saturated['remediation']['vars']['audit_backlog_limit'] == 1400


def test_the_cpu_floor_applies_to_the_measured_limit():
    # 0.0001 s/record x 3000 x 2 = 0.6, under a floor of 1 core (the e2e tests ask for a whole core)
    throttled = [f for f in findings.auditgap_findings(throttled_facts(), 'h', {'consumer_min_cores': 1})
                 if f['id'] == 'audit_consumer_throttled'][0]
    assert throttled['remediation']['vars']['agent_cpu_limit_cores'] == 1.0
    assert throttled['evidence']['sizing']['formula'].endswith('-> 1 cores (the floor, consumer_min_cores)')
    assert S.backlog_limit(100, 50, 2.0, 64, 8192, floor=8192)['value'] == 8192
