"""doctor's readers on captured kernel output, odd and partial included,
and its verdicts on made-up readings."""

from __future__ import annotations

from nfc.doctor import (
    Flow,
    Readings,
    count_table_full,
    diagnose,
    parse_conntrack_stats,
    parse_flows,
    parse_proc_stats,
)
from nfc.target import Target

from conftest import ROOT

TARGET = Target(memory_bytes=8 << 30, word_bits=64)
CAPTURED = ROOT / "tests" / "data" / "doctor"  # real output, trimmed, and damaged on purpose

CONNTRACK_S = (CAPTURED / "conntrack-S.txt").read_text()
PROC_STAT = (CAPTURED / "proc-net-stat-nf_conntrack.txt").read_text()
CONNTRACK_L = (CAPTURED / "conntrack-L.txt").read_text()
PROC_TABLE = (CAPTURED / "proc-net-nf_conntrack.txt").read_text()


def test_conntrack_s_is_summed_over_cpus() -> None:
    stats = parse_conntrack_stats(CONNTRACK_S)
    assert (stats["drop"], stats["early_drop"], stats["insert_failed"], stats["search_restart"]) == (
        925,
        75,
        1,
        2,
    )


def test_proc_stat_is_hex_and_skips_entries() -> None:
    stats = parse_proc_stats(PROC_STAT)
    assert (stats["drop"], stats["early_drop"], stats["insert_failed"], stats["search_restart"]) == (
        15,
        2,
        1,
        3,
    )
    assert "entries" not in stats
    assert parse_proc_stats("") == {}
    assert parse_proc_stats("entries drop\n00000001 zz\n") == {}  # a mangled row is skipped


def test_flows_from_conntrack_and_proc() -> None:
    flows = parse_flows(CONNTRACK_L)
    assert len(flows) == 4
    assert flows[0] == Flow("udp", "10.77.1.10", "10.77.1.1", 41000, 53)  # the original direction
    proc = parse_flows(PROC_TABLE)
    assert [f.protocol for f in proc] == ["udp", "icmpv6", "udp"]  # unknown protocols and junk skipped
    assert proc[2].dport is None  # a truncated last line


def test_table_full_lines_old_and_new_kernels() -> None:
    log = (
        "[  100.000001] nf_conntrack: table full, dropping packet\n"
        "[  200.000001] nf_conntrack: nf_conntrack: table full in netns 4026532179, dropping packet\n"
        "[  300.000001] nf_conntrack: nf_conntrack: table full in netns 4026530000, dropping packet\n"
        "[  301.000000] something else\n"
    )
    assert count_table_full(log)[0] == 3
    assert count_table_full(log, netns="4026532179")[0] == 2
    assert count_table_full(log, netns="4026532179", since=150.0)[0] == 1


def readings(**values: object) -> Readings:
    base = Readings(count=10, max=1000, buckets=1024, udp_timeout=30, udp_stream_timeout=120)
    for key, value in values.items():
        setattr(base, key, value)
    return base


def test_verdicts() -> None:
    assert diagnose(readings(), TARGET).verdict == "OK"
    assert diagnose(readings(count=800), TARGET).verdict == "WARNING"
    assert diagnose(readings(count=950), TARGET).verdict == "CRITICAL"
    assert diagnose(readings(stats={"drop": 1}), TARGET).verdict == "CRITICAL"
    assert diagnose(readings(table_full=2), TARGET).verdict == "CRITICAL"
    assert diagnose(readings(count=None, max=None), TARGET).verdict == "OK"  # nothing readable


def test_suggestions_for_served_and_queried_traffic() -> None:
    flows = parse_flows(CONNTRACK_L) + parse_flows(CONNTRACK_L)[:2] * 5
    result = diagnose(readings(count=990, flows=flows, local_addresses={"10.77.1.1", "10.77.2.1"}), TARGET)
    entries = [s.entry for s in result.suggestions]
    assert entries[0] == "udp dport 53"
    assert "udp sport 53 dport 1024-65535" in entries  # this host queried 192.0.2.53
    assert "    - udp dport 53\n" in result.yaml()
    assert f"max: {TARGET.conntrack_max()}" in result.yaml()


def test_full_form_ipv6_and_fixed_client_ports() -> None:
    proc = "ipv6     10 udp      17 29 src=fd00:0000:0000:0000:0000:0000:0000:0002 dst=2001:0db8:0000:0000:0000:0000:0000:0001 sport=123 dport=123 mark=0 use=1"  # noqa: E501
    (flow,) = parse_flows(proc)
    assert (flow.src, flow.dst) == ("fd00::2", "2001:db8::1")
    result = diagnose(readings(count=990, flows=[flow] * 3, local_addresses={"fd00::2"}), TARGET)
    assert [s.entry for s in result.suggestions] == ["udp sport 123 dport 123"]  # answers come to 123


def test_unreadable_table_says_so_and_max_is_never_lowered() -> None:
    result = diagnose(readings(count=None, max=None, udp_timeout=None), TARGET)
    assert "could not be read" in result.reasons[0]
    assert "udp timeouts: ?" in result.text()
    small = Target(memory_bytes=1 << 30, word_bits=64)
    assert diagnose(readings(max=262144, count=262144), small).suggested_max == 262144


def test_log_lines_of_a_reused_namespace_number_are_not_this_namespace_s() -> None:
    """The kernel reuses namespace numbers: with its own drop counters at
    zero, a namespace is not blamed for 'table full' lines that name it."""
    quiet = diagnose(readings(table_full=3, stats={"drop": 0, "early_drop": 0, "insert_failed": 0}), TARGET)
    assert quiet.verdict == "OK"
    assert "another (earlier) namespace's" in quiet.reasons[0]
    assert diagnose(readings(table_full=3, stats={"drop": 4}), TARGET).verdict == "CRITICAL"
    assert diagnose(readings(table_full=3), TARGET).verdict == "CRITICAL"  # no counters: the log decides


def test_a_reply_that_recreated_an_evicted_entry_counts_as_its_service() -> None:
    answers = [Flow("udp", "192.0.2.53", "10.77.1.1", 53, port) for port in range(45001, 45011)]
    queries = [Flow("udp", "10.77.1.1", "192.0.2.53", port, 53) for port in range(46001, 46011)]
    result = diagnose(readings(count=990, flows=answers + queries, local_addresses={"10.77.1.1"}), TARGET)
    assert [s.entry for s in result.suggestions] == ["udp sport 53 dport 1024-65535"]
    assert result.by_service == [("udp/53 (queried)", 20)]
    served = [Flow("udp", "10.77.1.1", "10.77.1.9", 53, port) for port in range(50000, 50004)]
    result = diagnose(readings(count=990, flows=served, local_addresses={"10.77.1.1"}), TARGET)
    assert [s.entry for s in result.suggestions] == ["udp dport 53"]  # our answers, recreated


def test_a_healthy_table_gets_no_suggestion_for_a_handful_of_entries() -> None:
    ssh = [Flow("tcp", "192.0.2.10", "10.77.1.1", 50000 + i, 22) for i in range(2)]
    result = diagnose(readings(count=3, max=262144, flows=ssh, local_addresses={"10.77.1.1"}), TARGET)
    assert result.verdict == "OK" and result.suggestions == []
    busy = [Flow("udp", f"10.77.1.{i % 200}", "10.77.1.1", 40000 + i, 53) for i in range(200)]
    result = diagnose(readings(count=200, max=1000, flows=busy, local_addresses={"10.77.1.1"}), TARGET)
    assert [s.entry for s in result.suggestions] == ["udp dport 53"]  # a fifth of the room: worth it
