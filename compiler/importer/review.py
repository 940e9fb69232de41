"""What lint finds on an imported policy: the findings it keeps (the
input's own mistakes, named on the policy), and those on the input as it
was that the policy fixes, told with the input lines each policy line's
comment names. A policy nfc cannot compile is refused at the input line it
came from."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

import nfc.lint
from nfc.errors import Loc, PolicyError
from nfc.importer import Translation, compile_text
from nfc.lint_report import Finding


def review(translation: Translation, shown: str) -> tuple[list[Finding], list[str]]:
    """lint's findings on the policy (placed in `shown`, the file it is
    written to), and those on the input as it was that it no longer has."""
    with tempfile.TemporaryDirectory(prefix="nfc-import-") as scratch:
        findings = _lint_text(translation.policy, Path(scratch) / "import.yaml")
        unchanged = translation.literal == translation.policy  # nothing fixed: no second lint
        before = findings if unchanged else _lint_text(translation.literal, Path(scratch) / "literal.yaml")
    kept = {(f.code, f.message) for f in findings}
    fixed = [_on_input(f, translation.literal) for f in before if (f.code, f.message) not in kept]
    return [dataclasses.replace(f, loc=f.loc._replace(file=shown)) for f in findings], fixed


def _lint_text(policy: str, path: Path) -> list[Finding]:
    try:
        ruleset = compile_text(policy, path)
    except PolicyError as exc:  # placed on the input line the policy line names
        raise PolicyError(
            _input_loc(policy.splitlines(), exc.loc.line) or exc.loc._replace(file="<import>"),
            f"nfc cannot take this as it is: {exc.message}",
            exc.hint,
        ) from None
    return nfc.lint.lint(ruleset)


def _input_loc(lines: list[str], line: int) -> Loc | None:
    """The first input place a generated policy line names in its comment."""
    if not 0 < line <= len(lines):
        return None
    match = re.search(r"  # (.+?):([0-9]+)(?::([0-9]+))?", lines[line - 1])
    return Loc(match[1], int(match[2]), int(match[3] or 1)) if match else None


def _on_input(finding: Finding, literal: str) -> str:
    """A finding on the literal policy, told with the input lines its policy lines name."""
    lines = literal.splitlines()
    message = re.sub(r"line ([0-9]+)", lambda m: _input_lines(lines[int(m[1]) - 1]), finding.message)
    return f"{finding.code} {_input_lines(lines[finding.loc.line - 1])}: {message}"


def _input_lines(policy_line: str) -> str:
    """The input lines a generated policy line names in its comment."""
    _, _, comment = policy_line.partition("  # ")
    return comment.split(" ")[0] or "(the policy)"
