"""Compile small policies written inline in a test."""

from __future__ import annotations

import textwrap
from pathlib import Path

from nfc.backends import iptables
from nfc.backends.nft import render
from nfc.ir import Ruleset
from nfc.load import load_policy
from nfc.lower import lower
from nfc.parse import parse_policy
from nfc.target import Target

TARGET = Target(memory_bytes=8 << 30, word_bits=64)


def write_policy(directory: Path, text: str, name: str = "policy.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def ruleset_of(directory: Path, text: str) -> Ruleset:
    return lower(parse_policy(load_policy(write_policy(directory, text))), TARGET)


def nft_of(directory: Path, text: str) -> str:
    return render(ruleset_of(directory, text))


def input_rules(directory: Path, *rules: str, extra: str = "") -> str:
    """The rendered input chain body of `input_policy(*rules)`."""
    nft = nft_of(directory, input_policy(*rules, extra=extra))
    chain = nft.split("chain input {", 1)[1].split("\n\t}", 1)[0]
    return "\n".join(line.strip() for line in chain.strip().splitlines()[1:])


def iptables_of(directory: Path, text: str) -> tuple[str, str]:
    """rules.v4 and rules.v6 of a policy."""
    files = iptables.generate(ruleset_of(directory, text))
    return files[iptables.RULES_V4], files[iptables.RULES_V6]


def input_policy(*rules: str, extra: str = "") -> str:
    """A policy whose input chain holds `rules` alone: state, icmp and loopback manual."""
    body = "\n".join(f"    - {rule!r}" for rule in rules)
    # loopback after the rules keeps each rule on the line it had before loopback existed
    settings = "  policy: drop\n  state: manual\n  icmp: manual\n"
    return f"nfc: 1\n{extra}\ninput:\n{settings}  rules:\n{body}\n  loopback: manual\n"
