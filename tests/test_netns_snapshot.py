"""What an apply saves for rollback, on the real kernel, by either road:
the table untouched since nfc's own load (nothing committed since: saved
as loaded, with the live elements of meters and runtime sets, and nothing
listed) or changed since (a rule added by hand: listed). Either way a
rollback puts back exactly the listing that was in force. And what nfc
reads of its table over netlink (nft_dump) agrees with nft's own JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import CLIENT_B4, SERVER_B4, Lab

pytestmark = pytest.mark.netns

POLICY = """nfc: 1
sets:
  banned: {type: address, timeout: 1h, size: 1024}
input:
  policy: drop
  rules:
    - drop from $banned
    - accept tcp dport 22 counter
    - accept tcp dport 80 limit 100/minute per saddr name web
"""
IN_FORCE = """
import json, sys
from pathlib import Path
from nfc import stats_origins
from nfc.state import State
state = State(sys.argv[1])
print(stats_origins.in_force(state, json.loads(Path(sys.argv[1], "confirmed.json").read_text())["to"]))
"""
GOLDEN = Path(__file__).parent / "golden"
COMPARE = """
import json, subprocess, sys
from nfc.backends import nft_dump
objects = json.loads(subprocess.run(["nft", "-j", "list", "table", "inet", sys.argv[1]],
                                    capture_output=True, text=True, check=True).stdout)["nftables"]
over = {o["limit"]["name"]: bool(o["limit"].get("inv")) for o in objects if "limit" in o}
rules = [o["rule"] for o in objects if "rule" in o]
live = nft_dump.rules(sys.argv[1])
print(json.dumps({
    "json": [[r["chain"], r["handle"], r.get("comment"), r["expr"]] for r in rules],
    "over": over,
    "netlink": [[r.chain, r.handle, r.comment, r.counter, list(r.limits), r.drops] for r in live],
    "limit_objects": nft_dump.limit_objects(sys.argv[1]),
}))
"""


def in_force(lab: Lab) -> str:
    return lab.server.run(sys.executable, "-c", IN_FORCE, str(lab.state_dir)).stdout.strip()


def applied(lab: Lab, policy: Path) -> None:
    done = lab.apply(policy)
    assert done.returncode == 0, done.stderr


def rolled_back(lab: Lab) -> None:
    done = lab.server.nfc("rollback", "--state-dir", str(lab.state_dir))
    assert done.returncode == 0, done.stderr


def test_an_untouched_table_is_saved_as_loaded_with_its_live_elements(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    lab.start_servers(tcp=(22, 80))
    applied(lab, policy)
    assert in_force(lab) == "(True, True)"
    assert lab.server.nfc("set", "add", "banned", "192.0.2.7").returncode == 0
    assert in_force(lab) == "(True, False)"  # nfc set commits: the next apply lists the table
    applied(lab, policy)  # carries the runtime set's element in its own load
    assert in_force(lab) == "(True, True)"
    assert lab.connects(lab.client_b, SERVER_B4, 80, CLIENT_B4) == 1  # a meter entry, from a packet
    before = lab.server.nft("-s", "list", "table", "inet", "nfc")
    assert "192.0.2.7" in before and CLIENT_B4 in before
    assert in_force(lab) == "(True, True)"  # a packet commits nothing
    policy.write_text(POLICY + "    - accept tcp dport 23\n")
    applied(lab, policy)
    rolled_back(lab)
    assert lab.server.nft("-s", "list", "table", "inet", "nfc") == before
    assert in_force(lab) == "(True, True)"  # a rollback's load is nfc's own too


def test_a_rule_added_by_hand_is_listed_and_comes_back_with_rollback(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    applied(lab, policy)
    lab.server.nft("add", "rule", "inet", "nfc", "input", "tcp", "dport", "9999", "accept")
    assert in_force(lab) == "(True, False)"
    before = lab.server.nft("-s", "list", "table", "inet", "nfc")
    assert "9999" in before
    applied(lab, policy)
    assert "9999" not in lab.server.nft("-s", "list", "table", "inet", "nfc")
    rolled_back(lab)
    assert lab.server.nft("-s", "list", "table", "inet", "nfc") == before


def _values(key: str, tree: object) -> list[Any]:
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == key] + [x for v in tree.values() for x in _values(key, v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _values(key, v)]
    return []


@pytest.mark.parametrize("name", ["features-limits", "dns-recursive"])
def test_netlink_reads_what_nft_lists(lab: Lab, name: str) -> None:
    ruleset = (GOLDEN / f"{name}.nft").read_text()
    lab.server.run("nft", "-f", str(GOLDEN / f"{name}.nft"))
    table = ruleset.split("\ntable inet ", 1)[1].split()[0]
    found = json.loads(lab.server.run(sys.executable, "-c", COMPARE, table).stdout)
    assert found["limit_objects"] == found["over"]
    assert len(found["netlink"]) == len(found["json"]) > 0
    for (chain, handle, comment, counter, limits, drops), (j_chain, j_handle, j_comment, expr) in zip(
        found["netlink"], found["json"], strict=True
    ):
        assert (chain, handle, comment) == (j_chain, j_handle, j_comment)
        counters = [c for c in _values("counter", expr) if isinstance(c, dict)]
        assert counter == ([counters[0]["packets"], counters[0]["bytes"]] if counters else None)
        listed = _values("limit", expr)
        overs = [found["over"][x] if isinstance(x, str) else x.get("inv", False) for x in listed]
        assert [found["over"].get(x, False) if isinstance(x, str) else x for x in limits] == overs
        assert drops == any("drop" in e or "reject" in e for e in expr)
    assert any(limits for _, _, _, _, limits, _ in found["netlink"])  # the case is exercised


def test_the_netlink_reader_refuses_cleanly_without_privilege() -> None:
    # root of a user namespace of its own has no CAP_NET_ADMIN over the host's network namespace
    script = (
        "from nfc.backends import nft_dump\n"
        "try:\n nft_dump.rules('nfc')\nexcept Exception as e:\n print(type(e).__name__, e)"
    )
    done = subprocess.run(
        ["unshare", "-Ur", sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.startswith("ApplyError ") and "CAP_NET_ADMIN" in done.stdout, done.stderr
