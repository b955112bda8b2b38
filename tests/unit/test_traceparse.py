"""traceparse on the real captures in tests/fixtures/ftrace/ and on format variants."""
import os
import random

from ansible_collections.auditgap.fleet.plugins.module_utils import tracefs, traceparse

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'ftrace')
AUDIT_STACK = ['schedule_timeout', 'audit_log_start', 'audit_log_exit', '__audit_syscall_exit',
               'syscall_exit_work', 'do_syscall_64']


def _open(name):
    return open(os.path.join(FIX, name))


def test_seed_slow_calls_chain():
    with _open('seed-function-graph.slow-calls.trace') as handle:
        res = traceparse.parse_function_graph(handle)
    assert len(res['slow_calls']) == 1
    call = res['slow_calls'][0]
    assert call['cpu'] == 2
    assert 1.9e6 < call['duration_us'] < 2.1e6
    assert call['chain'] == ['do_syscall_64', 'syscall_slow_exit_work', '__audit_syscall_exit',
                             'audit_log_exit', 'audit_log_start', 'schedule_timeout']
    assert call['chain'][-1] == 'schedule_timeout'
    assert traceparse.audit_wait_in(slow_calls=res['slow_calls'])


def test_seed_depth2_accept4_then_slow_exit_work():
    with _open('seed-function-graph.depth2.trace') as handle:
        res = traceparse.parse_function_graph(handle)
    exits = {e['syscall']: e for e in res['syscall_exits']}
    assert set(exits) == {'accept4', 'read', 'write'}
    acc = exits['accept4']
    assert acc['syscall_function'] == 'SyS_accept4'
    assert acc['exit_work'] == 'syscall_slow_exit_work'
    assert abs(acc['exit_work_us'] - 2238253.1) < 0.01
    assert abs(acc['syscall_us'] - 8.597) < 0.001
    assert acc['cpu'] == 1
    # fast read/write
    assert exits['read']['exit_work_us'] < 10 and exits['write']['exit_work_us'] < 10
    assert exits['read']['syscall_us'] < 100 and exits['write']['syscall_us'] < 100
    assert res['syscall_exits'][0]['syscall'] == 'accept4'  # slowest first
    assert res['slow_calls'][0]['chain'] == ['do_syscall_64', 'syscall_slow_exit_work']


def test_parse_line_variants():
    p = traceparse.parse_function_graph_line
    leaf = p(' 0)   0.355 us       |    syscall_trace_enter();')
    assert leaf['kind'] == 'leaf' and leaf['function'] == 'syscall_trace_enter' and leaf['depth'] == 1
    assert p(' 1) $ 2238253.1 us   |    syscall_slow_exit_work();')['duration_us'] == 2238253.1
    for mark in '+!#*@$':
        ev = p(' 3) %s 12.5 us   |  } /* foo */' % mark)
        assert ev['kind'] == 'exit' and ev['function'] == 'foo' and ev['duration_us'] == 12.5
    entry = p(' 0)                  |  do_syscall_64() {')
    assert entry['kind'] == 'entry' and entry['function'] == 'do_syscall_64' and entry['depth'] == 0
    # funcgraph-proc
    ev = p(' 0)    node-4242    |   1.234 us    |    SyS_read();')
    assert ev['proc'] == 'node-4242' and ev['function'] == 'SyS_read' and ev['duration_us'] == 1.234
    # funcgraph-abstime + proc
    ev = p(' 1234.567890 |   1)  node-4242   | + 15.1 us   |  }')
    assert ev['ts_s'] == 1234.56789 and ev['cpu'] == 1 and ev['kind'] == 'exit' and ev['function'] is None
    # headers, cpu switch lines, context switch markers
    assert p('# tracer: function_graph') is None
    assert p(' ------------------------------------------') is None
    sw = p(' 1)   bash-1234    =>   sshd-5678  ')
    assert sw['kind'] == 'switch' and sw['next'] == 'sshd-5678'


def test_function_graph_with_proc_abstime_and_switches():
    lines = [
        '# tracer: function_graph',
        '#     TIME        CPU  TASK/PID         DURATION                  FUNCTION CALLS',
        ' 100.000001 |   0)   node-42    |               |  do_syscall_64() {',
        ' 100.000002 |   0)   node-42    |   0.300 us    |    syscall_trace_enter();',
        ' 100.000010 |   0)   node-42    |   8.000 us    |    __x64_sys_accept4();',
        ' ------------------------------------------',
        ' 0)   node-42    =>   auditd-7  ',
        ' ------------------------------------------',
        ' 100.000100 |   0)  auditd-7    |   1.000 us    |  do_syscall_64();',
        ' ------------------------------------------',
        ' 0)   auditd-7    =>   node-42  ',
        ' ------------------------------------------',
        ' 100.700000 |   0)   node-42    | # 700000.0 us |    syscall_exit_work();',
        ' 100.700001 |   0)   node-42    | # 700010.0 us |  } /* do_syscall_64 */',
    ]
    res = traceparse.parse_function_graph(lines)
    exits = res['syscall_exits']
    assert exits[0]['syscall'] == 'accept4' and exits[0]['exit_work'] == 'syscall_exit_work'
    assert exits[0]['exit_work_us'] == 700000.0
    slow = res['slow_calls'][0]
    assert slow['duration_us'] == 700010.0 and slow['chain'] == ['do_syscall_64', 'syscall_exit_work']
    assert slow['proc'] == 'node-42' and slow['ts_s'] == 100.700001


def test_events_reference_capture():
    with _open('offcpu-and-accept4-events.during-stall.trace') as handle:
        res = traceparse.parse_events(handle)
    acc = res['syscalls']['accept4']
    assert acc['count'] == 1500
    assert 600000 < acc['max_us'] < 800000       # max about 0.7 s
    assert 100000 < acc['p99_us'] < 400000        # p99 about 0.2 s
    assert acc['p50_us'] < 1000
    assert acc['slowest'][0]['duration_us'] == acc['max_us']
    assert acc['slowest'][0]['pid'] == 6404
    stacks = {g['stack_text']: g for g in res['offcpu']}
    text = ' <- '.join(AUDIT_STACK)
    assert text in stacks
    audit = stacks[text]
    assert audit['stack'] == AUDIT_STACK
    assert audit['count'] > 10 and audit['pids'] == [6404] and audit['states'] == {'D': audit['count']}
    assert 300000 < audit['max_us'] < 800000
    # the audit sleep is the biggest stacked off-CPU group
    stacked = [g for g in res['offcpu'] if g['stack']]
    assert stacked[0]['stack'] == AUDIT_STACK
    assert traceparse.audit_wait_in(offcpu=res['offcpu'])


def test_events_pid_filter_and_variants():
    lines = [
        '# tracer: nop',
        '     node-10    [001] .....   10.000000: sys_accept4(fd: 3, upeer_sockaddr: 0x1, '
        'upeer_addrlen: 0x2, flags: 0x80000)',
        '   other-11 (   11) [000] .....   10.000001: sys_accept4(fd: 3, upeer_sockaddr: 0x1)',
        '     node-10    [001] d..2.   10.000002: sched_switch: prev_comm=node prev_pid=10 prev_prio=120 '
        'prev_state=D ==> next_comm=swapper/1 next_pid=0 next_prio=120',
        '   other-11 (   11) [000] .....   10.000003: sys_accept4 -> 0x4',
        '     node-10    [001] d..2.   10.000004: <stack trace>',
        ' => trace_event_raw_event_sched_switch+0x11/0x20',
        ' => __schedule+0x1/0x2',
        ' => schedule+0x1/0x2',
        ' => schedule_timeout+0x1/0x2',
        ' => audit_log_start+0x1/0x2',
        ' => entry_SYSCALL_64_after_hwframe+0x76/0x7e',
        '  <idle>-0       [001] d..2.   10.500002: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 '
        'prev_state=R ==> next_comm=node next_pid=10 next_prio=120',
        '     node-10    [001] .....   10.500010: sys_accept4 -> 0x5',
    ]
    res = traceparse.parse_events(lines, pids=[10])
    assert res['syscalls']['accept4']['count'] == 1
    assert abs(res['syscalls']['accept4']['max_us'] - 500010) < 1
    assert res['offcpu'][0]['stack'] == ['schedule_timeout', 'audit_log_start']
    assert abs(res['offcpu'][0]['max_us'] - 500000) < 1
    res_all = traceparse.parse_events(lines)
    assert res_all['syscalls']['accept4']['count'] == 2


def test_latency_stats_percentiles_close():
    stats = traceparse.LatencyStats(top=3)
    for i in range(1, 10001):
        stats.add(float(i), i)
    assert abs(stats.percentile(0.5) - 5000) / 5000 < 0.006
    assert abs(stats.percentile(0.99) - 9900) / 9900 < 0.006
    assert stats.max == 10000 and stats.slowest() == [10000, 9999, 9998]
    assert len(stats.buckets) < 2000


def test_clean_stack():
    assert traceparse.clean_stack(['__traceiter_sched_switch', '__schedule', 'schedule', 'io_schedule',
                                   'ksys_read', 'do_syscall_64', 'entry_SYSCALL_64_after_hwframe']) == [
        'io_schedule', 'ksys_read', 'do_syscall_64']


def test_function_graph_modern_kernel_dispatcher():
    """6.9+: do_syscall_64 -> x64_sys_call -> __x64_sys_accept4, exit via syscall_exit_to_user_mode."""
    lines = [
        ' 0)               |  do_syscall_64() {',
        ' 0)               |    x64_sys_call() {',
        ' 0)   9.100 us    |      __x64_sys_accept4();',
        ' 0) + 10.200 us   |    }',
        ' 0) $ 650000.0 us |    syscall_exit_to_user_mode();',
        ' 0) $ 650011.0 us |  }',
        ' 1)               |  do_syscall_64() {',
        ' 1)   3.000 us    |    x64_sys_call();',
        ' 1)   1.000 us    |    syscall_exit_to_user_mode();',
        ' 1)   5.000 us    |  }',
    ]
    res = traceparse.parse_function_graph(lines)
    first = res['syscall_exits'][0]
    assert first['syscall'] == 'accept4' and first['syscall_function'] == '__x64_sys_accept4'
    assert first['syscall_us'] == 10.2 and first['exit_work'] == 'syscall_exit_to_user_mode'
    assert first['exit_work_us'] == 650000.0
    second = res['syscall_exits'][1]
    assert second['syscall'] is None and second['syscall_function'] == 'x64_sys_call'


def test_function_graph_root_pairs_across_cpus():
    """Kernels where do_syscall_64 is noinstr: roots __x64_sys_accept4 + syscall_exit_work, funcgraph-proc."""
    lines = [
        ' 0)   node-42    |   8.000 us    |  __x64_sys_accept4();',
        ' 0)   node-42    |               |  syscall_exit_work() {',
        ' 0)   node-42    |               |    __audit_syscall_exit() {',
        ' ------------------------------------------',
        ' 0)   node-42    =>   auditd-7  ',
        ' ------------------------------------------',
        ' 0)   auditd-7   |   2.000 us    |  __x64_sys_read();',
        ' 1)   node-42    | $ 699990.0 us |    } /* __audit_syscall_exit */',
        ' 1)   node-42    | $ 700000.0 us |  } /* syscall_exit_work */',
        ' 1)   node-42    |   3.000 us    |  __x64_sys_read();',
        ' 1)   node-42    |   0.500 us    |  syscall_exit_work();',
    ]
    res = traceparse.parse_function_graph(lines)
    pairs = res['syscall_exits']
    assert pairs[0] == {'cpu': 1, 'syscall': 'accept4', 'syscall_function': '__x64_sys_accept4',
                        'syscall_us': 8.0, 'exit_work': 'syscall_exit_work', 'exit_work_us': 700000.0}
    assert [p['syscall'] for p in pairs] == ['accept4', 'read']  # auditd's read has no exit-work root
    slow = res['slow_calls'][0]
    assert slow['chain'] == ['syscall_exit_work', '__audit_syscall_exit'] and slow['proc'] == 'node-42'


def _graph_lines():
    with _open('seed-function-graph.depth2.trace') as handle:
        depth2 = handle.readlines()
    with _open('seed-function-graph.slow-calls.trace') as handle:
        slow = handle.readlines()
    return (depth2 + slow) * 7


def test_function_graph_same_result_whatever_the_chunks():
    """feed_text on chunks cut anywhere between lines (as trace_pipe reads come) == one pass."""
    lines = _graph_lines()
    whole = traceparse.parse_function_graph(lines, top=4)
    for size in (1, 2, 5, 17, 64):
        parser = traceparse.FunctionGraphParser(top=4)
        for start in range(0, len(lines), size):
            parser.feed_text(''.join(lines[start:start + size]))
        assert parser.flush().result() == whole, size
    assert whole['calls'] == 7 * 18 and whole['lines'] == len(lines)
    assert whole['exit_work_by_syscall']['accept4']['count'] == 7


def test_function_graph_ties_keep_the_first_and_top_bounds_the_lists():
    """Equal durations: the earlier call stays in the top list (as LatencyStats' heap keeps it)."""
    lines = [' %d) $ 2000000.0 us |  } /* call_%d */' % (cpu, cpu) for cpu in range(6)]
    res = traceparse.parse_function_graph(lines, top=3)
    assert [call['chain'] for call in res['slow_calls']] == [['call_0'], ['call_1'], ['call_2']]
    assert traceparse.parse_function_graph(_graph_lines(), top=1)['syscall_exits'][0]['syscall'] == 'accept4'


def test_function_graph_pattern_works_on_every_python3_the_modules_run_on():
    """No possessive quantifiers or atomic groups: Python 3.11.2 (Debian 12, the ftrace VM's
    guest) matches them wrongly (CPython gh-106052, fixed in 3.11.5) and older Pythons reject them;
    there the pattern of 91003db matched no line of the live fixtures below (calls 0), while this
    host's 3.11.7 parsed every fixture."""
    pattern = traceparse._FG_RE.pattern
    for construct in ('*+', '++', '?+', '}+', '(?>'):
        assert construct not in pattern, construct


# What a live sample read from trace_pipe in the ftrace VM scenario (Debian 12, kernel 6.1, one
# vCPU, funcgraph-proc on, the workload's pid only), trimmed at a top-level call: the converge
# step's bounded sample (function_filter = the diagnose role's audit path and exit work) and the
# unbounded slow-calls recipe of verify. On this text a parser that passed every seed trace found
# no call at all (91003db, reverted), so each result is pinned here.
LIVE = 'live-6.1-function-graph.%s.trace'


def test_live_bounded_slow_calls_recipe():
    """tracing_thresh 2 ms: only exits, each named in a ``} /* func */`` comment, every line a call."""
    with _open(LIVE % 'slow-calls.bounded') as handle:
        res = traceparse.parse_function_graph(handle)
    assert res['calls'] == res['lines'] == 533
    assert res['slow_calls'][0] == {
        'cpu': 0, 'proc': 'python3-619', 'duration_us': 14968.62,
        'chain': ['syscall_exit_to_user_mode_prepare', '__audit_syscall_exit', 'audit_log_exit', 'audit_log_start']}
    assert all(call['duration_us'] >= 2000 for call in res['slow_calls'])
    assert traceparse.audit_wait_in(slow_calls=res['slow_calls'])
    assert res['syscall_exits'] == [] and res['exit_work_by_syscall'] == {}


def test_live_bounded_syscall_then_exit_work_recipe():
    """6.1's noinstr do_syscall_64: roots __x64_sys_accept4 and syscall_exit_to_user_mode_prepare
    (max_graph_depth 2, audit functions below them), paired per task; some exits carry a
    ``/* func */`` comment although their entry was printed."""
    with _open(LIVE % 'syscall-exits.bounded') as handle:
        res = traceparse.parse_function_graph(handle)
    assert res['lines'] == 1498 and res['calls'] == 999
    assert res['syscall_exits'][0] == {
        'cpu': 0, 'syscall': 'accept4', 'syscall_function': '__x64_sys_accept4', 'syscall_us': 146.044,
        'exit_work': 'syscall_exit_to_user_mode_prepare', 'exit_work_us': 13415.81}
    assert {pair['syscall'] for pair in res['syscall_exits']} == {'accept4'}
    assert res['exit_work_by_syscall'] == {
        'accept4': {'count': 45, 'p50_us': 7864.3, 'p99_us': 13410.1, 'max_us': 13415.8}}
    assert res['slow_calls'][0]['chain'] == ['syscall_exit_to_user_mode_prepare', '__audit_syscall_exit']
    assert res['slow_calls'][0]['proc'] == 'python3-619'


def test_live_unbounded_slow_calls_recipe():
    """Every function traced: whole chains down to the sleep, the 6.1 dispatcher x64_sys_call as a
    root paired with the exit work root after it."""
    with _open(LIVE % 'slow-calls') as handle:
        res = traceparse.parse_function_graph(handle)
    assert res['calls'] == res['lines'] == 497
    assert res['slow_calls'][0]['chain'] == [
        'syscall_exit_to_user_mode_prepare', '__audit_syscall_exit', 'audit_log_exit', 'audit_log_start',
        'kmem_cache_alloc', '__cond_resched']
    assert res['slow_calls'][0]['duration_us'] == 20261.66
    assert res['syscall_exits'][0] == {
        'cpu': 0, 'syscall': 'connect', 'syscall_function': '__x64_sys_connect', 'syscall_us': 3470.792,
        'exit_work': 'syscall_exit_to_user_mode_prepare', 'exit_work_us': 20261.66}
    assert {name: stats['count'] for name, stats in res['exit_work_by_syscall'].items()} == {
        'connect': 8, 'clock_nanosleep': 16}


def test_live_text_through_the_trace_pipe_reader(tmp_path):
    """The live text as ftrace_sample reads it (tracefs.PipeReader, lines split across reads, text
    of whole lines into feed_text) gives the same result as one pass over the file."""
    for name in ('slow-calls.bounded', 'syscall-exits.bounded', 'slow-calls'):
        with _open(LIVE % name) as handle:
            whole = traceparse.parse_function_graph(handle)
        parser = traceparse.FunctionGraphParser()
        reader = tracefs.PipeReader(os.path.join(FIX, LIVE % name), chunk=4093)
        try:
            reader.read_available(parser.feed_text)
            reader.drain(parser.feed_text)
        finally:
            reader.close()
        assert parser.flush().result() == whole, name
        assert whole['calls'] > 0


# The fast path (FunctionGraphParser.tokens: str methods over the chunk for the lines
# ``cpu) comm-pid | duration | text``) must give every token _FG_RE gives, to the letter, on
# any text: the recorded traces, odd lines between such lines, and lines broken at random.
ODD_LINES = [
    ' 0)  python3-619   |               |  syscall_exit_to_user_mode_prepare() {',
    ' ------------------------------------------',
    ' 0)  python3-619   =>  kworker-12  ',
    ' ------------------------------------------',
    ' 0)  kworker-12    |   0.500 us    |  __x64_sys_read();',
    ' 0)  kworker-12    |   ==========> |',
    ' 0)  kworker-12    |               |  smp_apic_timer_interrupt() {',
    ' 0)  kworker-12    |   2.000 us    |  }',
    ' 0)  kworker-12    |   <========== |',
    'CPU:0 [LOST 1234 EVENTS]',
    ' 0)  python3-619   |   8.278 us    |    __audit_syscall_exit();',
    ' 0)  python3-619   |               |  /* sched_switch: prev_comm=a | b */',
    ' 1)  python3-619   | + 15.289 us   |  }',
    ' 1)   0.355 us       |    syscall_trace_enter();',          # no proc
    ' 1) $ 2238253.1 us   |  } /* do_syscall_64 */',
    ' 100.700000 |   0)   node-42    | # 700000.0 us |    syscall_exit_work();',   # abstime
    ' 100.700001 |   0)   0.300 us    |    syscall_trace_enter();',
    ' 0)  python3-619   | + 25.2',                                # truncated
    ' 0)  python3-619   | + 1234567890123456 us |  }',           # 16 digits: no duration
    ' 0)  python3-619   | +25.250 us   |  }',                     # no blank after the mark
    ' 0)  python3-619   |+ 25.250 us   |  }',                     # no blank after the '|'
    ' 0)  python3-619   |   25.250 us  |     ',                   # no text
    ' 0)  python3-619   |   1.5 us\t  |  foo();',                  # a tab
    ' 00)  python3-619   | ! 136.702 us  |  auditsc_get_stamp();',  # leading zero
    ' 0)  python3-٣   |   1.0 us    |  foo();',                  # a unicode digit
    ' 0)  python3-619   |   1.0 us    |  foo();  \x0b',
    ' 0)  python3-619   |   1.0 us    |  foo(); | bar',         # a third '|'
    '| 0)  python3-619   |   1.0 us    |  foo();',
    ' 0)  python3-619   | @ 100003.1 us |  } /* schedule */',
]


def _lines(text):
    """Lines with their newline, cut at newlines only (as trace_pipe's reader and _FG_RE do)."""
    return [line + '\n' for line in text.split('\n')[:-1]] + ([text.rsplit('\n', 1)[-1]] if text[-1:] != '\n' else [])


def _fast_and_expression(text):
    parser = traceparse.FunctionGraphParser()
    fast = [token for heads, durations, columns in parser.tokens(text)
            for (cpu, proc, abstime), duration, column in zip(heads, durations, columns)
            for token in [(abstime, cpu, proc, duration, column)]]
    return fast, traceparse._FG_RE.findall('\n' + text)


def _function_graph_texts():
    texts = {}
    for name in sorted(os.listdir(FIX)):
        if 'function-graph' in name:
            with _open(name) as handle:
                texts[name] = handle.read()
    reference = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(FIX))), '..', 'shared', 'reference')
    for name in sorted(os.listdir(reference)) if os.path.isdir(reference) else ():
        if 'function-graph' in name:
            with open(os.path.join(reference, name)) as handle:
                texts['reference/' + name] = handle.read()
    live = _lines(texts[LIVE % 'syscall-exits.bounded'])
    odd = [line + '\n' for line in ODD_LINES]
    texts['odd lines'] = ''.join(live[:40] + odd + live[40:80] + odd[::-1] + live[80:120])
    texts['odd lines only'] = ''.join(odd)
    return texts


def test_function_graph_fast_path_tokens_equal_the_expression():
    for name, text in _function_graph_texts().items():
        fast, expression = _fast_and_expression(text)
        assert fast == expression, name
        assert expression or name == 'odd lines only'
        for line in text.split('\n'):  # each line alone
            fast, expression = _fast_and_expression(line + '\n')
            assert fast == expression, (name, line)
    live = _lines(_function_graph_texts()[LIVE % 'syscall-exits.bounded'])[:30]
    for odd in ODD_LINES:  # each odd line between good ones
        for position in (0, 1, 15, 29, 30):
            text = ''.join(live[:position] + [odd + '\n'] + live[position:])
            fast, expression = _fast_and_expression(text)
            assert fast == expression, (odd, position)


def test_function_graph_fast_path_tokens_equal_the_expression_on_broken_lines():
    """Lines of the live traces with characters deleted, doubled or replaced at random
    (deterministic): wherever a line stops being one the fast path takes, the tokens stay the
    expression's."""
    rnd = random.Random(15)
    texts = _function_graph_texts()
    live = _lines(texts[LIVE % 'syscall-exits.bounded'])[:60] + _lines(texts[LIVE % 'slow-calls'])[:60]
    alphabet = ' |\n)-.0123456789us+!#*@$}{;/\t٣\x0b'
    for _trace in range(300):
        lines = list(live)
        for _change in range(rnd.randint(1, 4)):
            index = rnd.randrange(len(lines))
            line = lines[index]
            at = rnd.randrange(len(line))
            how = rnd.randrange(3)
            if how == 0:
                line = line[:at] + line[at + 1:]
            elif how == 1:
                line = line[:at] + line[at] + line[at:]
            else:
                line = line[:at] + rnd.choice(alphabet) + line[at + 1:]
            lines[index] = line
        text = ''.join(lines)
        if not text.endswith('\n'):
            text += '\n'
        fast, expression = _fast_and_expression(text)
        assert fast == expression, text


def test_function_graph_fast_path_same_result_as_the_expression_whatever_the_chunks():
    """The parser's results with the fast path equal those with every line through _FG_RE, on
    every fixture and the odd lines, fed whole and in chunks cut anywhere between lines."""
    for name, text in _function_graph_texts().items():
        lines = _lines(text)
        for size in (1, 7, 64, len(lines) or 1):
            results = []
            for fast in (True, False):
                parser = traceparse.FunctionGraphParser(top=5)
                parser.fast = fast
                for start in range(0, len(lines), size):
                    parser.feed_text(''.join(lines[start:start + size]))
                results.append(parser.flush().result())
            assert results[0] == results[1], (name, size)
