"""`nfc import`: an existing iptables-save / ip6tables-save file, or an
`nft list ruleset` (text or -j JSON), turned into a policy.

One reader per input format fills the import model (`model`); `emit`
decides the policy's shape and `render` writes it. The import never widens:
what it cannot translate exactly is reported as a `Problem` and the policy
is stricter there."""

from __future__ import annotations

from typing import NamedTuple

from nfc.errors import Loc, PolicyError
from nfc.importer import emit, iptables, nft, nft_json, render
from nfc.importer.model import Problem

FORMATS = ("iptables-save", "nft")


class Translation(NamedTuple):
    policy: str  # the policy's YAML text
    problems: list[Problem]  # what could not be translated exactly, in input order
    notes: list[str]  # the input's mistakes the policy fixes or keeps
    literal: str  # the policy with the input's blanket untracked accepts as they were


def detect(path: str, text: str) -> str:
    """The input's format: 'iptables-save', 'nft' (text) or 'nft-json'."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and "tables-save" not in stripped):
            continue
        if stripped.startswith("{"):
            return "nft-json"
        if stripped.startswith(("*", ":", "-A ", "COMMIT")) or "tables-save" in stripped:
            return "iptables-save"
        if stripped.startswith(("table ", "flush ", "add ", "define ", "include ")):
            return "nft"
        break
    raise PolicyError(
        Loc(path, 1, 1), "neither iptables-save output nor an nft ruleset", "name the format with --from"
    )


def translate(path: str, text: str, source_format: str | None = None) -> Translation:
    """The policy for the ruleset `text` read from `path`; PolicyError on bad input."""
    kind = detect(path, text) if source_format is None else source_format
    if kind == "nft" and text.lstrip().startswith("{"):
        kind = "nft-json"
    if kind == "iptables-save":
        source = iptables.read(path, text)
    elif kind == "nft-json":
        nft_text, positions = nft_json.to_text(path, text)
        source = nft.read(path, nft_text, "nft -j", positions)
    else:
        source = nft.read(path, text, "nft")
    policy = emit.build(source)
    problems = sorted(set(source.problems), key=lambda p: (p.loc, p.message))
    literal = render.render(emit.build(source, literal=True), problems)
    return Translation(render.render(policy, problems), problems, policy.notes, literal)
