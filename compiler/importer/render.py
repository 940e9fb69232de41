"""The imported policy as YAML text: deterministic, one rule a line, each
with a comment naming the input lines it comes from."""

from __future__ import annotations

import re

from nfc.errors import Loc
from nfc.importer.emit import Policy, Section
from nfc.importer.model import Problem, Rule, places

PLAIN = re.compile(r"[a-z$][^'\"]*")


def render(policy: Policy, problems: list[Problem]) -> str:
    source = policy.source
    families = " and ".join({"ip": "IPv4", "ip6": "IPv6"}[f] for f in sorted(source.families)) or "no family"
    lines = [
        f"# Imported by 'nfc import' from {source.path} ({source.format}, {families}).",
        "# Each rule's comment names the input line(s) it comes from.",
    ]
    if problems:
        lines.append(f"# {len(problems)} construct(s) could not be translated exactly; this policy is")
        lines.append("# stricter there (see each line's note and nfc import's report).")
    missing = [n for f, n in (("ip", "IPv4"), ("ip6", "IPv6")) if f not in source.families]
    if missing:
        lines.append(f"# The input does not filter {missing[0]}: this policy lets it pass, as the input did.")
    lines += ["nfc: 1"]
    if policy.defines:
        lines.append("define:")
        for name, value in policy.defines.items():
            declared = source.set_locs.get(name)
            lines.append(f"  {name}: {value}" + (f"  # {_where((declared,))}" if declared else ""))
    if policy.notrack:
        lines += ["conntrack:", "  notrack:"]
        for text, scope, locs in policy.notrack:
            lines.append(f"    - {{rule: {_quoted(text, flow=True)}, scope: {scope}}}  # {_where(locs)}")
    if policy.nat or policy.nat_left_out:
        lines += _nat(policy, problems)
    for section in policy.sections:
        lines += _section(section, problems)
    return "\n".join(lines) + "\n"


def _section(section: Section, problems: list[Problem]) -> list[str]:
    lines = [f"{section.name}:", f"  policy: {section.policy}"]
    state_note = f"  # {_where(section.state_locs)}" if section.state_locs else ""
    lines.append(f"  state: {section.state}{state_note}")
    if section.name != "forward":
        loop_note = f"  # {_where(section.loopback_locs)}" if section.loopback_locs else ""
        lines.append(f"  loopback: {section.loopback}{loop_note}")
    lines.append("  icmp: manual")
    notes = {p.loc.line: p for p in problems}
    left_out = sorted(section.left_out, key=lambda r: r.loc)
    if not section.rules and not left_out and not section.tail:
        return lines
    lines.append("  rules:")
    pending = list(left_out)
    for rule in section.rules:
        while pending and pending[0].loc < rule.loc:
            lines.append(_left_out(pending.pop(0), notes))
        lines.append(f"    - {_quoted(rule.text())}  # {_where(rule.all_locs())}{_note(rule, notes)}")
    lines += [_left_out(rule, notes) for rule in pending]
    for rule in section.tail:
        family = {"ip": "IPv4", "ip6": "IPv6"}[rule.fields["family"]]
        lines.append(f"    - {rule.text()}  # {_where(rule.all_locs())}: the {family} chain's policy")
    return lines


def _nat(policy: Policy, problems: list[Problem]) -> list[str]:
    """The NAT rules, prerouting's then postrouting's, each in input order; a
    comment at the place of each rule left out."""
    notes = {p.loc.line: p for p in problems}
    rules = [rule for hook in ("prerouting", "postrouting") for rule in policy.nat.get(hook, [])]
    pending = sorted(policy.nat_left_out, key=lambda r: r.loc)
    lines = ["nat:"]
    for rule in rules:
        while pending and pending[0].loc < rule.loc:
            lines.append(_left_out(pending.pop(0), notes, "  "))
        lines.append(f"  - {_quoted(rule.text())}  # {_where(rule.all_locs())}")
    lines += [_left_out(rule, notes, "  ") for rule in pending]
    if not rules:
        lines.append("  []")
    return lines


def _left_out(rule: Rule, notes: dict[int, Problem], indent: str = "    ") -> str:
    problem = notes.get(rule.loc.line)
    why = f": {problem.message}" if problem else ""
    return f"{indent}# left out {_where(rule.all_locs())}{why}"


def _note(rule: Rule, notes: dict[int, Problem]) -> str:
    if rule.note is not None:
        return f" ({rule.note})"
    if not rule.inexact:
        return ""
    return f" (stricter: without {', '.join(rule.inexact)})"


def _quoted(text: str, flow: bool = False) -> str:
    """`text` as a YAML scalar: plain where YAML reads it back as it is."""
    special = ": " in text or " #" in text or text.endswith(":") or (flow and any(c in text for c in ",{}[]"))
    if PLAIN.fullmatch(text) and not special:
        return text
    return "'" + text.replace("'", "''") + "'"


def _where(locs: tuple[Loc, ...]) -> str:
    return places(locs)
