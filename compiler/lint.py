"""Static checks of a policy, each a small function with a stable code.

A check receives the compiled policy and yields findings; it reasons over
the IR's match space (nfc.space), so reordering or rewording that changes
no packet's fate changes no finding. The hygiene checks are here; the
others, by subject, in nfc.lint_conntrack, nfc.lint_reach and nfc.lint_nat."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator

from nfc import lint_report
from nfc.collector import collector_paused
from nfc.errors import Loc
from nfc.ir import Family, Match, Ports, RuleRole, Ruleset
from nfc.lint_conntrack import CONNTRACK_CHECKS
from nfc.lint_nat import NAT_CHECKS
from nfc.lint_reach import REACH_CHECKS
from nfc.lint_registry import Check, Context, accepts, filed_in
from nfc.lint_report import Finding
from nfc.space import Space, overlap

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
SOON = dt.timedelta(days=14)


HYGIENE_CHECKS: list[Check] = []
check = filed_in(HYGIENE_CHECKS)


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
    if not any(accepts(r) and overlap(ssh, ctx.cubes(r.match)) for r in ctx.user_rules(chain)):
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


CHECKS: list[Check] = sorted(
    [*CONNTRACK_CHECKS, *REACH_CHECKS, *HYGIENE_CHECKS, *NAT_CHECKS], key=lambda each: each.code
)


def lint(ruleset: Ruleset, today: dt.date | None = None, management_port: int = 22) -> list[Finding]:
    ctx = Context(ruleset, Space(ruleset), today or dt.date.today(), management_port)
    with collector_paused():
        findings = {
            Finding(each.code, each.severity, message, loc, hint)
            for each in CHECKS
            for loc, message, hint in each.run(ctx)
        }  # a rule split per family is one finding
    return sorted(findings, key=lambda f: (f.loc, f.code, f.message))


def render(findings: list[Finding], fmt: str) -> str:
    """The findings as text, json, github or sarif (which lists every check)."""
    return lint_report.render(findings, fmt, CHECKS)
