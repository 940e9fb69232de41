"""The nat table (iptables) or `type nat` chains (nft) → the policy's `nat`
list, never widening.

For NAT, widening means a connection translated otherwise than the input
translated it, or not at all where the input translated it (a destination
NAT left out would let the filter chains decide on the untranslated packet,
which may reach a service of the host). So a NAT rule nfc cannot say
exactly is left out, and the filter chains it feeds drop the new
connections it would have translated (`drop ct state new` with its
matches): such a connection fails instead of passing translated otherwise.
A later NAT rule of the same hook that may take the same connections is
left out the same way, since without the first rule it would translate
them. Connections no reported rule could take are translated as before."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from nfc.errors import PolicyError
from nfc.importer.model import Chain, Problem, Rule, Source, flatten, places

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT_HOOKS = ("prerouting", "postrouting")
ACTIONS = {"prerouting": ("dnat", "redirect"), "postrouting": ("masquerade", "snat")}
# The filter chains that see a hook's packets after it, where a left-out rule's connections are dropped.
FEEDS = {
    "prerouting": ("input", "forward"),
    "postrouting": ("forward", "output"),
    "input": ("input",),
    "output": ("output",),
}
DROPPED = "the policy drops the new connections it would translate"


@dataclass
class FamilyNat:
    """One family's NAT: the rules kept per hook, and the drops per filter chain."""

    rules: dict[str, list[Rule]] = field(default_factory=dict)
    drops: dict[str, list[Rule]] = field(default_factory=dict)
    left_out: list[Rule] = field(default_factory=list)


def read_nat(source: Source, family: str, problems: list[Problem]) -> FamilyNat:
    """The family's nat chains, flattened, as kept rules and drops."""
    result = FamilyNat()
    table = source.families.get(family, {}).get("nat")
    if table is None:
        return result
    for chain in table.chains.values():
        if chain.hook is not None and chain.policy != "accept":
            raise PolicyError(
                chain.loc,
                f"the nat chain {chain.name} has policy {chain.policy.upper()}",
                "nfc's NAT does not filter: drop these packets in the filter table",
            )
    for hook, chain in sorted(flatten(table.chains, problems).items(), key=lambda c: c[1].loc):
        _read_chain(hook, chain, result, problems)
    return result


def _read_chain(hook: str, chain: Chain, result: FamilyNat, problems: list[Problem]) -> None:
    blocking: list[Rule] = []  # left-out rules that end the chain for their connections
    kept = result.rules.setdefault(hook, [])
    for rule in chain.rules:
        kind = rule.verdict.split()[0]
        if kind in ("nothing", "log"):
            problems.append(
                Problem(rule.loc, ", ".join(rule.inexact) or kind, "left out: it translates nothing")
            )
            continue
        reason = _why_not(hook, rule, kind)
        if reason is None:
            earlier = next((b for b in blocking if not _disjoint(b, rule)), None)
            if earlier is None:
                kept.append(rule)
                continue
            reason = (
                f"this NAT rule may take connections that the rule at {places(earlier.all_locs())} "
                "decides first, and nfc cannot say that one"
            )
        result.left_out.append(rule)
        blocking.append(rule)
        if kind == "accept":  # the input leaves these connections untranslated: so does the policy
            problems.append(
                Problem(rule.loc, reason, "left out; later NAT rules that may take its connections too")
            )
            continue
        problems.append(Problem(rule.loc, reason, f"left out: {DROPPED}"))
        for filter_hook in FEEDS.get(hook, ()):
            result.drops.setdefault(filter_hook, []).append(_drop(rule, filter_hook))


def _why_not(hook: str, rule: Rule, kind: str) -> str | None:
    """Why nfc's `nat` cannot say `rule` exactly, or None."""
    if hook not in NAT_HOOKS:
        return f"NAT in the {hook} chain (nfc translates in prerouting and postrouting only)"
    if kind == "accept":
        return "an ACCEPT (or RETURN) in the nat table: nfc's NAT has no exceptions"
    if rule.inexact:
        return f"nfc cannot say {', '.join(rule.inexact)}"
    if kind not in ACTIONS[hook]:
        return f"{rule.verdict} in the nat table's {hook}"
    if kind != "masquerade" and " to " not in rule.verdict:
        return f"{kind} without a target nfc can say"
    if "scope" in rule.fields:
        return "a NAT rule for the host's own addresses only (-m addrtype, fib daddr type local)"
    if "ct" in rule.fields or "ctstatus" in rule.fields or "limit" in rule.fields:
        return "a NAT rule with a conntrack or limit match"
    return None


def _drop(rule: Rule, filter_hook: str) -> Rule:
    """The drop of the new connections `rule` would have translated, in `filter_hook`."""
    keep = ("family", "proto", "dport", "sport", "saddr", "daddr", "iif", "oif")
    fields = {k: v for k, v in rule.fields.items() if k in keep}
    if filter_hook == "output":
        fields.pop("iif", None)
    fields["ct"] = "new"
    return Rule(rule.loc, "drop", fields, locs=rule.locs, note="what this NAT rule would translate")


def without_implied_family(rule: Rule) -> Rule:
    """A dnat or snat names its address's family: no 'ip'/'ip6' word is needed."""
    if " to " in rule.verdict and rule.verdict.split()[0] in ("dnat", "snat"):
        return replace(rule, fields={k: v for k, v in rule.fields.items() if k != "family"})
    return rule


def _disjoint(a: Rule, b: Rule) -> bool:
    """Whether no connection can match both rules (False when unsure)."""
    for key in ("family", "proto"):
        if key in a.fields and key in b.fields and a.fields[key] != b.fields[key]:
            return True
    for key in ("iif", "oif"):
        x, y = a.fields.get(key), b.fields.get(key)
        if x and y and x != y and not any(c in x + y for c in "*{$"):
            return True
    for key in ("dport", "sport"):
        ports, others = _ranges(a.fields.get(key)), _ranges(b.fields.get(key))
        if ports and others and not any(p[0] <= q[1] and q[0] <= p[1] for p in ports for q in others):
            return True
    for key in ("saddr", "daddr"):
        nets, other_nets = _networks(a.fields.get(key)), _networks(b.fields.get(key))
        if nets and other_nets and not any(_overlap(n, m) for n in nets for m in other_nets):
            return True
    return False


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


def _items(value: str | None) -> list[str] | None:
    if value is None or value.startswith(("not ", "$")):
        return None
    return [item.strip() for item in value.strip("{}").split(",")]


def _ranges(value: str | None) -> list[tuple[int, int]] | None:
    items = _items(value)
    if items is None or not all(i.replace("-", "").isdigit() for i in items):
        return None
    return [(int(i.partition("-")[0]), int(i.partition("-")[2] or i.partition("-")[0])) for i in items]


def _networks(value: str | None) -> list[Network] | None:
    items = _items(value)
    try:
        return [ipaddress.ip_network(i, strict=False) for i in items] if items else None
    except ValueError:
        return None
