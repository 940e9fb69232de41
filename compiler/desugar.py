"""The lowering passes that turn checked rules into the IR's plain rules:
notrack entries mirrored into both directions, the rules that `state: auto`
and `icmp: essential` imply, and each rule split by family where a keyed
meter or a reject type needs one copy per family."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from nfc import vocab
from nfc.check import RuleChecker, check_comment, check_log, check_verdict
from nfc.context import Answer, Lowering
from nfc.ir import (
    BOTH_FAMILIES,
    Addresses,
    Destination,
    Family,
    Interfaces,
    Match,
    NotrackHook,
    NotrackRule,
    Rule,
    RuleRole,
    Verdict,
)
from nfc.load import ChainSection
from nfc.syntax import ParsedRule

LOOPBACK = Interfaces(("lo",))


def mirror_notrack(lowering: Lowering) -> None:
    """Raw-table rules for both directions of each entry's flows, and the
    answers each entry implies, with the chain that sees those answers.

    The host's own flows (scope host) arrive in prerouting addressed to the
    host and leave through output; forwarded flows (scope routed) pass
    prerouting both ways, addressed elsewhere. Scope all is both.

    An entry naming `sport` describes a client of that remote port: its
    answers arrive as written (in input for the host, in forward for routed
    flows). An entry naming only `dport` describes a service: its answers
    are the mirror image (in output for the host, in forward for routed
    flows). An entry with neither implies no answers."""
    rules: list[NotrackRule] = []
    for entry in lowering.tree.notrack:
        text, node = entry.text, entry.node
        comment = check_comment(text, node)
        checker = RuleChecker(lowering.defines, lowering.objects, node, chain=None)
        parts = checker.check_matches()
        origin = text.loc
        host, routed = text.scope in ("host", "all"), text.scope in ("routed", "all")
        for match in checker.matches(parts, parts.families):
            mirrored = match.mirrored()
            places: list[tuple[NotrackHook, Match, Destination | None]] = [
                ("prerouting", match, None if host and routed else "host" if host else "routed")
            ]
            if host:
                places.append(("output", mirrored, None))
                to_itself = _sent_to_itself(match)
                if to_itself is not None and to_itself != mirrored:
                    places.append(("output", to_itself, None))
            if routed:
                places.append(("prerouting", mirrored, "routed"))
            rules += [NotrackRule(h, m, origin, comment, text.expires, d) for h, m, d in places]
            answers = match if match.sport is not None else mirrored if match.dport is not None else None
            if answers is not None and host:
                lowering.answers.append(Answer(answers, origin, "input" if answers is match else "output"))
            if answers is not None and routed:
                lowering.answers.append(Answer(answers, origin, "forward"))
    rules.sort(key=lambda r: r.hook != "prerouting")
    lowering.notrack.extend(rules)


def _sent_to_itself(match: Match) -> Match | None:
    """The entry's own direction as the host sends it to itself, or None if
    the entry names an inbound interface other than lo.

    A health check or a resolver asking itself sends its request through
    output and lo. Conntrack makes the entry in output, so prerouting's
    notrack comes too late for it: untracked there, the answers alone would
    leave every such connection half-tracked ([UNREPLIED], then invalid)."""
    if match.iifname is not None and not match.iifname.admits(LOOPBACK.names[0]):
        return None
    return replace(match, iifname=None, oifname=LOOPBACK)


def add_implied_rules(lowering: Lowering) -> None:
    """What each chain starts with: the loopback accept, the essential ICMP
    accepts, then the connection-state rules and the accepts for untracked
    answers."""
    for name, section in lowering.tree.source.chains.items():
        rules = lowering.chain_rules.setdefault(name, [])
        if section.loopback == "accept" and (section.policy == "drop" or section.rules):
            # first, so that no state rule, meter or drop sees the host's talk with itself
            loopback = Match(iifname=LOOPBACK) if name == "input" else Match(oifname=LOOPBACK)
            rules.append(Rule(loopback, Verdict("accept"), section.loopback_loc, role=RuleRole.LOOPBACK))
        if section.icmp == "essential":
            rules.extend(_essential_icmp(section))
        if section.has_state_rules:
            origin = section.state_loc
            rules.append(Rule(Match(ct_state=("invalid",)), Verdict("drop"), origin, role=RuleRole.STATE))
            rules.append(
                Rule(
                    Match(ct_state=("established", "related")), Verdict("accept"), origin, role=RuleRole.STATE
                )
            )
            for answer in lowering.answers:
                if answer.chain == name:
                    rules.append(
                        Rule(
                            replace(answer.match, ct_state=("untracked",)),
                            Verdict("accept"),
                            answer.origin,
                            role=RuleRole.UNTRACKED_ANSWER,
                        )
                    )


def _essential_icmp(section: ChainSection) -> list[Rule]:
    origin = section.icmp_loc
    v6_types = vocab.ESSENTIAL_ICMPV6_ERRORS + vocab.ESSENTIAL_ICMPV6_DISCOVERY[section.name]
    mld = []
    if section.name in vocab.ESSENTIAL_MLD_CHAINS:
        link_local = Addresses(Family.V6, (ipaddress.IPv6Network(vocab.LINK_LOCAL_V6),))
        mld.append(
            Rule(
                Match(family=Family.V6, protocol="icmpv6", saddr=link_local, icmp_types=vocab.ESSENTIAL_MLD),
                Verdict("accept"),
                origin,
                role=RuleRole.ESSENTIAL_ICMP,
            )
        )
    return [
        Rule(
            Match(family=Family.V4, protocol="icmp", icmp_types=vocab.ESSENTIAL_ICMP_ERRORS),
            Verdict("accept"),
            origin,
            role=RuleRole.ESSENTIAL_ICMP,
        ),
        Rule(
            Match(family=Family.V6, protocol="icmpv6", icmp_types=v6_types),
            Verdict("accept"),
            origin,
            role=RuleRole.ESSENTIAL_ICMP,
        ),
        *mld,
    ]


def lower_rules(lowering: Lowering) -> None:
    """Each chain's own rules, in order, after what the chain starts with."""
    for name, rules in lowering.tree.chains.items():
        chain_rules = lowering.chain_rules.setdefault(name, [])
        for ordinal, rule in enumerate(rules, start=1):
            chain_rules += _lower_rule(lowering, rule, name, ordinal)


def _lower_rule(lowering: Lowering, rule: ParsedRule, chain: str, ordinal: int) -> list[Rule]:
    text, node = rule.text, rule.node
    checker = RuleChecker(lowering.defines, lowering.objects, node, chain)
    parts = checker.check_matches()
    verdict = check_verdict(node, parts)
    limit = node.limit
    # A keyed meter holds addresses of one family, and some reject types
    # differ between ICMP and ICMPv6: such rules get one copy per family.
    if (limit is not None and limit.per is not None) or verdict.reject_with in vocab.REJECT_NEEDS_FAMILY:
        families = [f for f in BOTH_FAMILIES if f in parts.families]
        matches = [checker.match_for(parts, f) for f in families]
    else:
        matches = checker.matches(parts, parts.families)
    log = None if node.log is None else check_log(node.log)
    comment = check_comment(text, node)
    origin = text.node.loc  # text.loc, without the property's call: once per rule
    if limit is not None and limit.per is None and limit.name is None and len(matches) > 1:
        # One rule split in several still has one global bucket.
        limit = replace(limit, name=f"{chain}_{ordinal}")
    return [
        Rule.of(
            match=match,
            verdict=verdict,
            origin=origin,
            meter=None if limit is None else lowering.objects.meter(limit, chain, ordinal, match.family),
            log=log,
            counter=node.counter,
            comment=comment,
            expires=text.expires,
            role=RuleRole.USER,
        )
        for match in matches
    ]
