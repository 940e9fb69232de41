"""The `sets` section: named address sets that nfc declares and the
operator, fail2ban or a script fills at run time (`nfc set add`). Each
becomes one set per family in the ruleset (NAME_v4, NAME_v6)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nfc.errors import Loc, PolicyError, printable
from nfc.schema import check_keys, expect_choice, expect_int, expect_mapping
from nfc.yaml_source import YNode

SET_KEYS = ("type", "timeout", "size")
SET_TYPES = ("address",)
MAX_SET_SIZE = 2**32 - 1
MAX_TIMEOUT_MS = 2**32 - 1  # what the kernel takes for a set's timeout
DURATION = re.compile(r"(?:[0-9]+(?:d|h|ms|m|s))+\Z")
DURATION_PART = re.compile(r"([0-9]+)(d|h|ms|m|s)")
UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


@dataclass(frozen=True)
class SetDeclaration:
    name: str
    loc: Loc
    timeout_ms: int | None  # how long an element stays unless added with its own
    size: int | None  # the most elements a set (of one family) holds


def duration_ms(text: str) -> int | None:
    """`10m`, `1h30m`, `500ms` in milliseconds; None if it is none."""
    if not DURATION.match(text):
        return None
    return sum(int(value) * UNIT_MS[unit] for value, unit in DURATION_PART.findall(text))


def declarations(node: YNode, names: dict[str, tuple[Loc, YNode]]) -> dict[str, SetDeclaration]:
    """The entries of `sets` (their names checked by the loader)."""
    found = {}
    for name, (loc, value) in names.items():
        fields = expect_mapping(value, f"set '{name}'")
        check_keys(value, SET_KEYS, f"set '{name}'")
        if "type" in fields:
            expect_choice(fields["type"], "a set's 'type'", SET_TYPES)
        timeout = None
        if "timeout" in fields:
            timeout = _timeout(fields["timeout"])
        size = expect_int(fields["size"], "a set's 'size'", 1, MAX_SET_SIZE) if "size" in fields else None
        found[name] = SetDeclaration(name, loc, timeout, size)
    return found


def _timeout(node: YNode) -> int:
    value = node.value
    if isinstance(value, int) and not isinstance(value, bool):
        milliseconds: int | None = value * 1000  # a number is seconds
    elif isinstance(value, str):
        milliseconds = duration_ms(value)
    else:
        milliseconds = None
    if milliseconds is None:
        raise PolicyError(
            node.loc,
            f"'{printable(str(value))}' is not a timeout",
            "write seconds, or a duration such as 90s, 10m, 1h or 1d",
        )
    if not 1 <= milliseconds <= MAX_TIMEOUT_MS:
        raise PolicyError(node.loc, f"a set's timeout must be between 1ms and {MAX_TIMEOUT_MS // 1000}s")
    return milliseconds
