"""HZ detection: config parsing, measurement, fallbacks (fixture roots, no root)."""
import gzip
import os

import pytest
from ansible_collections.auditgap.fleet.plugins.module_utils import kernelhz

CONFIG = 'CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_AUDIT=y\n'


def test_parse_config_hz():
    assert kernelhz.parse_config_hz(CONFIG) == 250
    assert kernelhz.parse_config_hz('CONFIG_HZ_1000=y\nCONFIG_HZ=1000\n') == 1000
    assert kernelhz.parse_config_hz('CONFIG_HZ_PERIODIC=y\n') is None
    assert kernelhz.parse_config_hz('') is None


def test_parse_jiffies():
    assert kernelhz.parse_jiffies('now at 603506399597 nsecs\n\ncpu: 0\njiffies: 4295043115\n') == 4295043115
    assert kernelhz.parse_jiffies('version 15\ntimestamp 4295043115\ncpu0 0 0\n') == 4295043115
    assert kernelhz.parse_jiffies('nothing here') is None


def test_snap_hz():
    assert kernelhz.snap_hz(249.0) == 250
    assert kernelhz.snap_hz(297) == 300
    assert kernelhz.snap_hz(1003) == 1000
    assert kernelhz.snap_hz(101) == 100
    assert kernelhz.snap_hz(175) is None
    assert kernelhz.snap_hz(0) is None


def test_jiffies_to_ms():
    assert kernelhz.jiffies_to_ms(250, 250) == 1000.0
    assert kernelhz.jiffies_to_ms(15000, 250) == 60000.0
    assert kernelhz.jiffies_to_ms(12828, 1000) == 12828.0
    assert kernelhz.jiffies_to_ms(1, 300) == 3.333
    assert kernelhz.jiffies_to_ms(None, 250) is None


def test_detect_prefers_proc_config_gz(tmp_path):
    (tmp_path / 'proc').mkdir()
    with gzip.open(str(tmp_path / 'proc' / 'config.gz'), 'wt') as handle:
        handle.write(CONFIG)
    (tmp_path / 'boot').mkdir()
    (tmp_path / 'boot' / 'config-6.1.0-test').write_text('CONFIG_HZ=1000\n')
    assert kernelhz.detect_hz(str(tmp_path), '6.1.0-test') == {'value': 250, 'source': '/proc/config.gz'}


def test_detect_boot_config(tmp_path):
    (tmp_path / 'boot').mkdir()
    (tmp_path / 'boot' / 'config-6.1.0-test').write_text('CONFIG_HZ=300\n')
    assert kernelhz.detect_hz(str(tmp_path), '6.1.0-test') == {
        'value': 300, 'source': '/boot/config-6.1.0-test'}


def test_detect_corrupt_config_gz_falls_through(tmp_path):
    (tmp_path / 'proc').mkdir()
    (tmp_path / 'proc' / 'config.gz').write_bytes(b'not gzip at all')
    (tmp_path / 'boot').mkdir()
    (tmp_path / 'boot' / 'config-r').write_text('CONFIG_HZ=100\n')
    assert kernelhz.detect_hz(str(tmp_path), 'r')['value'] == 100


def test_detect_truncated_config_gz_falls_through(tmp_path):
    (tmp_path / 'proc').mkdir()
    (tmp_path / 'proc' / 'config.gz').write_bytes(gzip.compress(CONFIG.encode() * 50)[:60])
    (tmp_path / 'boot').mkdir()
    (tmp_path / 'boot' / 'config-r').write_text('CONFIG_HZ=300\n')
    assert kernelhz.detect_hz(str(tmp_path), 'r')['value'] == 300


def test_detect_assumed_when_nothing(tmp_path):
    assert kernelhz.detect_hz(str(tmp_path), 'r') == {'value': 250, 'source': 'assumed'}


@pytest.mark.parametrize('name,before,after,expected', [
    ('timer_list', 'jiffies: 1000\n', 'jiffies: 1200\n', 1000),   # 200 jiffies in 0.2 s
    # /proc/schedstat when there is no timer_list
    ('schedstat', 'version 15\ntimestamp 5000\n', 'version 15\ntimestamp 5050\n', 250),
])
def test_measure_counts_jiffies_over_the_interval(tmp_path, name, before, after, expected):
    proc = tmp_path / 'proc'
    proc.mkdir()
    counter = proc / name
    counter.write_text(before)
    clock = iter([10.0, 10.2])

    def sleep(seconds):
        assert seconds == 0.2
        counter.write_text(after)

    assert kernelhz.measure_hz(str(tmp_path), 0.2, sleep=sleep, clock=lambda: next(clock)) == expected


def test_detect_uses_measurement(tmp_path, monkeypatch):
    monkeypatch.setattr(kernelhz, 'measure_hz', lambda root: 300)
    assert kernelhz.detect_hz(str(tmp_path), 'r') == {'value': 300, 'source': 'measured'}


def test_this_host_is_consistent():
    """On any host: a standard value and a known source."""
    found = kernelhz.detect_hz()
    assert found['source'] in ('/proc/config.gz', '/boot/config-%s' % os.uname()[2], 'measured', 'assumed')
    assert found['value'] in kernelhz.STANDARD_HZ
