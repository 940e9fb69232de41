"""Static checks of connection tracking: UDP services served statefully,
notrack entries whose requests or answers the chains drop, blanket
untracked accepts, notrack entries that undo a rule's ct state."""

from __future__ import annotations

from collections.abc import Iterator

from nfc.errors import Loc
from nfc.ir import Ports
from nfc.lint_registry import Check, Context, accepts, filed_in
from nfc.space import interval_text, minus, overlap

HIGH_RATE_UDP = {53: "DNS", 123: "NTP", 514: "syslog"}

CONNTRACK_CHECKS: list[Check] = []
check = filed_in(CONNTRACK_CHECKS)


def _ports_text(ports: Ports) -> str:
    return interval_text(ports.ranges)


@check(
    "NFC001",
    "stateful-udp-service",
    "warning",
    "Every UDP query served statefully takes a conntrack entry: the seeds' 'table full' failure.",
)
def stateful_udp_service(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    chain = ctx.chain("input")
    if chain is None:
        return
    untracked = [c for entry in ctx.entries("input") for c in ctx.cubes(entry.match)]
    for rule in ctx.user_rules(chain):
        match = rule.match
        if not accepts(rule) or match.protocol != "udp" or match.dport is None:
            continue
        tracked = minus(ctx.space.cubes(match, ct=ctx.space.ct_states), untracked)
        if tracked:
            ports = _ports_text(match.dport)
            # named only when every port is the service's: udp 53-68 is not all DNS
            exact = all(lo == hi and lo in HIGH_RATE_UDP for lo, hi in match.dport.ranges)
            known = [HIGH_RATE_UDP[lo] for lo, _ in match.dport.ranges] if exact else []
            what = f"{', '.join(known)} (udp {ports})" if known else f"udp dport {ports}"
            yield (
                rule.origin,
                f"{what} is accepted with connection tracking: each query costs a conntrack entry",
                f"untrack it in both directions: add '- udp dport {ports}' under conntrack.notrack",
            )


@check(
    "NFC010",
    "untracked-requests-dropped",
    "error",
    "Untracked requests need an accept of their own; otherwise the policy drops the service.",
)
def untracked_requests_dropped(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    chain = ctx.chain("input")
    if chain is None or chain.policy != "drop":
        return
    for entry in ctx.entries("input"):
        if entry.match.dport is None or entry.match.sport is not None:
            continue  # only served entries bring requests
        requests = ctx.space.cubes(entry.match, ct=["untracked"])
        if not any(accepts(r) and overlap(requests, ctx.cubes(r.match)) for r in ctx.for_other_hosts(chain)):
            yield (
                entry.origin,
                "no input rule accepts the requests this entry untracks: the policy drops them all",
                "add an accept rule for them, e.g. 'accept udp dport ...' with its from restriction",
            )


@check(
    "NFC011",
    "untracked-answers-dropped",
    "error",
    "With state: manual nothing accepts untracked answers unless a rule does.",
)
def untracked_answers_dropped(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for entry in ctx.entries("input"):
        match = entry.match
        if match.sport is not None:
            chain_name, answers = "input", match
        elif match.dport is not None:
            chain_name, answers = "output", match.mirrored()
        else:
            continue
        chain = ctx.chain(chain_name)
        if chain is None or chain.policy != "drop":
            continue
        cubes = ctx.space.cubes(answers, ct=["untracked"])
        if not any(accepts(r) and overlap(cubes, ctx.cubes(r.match)) for r in ctx.for_other_hosts(chain)):
            yield (
                entry.origin,
                f"the answers of this entry arrive untracked in {chain_name}, where nothing accepts them",
                f"use state: auto in {chain_name}, or accept them with 'ct state untracked' "
                "and the entry's ports",
            )


@check(
    "NFC012",
    "blanket-untracked-accept",
    "error",
    "A broad 'ct state untracked accept' ahead of meters or source checks lets requests bypass them.",
)
def blanket_untracked_accept(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        rules = ctx.user_rules(chain)
        for index, rule in enumerate(rules):
            if not accepts(rule) or "untracked" not in rule.match.ct_state:
                continue
            mine = ctx.cubes(rule.match)
            for later in rules[index + 1 :]:
                guarded = later.meter is not None or later.match.saddr is not None
                if guarded and overlap(mine, ctx.space.cubes(later.match, ct=["untracked"])):
                    what = "meter" if later.meter is not None else "source restriction"
                    yield (
                        rule.origin,
                        f"accepts untracked packets before the {what} at line {later.origin.line}, "
                        "which they bypass",
                        "remove it and use state: auto, which accepts only the untracked answers",
                    )
                    break


@check(
    "NFC013",
    "unrestricted-backending-entry",
    "warning",
    "A 'sport' entry without 'from' or 'dport' makes its answers acceptable to any local port.",
)
def unrestricted_backending_entry(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for entry in ctx.entries("input"):
        match = entry.match
        if match.sport is not None and match.dport is None and match.saddr is None:
            yield (
                entry.origin,
                f"any packet from {match.protocol or 'any protocol'} port {_ports_text(match.sport)} is "
                "accepted as an answer, to any local port, from anywhere",
                "restrict it: 'dport 1024-65535' (the ephemeral ports) or 'from $upstream_servers'",
            )


@check(
    "NFC020",
    "notrack-needs-conntrack",
    "warning",
    "A rule that needs connection state cannot match packets that bypass connection tracking.",
)
def notrack_needs_conntrack(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        untracked = [c for e in ctx.entries(chain.name) for c in ctx.cubes(e.match)]
        for rule in ctx.user_rules(chain):
            states = set(rule.match.ct_state)
            if not states or not states <= {"established", "related", "new"}:
                continue
            if overlap(ctx.space.cubes(rule.match, ct=ctx.space.ct_states), untracked):
                yield (
                    rule.origin,
                    f"matches ct state {','.join(rule.match.ct_state)}, but a notrack entry makes some of "
                    "these packets untracked: for them this rule never matches",
                    "add 'untracked' to the states, or narrow the notrack entry",
                )
