#!/usr/bin/env python3
"""Synthetic fleet results for the report step (issue 17 item 4).

``fleet_results(n)`` yields ``(host, results)`` pairs shaped like what
diagnose.yml leaves in hostvars (``{'gather': <diagnose_gather result>,
'ftrace_sample': <ftrace_sample result>}``): the registered results that
``module_utils/diagnosis.host_entry`` reads. The hosts are built from
the finding fixtures of tests/fixtures/findings (the seed incident, a
throttled-only host, no audit, a healthy host, an unreachable one), varied
per host (pids, backlog numbers, sample timelines), in a fixed mix:

    0.5% critical (seed incident), 3% warning (throttled), 2% no audit,
    10% unreachable, the rest healthy

``bad=True`` adds the bad input of the issue: duplicated host names, a host
answering a huge result (1 MB of rules), a malformed result (facts of the
wrong types), a result that is not a dict at all.

    benchmarks/fleetgen.py --hosts 10000 --out results.jsonl   (one JSON line per host)
"""
import argparse
import copy
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, 'tests', 'fixtures', 'findings')
MIX = (('critical', 0.005, 'seed_incident'), ('warning', 0.03, 'throttled_only'),
       ('no_audit', 0.02, 'no_audit'), ('unreachable', 0.10, None))


def _fixture(name):
    with open(os.path.join(FIX, name + '.json'), encoding='utf-8') as handle:
        return json.load(handle)


def _gather_result(facts):
    res = {'changed': False}
    for key in ('audit_status', 'cgroup_throttle'):
        if key in facts:
            res[key] = facts[key]
    return res


def _vary(facts, rnd, idx):
    facts = copy.deepcopy(facts)
    status = facts.get('audit_status') or {}
    consumer = status.get('consumer') or {}
    if consumer.get('pid'):
        consumer['pid'] = 300 + idx % 30000
    sample = status.get('sample') or {}
    limit = (status.get('status') or {}).get('backlog_limit') or 8192
    for point in sample.get('timeline') or []:
        if not sample.get('backlog_peak'):
            point['backlog'] = rnd.randrange(0, max(2, limit // 50))
    if sample.get('timeline') and not sample.get('backlog_peak'):
        peak = max(p['backlog'] for p in sample['timeline'])
        sample['backlog_peak'] = peak
        sample['backlog_peak_ratio'] = round(peak / float(limit), 4)
    return facts


def fleet_results(n, seed=17, bad=False, prefix='host'):
    """(host, results) for n hosts (plus the bad-input hosts when ``bad``)."""
    rnd = random.Random(seed)
    base = {name: _fixture(name) for name in ('seed_incident', 'throttled_only', 'no_audit', 'healthy')}
    unreachable = _fixture('unreachable_result')
    width = len(str(n))
    for idx in range(n):
        host = '%s%0*d.example.net' % (prefix, width, idx)
        draw = rnd.random()
        kind = 'healthy'
        for name, share, fixture in MIX:
            if draw < share:
                kind = fixture or name
                break
            draw -= share
        if kind == 'unreachable':
            res = dict(unreachable, msg='Failed to connect to the host via ssh: ssh: connect to host '
                       '10.%d.%d.%d port 22: Connection timed out' % (idx >> 16 & 255, idx >> 8 & 255, idx & 255))
            yield host, {'gather': res, 'ftrace_sample': {'skipped': True, 'changed': False}}
            continue
        facts = _vary(base[kind], rnd, idx)
        results = {'gather': _gather_result(facts)}
        if 'ftrace_sample' in facts:
            results['ftrace_sample'] = {'changed': False, 'ftrace_sample': facts['ftrace_sample']}
        yield host, results
    if bad:
        yield from bad_results(prefix)


def bad_results(prefix='host'):
    """Hosts whose results are bad input (the report must still list each of them)."""
    healthy = _fixture('healthy')
    first = '%s0.example.net' % prefix
    yield first, {'gather': _gather_result(healthy)}              # a duplicated name
    huge = copy.deepcopy(healthy)
    rule = huge['audit_status']['rules'][0]
    huge['audit_status']['rules'] = [dict(rule, key='k%d' % i, text=rule['text'] + ' ' + 'x' * 200)
                                     for i in range(4000)]
    yield 'huge-result', {'gather': _gather_result(huge)}
    yield 'malformed-result', {'gather': {'changed': False, 'audit_status': {
        'supported': 'yes', 'status': [1, 2], 'sample': 'n/a', 'rules': {'x': 1}, 'consumer': 7},
        'cgroup_throttle': ['not', 'a', 'dict']}}
    yield 'not-a-dict', {'gather': 'Traceback (most recent call last): <garbage>'}
    yield '<script>alert(1)</script>', {'gather': _gather_result(healthy)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--hosts', type=int, default=10000)
    parser.add_argument('--bad', action='store_true', help='add the bad-input hosts')
    parser.add_argument('--out', required=True, help='JSON lines: {"host": ..., "results": {...}}')
    args = parser.parse_args()
    with open(args.out, 'w', encoding='utf-8') as out:
        for host, results in fleet_results(args.hosts, bad=args.bad):
            out.write(json.dumps({'host': host, 'results': results}) + '\n')


if __name__ == '__main__':
    main()
