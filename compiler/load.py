"""Enforce the policy schema on the YAML (read by `yaml_source`), follow
includes and merge defines.

The result is a `PolicySource`: rule strings are still text here; `parse`
turns them into syntax trees and `lower` into IR.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nfc.errors import Loc, PolicyError, did_you_mean, printable
from nfc.ir import CHAIN_NAMES, ChainName, ChainPolicy, NotrackScope
from nfc.vocab import NFT_KEYWORDS
from nfc.yaml_source import YNode, load_yaml

MAX_INCLUDE_DEPTH = 32
FORMAT_VERSION = 1

CHAIN_POLICIES: tuple[ChainPolicy, ...] = ("drop", "accept")
TOP_KEYS = ("nfc", "name", "table", "counters", "include", "define", "conntrack", *CHAIN_NAMES)
INCLUDE_KEYS = ("nfc", "include", "define", "conntrack")
CHAIN_KEYS = ("policy", "rules", "state", "icmp", "loopback")
RULE_KEYS = ("rule", "comment", "expires")
ENTRY_KEYS = (*RULE_KEYS, "scope")
SCOPES: tuple[NotrackScope, ...] = ("host", "routed", "all")
CONNTRACK_KEYS = ("notrack", "max", "timeouts")
INCLUDE_CONNTRACK_KEYS = ("notrack",)
# Policy timeout names and the sysctl each one sets.
TIMEOUT_SYSCTLS = {
    "udp": "net.netfilter.nf_conntrack_udp_timeout",
    "udp_stream": "net.netfilter.nf_conntrack_udp_timeout_stream",
    "tcp_established": "net.netfilter.nf_conntrack_tcp_timeout_established",
    "tcp_time_wait": "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
    "tcp_close_wait": "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "icmp": "net.netfilter.nf_conntrack_icmp_timeout",
    "icmpv6": "net.netfilter.nf_conntrack_icmpv6_timeout",
    "generic": "net.netfilter.nf_conntrack_generic_timeout",
}
MAX_SYSCTL_INT = 2**31 - 1

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}\Z")
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


@dataclass(frozen=True)
class RuleText:
    """A rule or notrack entry as written, with its optional annotations."""

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


@dataclass(frozen=True)
class ChainSection:
    name: ChainName
    loc: Loc
    policy: ChainPolicy
    state: str
    state_loc: Loc
    icmp: str
    icmp_loc: Loc
    loopback: str  # accept | manual
    loopback_loc: Loc
    rules: tuple[RuleText, ...]


@dataclass(frozen=True)
class Define:
    name: str
    loc: Loc
    node: YNode


@dataclass(frozen=True)
class ConntrackSection:
    notrack: tuple[RuleText, ...] = ()
    max: int | str | None = None
    max_loc: Loc | None = None
    timeouts: tuple[tuple[str, int, Loc], ...] = ()


@dataclass(frozen=True)
class PolicySource:
    path: str
    name: str
    table: str
    defines: dict[str, Define]
    conntrack: ConntrackSection
    chains: dict[ChainName, ChainSection]
    files: tuple[str, ...]  # every file read, main policy first
    counters: bool = False  # every rule counts its packets and bytes (nfc stats)


# --------------------------------------------------------------------------
# Schema checks


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
    for ch in text:
        if not ch.isprintable() or ch in '"\\`$':
            shown = repr(ch) if not ch.isprintable() else f"'{ch}'"
            raise PolicyError(
                loc,
                f"{what} contains the character {shown}, which is not allowed",
                "use plain printable text without quotes, backslashes, '$', '`' or line breaks",
            )
    if len(text.encode()) > max_len:
        raise PolicyError(loc, f"{what} is longer than {max_len} bytes")
    return text


# --------------------------------------------------------------------------
# Policy structure

COMMENT_MAX = 64


def _rule_text(node: YNode, what: str, keys: tuple[str, ...] = RULE_KEYS) -> RuleText:
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


def _rule_list(node: YNode, key: str, what: str, keys: tuple[str, ...] = RULE_KEYS) -> tuple[RuleText, ...]:
    if node.value is None:
        return ()
    return tuple(_rule_text(item, what, keys) for item in expect_list(node, f"'{key}'"))


def _chain(name: ChainName, node: YNode) -> ChainSection:
    fields = expect_mapping(node, f"'{name}'")
    check_keys(node, CHAIN_KEYS, f"chain '{name}'")
    if "policy" not in fields:
        raise PolicyError(node.loc, f"chain '{name}' needs a 'policy' (drop or accept)")
    policy = expect_choice(fields["policy"], "'policy'", CHAIN_POLICIES)
    state_node = fields.get("state")
    state = expect_choice(state_node, "'state'", ("auto", "manual")) if state_node else "auto"
    icmp_node = fields.get("icmp")
    # Output too: IPv6 neighbour discovery is untracked, so a drop policy
    # without these accepts would cut the host off its link.
    default_icmp = "essential" if policy == "drop" else "manual"
    icmp = expect_choice(icmp_node, "'icmp'", ("essential", "manual")) if icmp_node else default_icmp
    loopback_node = fields.get("loopback")
    # A host talks to itself over lo (a resolver asks itself on 127.0.0.1):
    # no rule of the host's own chains should get in the way unless asked to.
    loopback = "manual" if name == "forward" else "accept"
    if loopback_node is not None:
        loopback = expect_choice(loopback_node, "'loopback'", ("accept", "manual"))
        if name == "forward" and loopback == "accept":
            raise PolicyError(loopback_node.loc, "the forward chain never sees loopback traffic", "remove it")
    rules = _rule_list(fields["rules"], "rules", "rule") if "rules" in fields else ()
    return ChainSection(
        name=name,
        loc=node.loc,
        policy=policy,
        state=state,
        state_loc=state_node.loc if state_node else node.loc,
        icmp=icmp,
        icmp_loc=icmp_node.loc if icmp_node else node.loc,
        loopback=loopback,
        loopback_loc=loopback_node.loc if loopback_node else node.loc,
        rules=rules,
    )


def _conntrack(node: YNode, in_include: bool) -> ConntrackSection:
    fields = expect_mapping(node, "'conntrack'")
    allowed = INCLUDE_CONNTRACK_KEYS if in_include else CONNTRACK_KEYS
    check_keys(node, allowed, "an included file's 'conntrack'" if in_include else "'conntrack'")
    notrack = (
        _rule_list(fields["notrack"], "notrack", "notrack entry", ENTRY_KEYS) if "notrack" in fields else ()
    )
    max_value: int | str | None = None
    max_loc = None
    if "max" in fields:
        max_node = fields["max"]
        max_loc = max_node.loc
        if max_node.value == "auto":
            max_value = "auto"
        elif isinstance(max_node.value, str):
            raise PolicyError(max_loc, "'max' must be 'auto' or a whole number")
        else:
            max_value = expect_int(max_node, "'max'", 1, MAX_SYSCTL_INT)
    timeouts: list[tuple[str, int, Loc]] = []
    if "timeouts" in fields:
        timeouts_node = fields["timeouts"]
        expect_mapping(timeouts_node, "'timeouts'")
        check_keys(timeouts_node, tuple(TIMEOUT_SYSCTLS), "'timeouts'")
        for key, value_node in timeouts_node.value.items():
            seconds = expect_int(value_node, f"timeout '{key}'", 1, MAX_SYSCTL_INT)
            timeouts.append((key, seconds, value_node.loc))
    return ConntrackSection(tuple(notrack), max_value, max_loc, tuple(timeouts))


def _version(fields: dict[str, YNode], node: YNode, required: bool) -> None:
    if "nfc" not in fields:
        if required:
            raise PolicyError(node.loc, "missing 'nfc: 1' (the policy format version)")
        return
    version = fields["nfc"]
    if isinstance(version.value, bool) or version.value != FORMAT_VERSION:
        raise PolicyError(
            version.loc,
            f"unsupported policy format version {printable(repr(version.value))}",
            f"this nfc reads 'nfc: {FORMAT_VERSION}'",
        )


def _defines(node: YNode) -> dict[str, Define]:
    fields = expect_mapping(node, "'define'")
    defines = {}
    for name, value in fields.items():
        key_loc = node.key_locs[name]
        if not IDENTIFIER.match(name):
            raise PolicyError(
                key_loc,
                f"define name '{printable(name)}' is not a valid name",
                "use letters, digits and '_', starting with a letter or '_', at most 32 characters",
            )
        defines[name] = Define(name, key_loc, value)
    return defines


@dataclass
class _Loading:
    files: list[str] = field(default_factory=list)
    defines: dict[str, Define] = field(default_factory=dict)
    notrack: list[RuleText] = field(default_factory=list)
    included: set[str] = field(default_factory=set)
    main_conntrack: ConntrackSection = field(default_factory=ConntrackSection)

    def merge_defines(self, new: dict[str, Define]) -> None:
        for name, define in new.items():
            old = self.defines.get(name)
            if old is None:
                self.defines[name] = define
            elif old.node.plain() != define.node.plain():
                raise PolicyError(
                    define.loc,
                    f"'{name}' is defined again with a different value (first defined at {old.loc})",
                )


def _includes(node: YNode, path: str, state: _Loading, stack: tuple[str, ...]) -> None:
    items = node.value if isinstance(node.value, list) else [node]
    for item in items:
        target = expect_str(item, "an include")
        if not target or "\0" in target:
            raise PolicyError(item.loc, "an include must name a file")
        shown = os.path.normpath(os.path.join(os.path.dirname(path), target))
        real = os.path.realpath(shown)
        if real in stack:
            raise PolicyError(item.loc, f"include cycle: {printable(shown)} includes itself")
        if len(stack) >= MAX_INCLUDE_DEPTH:
            raise PolicyError(item.loc, f"includes nest deeper than {MAX_INCLUDE_DEPTH} levels")
        if real in state.included:
            continue  # one file included from two places counts once
        state.included.add(real)
        _load_file(shown, state, (*stack, real), include_loc=item.loc)


def _load_file(
    path: str, state: _Loading, stack: tuple[str, ...], include_loc: Loc | None = None
) -> dict[str, YNode]:
    root = load_yaml(path, include_loc)
    in_include = include_loc is not None
    fields = expect_mapping(root, "an included file" if in_include else "a policy")
    check_keys(
        root, INCLUDE_KEYS if in_include else TOP_KEYS, "an included file" if in_include else "the policy"
    )
    _version(fields, root, required=not in_include)
    state.files.append(path)
    if "include" in fields:
        _includes(fields["include"], path, state, stack)
    if "define" in fields:
        state.merge_defines(_defines(fields["define"]))
    if "conntrack" in fields:
        section = _conntrack(fields["conntrack"], in_include)
        state.notrack.extend(section.notrack)
        if not in_include:
            state.main_conntrack = section
    return fields


def load_policy(path: str | os.PathLike[str]) -> PolicySource:
    """Read a policy and its includes; raise PolicyError on any bad input."""
    path = os.fspath(path)
    state = _Loading()
    fields = _load_file(path, state, (os.path.realpath(path),))
    if "name" in fields:
        name = expect_str(fields["name"], "'name'")
        if not POLICY_NAME.match(name):
            raise PolicyError(
                fields["name"].loc,
                f"policy name '{printable(name)}' is not valid",
                "use letters, digits, '.', '-' and '_', at most 64 characters",
            )
    else:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)[:64] or "policy"
    table = "nfc"
    if "table" in fields:
        table = expect_str(fields["table"], "'table'")
        if not IDENTIFIER.match(table):
            raise PolicyError(
                fields["table"].loc,
                f"table name '{printable(table)}' is not valid",
                "use letters, digits and '_', starting with a letter or '_', at most 32 characters",
            )
        if table in NFT_KEYWORDS:
            raise PolicyError(
                fields["table"].loc, f"'{table}' is an nft keyword and cannot name a table", "try 'nfc'"
            )
    main_conntrack = state.main_conntrack
    conntrack = ConntrackSection(
        tuple(state.notrack), main_conntrack.max, main_conntrack.max_loc, main_conntrack.timeouts
    )
    chains = {name_: _chain(name_, fields[name_]) for name_ in CHAIN_NAMES if name_ in fields}
    counters = False
    if "counters" in fields:
        counters = fields["counters"].value
        if not isinstance(counters, bool):
            raise PolicyError(
                fields["counters"].loc, f"'counters' must be true or false, not {type_name(counters)}"
            )
    return PolicySource(
        path=path,
        name=name,
        table=table,
        defines=dict(state.defines),
        conntrack=conntrack,
        chains=chains,
        files=tuple(state.files),
        counters=counters,
    )
