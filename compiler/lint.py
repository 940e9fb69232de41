"""Static checks of a policy, each a small function with a stable code.

A check receives the compiled policy and yields findings; it reasons over
the IR's match space (nfc.space), so reordering or rewording that changes
no packet's fate changes no finding."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator

from nfc import lint_report
from nfc.errors import Loc
from nfc.ir import Chain, Family, Match, Ports, Rule, RuleRole, Ruleset
from nfc.lint_nat import NAT_CHECKS
from nfc.lint_registry import Check, Context, accepts, filed_in
from nfc.lint_report import Finding
from nfc.space import Cube, Space, interval_text, minus, overlap
from nfc.space_index import Index

SENSITIVE_PORTS = {
    22: "ssh",
    23: "telnet",
    445: "smb",
    2375: "docker",
    3306: "mysql",
    3389: "rdp",
    5432: "postgresql",
    5900: "vnc",
    6379: "redis",
    9200: "elasticsearch",
    11211: "memcache",
    27017: "mongodb",
}
HIGH_RATE_UDP = {53: "DNS", 123: "NTP", 514: "syslog"}
SOON = dt.timedelta(days=14)


FILTER_CHECKS: list[Check] = []
check = filed_in(FILTER_CHECKS)


def _ports_text(ports: Ports) -> str:
    return interval_text(ports.ranges)


def _terminal(rule: Rule) -> bool:
    """Decides every packet it matches (a meter decides only some)."""
    return rule.meter is None


# ---------------------------------------------------------------------------
# conntrack


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
    untracked = [c for entry in ctx.entries("input") for c in ctx.space.cubes(entry.match)]
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
        if not any(
            accepts(r) and overlap(requests, ctx.space.cubes(r.match)) for r in ctx.for_other_hosts(chain)
        ):
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
        if not any(
            accepts(r) and overlap(cubes, ctx.space.cubes(r.match)) for r in ctx.for_other_hosts(chain)
        ):
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
            mine = ctx.space.cubes(rule.match)
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
        untracked = [c for e in ctx.entries(chain.name) for c in ctx.space.cubes(e.match)]
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


# ---------------------------------------------------------------------------
# reachability


def _coverage(ctx: Context, chain: Chain) -> Iterator[tuple[int, Rule, list[Cube], list[Rule]]]:
    """Each user rule (with its place in the chain), the part of its packets
    earlier rules leave to it, and the earlier terminal rules that take the
    rest. The index offers only the earlier rules that may overlap: a chain
    of a thousand port forwards is not a million comparisons."""
    terminal = Index([ctx.space.cubes(r.match) if _takes_for_sure(r) else [] for r in chain.rules])
    for number, rule in enumerate(chain.rules):
        if rule.role is not RuleRole.USER:
            continue
        remaining = ctx.space.cubes(rule.match)
        takers = []
        for other in terminal.candidates(remaining, before=number):
            if not remaining:
                break
            if overlap(remaining, terminal.rules[other]):
                takers.append(chain.rules[other])
                remaining = minus(remaining, terminal.rules[other])
        yield number, rule, remaining, takers


def _takes_for_sure(rule: Rule) -> bool:
    """Whether `rule` ends the walk of every packet it matches, as far as lint
    knows: a runtime set may be empty, so its rule takes nothing for sure."""
    addresses = (rule.match.saddr, rule.match.daddr)
    return _terminal(rule) and not any(a is not None and a.runtime for a in addresses)


def _named(rules: list[Rule]) -> str:
    """'the rules at lines 4, 7' in words a reader can find. The loopback
    accept is named only when it alone takes the packets: it takes a share of
    almost every rule's (those on lo), which is no news."""
    rules = [r for r in rules if r.role is not RuleRole.LOOPBACK] or rules
    names = sorted(
        {f"line {r.origin.line}" if r.role is RuleRole.USER else f"the {r.role.value} rules" for r in rules}
    )
    return ", ".join(names)


def _contradicting(rule: Rule, takers: list[Rule]) -> list[Rule]:
    """The earlier rules that decide some of `rule`'s packets otherwise. The
    implied state rules count only where no user rule takes part: `accept
    tcp dport 80` does not mean to accept invalid packets."""
    users = [t for t in takers if t.role is RuleRole.USER]
    return [t for t in (users or takers) if t.verdict.kind != rule.verdict.kind]


@check(
    "NFC030",
    "shadowed-rule",
    "error",
    "Earlier rules decide every packet this rule matches, some differently: it never takes effect.",
)
def shadowed_rule(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        for _, rule, remaining, takers in _coverage(ctx, chain):
            if not remaining and ctx.space.cubes(rule.match) and _contradicting(rule, takers):
                yield (
                    rule.origin,
                    f"never matches a packet: {_named(takers)} decide them all first",
                    "move it above them, or delete it",
                )


@check("NFC031", "redundant-rule", "warning", "Removing this rule would change no packet's fate.")
def redundant_rule(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        rules = list(chain.rules)
        everything = Index([ctx.space.cubes(r.match) for r in rules])
        for number, rule, remaining, takers in _coverage(ctx, chain):
            if not ctx.space.cubes(rule.match) or rule.log is not None or rule.counter or rule.meter:
                continue
            if not remaining:
                if not _contradicting(rule, takers):
                    yield (
                        rule.origin,
                        f"{_named(takers)} already decide its packets alike",
                        "delete it",
                    )
                continue
            if rule.verdict.kind != chain.policy:
                continue
            if not any(
                (rules[other].verdict.kind != chain.policy or rules[other].meter is not None)
                and overlap(remaining, everything.rules[other])
                for other in everything.candidates(remaining)
                if other > number
            ):
                yield rule.origin, f"does what the chain's policy ({chain.policy}) does anyway", "delete it"


@check("NFC080", "matches-nothing", "error", "A rule whose match is empty in every family is dead text.")
def matches_nothing(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        for rule in ctx.user_rules(chain):
            if not ctx.space.cubes(rule.match):
                yield rule.origin, "matches no packet in any family", "check its 'not' and address lists"
    for nat in ctx.ruleset.nat:
        if not ctx.space.cubes(nat.match):
            yield nat.origin, "matches no packet in any family", "check its 'not' and address lists"


# ---------------------------------------------------------------------------
# hygiene


@check("NFC040", "expired-rule", "error", "An expired rule is still in force until someone deletes it.")
def expired_rule(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for origin, expires in _expiring(ctx):
        if expires < ctx.today:
            yield origin, f"expired on {expires}", "delete the rule, or extend 'expires' on purpose"


@check("NFC041", "expires-soon", "warning", "A rule about to expire needs a decision before it does.")
def expires_soon(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for origin, expires in _expiring(ctx):
        if ctx.today <= expires <= ctx.today + SOON:
            yield origin, f"expires on {expires}, within {SOON.days} days", "renew or remove it"


def _expiring(ctx: Context) -> list[tuple[Loc, dt.date]]:
    found = {r.origin: r.expires for c in ctx.ruleset.chains for r in c.rules if r.expires}
    found.update({n.origin: n.expires for n in ctx.ruleset.notrack if n.expires})
    found.update({n.origin: n.expires for n in ctx.ruleset.nat if n.expires})
    return sorted(found.items())


@check(
    "NFC050",
    "lockout-risk",
    "warning",
    "An input policy of drop without an accept for the management port locks the operator out.",
)
def lockout_risk(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    chain = ctx.chain("input")
    if chain is None or chain.policy != "drop":
        return
    ssh = ctx.space.cubes(
        Match(protocol="tcp", dport=Ports(((ctx.management_port,) * 2,))), ct=["new", "untracked"]
    )
    if not any(accepts(r) and overlap(ssh, ctx.space.cubes(r.match)) for r in ctx.user_rules(chain)):
        origin = chain.rules[0].origin if chain.rules else Loc(ctx.ruleset.source, 1, 1)
        yield (
            origin,
            f"input drops by default and nothing accepts tcp/{ctx.management_port}: applying this "
            "can lock you out",
            f"accept tcp dport {ctx.management_port} from your admin addresses",
        )


LOOPBACK_ADDRESSES = {Family.V4: ipaddress.ip_address("127.0.0.1"), Family.V6: ipaddress.ip_address("::1")}


def _admits(match: Match, family: Family, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `match` can match a packet of `family` from `address` to itself."""
    ends = (match.saddr, match.daddr)
    return match.family in (None, family) and all(a is None or a.admits(address) for a in ends)


@check(
    "NFC051",
    "loopback-dropped",
    "warning",
    "A host whose chains drop its loopback traffic cannot talk to itself: a resolver cannot ask itself.",
)
def loopback_dropped(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for name, word in (("input", "iif"), ("output", "oif")):
        chain = ctx.chain(name)
        if chain is None or chain.policy != "drop" or any(r.role is RuleRole.LOOPBACK for r in chain.rules):
            continue
        interface = "iifname" if word == "iif" else "oifname"
        on_loopback = [
            r
            for r in ctx.user_rules(chain)
            if accepts(r)
            and ((interfaces := getattr(r.match, interface)) is None or interfaces.admits("lo"))
            and any(_admits(r.match, family, address) for family, address in LOOPBACK_ADDRESSES.items())
        ]
        if not on_loopback:
            yield (
                chain.origin,
                f"{name} has 'loopback: manual' and no rule accepts loopback traffic: the host cannot "
                "reach its own services on 127.0.0.1 and ::1",
                f"drop 'loopback: manual' (accept is the default) or add 'accept {word} lo'",
            )


@check(
    "NFC060",
    "sensitive-service-open",
    "warning",
    "Management and database ports open to every address are what scanners look for.",
)
def sensitive_service_open(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    chain = ctx.chain("input")
    for rule in ctx.user_rules(chain) if chain else []:
        if accepts(rule) and (found := _sensitive(rule.match, rule.match.dport)):
            yield rule.origin, f"{found} open to any address", "add 'from $admins' or similar"
    for nat in ctx.ruleset.nat:  # a port forward opens the port of the host it forwards to
        ports = Ports((nat.ports,)) if nat.ports else nat.match.dport
        if nat.kind == "dnat" and (found := _sensitive(nat.match, ports)):
            yield (
                nat.origin,
                f"{found} of {nat.address} forwarded from any address",
                "add 'from $admins' or similar",
            )


def _sensitive(match: Match, ports: Ports | None) -> str:
    """The sensitive services among `ports`, when `match` takes them from any address."""
    if ports is None or (match.saddr is not None and not match.saddr.negated):
        return ""
    return ", ".join(
        f"{name} ({port})"
        for port, name in SENSITIVE_PORTS.items()
        if any(lo <= port <= hi for lo, hi in ports.ranges)
    )


@check(
    "NFC070",
    "meter-mask-trap",
    "warning",
    "Per-source IPv6 meters at /128 are evaded by a host that owns a whole /64.",
)
def meter_mask_trap(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    seen = set()
    for chain in ctx.ruleset.chains:
        for rule in chain.rules:
            meter = rule.meter
            if (
                meter
                and meter.family is Family.V6
                and "ipv6 mask" in meter.defaulted
                and rule.origin not in seen
            ):
                seen.add(rule.origin)
                yield (
                    rule.origin,
                    f"meter keeps one bucket per IPv6 /128 {meter.key}: one client owns a /64 and evades it",
                    f"write 'per {meter.key}/32,/64' (or /56)",
                )


# ---------------------------------------------------------------------------
# running and reporting


CHECKS: list[Check] = sorted([*FILTER_CHECKS, *NAT_CHECKS], key=lambda each: each.code)


def lint(ruleset: Ruleset, today: dt.date | None = None, management_port: int = 22) -> list[Finding]:
    ctx = Context(ruleset, Space(ruleset), today or dt.date.today(), management_port)
    findings = {
        Finding(each.code, each.severity, message, loc, hint)
        for each in CHECKS
        for loc, message, hint in each.run(ctx)
    }  # a rule split per family is one finding
    return sorted(findings, key=lambda f: (f.loc, f.code, f.message))


def render(findings: list[Finding], fmt: str) -> str:
    """The findings as text, json, github or sarif (which lists every check)."""
    return lint_report.render(findings, fmt, CHECKS)
