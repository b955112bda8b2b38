"""The audit consumer's own container is named (Docker name, Kubernetes CRI labels) in its
facts, the chain and the fix's target. The Docker and CRI answers are fakes here (the
real Docker path runs in tests/integration/test_remediate_e2e.py's docker backend)."""
import json
import os
import stat

from ansible_collections.auditgap.fleet.plugins.module_utils import diagnosis as D
from ansible_collections.auditgap.fleet.plugins.module_utils import auditfacts, dockerctl

from tests.unit.test_cgroups import D2, K2, V2, _collect

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'findings')
KUBE = {'io.kubernetes.pod.namespace': 'security', 'io.kubernetes.pod.name': 'ids-agent-x7k2p',
        'io.kubernetes.container.name': 'ids'}


def lookup(table):
    def find(ref):
        info = table.get(ref)
        if info is None:
            return None, 'no such container'
        return dict(info, kubernetes=dockerctl.kubernetes_from_labels(info.get('labels'))), None
    return find


def test_cgroup_target_of_the_consumer_names_its_container():
    names = lookup({D2: {'id': D2, 'name': 'ids-agent', 'labels': {}, 'source': 'socket'},
                    K2: {'id': K2, 'name': 'ids', 'labels': KUBE, 'source': 'crictl'}})
    docker, = _collect(V2, audit_consumer=True, audit=lambda: (800, None), lookup=names)['targets']
    assert docker['container'] == {'runtime': 'docker', 'id': D2, 'name': 'ids-agent'}
    kube, = _collect(V2, audit_consumer=True, audit=lambda: (900, None), lookup=names)['targets']
    assert kube['container']['kubernetes'] == {'namespace': 'security', 'pod': 'ids-agent-x7k2p', 'container': 'ids'}
    assert kube['container']['runtime'] == 'containerd'
    unnamed, = _collect(V2, audit_consumer=True, audit=lambda: (800, None), lookup=lookup({}))['targets']
    assert unnamed['container']['name'] is None


def test_read_consumer_names_its_container():
    proc = V2 + '/proc'
    consumer = auditfacts.read_consumer(800, proc, lookup({D2: {'id': D2, 'name': 'ids-agent', 'labels': {}}}))
    assert consumer['container']['name'] == 'ids-agent'
    assert auditfacts.read_consumer(800, proc)['container']['name'] is None


def test_kubernetes_labels_and_crictl(tmp_path, monkeypatch):
    assert dockerctl.kubernetes_from_labels({'a': 'b'}) is None
    assert dockerctl.kubernetes_from_labels(KUBE)['pod'] == 'ids-agent-x7k2p'
    crictl = tmp_path / 'crictl'
    answer = {'status': {'id': K2, 'metadata': {'name': 'ids'}, 'labels': KUBE}}
    crictl.write_text('#!/bin/sh\n[ "$1 $2 $3 $4" = "inspect --output json %s" ] || exit 1\ncat <<"E"\n%s\nE\n'
                      % (K2, json.dumps(answer)))
    crictl.chmod(crictl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('PATH', str(tmp_path) + ':/usr/bin:/bin')   # a fake crictl first (no CRI runtime here)
    monkeypatch.setattr(dockerctl, 'DOCKER_SOCK', str(tmp_path / 'no.sock'))
    monkeypatch.setattr(dockerctl, 'container_by_name_or_id',
                        lambda ref: (_ for _ in ()).throw(dockerctl.DockerUnavailable('no daemon')))
    info, reason = dockerctl.lookup_container(K2)
    assert reason is None and info['name'] == 'ids' and info['source'] == 'crictl'
    assert info['kubernetes'] == {'namespace': 'security', 'pod': 'ids-agent-x7k2p', 'container': 'ids'}
    info, reason = dockerctl.lookup_container('ids-agent')   # a name: Docker only
    assert info is None and 'no daemon' in reason


def facts_in_container(container):
    with open(os.path.join(FIX, 'seed_incident.json')) as handle:
        data = json.load(handle)
    data['audit_status']['consumer']['container'] = dict(container)
    for target in data['cgroup_throttle']['targets']:
        target['container'] = dict(container)
    return data


def test_chain_evidence_and_target_use_the_name():
    data = facts_in_container({'runtime': 'docker', 'id': 'abc123' + '0' * 58, 'name': 'ids-agent'})
    findings, chain = D.evaluate(data, 'h')
    throttled = next(f for f in findings if f['id'] == 'audit_consumer_throttled')
    assert 'in container ids-agent' in chain and 'abc1230000' not in chain.split('in cgroup')[0]
    assert throttled['evidence']['container']['name'] == 'ids-agent'
    assert throttled['remediation']['vars']['agent_cpu_target'] == {'container': 'ids-agent'}


def test_pod_is_named_namespace_pod_container():
    kube = {'namespace': 'security', 'pod': 'ids-agent-x7k2p', 'container': 'ids'}
    data = facts_in_container({'runtime': 'containerd', 'id': K2, 'name': 'ids', 'kubernetes': kube})
    _findings, chain = D.evaluate(data, 'h')
    assert 'in container security/ids-agent-x7k2p/ids' in chain
    assert D.container_display({'id': K2}) == K2[:12]
