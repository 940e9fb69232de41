"""What every backend shares."""

from __future__ import annotations

import os

from nfc.errors import Loc
from nfc.ir import Ruleset
from nfc.load import printable


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
