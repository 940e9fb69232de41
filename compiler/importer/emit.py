"""The import model → a policy file: IPv4 and IPv6 chains merged, the usual
state rules recognised as `state: auto`, raw notrack rules paired into
mirrored entries, repeated lists named in `define`, every rule commented
with the input lines it comes from.

Nothing here may widen. A rule the readers could not translate exactly is
left out when it accepts (later rules and the policy then decide, which is
never more than the input accepted) and kept without the matches nfc cannot
say when it drops or rejects (it then drops more)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace

from nfc.errors import Loc
from nfc.importer.model import HOOKS, TERMINAL, Chain, Problem, Rule, Source, flatten, join_alike, places
from nfc.importer.nat import NAT_HOOKS, read_nat, without_implied_family

FAMILY_NAMES = {"ip": "IPv4", "ip6": "IPv6"}
SET_LITERAL = re.compile(r"\{[^{}]*\}")
LOCAL_MATCH = "-m addrtype --dst-type LOCAL"


@dataclass
class Section:
    """One filter chain of the policy being written."""

    name: str
    policy: str
    state: str = "manual"
    state_locs: tuple[Loc, ...] = ()
    loopback: str = "manual"
    loopback_locs: tuple[Loc, ...] = ()
    rules: list[Rule] = field(default_factory=list)
    left_out: list[Rule] = field(default_factory=list)
    tail: list[Rule] = field(default_factory=list)  # the drop policy of one family, in an accept chain


@dataclass
class Policy:
    """What `render` writes, and what the import says about it."""

    source: Source
    notrack: list[tuple[str, str, tuple[Loc, ...]]] = field(default_factory=list)  # match, scope, input lines
    sections: list[Section] = field(default_factory=list)
    defines: dict[str, str] = field(default_factory=dict)  # name -> YAML list text
    notes: list[str] = field(default_factory=list)  # the input's mistakes: kept or fixed
    nat: dict[str, list[Rule]] = field(default_factory=dict)  # hook -> NAT rules, both families
    nat_left_out: list[Rule] = field(default_factory=list)


def build(source: Source, literal: bool = False, forward_manual: bool = False) -> Policy:
    """The policy for `source`. `literal` keeps a blanket untracked accept as
    the rule it is, instead of fixing it with `state: auto`: the policy the
    input's own mistakes are linted on. `forward_manual` keeps the forward
    chain's state rules as rules (`state: auto` would also accept what each
    dnat translated)."""
    policy = Policy(source)
    policy.defines = {name: "[" + ", ".join(values) + "]" for name, values in source.sets.items()}
    problems = source.problems
    # A family the input does not filter passes everything, as it would with only this input loaded.
    families = ["ip", "ip6"]
    per_family: dict[str, dict[str, Chain]] = {}
    for family in families:
        tables = source.families.get(family, {})
        filter_chains = flatten(tables["filter"].chains, problems) if "filter" in tables else {}
        for kind in ("mangle", "security"):
            if kind in tables:
                _unsupported_table(kind, tables[kind].chains, filter_chains, problems)
        per_family[family] = filter_chains
    entries = _notrack(source, families, problems)
    policy.notrack = entries
    nats = {family: read_nat(source, family, problems) for family in families}
    for hook in NAT_HOOKS:
        merged = _lcs_merge(nats["ip"].rules.get(hook, []), nats["ip6"].rules.get(hook, []))
        if merged:
            policy.nat[hook] = [without_implied_family(rule) for rule in merged]
    policy.nat_left_out = [rule for each in nats.values() for rule in each.left_out]
    for hook in HOOKS:
        chains = {f: per_family[f][hook] for f in families if hook in per_family[f]}
        drops = _lcs_merge(nats["ip"].drops.get(hook, []), nats["ip6"].drops.get(hook, []))
        if not chains and not drops:
            continue
        section = _merge(hook, chains, families, problems) if chains else Section(hook, "accept")
        if hook != "forward" or not forward_manual:
            _recognise_state(section, bool(entries), policy.notes, literal)
        section.rules = drops + join_alike(section.rules)
        if section.rules or section.tail or section.policy == "drop" or section.left_out:
            policy.sections.append(section)
    _name_lists(policy)
    return policy


def _unsupported_table(
    kind: str, chains: dict[str, Chain], filter_chains: dict[str, Chain], problems: list[Problem]
) -> None:
    for chain in chains.values():
        for rule in chain.rules:
            if rule.verdict in TERMINAL or rule.verdict.startswith("reject"):
                hooks = {"prerouting": ("input", "forward"), "postrouting": ("forward", "output")}.get(
                    chain.hook or "", (chain.hook or "",)
                )
                for hook in hooks:
                    if hook in filter_chains:
                        filter_chains[hook].rules.insert(
                            0, replace(rule, inexact=[*rule.inexact, f"-t {kind}"])
                        )
                problems.append(
                    Problem(
                        rule.loc,
                        f"a {rule.verdict.split()[0]} in the {kind} table",
                        "moved to the top of the filter chains it feeds",
                    )
                )
            else:
                problems.append(
                    Problem(
                        rule.loc,
                        f"a rule of the {kind} table ({', '.join(rule.inexact) or rule.verdict})",
                        "left out: it changes no verdict nfc keeps",
                    )
                )


def _resolved(rule: Rule, problems: list[Problem], hook: str) -> Rule | None:
    """The rule as the policy keeps it, or None when it is left out."""
    if "scope" in rule.fields:  # 'to one of the host's addresses': always so in input
        fields = {k: v for k, v in rule.fields.items() if k != "scope"}
        inexact = rule.inexact if hook == "input" else [*rule.inexact, "a local-destination match"]
        rule = replace(rule, fields=fields, inexact=inexact)
    if rule.verdict not in TERMINAL and not rule.verdict.startswith("reject"):
        problems.append(
            Problem(rule.loc, f"{', '.join(rule.inexact) or rule.verdict}", "left out: it changes no verdict")
        )
        return None
    if not rule.inexact or any(i.startswith("-t ") for i in rule.inexact):
        return rule
    what = ", ".join(rule.inexact)
    if rule.verdict == "accept":
        problems.append(
            Problem(
                rule.loc,
                f"nfc cannot say {what}",
                "left out: the policy does not accept what this rule accepted",
            )
        )
        return None
    problems.append(
        Problem(
            rule.loc,
            f"nfc cannot say {what}",
            f"the policy {rule.verdict.split()[0]}s more: this rule without {what}",
        )
    )
    return rule


def _family_free(rule: Rule) -> bool:
    """Whether the rule could match both families as written."""
    f = rule.fields
    return not any(k in f for k in ("saddr", "daddr", "icmp")) and f.get("proto") not in ("icmp", "icmpv6")


def _merge(hook: str, chains: dict[str, Chain], families: list[str], problems: list[Problem]) -> Section:
    """One section from each family's chain. Rules of different families never
    match the same packet, so any interleaving that keeps each family's order
    is exact: the longest common subsequence of the two becomes rules for both."""
    lists = {
        f: [r for r in (_resolved(x, problems, hook) for x in c.rules) if r is not None]
        for f, c in chains.items()
    }
    left_out = list(
        {r.loc: r for c in chains.values() for r in c.rules if _resolved(r, [], hook) is None}.values()
    )
    policies = {c.policy for c in chains.values()}
    complete = len(chains) == len(families)  # a family without this chain passes everything
    section = Section(hook, "drop" if policies == {"drop"} and complete else "accept", left_out=left_out)
    section.rules = _lcs_merge(lists.get("ip", []), lists.get("ip6", []))
    if section.policy == "accept":
        for family, chain in sorted(chains.items()):
            if chain.policy == "drop":
                section.tail.append(Rule(chain.loc, "drop", {"family": family}))
    return section


def _key(rule: Rule) -> str | None:
    if not _family_free(rule):
        return None
    if "limit" in rule.fields and " per " not in rule.fields["limit"]:
        # a global limit is one bucket for both families only where one input
        # line (an inet table's) says so; iptables keeps one per family
        return f"{rule.loc} {rule.text()}"
    return rule.text()


def _lcs_merge(v4: list[Rule], v6: list[Rule]) -> list[Rule]:
    """Both families' rules in one list: the blocks the two have in common
    (difflib's, in order) once, for both; the rest each with its family."""
    keys4 = [_key(r) or f"\0ip {i}" for i, r in enumerate(v4)]  # a rule that may not merge matches nothing
    keys6 = [_key(r) or f"\0ip6 {i}" for i, r in enumerate(v6)]
    out: list[Rule] = []
    i = j = 0
    for block in difflib.SequenceMatcher(None, keys4, keys6, autojunk=False).get_matching_blocks():
        out += [_with_family(r, "ip") for r in v4[i : block.a]]
        out += [_with_family(r, "ip6") for r in v6[j : block.b]]
        for k in range(block.size):
            four, six = v4[block.a + k], v6[block.b + k]
            out.append(replace(four, locs=tuple(sorted({*four.locs, six.loc, *six.locs}))))
        i, j = block.a + block.size, block.b + block.size
    return out


def _with_family(rule: Rule, family: str) -> Rule:
    if not _family_free(rule):
        return rule
    return replace(rule, fields={"family": family, **rule.fields})


def _recognise_state(section: Section, has_notrack: bool, notes: list[str], literal: bool) -> None:
    """`state: auto` and `loopback: accept` where the input's chain starts the usual way.

    The state rule must be an unconditional accept of established,related
    (and perhaps untracked) with only plain accepts before it: moving an accept
    before other accepts changes no verdict. `state: auto` adds `ct state
    invalid drop` (stricter). It accepts untracked packets only where they
    answer a notrack entry: a subset of a blanket untracked accept, so that
    one is replaced (a fix); without a blanket one in the input, auto would
    accept untracked answers the input dropped, so the chain stays manual."""
    rules = section.rules
    barrier = next(
        (
            i
            for i, r in enumerate(rules)
            if (r.verdict != "accept" or "limit" in r.fields) and not _invalid_drop(r)
        ),
        len(rules),
    )
    lo_field = {"input": "iif", "output": "oif"}.get(section.name)
    # loopback: accept comes before the invalid drop too
    lo_barrier = next(
        (i for i, r in enumerate(rules) if r.verdict != "accept" or "limit" in r.fields), len(rules)
    )
    for index, rule in enumerate(rules[:lo_barrier]):
        if lo_field and rule.fields == {lo_field: "lo"}:
            section.loopback, section.loopback_locs = "accept", rule.all_locs()
            del rules[index]
            barrier -= 1
            break
    for index, rule in enumerate(rules[:barrier]):
        states = set(rule.fields.get("ct", "").split(","))
        if set(rule.fields) != {"ct"} or not {"established", "related"} <= states:
            continue
        if not states <= {"established", "related", "untracked"}:
            continue
        if literal and "untracked" in states:
            return
        if "untracked" not in states and has_notrack:
            where = _lines(rule.all_locs())
            notes.append(
                f"keeps: {where} accepts established,related but not the answers of the untracked flows; "
                f"the {section.name} chain stays 'state: manual' (lint names what it drops)"
            )
            return
        section.state, section.state_locs = "auto", rule.all_locs()
        del rules[index]
        # an invalid drop next to it is what auto adds anyway
        for near in (index - 1, index):
            if 0 <= near < len(rules) and _invalid_drop(rules[near]):
                section.state_locs = tuple(sorted({*section.state_locs, *rules[near].all_locs()}))
                del rules[near]
                states.add("invalid")
                break
        where = _lines(section.state_locs)
        if "untracked" in states:
            notes.append(
                f"fixes: {where} accepts every untracked packet ({section.name}), which lets untracked "
                "requests past every later rule, source restriction and rate limit; 'state: auto' accepts "
                "only the untracked packets that answer a notrack entry, the requests meet the rules"
            )
        if "invalid" not in states:
            notes.append(
                f"stricter: 'state: auto' in {section.name} drops ct state invalid packets, "
                f"which {where} let through to the rules"
            )
        return


def _invalid_drop(rule: Rule) -> bool:
    """`ct state invalid drop`: disjoint from every state accept, so accepts move past it freely."""
    return rule.verdict == "drop" and rule.fields == {"ct": "invalid"} and not rule.log


def _notrack(
    source: Source, families: list[str], problems: list[Problem]
) -> list[tuple[str, str, tuple[Loc, ...]]]:
    """Mirrored entries from raw PREROUTING/OUTPUT notrack rules. An entry in
    nfc untracks both directions; a raw rule whose mirror image is missing is
    reported (the entry untracks that direction too)."""
    found: dict[str, dict[str, tuple[Loc, ...]]] = {}
    scopes: dict[str, str] = {}  # PREROUTING with the host's own addresses only: scope host
    for family in families:
        raw = source.families.get(family, {}).get("raw")
        if raw is None:
            continue
        pre = raw.chains["PREROUTING"].rules if "PREROUTING" in raw.chains else []
        out = raw.chains["OUTPUT"].rules if "OUTPUT" in raw.chains else []
        for chain in raw.chains.values():
            if chain.hook is None and chain.rules:
                for rule in chain.rules:
                    problems.append(
                        Problem(
                            rule.loc,
                            "a user chain of the raw table",
                            "left out: the policy does not untrack these packets",
                        )
                    )
        entries = found.setdefault(family, {})
        unpaired_out = list(out)
        for rule in pre + out:
            if rule.verdict != "notrack" or rule.inexact:
                if rule in unpaired_out:
                    unpaired_out.remove(rule)
                problems.append(
                    Problem(
                        rule.loc,
                        f"raw table: {', '.join(rule.inexact) or rule.verdict}",
                        "left out: the policy does not untrack these packets",
                    )
                )
        for rule in pre:
            if rule.verdict != "notrack" or rule.inexact:
                continue
            fields = {k: v for k, v in rule.fields.items() if k != "scope"}
            mirror = _mirror(fields)
            partner = next(
                (o for o in unpaired_out if o.verdict == "notrack" and o.fields == mirror and not o.inexact),
                None,
            )
            locs = rule.all_locs()
            if partner is None:
                problems.append(
                    Problem(
                        rule.loc,
                        "a raw PREROUTING notrack rule without its mirror image in OUTPUT",
                        "the entry untracks both directions",
                    )
                )
            else:
                unpaired_out.remove(partner)
                locs = tuple(sorted({*locs, partner.loc}))
            text = rule.match_text()
            entries[text] = tuple(sorted({*entries.get(text, ()), *locs}))
            scopes.setdefault(text, "host" if rule.fields.get("scope") == "host" else "all")
        for rule in unpaired_out:
            problems.append(
                Problem(
                    rule.loc,
                    "a raw OUTPUT notrack rule without its mirror image in PREROUTING",
                    "the entry untracks both directions",
                )
            )
            text = Rule(rule.loc, "", _mirror(rule.fields)).match_text()
            entries[text] = tuple(sorted({*entries.get(text, ()), rule.loc}))
    result: list[tuple[str, str, tuple[Loc, ...]]] = []
    where: dict[str, set[Loc]] = {}
    for entries in found.values():
        for text, locs in entries.items():
            where.setdefault(text, set()).update(locs)
    for text in sorted(where, key=lambda t: min(where[t])):  # in the order of the input
        having = [f for f in families if text in found.get(f, {})]
        written = text
        if len(having) < len(families) and not re.search(r"\b(ip|ip6|from|to|icmp|icmpv6)\b", text):
            written = f"{having[0]} {text}"
        result.append((written, scopes.get(text, "all"), tuple(sorted(where[text]))))
    return result


def _mirror(fields: dict[str, str]) -> dict[str, str]:
    swap = {
        "dport": "sport",
        "sport": "dport",
        "saddr": "daddr",
        "daddr": "saddr",
        "iif": "oif",
        "oif": "iif",
    }
    return {swap.get(k, k): v for k, v in fields.items()}


def _lines(locs: tuple[Loc, ...]) -> str:
    return places(locs)


def _name_lists(policy: Policy) -> None:
    """A list written in two or more places gets a name in `define`."""
    counts: dict[str, int] = {}
    texts = [r.text() for s in policy.sections for r in s.rules] + [t for t, _, _ in policy.notrack]
    texts += [r.text() for rules in policy.nat.values() for r in rules]
    for text in texts:
        for literal in SET_LITERAL.findall(text):
            counts[literal] = counts.get(literal, 0) + 1
    names: dict[str, str] = {}
    for literal, count in counts.items():
        if count < 2:
            continue
        kind = "addresses" if any(c in literal for c in ".:") else "ports"
        name = f"{kind}_{sum(1 for n in names.values() if n.startswith(kind)) + 1}"
        names[literal] = name
        policy.defines[name] = "[" + literal[1:-1] + "]"
    if not names:
        return

    def named(fields: dict[str, str]) -> dict[str, str]:
        return {k: f"${names[v]}" if v in names else _replace_negated(v, names) for k, v in fields.items()}

    for section in policy.sections:
        section.rules = [replace(r, fields=named(r.fields)) for r in section.rules]
    for hook, rules in policy.nat.items():
        policy.nat[hook] = [replace(r, fields=named(r.fields)) for r in rules]
    policy.notrack = [(_replace_all(text, names), scope, locs) for text, scope, locs in policy.notrack]


def _replace_negated(value: str, names: dict[str, str]) -> str:
    if value.startswith("not ") and value[4:] in names:
        return f"not ${names[value[4:]]}"
    return value


def _replace_all(text: str, names: dict[str, str]) -> str:
    for literal, name in names.items():
        text = text.replace(literal, f"${name}")
    return text
