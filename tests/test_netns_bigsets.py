"""Apply, stats, refresh and rollback beside a big list file, on the real
kernel: nfc never lists a list's elements back (nft takes minutes over a
million), yet stats maps every rule to its policy line and counts the list
as loaded or refreshed, a re-apply keeps the runtime set's elements and
the counts, and a rollback puts back exactly what was in force, the
refreshed list, meter and runtime set elements included."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lab import CLIENT_A4, CLIENT_B4, SERVER_A4, SERVER_B4, Lab

pytestmark = pytest.mark.netns

ENTRIES = 50_000
POLICY = """nfc: 1
define:
  blocklist: {file: drop.txt}
sets:
  banned: {type: address, timeout: 1h, size: 1024}
input:
  policy: drop
  rules:
    - drop from $blocklist
    - drop from $banned
    - accept tcp dport 22 counter
    - accept tcp dport 80 limit 100/minute per saddr name web
"""
STILL_IN_FORCE = """
import json, sys
from pathlib import Path
from nfc import stats_origins
from nfc.state import State
state = State(sys.argv[1])
print(stats_origins.still_in_force(state, json.loads(Path(sys.argv[1], "confirmed.json").read_text())["to"]))
"""


def line_of(text: str, rule: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.endswith(f"- {rule}"))


def test_a_big_list_stays_in_the_kernel_and_rollback_is_exact(lab: Lab, tmp_path: Path) -> None:
    listed = [f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}" for i in range(0, 2 * ENTRIES, 2)]
    (tmp_path / "drop.txt").write_text("\n".join([*listed, CLIENT_A4]) + "\n")
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    lab.start_servers(tcp=(22, 23))
    server = lab.server
    state = ("--state-dir", str(lab.state_dir))
    done = lab.apply(policy)
    assert done.returncode == 0, done.stderr
    # the fast path: the table in force is the one nfc loaded
    trusted = server.run(sys.executable, "-c", STILL_IN_FORCE, str(lab.state_dir)).stdout.strip()
    assert trusted == "True"

    assert lab.connects(lab.client_b, SERVER_B4, 22, CLIENT_B4) == 1  # counted by the rule of line 11
    assert lab.connects(lab.client_a, SERVER_A4, 22, CLIENT_A4) == 0  # listed
    assert server.nfc("set", "add", "banned", CLIENT_B4, "--timeout", "30m").returncode == 0
    server.nft("add", "element", "inet", "nfc", "web_v4", "{ 192.0.2.80 timeout 1h }")  # a meter's entry

    report = json.loads(server.nfc("stats", "--format", "json", *state).stdout)
    by_line = {row["line"]: row for row in report["rules"] if row["chain"] == "input"}
    rules = [line.split("- ", 1)[1] for line in POLICY.splitlines() if line.startswith("    - ")]
    assert {line_of(POLICY, rule) for rule in rules} <= set(by_line)
    ssh = line_of(POLICY, "accept tcp dport 22 counter")
    assert by_line[ssh]["packets"] >= 1
    fills = {fill["name"]: fill["elements"] for fill in report["sets"] + report["meters"]}
    in_kernel = json.loads(server.nft("-j", "list", "set", "inet", "nfc", "blocklist_v4"))["nftables"]
    elements = next(item["set"]["elem"] for item in in_kernel if "set" in item)
    assert fills["blocklist_v4"] == len(elements) == ENTRIES + 1
    assert fills["banned_v4"] == 1 and fills["web_v4"] == 1

    # a refresh: client A no longer listed, and ten entries fewer
    (tmp_path / "drop.txt").write_text("\n".join(listed[10:]) + "\n")
    done = server.nfc("refresh", str(policy), *state)
    assert done.returncode == 0, done.stderr
    report = json.loads(server.nfc("stats", "--format", "json", *state).stdout)
    assert {fill["name"]: fill["elements"] for fill in report["sets"]}["blocklist_v4"] == ENTRIES - 10
    assert lab.connects(lab.client_a, SERVER_A4, 22, CLIENT_A4) == 1
    trusted = server.run(sys.executable, "-c", STILL_IN_FORCE, str(lab.state_dir)).stdout.strip()
    assert trusted == "True"

    before = server.nft("-s", "list", "table", "inet", "nfc")
    policy.write_text(POLICY + "    - accept tcp dport 23\n")
    done = lab.apply(policy)  # a re-apply: the runtime set keeps its element, the rule its counts
    assert done.returncode == 0, done.stderr
    assert server.nfc("set", "list", "banned").stdout.startswith(f"banned {CLIENT_B4} timeout 1800s expires ")
    assert lab.connects(lab.client_b, SERVER_B4, 23, CLIENT_B4) == 0  # banned
    report = json.loads(server.nfc("stats", "--format", "json", *state).stdout)
    assert {row["line"]: row["packets"] for row in report["rules"]}[ssh] >= 1

    done = server.nfc("rollback", *state)
    assert done.returncode == 0, done.stderr
    assert server.nft("-s", "list", "table", "inet", "nfc") == before  # meter and runtime set included
    assert lab.connects(lab.client_a, SERVER_A4, 22, CLIENT_A4) == 1  # the list as refreshed
    assert server.nfc("stats", *state).returncode == 0
