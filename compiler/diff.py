"""What a policy change does to traffic: per chain, the packets whose fate
changes, computed over the match space (never by comparing text), plus the
changes in what is untracked, in meters and in conntrack settings."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from nfc.collector import collector_paused
from nfc.errors import Loc, printable
from nfc.ir import CHAIN_NAMES, Chain, Destination, Match, Meter, NatRule, NotrackHook, Rule, Ruleset
from nfc.nat_space import NatView, accepted_somewhere, chain_index, nat_view, target_text, translated
from nfc.space import ADDRESS_SPACE, ICMP_OF, Cube, Space, describe, minus
from nfc.space_index import Index
from nfc.values import merge_ranges


class BaseError(Exception):
    """The old policy cannot be read from git; exit code 2."""


@dataclass(frozen=True)
class Change:
    section: str  # a chain, "notrack", "meter" or "conntrack"
    kind: str  # newly ACCEPTS, newly DROPS, newly REJECTS, UNTRACKED, ...
    what: str
    was: str
    origin: Loc | None = None

    def text(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.section}: {self.kind} {self.what}{where} (was: {self.was})"

    def to_json(self) -> dict[str, object]:
        return {
            "section": self.section,
            "change": self.kind,
            "what": self.what,
            "was": self.was,
            "origin": str(self.origin) if self.origin else None,
        }


@dataclass(frozen=True)
class ChainSide:
    """One side of a comparison: a chain's rules (those a sender within its
    limits can match: `limit over` rules match none, as `nfc explain`
    assumes), indexed, and its policy. No chain: the kernel accepts."""

    rules: tuple[Rule, ...]
    index: Index
    policy: str

    @classmethod
    def of(cls, ruleset: Ruleset, space: Space, name: str) -> ChainSide:
        chain = next((c for c in ruleset.chains if c.name == name), None)
        if chain is None:
            return cls((), Index([]), "accept")
        cubes = [[] if r.meter and r.meter.over else space.cubes(r.match) for r in chain.rules]
        return cls(chain.rules, Index(cubes), chain.policy)

    def verdict(self, number: int | None) -> str:
        return self.policy if number is None else self.rules[number].verdict.kind


PAIRWISE = 64  # up to this many cubes, _merge tries every pair


def _merge(cubes: list[Cube]) -> list[Cube]:
    """Join cubes that differ in one dimension only, for shorter reports.
    Trying every pair is quadratic: a longer list (a thousand port forwards
    gone at once) is first joined by buckets of equal other dimensions."""
    merged = list(cubes)
    if len(merged) > PAIRWISE:
        merged = _join_by_buckets(merged)
        if len(merged) > PAIRWISE:
            return merged
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(merged):
            for j in range(i + 1, len(merged)):
                joined = _join(a, merged[j])
                if joined is not None:
                    merged[i] = joined
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


def _join_by_buckets(cubes: list[Cube]) -> list[Cube]:
    """Cubes equal in every dimension but one, joined, in passes over the
    dimensions until none joins: linear work per pass."""
    merged = cubes
    changed = True
    while changed:
        changed = False
        for name in (*Cube.INTERVALS, *Cube.FINITE):
            buckets: dict[tuple[object, ...], list[Cube]] = {}
            for cube in merged:
                dims = cube.dims()
                key = (cube.family, *(value for other, value in dims.items() if other != name))
                buckets.setdefault(key, []).append(cube)
            if len(buckets) == len(merged):
                continue
            changed = True
            merged = []
            for bucket in buckets.values():
                first = bucket[0]
                if name in Cube.FINITE:
                    value: object = frozenset().union(*(getattr(c, name) for c in bucket))
                else:
                    value = merge_ranges(r for c in bucket for r in getattr(c, name))
                merged.append(Cube(first.family, **{**first.dims(), name: value}))
    return merged


def _join(a: Cube, b: Cube) -> Cube | None:
    if a.family is not b.family:
        return None
    dims_a, dims_b = a.dims(), b.dims()
    different = [name for name in dims_a if dims_a[name] != dims_b[name]]
    if set(different) == {"protocol", "icmp"}:
        # ICMP types mean nothing to a cube without ICMP: it joins whatever
        # types its partner has.
        for plain, other in ((a, b), (b, a)):
            if ICMP_OF[a.family][0] not in plain.protocol:
                return Cube(a.family, **{**other.dims(), "protocol": plain.protocol | other.protocol})
        return None
    if len(different) != 1:
        return None
    name = different[0]
    value = dims_a[name] | dims_b[name] if name in Cube.FINITE else merge_ranges(dims_a[name] + dims_b[name])
    return Cube(a.family, **{**dims_a, name: value})


def _chain_changes(old: Ruleset, new: Ruleset, space: Space, chain: str) -> Iterator[Change]:
    """The packets whose verdict in `chain` changes, grouped by the old
    verdict, the new one and the new rule that decides them. Each rule's
    packets meet only the other side's rules that may overlap them (an
    index finds those), so the work grows with the overlaps, not with the
    product of the two chains' lengths; and a rule both sides have, which
    meets none of the rules only the other side has before it, changes
    nothing and is not compared at all."""
    before, after = ChainSide.of(old, space, chain), ChainSide.of(new, space, chain)
    groups: dict[tuple[str, str, Loc | None], list[Cube]] = {}

    def note(cube: Cube, old_verdict: str, new_verdict: str, origin: Loc | None) -> None:
        if old_verdict != new_verdict:
            groups.setdefault((old_verdict, new_verdict, origin), []).append(cube)

    old_to_new, replaced = _paired(before, after)
    new_to_old = {j: i for i, j in old_to_new.items()}
    only_old, only_new = _only(before, after, old_to_new, replaced)
    for number, rule in enumerate(after.rules):  # what a new rule decides
        if _unchanged(after.index.rules[number], new_to_old.get(number), only_old):
            continue
        for cube, other in before.index.first_match(after.index.decided(number)):
            note(cube, before.verdict(other), rule.verdict.kind, rule.origin)
    for number in range(len(before.rules)):  # what an old rule decided and the new policy does
        if _unchanged(before.index.rules[number], old_to_new.get(number), only_new):
            continue
        for cube, other in after.index.first_match(before.index.decided(number)):
            if other is None:
                note(cube, before.verdict(number), after.policy, None)
    if before.policy != after.policy:  # what both policies decide: what no rule of either side matches
        # (a rule both have is one: its second copy would meet none of what the first leaves)
        new_only = [cubes for j, cubes in enumerate(after.index.rules) if j not in new_to_old]
        for cube in Index([*before.index.rules, *new_only]).unmatched(space.cubes(Match())):
            note(cube, before.policy, after.policy, None)
    for (old_verdict, new_verdict, origin), cubes in sorted(groups.items(), key=lambda g: str(g[0])):
        for cube in _merge(cubes):
            yield Change(
                chain, f"newly {new_verdict.upper()}S", describe(cube, space), old_verdict.upper(), origin
            )


def _paired(before: ChainSide, after: ChainSide) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """The rules both sides have (the same packets, the same verdict), in
    the same order: old rule number -> new rule number; and the rules in
    their places that the change replaced, (old number, new number)."""
    numbered: dict[tuple[str, tuple[Cube, ...]], int] = {}  # each key hashed once, not on every comparison
    old_keys, new_keys = (
        [
            numbered.setdefault((r.verdict.kind, tuple(c)), len(numbered))
            for r, c in zip(side.rules, side.index.rules, strict=True)
        ]
        for side in (before, after)
    )
    common: dict[int, int] = {}
    replaced: list[tuple[int, int]] = []
    matcher = difflib.SequenceMatcher(None, old_keys, new_keys)
    for tag, old_first, old_end, new_first, new_end in matcher.get_opcodes():
        if tag == "equal":
            common.update(zip(range(old_first, old_end), range(new_first, new_end), strict=True))
        elif tag == "replace":
            replaced += zip(range(old_first, old_end), range(new_first, new_end), strict=False)
    return common, replaced


def _only(
    before: ChainSide, after: ChainSide, common: dict[int, int], replaced: list[tuple[int, int]]
) -> tuple[Index, Index]:
    """The packets each side's rules match and the other side's rules in
    their places do not, by rule number: all of a rule only one side has,
    what a replaced rule matches that its replacement does not (nothing,
    when only the verdict or a define's widening changed), none of a rule
    both have."""
    kept = set(common.values())
    olds = [[] if i in common else cubes for i, cubes in enumerate(before.index.rules)]
    news = [[] if j in kept else cubes for j, cubes in enumerate(after.index.rules)]
    for i, j in replaced:
        olds[i], news[j] = minus(olds[i], news[j]), minus(news[j], olds[i])
    return Index(olds), Index(news)


def _unchanged(cubes: list[Cube], counterpart: int | None, only_other: Index) -> bool:
    """Whether a rule's packets keep their fate: the other side has the
    rule (at `counterpart`), and none of what only the other side's rules
    before it match shares a packet with it. A packet this side decides by
    the rule is in none of this side's rules before it, so the other side
    decides it by the rule too."""
    if counterpart is None:
        return False
    return not any(
        cube.meets(other)
        for number in only_other.candidates(cubes, before=counterpart)
        for cube in cubes
        for other in only_other.rules[number]
    )


# What each kind of NAT rule does to a connection, in a reviewer's words.
NAT_VERBS = {"dnat": "FORWARDS", "redirect": "REDIRECTS", "masquerade": "MASQUERADES", "snat": "SNATS"}


NatKey = tuple[str, str, str, Loc | None]  # change, target, what it was, the new rule


def _nat_changes(old: Ruleset, new: Ruleset, space: Space) -> Iterator[Change]:
    """The connections whose translation changes: those a new or changed
    NAT rule now translates (with what the old policy did with them) and
    those an old rule translated that no new rule does. A port forward
    whose connections forward drops is said so."""
    groups: dict[NatKey, list[Cube]] = {}
    forwards = {side: _forward(ruleset, space) for side, ruleset in (("old", old), ("new", new))}
    for hook in ("prerouting", "postrouting"):
        before, after = nat_view(old, space, hook), nat_view(new, space, hook)
        changes = [
            *_nat_side(after, before, forwards["new"], True),
            *_nat_side(before, after, forwards["old"], False),
        ]
        for key, cube in changes:
            groups.setdefault(key, []).append(cube)
    for (kind, target, then, origin), cubes in sorted(groups.items(), key=lambda g: str(g[0])):
        for cube in _merge(cubes):
            what = describe(cube, space)
            if target:
                joint = " to " if cube.daddr == ADDRESS_SPACE[cube.family] else ", translated to "
                what += joint + target
            yield Change("nat", kind, what, then, origin)


Forward = tuple[Chain | None, Index | None]  # a policy's forward chain and its index


def _forward(ruleset: Ruleset, space: Space) -> Forward:
    """The forward chain and its index, built once for both hooks' NAT rules."""
    forward = next((c for c in ruleset.chains if c.name == "forward"), None)
    return forward, chain_index(forward, space) if forward else None


def _nat_side(
    view: NatView, other: NatView, forwarding: Forward, newly: bool
) -> Iterator[tuple[NatKey, Cube]]:
    """The connections `view`'s rules translate and `other`'s do not, or
    (`newly`: `view` is the new policy) translate otherwise."""
    forward, accepting = forwarding
    for rule, mine, _ in view.effective():
        for cube, number in other.index.first_match(mine):
            was = other.rules[number] if number is not None else None
            if was is not None and (_same(rule, was) or not newly):
                continue  # unchanged, or translated otherwise now: the new side says so
            verb = NAT_VERBS[rule.kind]
            if rule.kind == "dnat" and not accepted_somewhere(forward, accepting, translated(rule, cube)):
                verb = "DNATS"
            if not newly:
                kind, then = f"no longer {verb}", f"{rule.kind} at {rule.origin}"
            elif was is None:
                kind, then = f"newly {verb}", "not translated"
            else:
                kind, then = f"newly {verb}", " ".join(w for w in (was.kind, _target(was), "at") if w)
                then += f" {was.origin}"
            target = _target(rule) + (", which forward drops" if verb == "DNATS" else "")
            key = (kind, target, then, rule.origin if newly else None)
            yield key, replace(cube, ct=view.space.ct_states)  # NAT sees new connections: no news


def _same(a: NatRule, b: NatRule) -> bool:
    return (a.kind, a.address, a.ports) == (b.kind, b.address, b.ports)


def _target(rule: NatRule) -> str:
    """Where a NAT rule sends a connection, as the diff writes it after 'to'."""
    return "" if rule.kind == "masquerade" else target_text(rule)


# Where raw-table rules act: prerouting on packets addressed to the host, on
# forwarded ones, and output.
NOTRACK_PLACES: tuple[tuple[str, NotrackHook, Destination | None], ...] = (
    ("notrack prerouting", "prerouting", "host"),
    ("notrack prerouting (routed)", "prerouting", "routed"),
    ("notrack output", "output", None),
)


def _untracked(
    ruleset: Ruleset, space: Space, hook: NotrackHook, destination: Destination | None
) -> list[Cube]:
    return [
        cube
        for n in ruleset.notrack
        if n.hook == hook and n.destination in (None, destination)
        for cube in space.cubes(n.match)
    ]


def _notrack_changes(old: Ruleset, new: Ruleset, space: Space) -> Iterator[Change]:
    for section, hook, destination in NOTRACK_PLACES:
        before = _untracked(old, space, hook, destination)
        after = _untracked(new, space, hook, destination)
        for cube in _merge(minus(after, before)):
            yield Change(section, "newly UNTRACKED:", describe(cube, space), "tracked")
        for cube in _merge(minus(before, after)):
            yield Change(section, "newly TRACKED:", describe(cube, space), "untracked")


def _meter_text(meter: Meter) -> str:
    over = "over " if meter.over else ""
    text = f"{over}{meter.rate.value}/{meter.rate.time_unit} burst {meter.burst}"
    if meter.key:
        text += f" per {meter.key}/{meter.prefix_len} size {meter.size}"
    return text


def _meter_changes(old: Ruleset, new: Ruleset) -> Iterator[Change]:
    def named(ruleset: Ruleset) -> dict[str, str]:
        meters = {}
        for chain in ruleset.chains:
            for rule in chain.rules:
                if rule.meter and rule.meter.name:
                    family = f" ({rule.meter.family.value})" if rule.meter.family else ""
                    meters[f"{rule.meter.name}{family}"] = _meter_text(rule.meter)
        return meters

    before, after = named(old), named(new)
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            yield Change("meter", name + ":", after.get(name, "removed"), before.get(name, "absent"))


def _sysctl_changes(old: Ruleset, new: Ruleset) -> Iterator[Change]:
    before = {s.key: s.value for s in old.sysctls}
    after = {s.key: s.value for s in new.sysctls}
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            yield Change("conntrack", key + ":", str(after.get(key, "unset")), str(before.get(key, "unset")))


def diff(old: Ruleset, new: Ruleset) -> list[Change]:
    space = Space(old, new)
    changes: list[Change] = []
    with collector_paused():
        for chain in CHAIN_NAMES:
            changes += _chain_changes(old, new, space, chain)
        changes += _nat_changes(old, new, space)
        changes += _notrack_changes(old, new, space)
    changes += _meter_changes(old, new)
    changes += _sysctl_changes(old, new)
    return changes


def render(changes: list[Change], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([c.to_json() for c in changes], indent=2) + "\n"
    if fmt == "markdown":
        if not changes:
            return "**nfc diff:** no change in what traffic is allowed, blocked or untracked.\n"
        lines = ["### nfc diff: what this change does to traffic", ""]
        lines += [f"- **{c.section}**: {c.kind} `{c.what}` (was: {c.was})" for c in changes]
        return "\n".join(lines) + "\n"
    return "".join(c.text() + "\n" for c in changes)


def _inside_the_repository(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo | None:
    """tarfile's 'data' filter, with what it refuses (a link to an absolute
    path or out of the repository) left out: an include of it cannot be read."""
    try:
        return tarfile.data_filter(member, destination)
    except tarfile.FilterError:
        return None


def checkout_base(revision: str, policy: str, scratch: str) -> str:
    """The policy as it was at `revision`, with every YAML file of the
    repository beside it, extracted under `scratch`; the path to read."""
    policy_path = Path(policy).resolve()
    if revision.startswith("-"):  # git would take it for an option (--output=FILE)
        raise BaseError(f"'{printable(revision)}' is not a git revision")
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=policy_path.parent, capture_output=True,
            text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        files = subprocess.run(  # names as they are, NUL-ended: not split at spaces, not quoted
            ["git", "ls-tree", "-r", "-z", "--name-only", revision], cwd=top, capture_output=True,
            text=True, check=True, timeout=30,
        ).stdout.split("\0")  # fmt: skip
        wanted = [f for f in files if f.endswith((".yaml", ".yml"))]
        archive = os.path.join(scratch, "base.tar")
        with open(archive, "wb") as out:
            subprocess.run(
                ["git", "archive", revision, "--", *wanted], cwd=top, stdout=out, check=True, timeout=60
            )
    except (subprocess.CalledProcessError, FileNotFoundError, OSError) as exc:
        raise BaseError(f"cannot read {revision} from git: {getattr(exc, 'stderr', '') or exc}") from None
    with tarfile.open(archive) as tar:
        tar.extractall(scratch, filter=_inside_the_repository)
    relative = os.path.relpath(policy_path, top)
    old = os.path.join(scratch, relative)
    if not os.path.exists(old):
        raise BaseError(f"{relative} does not exist at {revision}")
    return old
