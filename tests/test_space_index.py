"""The index that keeps lint and diff near-linear (nfc.space_index) changes
no finding and no diff line: on seeded random policies, with overlapping,
nested and shadowed rules, both families, interfaces, meters and NAT, lint
and diff give exactly what the straightforward path gives, where every
rule meets every earlier rule in turn. That path is kept here, as the
reference, not in nfc."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import nfc.diff
import nfc.lint_reach
from nfc import space_index
from nfc.diff import diff
from nfc.lint import lint
from nfc.space import Cube, intersect, meet, minus, split, subtract
from nfc.space_index import Index

from helpers import ruleset_of

TODAY = dt.date(2026, 11, 24)
SEEDS = range(12)
# Few values, so that rules overlap, nest and shadow each other often.
PORTS = ("22", "53", "80", "443", "1000-2000", "1500-1600", "{ 22, 80, 443 }", "1024-65535")
V4 = ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.0.2.0/24", "not 10.1.0.0/16")
V6 = ("2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5", "not 2001:db8:1::/48")


def _rule(rng: random.Random, chain: str) -> str:
    words = [rng.choice(("accept", "accept", "drop", "reject"))]
    protocol = rng.choice(("tcp", "tcp", "udp", "", "icmp"))
    if protocol:
        words.append(protocol)
    if protocol in ("tcp", "udp") and rng.random() < 0.7:
        words += ["dport", rng.choice(PORTS)]
    if protocol in ("tcp", "udp") and rng.random() < 0.15:
        words += ["sport", rng.choice(PORTS[:5])]
    addresses = V6 if protocol != "icmp" and rng.random() < 0.3 else V4
    if rng.random() < 0.6:
        words += ["from", rng.choice((*addresses, "$inside") if addresses is V4 else addresses)]
    if rng.random() < 0.25:
        words += ["to", rng.choice(addresses)]
    if chain != "output" and rng.random() < 0.15:
        words += ["iif", rng.choice(("eth0", "eth1", "veth*", "{eth0, wg0}"))]
    if chain == "input" and rng.random() < 0.08:
        words += ["ct", "state", rng.choice(("new", "established", "untracked"))]
    if words[0] == "drop" and rng.random() < 0.15:
        words.append("limit over 10/second burst 5 per saddr name flood")
    elif rng.random() < 0.1:
        words.append("counter")
    return " ".join(words)


def _policy(rng: random.Random, inside: str, policies: dict[str, str], rules: dict[str, list[str]]) -> str:
    lines = [
        "nfc: 1",
        "define:",
        f"  inside: [{inside}]",
        "conntrack:",
        "  notrack: [udp dport 53, udp sport 53 dport 1024-65535]",
        "nat:",
        "  - dnat to 10.1.2.3:80 tcp dport 8080 iif eth1",
        "  - dnat to 10.1.2.4:22 tcp dport 2222",
        "  - masquerade tcp oif eth1",
    ]
    for chain, listed in rules.items():
        lines += [f"{chain}:", f"  policy: {policies[chain]}", "  rules:"]
        lines += [f"    - '{rule}'" for rule in listed]
    return "\n".join(lines) + "\n"


def _policies(seed: int) -> tuple[str, str]:
    """A random policy and a reviewer's change of it: rules removed, changed
    and added, one chain's policy turned, a define widened."""
    rng = random.Random(seed)
    rules = {chain: [_rule(rng, chain) for _ in range(rng.randint(15, 35))] for chain in ("input", "forward")}
    rules["output"] = [_rule(rng, "output") for _ in range(rng.randint(3, 8))]
    policies = {"input": "drop", "forward": "drop", "output": "accept"}
    old = _policy(rng, "10.1.0.0/16", policies, rules)
    changed = {chain: list(listed) for chain, listed in rules.items()}
    for chain, listed in changed.items():
        for _ in range(2):
            del listed[rng.randrange(len(listed))]
        listed[rng.randrange(len(listed))] = _rule(rng, chain)
        listed.insert(rng.randrange(len(listed) + 1), _rule(rng, chain))
    turned = rng.choice(("input", "forward", "output"))
    policies[turned] = "accept" if policies[turned] == "drop" else "drop"
    return old, _policy(rng, "10.1.0.0/16, 192.0.2.128/25", policies, changed)


def _pairwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The straightforward path: every rule is a candidate (none is
    skipped for a rule found to hold the packets, no window is left
    unvisited), packets are split by every earlier rule in turn, a rule
    decides what earlier rules leave of it, and what no rule matches is
    everything less every rule, in turn; diff compares every rule of both
    sides, also those both have; lint splits a rule's copy as it did the rule."""

    def every(self: Index, cubes: list[Cube], after: int = -1, before: int | None = None) -> Iterator[int]:
        return iter(range(after + 1, len(self.rules) if before is None else before))

    def first_match(
        self: Index, cubes: list[Cube], before: int | None = None
    ) -> list[tuple[Cube, int | None]]:
        parts: list[tuple[Cube, int | None]] = []
        remaining = cubes
        for number in range(len(self.rules) if before is None else before):
            taken, remaining = split(remaining, self.rules[number])
            parts += [(cube, number) for cube in taken]
        return parts + [(cube, None) for cube in remaining]

    def decided(self: Index, number: int) -> list[Cube]:
        return [cube for cube, taker in self.first_match(self.rules[number], before=number) if taker is None]

    def unmatched(self: Index, cubes: list[Cube]) -> list[Cube]:
        return minus(cubes, [cube for rule in self.rules for cube in rule])

    monkeypatch.setattr(Index, "candidates", every)
    monkeypatch.setattr(Index, "first_match", first_match)
    monkeypatch.setattr(Index, "decided", decided)
    monkeypatch.setattr(Index, "unmatched", unmatched)
    monkeypatch.setattr(nfc.diff, "_unchanged", lambda cubes, counterpart, only_other: False)
    monkeypatch.setattr(nfc.lint_reach, "_copied", lambda seen, cubes: None)


@pytest.mark.parametrize("seed", SEEDS)
def test_indexed_lint_and_diff_are_the_pairwise_ones(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_text, new_text = _policies(seed)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = ruleset_of(tmp_path / "old", old_text)
    new = ruleset_of(tmp_path / "new", new_text)
    indexed = (lint(old, today=TODAY), lint(new, today=TODAY), [c.text() for c in diff(old, new)])
    assert indexed[2], "the change changes some packet's fate"
    with monkeypatch.context() as patched:  # many windows, and pieces that look up their own candidates
        patched.setattr(space_index, "FIRST_WINDOW", 2)
        patched.setattr(space_index, "REQUERY", 3)
        windowed = (lint(old, today=TODAY), lint(new, today=TODAY), [c.text() for c in diff(old, new)])
    with monkeypatch.context() as patched:
        _pairwise(patched)
        reference = (lint(old, today=TODAY), lint(new, today=TODAY), [c.text() for c in diff(old, new)])
    assert indexed == reference
    assert windowed == reference


def test_the_random_policies_hold_what_the_index_must_get_right(tmp_path: Path) -> None:
    """The seeds give the findings that depend on which rules overlap."""
    codes: set[str] = set()
    for seed in SEEDS:
        old_text, _ = _policies(seed)
        codes |= {f.code for f in lint(ruleset_of(tmp_path, old_text), today=TODAY)}
    assert {"NFC030", "NFC031"} <= codes


def _intervals(rng: random.Random) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint ranges of 0-99: a few, or many (a broad rule less many narrow ones)."""
    values = sorted(rng.sample(range(100), rng.choice((0, 2, 4, 8, 40))))
    return tuple(zip(values[::2], values[1::2], strict=True))


def _walked_intersect(
    a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    """intersect as it was, walking both lists: the reference for the exact ranges."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if low <= high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _walked_subtract(
    a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    """subtract as it was, trying every range of b on every range of a."""
    out = []
    for low, high in a:
        start = low
        for b_low, b_high in b:
            if b_high < start or b_low > high:
                continue
            if b_low > start:
                out.append((start, b_low - 1))
            start = max(start, b_high + 1)
            if start > high:
                break
        if start <= high:
            out.append((start, high))
    return tuple(out)


def test_the_interval_operations_are_those_of_sets() -> None:
    """intersect, subtract and meet search long lists by bisection; here
    against the sets of values they stand for, and against the walks they
    replace, range for range (diff describes the ranges it is given)."""

    def values(intervals: tuple[tuple[int, int], ...]) -> set[int]:
        return {v for low, high in intervals for v in range(low, high + 1)}

    rng = random.Random(7)
    for _ in range(2000):
        a, b = _intervals(rng), _intervals(rng)
        both, left = intersect(a, b), subtract(a, b)
        assert (both, left) == (_walked_intersect(a, b), _walked_subtract(a, b))
        assert values(both) == values(a) & values(b)
        assert values(left) == values(a) - values(b)
        assert meet(a, b) == bool(values(a) & values(b))
        for result in (both, left):  # sorted and disjoint, as every caller expects
            assert all(low <= high for low, high in result)
            assert all(result[i][1] < result[i + 1][0] for i in range(len(result) - 1))


def test_a_broad_rule_after_many_narrow_ones_costs_near_linear_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shape of an imported firewall: thousands of narrow accepts, then
    one broad drop, whose packets are everything the accepts leave; and a
    diff that turns the chain's policy, which is about everything no rule
    matches. Counted in cube comparisons, four times the rules is not
    sixteen times the work."""
    comparisons = 0
    meets = Cube.meets

    def counted(self: Cube, other: Cube) -> bool:
        nonlocal comparisons
        comparisons += 1
        return meets(self, other)

    monkeypatch.setattr(Cube, "meets", counted)

    def policy(count: int, chain_policy: str, final: str) -> str:
        rules = [f"    - accept tcp dport {1000 + i} from 10.{i // 200}.{i % 200}.0/24" for i in range(count)]
        return f"nfc: 1\ninput:\n  policy: {chain_policy}\n  rules:\n" + "\n".join([*rules, final]) + "\n"

    def work(count: int) -> int:
        nonlocal comparisons
        (tmp_path / "old").mkdir(exist_ok=True)
        (tmp_path / "new").mkdir(exist_ok=True)
        old = ruleset_of(tmp_path / "old", policy(count, "accept", "    - drop from 0.0.0.0/0"))
        new = ruleset_of(tmp_path / "new", policy(count, "drop", "    - accept udp dport 53"))
        comparisons = 0
        lint(old, today=TODAY)
        assert any("newly DROPS" in c.text() for c in diff(old, new))
        return comparisons

    small, large = work(150), work(600)
    assert large < 4 * small * 2  # a quadratic path would do sixteen times the work


def test_rules_an_early_rule_holds_cost_no_look_at_the_later_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broad accept first, then thousands of narrow rules it holds, among
    them broad port ranges that overlap every later one (an imported
    firewall's shape). Each narrow rule is decided by the first rule; the
    index must not collect, for each, every earlier rule that overlaps it
    too. Counted in candidates the index hands out and cube comparisons,
    for lint and for a diff that changes a rule at each end: four times the
    rules is not sixteen times the work."""
    work = {"candidates": 0, "meets": 0}
    candidates, meets = space_index._Window.candidates, Cube.meets

    def counted_candidates(self: space_index._Window, queries: list, before: int | None) -> list[int]:
        found = candidates(self, queries, before)
        work["candidates"] += len(found)
        return found

    def counted_meets(self: Cube, other: Cube) -> bool:
        work["meets"] += 1
        return meets(self, other)

    monkeypatch.setattr(space_index._Window, "candidates", counted_candidates)
    monkeypatch.setattr(Cube, "meets", counted_meets)

    def policy(count: int, first: str, last: str) -> str:
        rules = [first]
        for i in range(count):
            rules.append(f"accept tcp dport {1024 + i} from 10.{i // 200}.{i % 200}.0/24")
            if i % 10 == 0:
                rules.append("drop tcp dport 1024-65535")
        rules.append(last)
        return "nfc: 1\ninput:\n  policy: drop\n  rules:\n" + "".join(f"    - {r}\n" for r in rules)

    def measured(count: int) -> dict[str, int]:
        (tmp_path / "old").mkdir(exist_ok=True)
        (tmp_path / "new").mkdir(exist_ok=True)
        old = ruleset_of(tmp_path / "old", policy(count, "accept tcp from 10.0.0.0/8", "drop udp"))
        new = ruleset_of(tmp_path / "new", policy(count, "accept tcp from 10.0.0.0/9", "accept udp"))
        work.update(candidates=0, meets=0)
        assert sum(f.code == "NFC031" for f in lint(old, today=TODAY)) >= count  # held by the first rule
        assert any("newly DROPS" in c.text() for c in diff(old, new))
        return dict(work)

    small, large = measured(200), measured(800)
    for kind in work:
        assert large[kind] < 4 * small[kind] * 2, kind  # a quadratic path would do sixteen times the work
