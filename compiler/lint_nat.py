"""Static checks of NAT rules: port forwards that forward drops, source
NAT that nothing forwarded reaches, NAT rules that earlier ones shadow.
They reason over the match space through an index (nfc.space_index), so
a policy with thousands of port forwards is checked in near-linear time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property

from nfc.errors import Loc
from nfc.ir import Chain, NatHook, NatRule, RuleRole
from nfc.lint_registry import Check, Context, filed_in
from nfc.space import Cube, Space, intersect, subtract
from nfc.space_index import Index

NAT_CHECKS: list[Check] = []
check = filed_in(NAT_CHECKS)
NEW = frozenset({"new"})  # NAT sees a connection's first packet only


def target_text(rule: NatRule) -> str:
    """Where a NAT rule sends packets: 192.168.1.10:80, [2001:db8::10]:443, port 5353."""
    ports = None
    if rule.ports:
        low, high = rule.ports
        ports = str(low) if low == high else f"{low}-{high}"
    if rule.address is None:
        return f"port {ports}" if ports else "this host"
    address = f"[{rule.address}]" if rule.address.version == 6 and ports else str(rule.address)
    return f"{address}:{ports}" if ports else address


def translated(rule: NatRule, cube: Cube) -> Cube | None:
    """The first packet of a connection in `cube` as `rule` (dnat or
    redirect) leaves it, as the filter sees it: to the new address (dnat;
    redirect keeps the address, as `nfc explain` does) and port, ct status
    dnat. A port outside a new range becomes the range's first (the kernel's
    choice for an unused one)."""
    dport = cube.dport
    if rule.ports is not None:
        low, high = rule.ports
        inside = intersect(dport, ((low, high),))
        outside = subtract(dport, ((low, high),))
        dport = tuple(sorted({*inside, *(((low, low),) if outside else ())}))
    daddr = cube.daddr
    if rule.address is not None:
        if (rule.address.version == 4) != (cube.family.value == "ipv4"):
            return None
        daddr = ((int(rule.address), int(rule.address)),)
    return replace(cube, dport=dport, daddr=daddr, ct=NEW, status=frozenset({"dnat"}))


@dataclass
class NatView:
    """Each NAT rule of one hook with the packets it translates (its match
    less what earlier rules of the hook take) and the rules that take the rest."""

    rules: list[NatRule]
    space: Space

    @cached_property
    def index(self) -> Index:
        return Index([self.space.cubes(r.match, ct=NEW) for r in self.rules])

    def effective(self) -> Iterator[tuple[NatRule, list[Cube], list[NatRule]]]:
        for number, rule in enumerate(self.rules):
            parts = self.index.first_match(self.index.rules[number], before=number)
            mine = [cube for cube, taker in parts if taker is None]
            takers = sorted({taker for _, taker in parts if taker is not None})
            yield rule, mine, [self.rules[t] for t in takers]


def nat_view(ctx: Context, hook: NatHook) -> NatView:
    return NatView([n for n in ctx.ruleset.nat if n.hook == hook], ctx.space)


def chain_index(chain: Chain, space: Space) -> Index:
    """The chain's rules that decide connections, as an index. The
    essential ICMP accepts let through errors, which follow their
    connection's translation: no connection of their own. A `limit over`
    rule matches no sender within its limits, which these checks assume
    (as explain does)."""
    return Index([
        [] if (r.meter and r.meter.over) or r.role is RuleRole.ESSENTIAL_ICMP else space.cubes(r.match)
        for r in chain.rules
    ])  # fmt: skip


def accepted_somewhere(chain: Chain | None, index: Index | None, cubes: list[Cube]) -> bool:
    """Whether `chain` accepts any packet of `cubes` (no chain: the kernel does)."""
    if chain is None or index is None:
        return bool(cubes)
    return any(
        (chain.rules[number].verdict.kind if number is not None else chain.policy) == "accept"
        for _, number in index.first_match(cubes)
    )


def _lines(rules: list[NatRule]) -> str:
    return ", ".join(f"line {r.origin.line}" for r in rules)


@check(
    "NFC090",
    "dnat-unreachable",
    "error",
    "A port forward works only if forward accepts the translated connection; with state: manual a rule must.",
)
def dnat_unreachable(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    forward = ctx.chain("forward")
    index = chain_index(forward, ctx.space) if forward else None
    for rule, mine, _ in nat_view(ctx, "prerouting").effective():
        if rule.kind != "dnat" or not mine:
            continue
        arriving = [t for cube in mine if (t := translated(rule, cube)) is not None]
        if arriving and not accepted_somewhere(forward, index, arriving):
            target = target_text(rule)
            yield (
                rule.origin,
                f"nothing in forward accepts the connections this dnat sends to {target}: "
                "the port forward cannot work",
                "use state: auto in forward (it accepts them), or accept them in forward, "
                f"e.g. 'accept to {rule.address}'",
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
        for rule, mine, _ in nat_view(ctx, "prerouting").effective()
        if rule.kind == "dnat"
        for cube in mine
        if (t := translated(rule, cube)) is not None
    ]
    for rule, mine, _ in nat_view(ctx, "postrouting").effective():
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
        view = nat_view(ctx, hook)
        for rule, mine, takers in view.effective():
            if not mine and takers:
                yield (
                    rule.origin,
                    f"never translates a connection: {_lines(takers)} match all of them first",
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
