"""The building blocks of the policy schema: checks that a YAML node has
the type, keys or value a place in the policy needs, each failing as a
PolicyError at the node; and rules as written (`RuleText`), with their
optional `comment`, `expires` and `scope`. `load` puts them together."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NamedTuple, TypeVar

from nfc.errors import Loc, PolicyError, did_you_mean, printable
from nfc.ir import NotrackScope
from nfc.yaml_source import YNode

RULE_KEYS = ("rule", "comment", "expires")
ENTRY_KEYS = (*RULE_KEYS, "scope")
SCOPES: tuple[NotrackScope, ...] = ("host", "routed", "all")
COMMENT_MAX = 64
# What free text cannot hold inside a generated quoted string (nor a line break).
UNQUOTABLE_CHARACTERS = '"\\`$'
UNQUOTABLE = re.compile(f"[{re.escape(UNQUOTABLE_CHARACTERS)}]")


class RuleText(NamedTuple):
    """A rule or notrack entry as written, with its optional annotations.
    (A named tuple: one per rule, and a frozen dataclass costs several
    times as much to make.)"""

    node: YNode
    comment: str | None = None
    comment_loc: Loc | None = None
    expires: dt.date | None = None
    scope: NotrackScope = "host"  # of a notrack entry

    @property
    def text(self) -> str:
        text: str = self.node.value  # checked to be a string when loaded
        return text

    @property
    def loc(self) -> Loc:
        return self.node.loc


def type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def expect_mapping(node: YNode, what: str) -> dict[str, YNode]:
    if not isinstance(node.value, dict):
        raise PolicyError(node.loc, f"{what} must be a mapping, not {type_name(node.value)}")
    return node.value


def expect_list(node: YNode, what: str) -> list[YNode]:
    if not isinstance(node.value, list):
        raise PolicyError(node.loc, f"{what} must be a list, not {type_name(node.value)}")
    return node.value


def expect_str(node: YNode, what: str) -> str:
    if not isinstance(node.value, str):
        raise PolicyError(node.loc, f"{what} must be a string, not {type_name(node.value)}")
    return node.value


Word = TypeVar("Word", bound=str)


def expect_choice(node: YNode, what: str, choices: tuple[Word, ...]) -> Word:
    value = node.value
    if not isinstance(value, str) or value not in choices:
        shown = printable(str(value)) if isinstance(value, str) else type_name(value)
        raise PolicyError(
            node.loc,
            f"{what} must be one of {', '.join(choices)}, not {shown}",
            did_you_mean(value, choices) if isinstance(value, str) else None,
        )
    return value


def expect_int(node: YNode, what: str, low: int, high: int) -> int:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(node.loc, f"{what} must be a whole number, not {type_name(value)}")
    if not low <= value <= high:
        raise PolicyError(node.loc, f"{what} must be between {low} and {high}, not {value}")
    return value


def check_keys(node: YNode, allowed: tuple[str, ...], what: str) -> None:
    for key, key_loc in node.key_locs.items():
        if key not in allowed:
            raise PolicyError(
                key_loc, f"unknown key '{printable(key)}' in {what}", did_you_mean(key, allowed)
            )


def check_text(text: str, loc: Loc, what: str, max_len: int) -> str:
    """Free text that ends up inside a quoted nft/iptables string."""
    if not text:
        raise PolicyError(loc, f"{what} is empty")
    if not text.isprintable() or UNQUOTABLE.search(text):  # then find the first one, character by character
        for ch in text:
            if not ch.isprintable() or ch in UNQUOTABLE_CHARACTERS:
                shown = repr(ch) if not ch.isprintable() else f"'{ch}'"
                raise PolicyError(
                    loc,
                    f"{what} contains the character {shown}, which is not allowed",
                    "use plain printable text without quotes, backslashes, '$', '`' or line breaks",
                )
    if len(text.encode()) > max_len:
        raise PolicyError(loc, f"{what} is longer than {max_len} bytes")
    return text


def rule_text(node: YNode, what: str, keys: tuple[str, ...] = RULE_KEYS) -> RuleText:
    if isinstance(node.value, str):
        return RuleText(node)
    if not isinstance(node.value, dict):
        raise PolicyError(
            node.loc, f"{what} must be a string or a mapping with 'rule', not {type_name(node.value)}"
        )
    fields = node.value
    if "rule" not in fields and any(" " in key for key in fields):
        raise PolicyError(
            node.loc,
            f"this {what} was read as a mapping because it holds ': '",
            "put the whole rule in single quotes",
        )
    if "include" in fields and "rule" not in fields:
        raise PolicyError(
            node.key_locs["include"],
            f"an 'include' item splices rules into a chain's 'rules', not into a {what} list",
        )
    check_keys(node, keys, what)
    if "rule" not in fields:
        raise PolicyError(node.loc, f"{what} mapping needs a 'rule' key")
    rule_node = fields["rule"]
    expect_str(rule_node, "'rule'")
    comment = comment_loc = None
    if "comment" in fields:
        comment_loc = fields["comment"].loc
        comment = check_text(expect_str(fields["comment"], "'comment'"), comment_loc, "comment", COMMENT_MAX)
    expires = None
    if "expires" in fields:
        expires_node = fields["expires"]
        value = expires_node.value
        if isinstance(value, dt.datetime):
            value = value.date()
        elif isinstance(value, str):
            try:
                value = dt.date.fromisoformat(value)
            except ValueError:
                value = None
        if not isinstance(value, dt.date):
            raise PolicyError(expires_node.loc, "'expires' must be a date written YYYY-MM-DD")
        expires = value
    scope = expect_choice(fields["scope"], "'scope'", SCOPES) if "scope" in fields else "host"
    return RuleText(rule_node, comment, comment_loc, expires, scope)


def rule_list(node: YNode, key: str, what: str, keys: tuple[str, ...] = RULE_KEYS) -> tuple[RuleText, ...]:
    if node.value is None:
        return ()
    return tuple(rule_text(item, what, keys) for item in expect_list(node, f"'{key}'"))
