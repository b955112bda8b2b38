"""svgchart: pure SVG rendering, well-formed, self-contained, deterministic."""
import xml.etree.ElementTree as ET

from ansible_collections.auditgap.fleet.plugins.module_utils import svgchart

SVG = '{http://www.w3.org/2000/svg}'


def parse(svg):
    root = ET.fromstring(svg)
    assert root.tag == SVG + 'svg'
    return root


def texts(root):
    return [el.text for el in root.iter(SVG + 'text')]


def test_line_chart_well_formed_with_limit_and_markers():
    svg = svgchart.line_chart(
        [{'name': 'backlog', 'points': [(0, 0), (1, 30), (2, 64), (3, 64)]}],
        'Backlog vs limit', 'records', y_max=70,
        hlines=[{'y': 64, 'label': 'backlog_limit 64'}],
        vlines=[{'x': 1.5, 'label': 'quota 1%'}])
    root = parse(svg)
    assert 'Backlog vs limit' in texts(root)
    assert 'backlog_limit 64' in texts(root)
    assert 'quota 1%' in texts(root)
    assert 'backlog' in texts(root)
    assert len(list(root.iter(SVG + 'polyline'))) == 1
    assert 'http://' not in svg.replace('http://www.w3.org/2000/svg', '')
    assert '<script' not in svg


def test_line_chart_is_deterministic_and_escapes():
    series = {'a<b': [(0, 1), (1, 2)], 'c&d': [(0, 2), (1, None), (2, 3)]}
    one = svgchart.line_chart(series, 'x "y" <z>', 'u')
    two = svgchart.line_chart(series, 'x "y" <z>', 'u')
    assert one == two
    root = parse(one)
    assert 'a<b' in texts(root)
    assert 'x "y" <z>' in texts(root)


def test_line_chart_empty_and_flat():
    parse(svgchart.line_chart([], 'empty', 'y'))
    parse(svgchart.line_chart([{'name': 'flat', 'points': [(0, 0), (5, 0)]}], 'flat', 'y'))
    parse(svgchart.line_chart([{'name': 'one', 'points': [(3, 7)]}], 'single', 'y'))


def test_line_chart_clamps_values_above_y_max():
    svg = svgchart.line_chart([{'name': 's', 'points': [(0, 0), (1, 1000)]}], 't', 'y', height=200, y_max=10)
    root = parse(svg)
    pts = next(root.iter(SVG + 'polyline')).get('points').split()
    ys = [float(p.split(',')[1]) for p in pts]
    assert min(ys) >= 0


def test_bar_chart_and_thresholds():
    svg = svgchart.bar_chart([('web-01', 0.97), {'label': 'web-02', 'value': 0.1, 'color': '#000'},
                              ('db-01', None)], 'Throttled ratio', x_max=1,
                             thresholds=[{'x': 0.2, 'label': 'warn 20%'}])
    root = parse(svg)
    t = texts(root)
    assert 'web-01' in t and 'web-02' in t and 'db-01' in t
    assert '0.97' in t and '-' in t
    assert 'warn 20%' in t


def test_gauge_colors_by_ratio():
    hot = svgchart.gauge(64, 64, 'backlog peak', warn_ratio=0.8)
    cold = svgchart.gauge(3, 64, 'backlog peak', warn_ratio=0.8)
    parse(hot)
    parse(cold)
    assert '#d62728' in hot.split('<line')[0]
    assert 'backlog peak: 64 / 64' in texts(parse(hot))
    assert '#d62728' not in cold.split('<line')[0]
    parse(svgchart.gauge(None, 0, 'none'))


def test_fmt_num_and_ticks():
    assert svgchart.fmt_num(0.5) == '0.5'
    assert svgchart.fmt_num(64) == '64'
    assert svgchart.fmt_num(12828) == '12.8k'
    assert svgchart.fmt_num(None) == '-'
    ticks = svgchart.nice_ticks(0, 64)
    assert ticks[0] == 0 and ticks[-1] >= 60
    assert svgchart.nice_ticks(0, 0)
