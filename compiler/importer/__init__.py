"""`nfc import`: an existing iptables-save / ip6tables-save file, or an
`nft list ruleset` (text or -j JSON), turned into a policy.

One reader per input format fills the import model (`model`); `emit`
decides the policy's shape and `render` writes it; `review` says what lint
finds on it, and on the input as it was. The import never widens:
what it cannot translate exactly is reported as a `Problem` and the policy
is stricter there."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import nfc.diff
from nfc.errors import Loc, PolicyError
from nfc.importer import emit, iptables, nft, nft_json, render
from nfc.importer.model import Problem
from nfc.ir import Ruleset
from nfc.load import load_policy
from nfc.lower import lower
from nfc.parse import parse_policy
from nfc.target import Target

FORMATS = ("iptables-save", "nft")
# An iptables-save of 100000 rules is about 10 MiB: this bounds a stray device, not a real ruleset.
MAX_RULESET_BYTES = 256 * 1024 * 1024


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
    forward_manual = _dnat_forward_widens(policy, problems)
    if forward_manual:
        policy = emit.build(replace(source, problems=[]), forward_manual=True)
        policy.notes.append(
            "keeps: the forward chain stays 'state: manual' with the input's state rules: 'state: auto' "
            "would also accept the connections each dnat translates, which the input's forward does not"
        )
    literal = render.render(emit.build(replace(source, problems=[]), True, forward_manual), problems)
    return Translation(render.render(policy, problems), problems, policy.notes, literal)


def _dnat_forward_widens(policy: emit.Policy, problems: list[Problem]) -> bool:
    """Whether `state: auto` in forward accepts more than the input's forward
    did: it accepts what each dnat translated, which the input's forward may
    not. The kernel-free analysis of `nfc diff` compares the policy with
    its forward chain in `state: manual` (the input's state rules as rules).
    When in doubt (the policy does not compile here), the chain stays manual."""
    forward = next((s for s in policy.sections if s.name == "forward"), None)
    dnats = [r for r in policy.nat.get("prerouting", []) if r.verdict.startswith("dnat")]
    if forward is None or forward.state != "auto" or not dnats:
        return False
    manual = emit.build(replace(policy.source, problems=[]), forward_manual=True)
    try:
        with tempfile.TemporaryDirectory(prefix="nfc-import-") as scratch:
            rulesets = [
                compile_text(render.render(each, problems), Path(scratch) / f"{name}.yaml")
                for name, each in (("auto", policy), ("manual", manual))
            ]
    except PolicyError:
        return True
    changes = nfc.diff.diff(rulesets[1], rulesets[0])
    return any(c.section == "forward" and c.kind == "newly ACCEPTS" for c in changes)


def compile_text(text: str, path: Path) -> Ruleset:
    """The policy `text`, written to `path` and compiled for this host; PolicyError if it cannot be."""
    path.write_text(text, encoding="utf-8")
    return lower(parse_policy(load_policy(str(path))), Target.this_host())
