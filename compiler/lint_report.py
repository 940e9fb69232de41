"""How lint findings are written: text for people and editors, JSON,
GitHub workflow annotations, and SARIF for code scanning."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nfc import __version__
from nfc.errors import Loc


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    loc: Loc
    hint: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": self.loc.file,
            "line": self.loc.line,
            "col": self.loc.col,
            "hint": self.hint,
        }


class CheckInfo(Protocol):
    """What a report says about a check: SARIF lists every check with its rationale."""

    @property
    def code(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def rationale(self) -> str: ...


def render(findings: list[Finding], fmt: str, checks: Sequence[CheckInfo]) -> str:
    if fmt == "json":
        return json.dumps([f.to_json() for f in findings], indent=2) + "\n"
    if fmt == "github":
        return "".join(
            f"::{'notice' if f.severity == 'note' else f.severity} file={f.loc.file},line={f.loc.line},"
            f"col={f.loc.col},title={f.code}::{_escape_github(f.message)}\n"
            for f in findings
        )
    if fmt == "sarif":
        return json.dumps(sarif(findings, checks), indent=2) + "\n"
    lines = []
    for f in findings:
        lines.append(f"{f.loc}: {f.severity}: {f.code} {f.message}")
        if f.hint:
            lines.append(f"{f.loc}: note: {f.hint}")
    return "".join(line + "\n" for line in lines)


def _escape_github(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def sarif(findings: list[Finding], checks: Sequence[CheckInfo]) -> dict[str, object]:
    levels = {"error": "error", "warning": "warning", "note": "note"}
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "nfc",
                        "version": __version__,
                        "informationUri": "https://example.invalid/nfc",
                        "rules": [
                            {
                                "id": each.code,
                                "name": each.name,
                                "shortDescription": {"text": each.rationale},
                                "defaultConfiguration": {"level": levels[each.severity]},
                            }
                            for each in checks
                        ],
                    }
                },
                "results": [
                    {
                        "ruleId": f.code,
                        "ruleIndex": [c.code for c in checks].index(f.code),
                        "level": levels[f.severity],
                        "message": {"text": f.message + (f" ({f.hint})" if f.hint else "")},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": f.loc.file},
                                    "region": {"startLine": f.loc.line, "startColumn": f.loc.col},
                                }
                            }
                        ],
                    }
                    for f in findings
                ],
            }
        ],
    }
