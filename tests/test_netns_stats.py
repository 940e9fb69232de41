"""nfc stats against the real kernel, on both backends: after real traffic
from a client namespace, each policy line shows exactly the packets and
bytes sent to it, a line no packet matched shows 0 and is listed as never
hit, and the Prometheus form says the same to prometheus_client's parser.
A ruleset changed behind nfc's back is refused rather than misread."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nfc.backends import BACKENDS
from nfc.backends.nft import BACKEND as NFT

from lab import CLIENT_A4, SERVER_A4, SERVER_A6, Lab, wait_until

pytestmark = pytest.mark.netns

# Each rule, and what the client sends to its port: (address, payload bytes, datagrams).
POLICY = """nfc: 1
{counters}input:
  policy: accept
  state: manual
  icmp: manual
  loopback: manual
  rules:
    - accept udp dport 5000{counter}
    - drop udp dport 5001
    - accept tcp dport 7
    - drop from not {{10.99.0.0/16, 10.98.0.0/16}} udp dport 5002
    - accept udp dport 5003 log
"""
SENT = {
    5000: [(SERVER_A4, 10, 3), (SERVER_A6, 10, 1)],
    5001: [(SERVER_A4, 100, 2)],
    5002: [(SERVER_A4, 1, 2)],
    5003: [(SERVER_A4, 5, 1)],
}
HEADERS = {SERVER_A4: 20 + 8, SERVER_A6: 40 + 8}  # IP and UDP, which the counters include
DEAD_PORT = 7
SEND = """
import socket, sys
for spec in sys.argv[1:]:
    address, port, size, count = spec.split(",")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for _ in range(int(count)):
            sock.sendto(b"x" * int(size), (address, int(port)))
"""


def write_policy(tmp_path: Path, every_rule: bool = True) -> tuple[Path, dict[int, int]]:
    """The policy, and the line of each port's rule."""
    text = POLICY.format(
        counters="counters: true\n" if every_rule else "", counter="" if every_rule else " counter"
    )
    path = tmp_path / "counted.yaml"
    path.write_text(text)
    lines = {
        port: number
        for number, line in enumerate(text.splitlines(), 1)
        for port in [*SENT, DEAD_PORT]
        if f"dport {port}" in line
    }
    return path, lines


def send(lab: Lab) -> None:
    specs = [
        f"{address},{port},{size},{count}" for port, sends in SENT.items() for address, size, count in sends
    ]
    lab.client_a.run(sys.executable, "-c", SEND, *specs)


def expected(port: int) -> tuple[int, int]:
    sends = SENT.get(port, [])
    return sum(count for _, _, count in sends), sum(count * (HEADERS[a] + size) for a, size, count in sends)


def stats(lab: Lab, *args: str, check: bool = True) -> Any:
    done = lab.server.nfc("stats", "--state-dir", str(lab.state_dir), *args)
    if not check:
        return done
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "json" in args else done.stdout


def by_line(report: dict[str, Any], policy: Path) -> dict[int, dict[str, Any]]:
    rows = [row for row in report["rules"] if row["file"] == policy.name]
    assert all(row["chain"] == "input" for row in rows), rows
    return {row["line"]: row for row in rows}


def counted_all(lab: Lab, policy: Path, lines: dict[int, int], rounds: int = 1) -> dict[int, dict[str, Any]]:
    """The rows once every packet of `rounds` sends to the ports of `lines`
    has been counted (the client's last datagrams may still be on their way
    when it exits)."""
    rows: dict[int, dict[str, Any]] = {}

    def arrived() -> bool:
        rows.update(by_line(stats(lab, "--format", "json"), policy))
        ports = [port for port in SENT if port in lines]
        return all((rows[lines[port]]["packets"] or 0) >= rounds * expected(port)[0] for port in ports)

    wait_until(arrived, timeout=10)
    return rows


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_stats_shows_the_exact_counts_of_each_line_and_the_dead_one(
    lab: Lab, backend: str, tmp_path: Path
) -> None:
    policy, lines = write_policy(tmp_path)
    applied = lab.apply(policy, backend=backend)
    assert applied.returncode == 0, applied.stderr
    send(lab)
    rows = counted_all(lab, policy, lines)
    assert set(rows) == set(lines.values())
    for port, line in lines.items():
        packets, size = expected(port)
        assert (rows[line]["packets"], rows[line]["bytes"]) == (packets, size), (port, rows[line])
    report = stats(lab, "--format", "json")
    assert {(row["file"], row["line"]) for row in report["dead"]} == {(policy.name, lines[DEAD_PORT])}
    assert report["uncounted"] == []
    assert report["backend"] == backend and report["target"] == str(policy)
    assert report["conntrack"]["max"] > 0

    text = stats(lab)
    assert f"never hit since {report['since']}: 1\n  {policy.name}:{lines[DEAD_PORT]} (input)\n" in text

    metrics = {
        family.name: family for family in text_string_to_metric_families(stats(lab, "--format", "prometheus"))
    }
    assert metrics["nfc_rule_packets"].type == "counter"
    packets = {
        int(sample.labels["line"]): sample.value
        for sample in metrics["nfc_rule_packets"].samples
        if sample.labels["file"] == policy.name
    }
    assert packets == {line: rows[line]["packets"] for line in lines.values()}
    assert [sample.value for sample in metrics["nfc_dead_rules"].samples] == [1]
    assert metrics["nfc_conntrack_max"].samples[0].value == report["conntrack"]["max"]

    # The same policy is the one in force; another is not.
    assert stats(lab, str(policy), "--format", "json")["rules"] == report["rules"]
    other = tmp_path / "other.yaml"
    other.write_text(policy.read_text().replace("5001", "5009"))
    refused = stats(lab, str(other), check=False)
    assert refused.returncode == 2 and "are not those of this policy" in refused.stderr


def test_nft_shows_lines_without_a_counter_as_not_counted(lab: Lab, tmp_path: Path) -> None:
    policy, lines = write_policy(tmp_path, every_rule=False)
    applied = lab.apply(policy)
    assert applied.returncode == 0, applied.stderr
    send(lab)
    rows = counted_all(lab, policy, lines)
    assert (rows[lines[5000]]["packets"], rows[lines[5000]]["bytes"]) == expected(5000)
    uncounted = {lines[port] for port in (5001, 5002, 5003, DEAD_PORT)}
    assert {line for line, row in rows.items() if row["packets"] is None} == uncounted
    report = stats(lab, "--format", "json")
    assert report["dead"] == []  # nothing is known never to have been hit
    assert {row["line"] for row in report["uncounted"]} == uncounted


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_rules_changed_behind_nfcs_back_are_refused(lab: Lab, backend: str, tmp_path: Path) -> None:
    policy, _ = write_policy(tmp_path)
    applied = lab.apply(policy, backend=backend)
    assert applied.returncode == 0, applied.stderr
    if backend == NFT:
        listing = lab.server.nft("list", "table", "inet", "nfc")
        script = tmp_path / "again.nft"
        script.write_text(f"delete table inet nfc\n{listing}")
        lab.server.run("nft", "-f", str(script))  # the same rules, another table
    else:
        lab.server.run("iptables-legacy", "-I", "INPUT", "-s", CLIENT_A4, "-j", "ACCEPT")
    refused = stats(lab, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("nfc: error: the rules in force changed since nfc put those of")


def test_rollback_and_restore_map_what_they_put_in_force(lab: Lab, tmp_path: Path) -> None:
    policy, lines = write_policy(tmp_path)
    for _ in range(2):
        applied = lab.apply(policy)
        assert applied.returncode == 0, applied.stderr
    rolled_back = lab.server.nfc("rollback", "--state-dir", str(lab.state_dir))
    assert rolled_back.returncode == 0, rolled_back.stderr
    report = stats(lab, "--format", "json")
    assert report["target"] == "the state saved before the last apply"
    assert {row["line"] for row in report["rules"]} == set(lines.values())

    lab.server.run("nft", "delete", "table", "inet", "nfc")
    restored = lab.server.nfc("restore", "--state-dir", str(lab.state_dir))
    assert restored.returncode == 0, restored.stderr
    send(lab)
    rows = counted_all(lab, policy, lines)
    assert (rows[lines[5001]]["packets"], rows[lines[5001]]["bytes"]) == expected(5001)


def test_stats_of_a_damaged_map_is_a_clean_error(lab: Lab, tmp_path: Path) -> None:
    """A map whose positions pass its shape but not the rules in force."""
    policy, _ = write_policy(tmp_path)
    applied = lab.apply(policy, backend="iptables-legacy")
    assert applied.returncode == 0, applied.stderr
    path = lab.state_dir / "origins.json"
    origins = json.loads(path.read_text())
    origins["rules"][0]["index"] = 100000
    path.write_text(json.dumps(origins))
    refused = stats(lab, check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"nfc: error: damaged state file {path}: ")


def test_nft_counts_survive_an_apply_where_the_rule_is_unchanged(lab: Lab, tmp_path: Path) -> None:
    policy, lines = write_policy(tmp_path)
    applied = lab.apply(policy)
    assert applied.returncode == 0, applied.stderr
    send(lab)
    before = counted_all(lab, policy, lines)
    # The same policy with one rule changed: the others keep their counts, on their lines.
    changed = tmp_path / "changed" / policy.name
    changed.parent.mkdir()
    changed.write_text(policy.read_text().replace("udp dport 5001", "udp dport 5009"))
    applied = lab.apply(changed)
    assert applied.returncode == 0, applied.stderr
    after = by_line(stats(lab, "--format", "json"), policy)
    for port in (5000, 5002, 5003, DEAD_PORT):
        line = lines[port]
        assert (after[line]["packets"], after[line]["bytes"]) == (
            before[line]["packets"],
            before[line]["bytes"],
        )
    assert (after[lines[5001]]["packets"], after[lines[5001]]["bytes"]) == (0, 0)
    send(lab)
    rows = counted_all(lab, policy, {5000: lines[5000]}, rounds=2)
    packets, size = expected(5000)
    assert (rows[lines[5000]]["packets"], rows[lines[5000]]["bytes"]) == (2 * packets, 2 * size)


def _ports(first: int, step: int) -> str:
    """Nine ports, too many to split into a rule each: the optimizer keeps them as a named set."""
    return "{" + ", ".join(str(first + step * n) for n in range(9)) + "}"


def _tcp(*ports: int) -> str:
    return "".join(f"    - accept tcp dport {port}\n" for port in ports)


# Two versions of a policy, the second with one rule inserted at the top: at
# -O1 the optimizer names the sets the long lists become (input_setN) and the
# chains that runs of 8 TCP and UDP rules move to (input_tcpN, input_udpN) by
# number, in order, so the second renumbers them all, and the first run grows
# to 8 rules and moves to chains of its own. A rule without a protocol ends a run.
RENUMBERED = (
    "nfc: 1\ncounters: true\ninput:\n  policy: accept\n  state: manual\n  icmp: manual\n  loopback: manual\n"
    "  rules:\n{inserted}"
    "    - accept udp dport 5003\n" + _tcp(21, 22, 23, 24, 25, 26) + "    - drop from 10.99.0.1\n"
    "    - accept udp dport {listed}\n"
    "    - accept udp dport {listed}\n"
    "    - drop udp dport {changed}\n"
    "    - accept udp dport 5001\n"
    "    - accept udp dport 5001\n" + _tcp(31, 32, 33) + "    - drop from 10.99.0.2\n"
    "    - accept udp dport 5002\n" + _tcp(41, 42, 43, 44, 45, 46, 47)
)
RENUMBERED_LINES = {
    "moved": "accept udp dport 5003",
    "listed": "accept udp dport {5000",
    "changed": "drop udp dport {6",
    "plain": "accept udp dport 5001",
    "renumbered": "accept udp dport 5002",
}
# What the client sends: (port, payload bytes, datagrams).
RENUMBERED_SENT = [(5000, 10, 3), (5800, 20, 1), (6000, 1, 2), (5001, 5, 2), (5002, 7, 1), (5003, 3, 2)]


def renumbered_policy(directory: Path, inserted: bool) -> tuple[Path, dict[str, list[int]]]:
    """A version of RENUMBERED, and the lines of each of RENUMBERED_LINES'
    rules (two for a line written twice)."""
    text = RENUMBERED.format(
        inserted=f"    - drop tcp dport {_ports(7001, 2)}\n" if inserted else "",
        listed=_ports(5000, 100),
        changed=_ports(6100 if inserted else 6000, 100),  # 6000 and 6100 .. 6800, or 6900
    )
    directory.mkdir()
    path = directory / "counted.yaml"
    path.write_text(text)
    numbered = list(enumerate(text.splitlines(), 1))
    return path, {
        key: [number for number, line in numbered if line.startswith(f"    - {rule}")]
        for key, rule in RENUMBERED_LINES.items()
    }


def test_nft_counts_survive_the_optimizers_renumbering(lab: Lab, tmp_path: Path) -> None:
    """An unchanged line keeps its counts across an apply that renumbers the
    sets and chains its rule is in, or moves it to a chain by protocol; a
    line whose list changed starts from zero; of two identical lines, each
    keeps its own counts; and the rows stay those of the policy's chain."""
    before_policy, before_lines = renumbered_policy(tmp_path / "before", inserted=False)
    after_policy, after_lines = renumbered_policy(tmp_path / "after", inserted=True)
    compiled = lab.server.nfc("compile", str(after_policy), "--stdout").stdout
    assert all(f"\tchain input_{name} {{\n" in compiled for name in ("udp", "udp2", "udp3")), compiled
    assert "\t\tudp dport @input_set3 counter accept" in compiled, compiled

    applied = lab.apply(before_policy)
    assert applied.returncode == 0, applied.stderr
    specs = [f"{SERVER_A4},{port},{size},{count}" for port, size, count in RENUMBERED_SENT]
    lab.client_a.run(sys.executable, "-c", SEND, *specs)
    sent = {port: (count, count * (HEADERS[SERVER_A4] + size)) for port, size, count in RENUMBERED_SENT}
    expected = {
        "moved": [sent[5003]],
        "listed": [(sent[5000][0] + sent[5800][0], sent[5000][1] + sent[5800][1]), (0, 0)],
        "changed": [sent[6000]],
        "plain": [sent[5001], (0, 0)],  # the first of two identical lines takes every packet
        "renumbered": [sent[5002]],
    }

    def counts(policy: Path, lines: dict[str, list[int]]) -> dict[str, list[tuple[int, int]]]:
        rows = by_line(stats(lab, "--format", "json"), policy)
        return {
            key: [(rows[n]["packets"], rows[n]["bytes"]) for n in numbers] for key, numbers in lines.items()
        }

    wait_until(lambda: counts(before_policy, before_lines) == expected, timeout=10)
    assert counts(before_policy, before_lines) == expected

    applied = lab.apply(after_policy)
    assert applied.returncode == 0, applied.stderr
    assert counts(after_policy, after_lines) == expected | {"changed": [(0, 0)]}
    # a run's first line is also that of the jump to its chains, which has no counter
    assert stats(lab, "--format", "json")["uncounted"] == []
