"""Static checks of a policy, each a small function with a stable code.

A check receives the compiled policy and yields findings; it reasons over
the IR's match space (nfc.space), so reordering or rewording that changes
no packet's fate changes no finding."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nfc import lint_report
from nfc.errors import Loc
from nfc.ir import Chain, Family, Match, NotrackRule, Ports, Rule, RuleRole, Ruleset
from nfc.lint_report import Finding
from nfc.space import Cube, Space, interval_text, minus, overlap

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


@dataclass(frozen=True)
class Context:
    ruleset: Ruleset
    space: Space
    today: dt.date
    management_port: int

    def chain(self, name: str) -> Chain | None:
        return next((c for c in self.ruleset.chains if c.name == name), None)

    def user_rules(self, chain: Chain) -> list[Rule]:
        return [r for r in chain.rules if r.role is RuleRole.USER]

    def for_other_hosts(self, chain: Chain) -> list[Rule]:
        """The rules that decide traffic with other hosts: all but the
        loopback accept, which only sees the host talking to itself."""
        return [r for r in chain.rules if r.role is not RuleRole.LOOPBACK]

    def entries(self, chain: str) -> list[NotrackRule]:
        """The notrack rules whose packets go on to `chain`: prerouting's to
        input when addressed to the host, to forward when not; output's."""
        if chain == "output":
            return [n for n in self.ruleset.notrack if n.hook == "output"]
        other = "routed" if chain == "input" else "host"
        return [n for n in self.ruleset.notrack if n.hook == "prerouting" and n.destination != other]


# A check yields where, what and how to fix it (None: no hint).
CheckFunction = Callable[[Context], Iterator[tuple[Loc, str, str | None]]]


@dataclass(frozen=True)
class Check:
    code: str
    name: str
    severity: str
    rationale: str
    run: CheckFunction


CHECKS: list[Check] = []


def check(code: str, name: str, severity: str, rationale: str) -> Callable[[CheckFunction], CheckFunction]:
    def register(function: CheckFunction) -> CheckFunction:
        CHECKS.append(Check(code, name, severity, rationale, function))
        return function

    return register


def _ports_text(ports: Ports) -> str:
    return interval_text(ports.ranges)


def _accepts(rule: Rule) -> bool:
    return rule.verdict.kind == "accept"


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
        if not _accepts(rule) or match.protocol != "udp" or match.dport is None:
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
            _accepts(r) and overlap(requests, ctx.space.cubes(r.match)) for r in ctx.for_other_hosts(chain)
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
            _accepts(r) and overlap(cubes, ctx.space.cubes(r.match)) for r in ctx.for_other_hosts(chain)
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
            if not _accepts(rule) or "untracked" not in rule.match.ct_state:
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


def _coverage(ctx: Context, chain: Chain) -> Iterator[tuple[Rule, list[Cube], list[Rule]]]:
    """Each user rule, the part of its packets earlier rules leave to it, and
    the earlier terminal rules that take the rest."""
    earlier: list[tuple[Rule, list[Cube]]] = []
    for rule in chain.rules:
        cubes = ctx.space.cubes(rule.match)
        remaining = cubes
        takers = []
        for other, other_cubes in earlier:
            if overlap(remaining, other_cubes):
                takers.append(other)
                remaining = minus(remaining, other_cubes)
            if not remaining:
                break
        if rule.role is RuleRole.USER:
            yield rule, remaining, takers
        # a runtime set may be empty: its rule takes no packet from later ones as far as lint knows
        if _terminal(rule) and not any(
            a is not None and a.runtime for a in (rule.match.saddr, rule.match.daddr)
        ):
            earlier.append((rule, cubes))


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
        for rule, remaining, takers in _coverage(ctx, chain):
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
        for rule, remaining, takers in _coverage(ctx, chain):
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
            later = rules[rules.index(rule) + 1 :]
            if not any(
                (other.verdict.kind != chain.policy or other.meter is not None)
                and overlap(remaining, ctx.space.cubes(other.match))
                for other in later
            ):
                yield rule.origin, f"does what the chain's policy ({chain.policy}) does anyway", "delete it"


@check("NFC080", "matches-nothing", "error", "A rule whose match is empty in every family is dead text.")
def matches_nothing(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        for rule in ctx.user_rules(chain):
            if not ctx.space.cubes(rule.match):
                yield rule.origin, "matches no packet in any family", "check its 'not' and address lists"


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
    if not any(_accepts(r) and overlap(ssh, ctx.space.cubes(r.match)) for r in ctx.user_rules(chain)):
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
            if _accepts(r)
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
    if chain is None:
        return
    for rule in ctx.user_rules(chain):
        match = rule.match
        if not _accepts(rule) or match.dport is None or (match.saddr is not None and not match.saddr.negated):
            continue
        open_ports = [
            f"{name} ({port})"
            for port, name in SENSITIVE_PORTS.items()
            if any(lo <= port <= hi for lo, hi in match.dport.ranges)
        ]
        if open_ports:
            yield rule.origin, f"{', '.join(open_ports)} open to any address", "add 'from $admins' or similar"


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
