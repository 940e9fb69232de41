"""nfc stats without a kernel: the `counters` key, the three output forms
(Prometheus checked by prometheus_client's own parser, whatever a file
name holds), and a missing or damaged map refused cleanly. With the kernel,
on both backends: test_netns_stats."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from state_corpus import damaged

from nfc import cli, stats, stats_format, stats_origins
from nfc.backends import nft, nft_optimize
from nfc.backends.kernel import ApplyError
from nfc.errors import PolicyError
from nfc.state import State
from nfc.stats import Fill, LineCount, Stats

from helpers import input_policy, iptables_of, nft_of, ruleset_of

POLICY = """\
nfc: 1
{counters}
input:
  policy: drop
  rules:
    - accept tcp dport 22
    - drop udp dport 53 limit over 10/second per saddr
    - accept tcp dport 80 counter
"""


def test_counters_true_puts_a_counter_on_every_rule(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, POLICY.format(counters="counters: true"))
    assert all(rule.counter for chain in ruleset.chains for rule in chain.rules)
    rules = [line.strip() for line in nft_of(tmp_path, POLICY.format(counters="counters: true")).splitlines()]
    rules = [line for line in rules if "comment" in line and "meter full" not in line]
    assert len(rules) > 5 and all(" counter " in line for line in rules)


def _nine_ports(first: int) -> str:
    return "{" + ", ".join(str(first + 100 * n) for n in range(9)) + "}"  # kept as a named set at -O1


# Runs of TCP and UDP rules and ICMP rules, cut off from each other by a rule
# without a protocol; the first run is one rule short of chains by protocol.
RUNS = [
    "accept udp dport 5003",
    *[f"accept tcp dport {port}" for port in range(21, 27)],
    "drop from 10.99.0.1",
    f"accept udp dport {_nine_ports(5000)}",
    f"accept udp dport {_nine_ports(5000)}",
    f"drop udp dport {_nine_ports(6000)}",
    *[f"accept tcp dport {port}" for port in range(31, 36)],
    "drop from 10.99.0.2",
    "accept udp dport {5004, 5008}",  # short: a rule per port
    "accept icmp type echo-request",
    "accept icmpv6 type echo-request",
]


def _contents_by_line(text: str) -> dict[int, list[str]]:
    """The content of each counted rule of an nft text (the others carry no
    counts), by the policy line its comment names."""
    contents = stats_origins._rule_contents(text)
    found: dict[int, list[str]] = {}
    chain, index = None, 0
    for line in text.splitlines():
        if (start := stats_origins.CHAIN_START.match(line)) is not None:
            chain, index = start[1], 0
        elif line == "\t}":
            chain = None
        elif chain is not None and not line.startswith(("\t\ttype ", "\t\tpolicy ")):
            content, index = contents[chain][index], index + 1
            if content is not None:
                found.setdefault(int(re.findall(r' comment "[^"]*:([0-9]+)', line)[-1]), []).append(content)
    return found


def test_a_rules_content_leaves_out_what_the_optimizer_numbers(tmp_path: Path) -> None:
    """A rule inserted before renumbers the sets and chains -O1 makes and moves
    a run to chains by protocol; the content of every other rule stays, but
    for the rule whose list changed, and a list split into a rule per value
    keeps the values it keeps. A set listed as nft lists it reads the same."""
    first = 8  # the line of the first rule of input_policy
    inserted = [f"drop tcp dport {_nine_ports(7001)}"]
    changed = [rule.replace("6800}", "6900}").replace("5008}", "5008, 5012}") for rule in RUNS]
    texts = []
    for directory, rules in (("before", RUNS), ("after", inserted + changed)):
        (tmp_path / directory).mkdir()
        ruleset = ruleset_of(tmp_path / directory, input_policy(*rules, extra="counters: true"))
        texts.append(nft_optimize.generate(ruleset)[nft.RULESET])
    before, after = texts
    assert "\tchain input_udp2 {" not in before and "\tchain input_udp2 {" in after
    assert "@input_set1 counter accept" in before and "@input_set3 counter accept" in after
    was, now = _contents_by_line(before), _contents_by_line(after)
    moved = {line + 1: contents for line, contents in was.items()}
    changed_line = first + RUNS.index(f"drop udp dport {_nine_ports(6000)}") + 1
    grown_line = first + RUNS.index("accept udp dport {5004, 5008}") + 1
    assert {line for line in moved if moved[line] != now[line]} == {changed_line, grown_line}
    assert len(now[grown_line]) == 3 and now[grown_line][:2] == moved[grown_line]  # the ports it kept
    assert now[first] not in was.values()
    # as nft lists a set: its elements wrapped otherwise
    listed = re.sub(r",\n\t+", ", ", before).replace("elements = {\n\t\t\t", "elements = { ")
    assert listed != before and _contents_by_line(listed) == was


@pytest.mark.parametrize(
    ("chain", "policy_chain"),
    [
        ("input_udp", "input"),
        ("forward_tcp12", "forward"),
        ("output_icmp2", "output"),
        ("input", "input"),
        ("raw_prerouting", "raw_prerouting"),
        ("input_set1", "input_set1"),
    ],
)
def test_stats_show_a_run_moved_to_a_chain_of_its_own_in_the_policys_chain(
    chain: str, policy_chain: str
) -> None:
    assert stats_origins.policy_chain(chain) == policy_chain


def test_counters_false_or_absent_changes_nothing(tmp_path: Path) -> None:
    plain = nft_of(tmp_path, POLICY.format(counters=""))
    assert nft_of(tmp_path, POLICY.format(counters="counters: false")) == plain
    assert plain.count(" counter ") == 1
    # iptables counts every rule anyway: the key changes nothing there
    assert iptables_of(tmp_path, POLICY.format(counters="counters: true")) == iptables_of(
        tmp_path, POLICY.format(counters="")
    )


@pytest.mark.parametrize("value", ["1", '"true"', "[true]", "on please"])
def test_counters_is_true_or_false(tmp_path: Path, value: str) -> None:
    with pytest.raises(PolicyError) as refused:
        ruleset_of(tmp_path, POLICY.format(counters=f"counters: {value}"))
    assert refused.value.loc.line == 2 and "'counters' must be true or false" in refused.value.message


HOSTILE = 'dir "a"\\b\nc/p\u00e9.yaml'
SAMPLE = Stats(
    backend="nft",
    target="policies/web.yaml",
    since=1796075403.25,
    lines=(
        LineCount("web.yaml", 9, "input", 4, 172, None),
        LineCount("web.yaml", 10, "input", 0, 0, None),
        LineCount("web.yaml", 11, "input", None, None, None),
        LineCount("web.yaml", 12, "input", 7, 420, 7),
        LineCount(HOSTILE, 3, "raw_prerouting", 1, 60, None),
    ),
    meters=(Fill("dns_v4", "ipv4", 3, 65535), Fill("ssh", "ipv6", 1, None)),
    sets=(Fill("admins", "ipv4", 2, None),),
    conntrack_count=12,
    conntrack_max=262144,
)


def test_prometheus_output_parses_and_says_what_json_says() -> None:
    families = {f.name: f for f in text_string_to_metric_families(stats_format.render(SAMPLE, "prometheus"))}
    assert families["nfc_rule_packets"].type == families["nfc_rule_bytes"].type == "counter"
    packets = {
        (s.labels["file"], s.labels["line"], s.labels["chain"]): s.value
        for s in families["nfc_rule_packets"].samples
    }
    assert packets == {
        ("web.yaml", "9", "input"): 4,
        ("web.yaml", "10", "input"): 0,
        ("web.yaml", "12", "input"): 7,
        (HOSTILE, "3", "raw_prerouting"): 1,
    }, "an uncounted line has no sample; a file name survives quoting"
    assert [(s.labels["line"], s.value) for s in families["nfc_meter_drops"].samples] == [("12", 7)]
    assert [s.value for s in families["nfc_dead_rules"].samples] == [1]
    assert {s.labels["meter"]: s.value for s in families["nfc_meter_elements"].samples} == {
        "dns_v4": 3,
        "ssh": 1,
    }
    assert {s.labels["meter"]: s.value for s in families["nfc_meter_size"].samples} == {"dns_v4": 65535}
    assert [s.value for s in families["nfc_set_elements"].samples] == [2]
    assert families["nfc_conntrack_entries"].samples[0].value == 12
    assert families["nfc_conntrack_max"].samples[0].value == 262144
    assert families["nfc_rules_loaded_timestamp_seconds"].samples[0].value == SAMPLE.since


def test_prometheus_leaves_out_what_the_kernel_does_not_say() -> None:
    bare = Stats("iptables-legacy", "build", 0.0, (), (), (), None, None)
    names = {f.name for f in text_string_to_metric_families(stats_format.render(bare, "prometheus"))}
    assert names == {"nfc_dead_rules", "nfc_rules_loaded_timestamp_seconds"}


def test_json_has_stable_keys() -> None:
    data = json.loads(stats_format.render(SAMPLE, "json"))
    assert list(data) == [
        "backend",
        "target",
        "since",
        "rules",
        "dead",
        "uncounted",
        "meters",
        "sets",
        "conntrack",
    ]
    assert data["since"] == "2026-11-30T21:50:03Z"
    assert data["rules"][0] == {
        "file": "web.yaml",
        "line": 9,
        "chain": "input",
        "packets": 4,
        "bytes": 172,
        "meter_drops": None,
    }
    assert data["dead"] == [{"file": "web.yaml", "line": 10, "chain": "input"}]
    assert data["uncounted"] == [{"file": "web.yaml", "line": 11, "chain": "input"}]
    assert data["meters"][0] == {"name": "dns_v4", "family": "ipv4", "elements": 3, "size": 65535}
    assert data["conntrack"] == {"count": 12, "max": 262144}


def test_text_is_a_table_then_the_lines_never_hit() -> None:
    text = stats_format.render(SAMPLE, "text")
    assert text.startswith("rules of policies/web.yaml (nft), in force since 2026-11-30T21:50:03Z\n\n")
    assert (
        "POLICY LINE            CHAIN           PACKETS  BYTES\n"
        "web.yaml:9             input                 4    172\n"
        "web.yaml:10            input                 0      0\n"
        "web.yaml:11            input                 -      -\n"
    ) in text
    assert "\ndir ?a??b?c/p\u00e9.yaml:3  raw_prerouting        1     60\n" in text  # no quote or line break
    assert "never hit since 2026-11-30T21:50:03Z: 1\n  web.yaml:10 (input)\n" in text
    assert "not counted (no 'counter' on their nft rules): 1\n  web.yaml:11 (input)\n" in text
    assert "  web.yaml:12 (input): 7 packets\n" in text
    assert "conntrack: 12 of 262144 entries\n" in text
    assert (
        "  dns_v4 (ipv4): 3 of 65535 entries\n  ssh (ipv6): 1 entries\nsets:\n  admins (ipv4): 2 entries\n"
        in text
    )


def nfc(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_stats_without_a_map_says_so(tmp_path: Path) -> None:
    code, out, err = nfc("stats", "--state-dir", str(tmp_path / "state"))
    assert (code, out) == (2, "")
    assert err.startswith("nfc: error: no rules of nfc's are known to be in force")
    assert not (tmp_path / "state").exists()


VALID: dict[str, Any] = {
    "backend": "nft",
    "target": "p.yaml",
    "at": 1796075403.25,
    "loaded": "ab" * 32,
    "table": "nfc",
    "table_handle": 7,
    "rules": [
        {"handle": 4, "chain": "input", "file": "p.yaml", "line": 5, "meter_drops": False, "content": None}
    ],
}


def test_a_damaged_map_is_a_clean_error_before_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_kernel(*args: object) -> None:
        raise AssertionError("a damaged map reached the kernel")

    monkeypatch.setattr(stats, "nft_table", no_kernel)
    monkeypatch.setattr(stats, "iptables_rules", no_kernel)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "origins.json"
    cases = damaged(VALID)
    assert len(cases) >= 30
    for case, content in cases:
        path.write_bytes(content)
        code, out, err = nfc("stats", "--state-dir", str(state), "--format", "prometheus")
        assert (code, out) == (2, ""), case
        assert err.startswith(f"nfc: error: damaged state file {path}: "), (case, err)


def test_a_map_that_cannot_be_made_is_a_warning_and_the_stale_one_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(table: str) -> list[dict[str, Any]]:
        raise ApplyError("cannot list table inet nfc: Operation not permitted")

    monkeypatch.setattr(stats_origins, "nft_table", refused)
    state = State(tmp_path / "state")
    said: list[str] = []
    with state.locked():
        state.write(stats_origins.origins_path(state), VALID)
        stats_origins.remember(
            state, {"backend": "nft", "table": "nfc", "listing": "x", "sysctl": {}}, "p.yaml", said.append
        )
    assert said == [
        "warning: nfc stats cannot map the rules in force to policy lines: "
        "cannot list table inet nfc: Operation not permitted"
    ]
    assert state.read(stats_origins.origins_path(state)) is None
