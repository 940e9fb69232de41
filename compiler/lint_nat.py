"""Static checks of NAT rules: port forwards that forward drops, source
NAT that nothing forwarded reaches, NAT rules that earlier ones shadow.
They reason over the match space through an index (nfc.space_index), so
a policy with thousands of port forwards is checked in near-linear time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from nfc.errors import Loc
from nfc.ir import NatHook, NatRule
from nfc.lint_registry import Check, Context, filed_in
from nfc.nat_space import NatView, accepted_somewhere, chain_index, nat_view, target_text, translated
from nfc.space import interval_text

NAT_CHECKS: list[Check] = []
check = filed_in(NAT_CHECKS)


def _view(ctx: Context, hook: NatHook) -> NatView:
    return nat_view(ctx.ruleset, ctx.space, hook)


def _accept_text(rule: NatRule) -> str:
    """A forward rule that accepts what the dnat `rule` translates."""
    words = ["accept"] + ([rule.match.protocol] if rule.match.protocol else [])
    if rule.ports:
        low, high = rule.ports
        words.append(f"dport {low}" if low == high else f"dport {low}-{high}")
    elif rule.match.dport:
        words.append(f"dport {interval_text(rule.match.dport.ranges)}")
    return " ".join([*words, f"to {rule.address}"])


def _taken_by(rules: list[NatRule]) -> str:
    """'line 3 takes' or 'lines 3, 5 take'."""
    lines = sorted({r.origin.line for r in rules})
    if len(lines) == 1:
        return f"line {lines[0]} takes"
    return f"lines {', '.join(map(str, lines))} take"


@check(
    "NFC090",
    "dnat-unreachable",
    "error",
    "A port forward works only if forward accepts the translated connection; with state: manual a rule must.",
)
def dnat_unreachable(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    forward = ctx.chain("forward")
    index = chain_index(forward, ctx.space) if forward else None
    for rule, mine, _ in _view(ctx, "prerouting").effective():
        if rule.kind != "dnat" or not mine:
            continue
        arriving = [t for cube in mine for t in translated(rule, cube)]
        if arriving and not accepted_somewhere(forward, index, arriving):
            target = target_text(rule)
            yield (
                rule.origin,
                f"nothing in forward accepts the connections this dnat sends to {target}: "
                "the port forward cannot work",
                f"use state: auto in forward (it accepts them), or accept them: '{_accept_text(rule)}'",
            )


@check(
    "NFC091",
    "source-nat-unreachable",
    "warning",
    "Source NAT of forwarded traffic needs forward to accept some connection that leaves that way.",
)
def source_nat_unreachable(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    forward = ctx.chain("forward")
    if forward is None or forward.policy != "drop":
        return
    index = chain_index(forward, ctx.space)
    # The connections forward sees: untranslated ones, and those a dnat translated.
    dnats = [
        t
        for rule, mine, _ in _view(ctx, "prerouting").effective()
        if rule.kind == "dnat"
        for cube in mine
        for t in translated(rule, cube)
    ]
    for rule, mine, _ in _view(ctx, "postrouting").effective():
        if not mine:
            continue
        plain = [replace(cube, status=frozenset({"none"})) for cube in mine]
        if accepted_somewhere(forward, index, plain):
            continue
        translated_here = [both for cube in mine for d in dnats if (both := cube & d) is not None]
        if accepted_somewhere(forward, index, translated_here):
            continue
        interface = "it"
        if rule.match.oifname:
            names = rule.match.oifname.names
            interface = "oif " + (names[0] if len(names) == 1 else "{" + ", ".join(names) + "}")
        yield (
            rule.origin,
            f"forward drops by default and no forward rule accepts what this {rule.kind} matches: "
            f"only the host's own packets out {interface} reach it",
            "accept the traffic to be translated in forward, e.g. 'accept iif $lan oif $wan', "
            "or check the interface name",
        )


@check(
    "NFC092",
    "shadowed-nat-rule",
    "error",
    "The first NAT rule that matches a connection decides it: a rule that earlier ones cover never acts.",
)
def shadowed_nat_rule(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for hook in ("prerouting", "postrouting"):
        view = _view(ctx, hook)
        for rule, mine, takers in view.effective():
            if not mine and takers:
                yield (
                    rule.origin,
                    f"never translates a connection: {_taken_by(takers)} them all first",
                    "move it above them, or delete it",
                )


@check(
    "NFC093",
    "source-nat-without-oif",
    "warning",
    "Source NAT without 'oif' rewrites traffic between internal networks too, not only the uplink's.",
)
def source_nat_without_oif(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for rule in ctx.ruleset.nat:
        if rule.hook == "postrouting" and rule.match.oifname is None:
            yield (
                rule.origin,
                f"{rule.kind} applies whatever interface a connection leaves by",
                "add the uplink, e.g. 'oif $wan'",
            )
