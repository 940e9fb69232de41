"""What every backend shares."""

from __future__ import annotations

import os

from nfc.errors import Loc, printable
from nfc.ir import Network, Rule, RuleRole, Ruleset

ROLE_NOTES = {
    RuleRole.ESSENTIAL_ICMP: "icmp essential",
    RuleRole.STATE: "state auto",
    RuleRole.UNTRACKED_ANSWER: "answers of notrack entry",
    RuleRole.LOOPBACK: "loopback accept",
    RuleRole.DNAT_FORWARD: "dnat forward",
}


def rule_note(rule: Rule) -> str | None:
    """The text after FILE:LINE in a generated rule's comment."""
    return rule.comment if rule.role is RuleRole.USER else ROLE_NOTES[rule.role]


def network_text(network: Network) -> str:
    """A network as both tools write it: a host without its /32 or /128."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def origin_label(ruleset: Ruleset, origin: Loc, limit: int) -> str:
    """`FILE:LINE` for a generated comment, FILE relative to the policy's directory."""
    base = os.path.dirname(ruleset.source)
    path = os.path.relpath(origin.file, base) if base else origin.file
    line = f":{origin.line}"
    label = printable(path, limit) + line
    if len(label.encode()) > limit:
        name = printable(os.path.basename(origin.file), limit)
        while len((name + line).encode()) > limit:
            name = name[1:]
        label = name + line
    return label
