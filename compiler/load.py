"""Enforce the policy schema on the YAML (read by `yaml_source`), follow
includes and merge defines.

The result is a `PolicySource`: rule strings are still text here; `parse`
turns them into syntax trees and `lower` into IR.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nfc.errors import Loc, PolicyError, printable
from nfc.ir import CHAIN_NAMES, ChainName, ChainPolicy
from nfc.runtime_sets import SetDeclaration, declarations
from nfc.schema import (
    ENTRY_KEYS,
    RULE_KEYS,
    RuleText,
    check_keys,
    expect_choice,
    expect_int,
    expect_list,
    expect_mapping,
    expect_str,
    rule_list,
    rule_text,
    type_name,
)
from nfc.values import check_interface_name
from nfc.vocab import NFT_KEYWORDS
from nfc.yaml_source import YNode, load_yaml

MAX_INCLUDE_DEPTH = 32
FORMAT_VERSION = 1

CHAIN_POLICIES: tuple[ChainPolicy, ...] = ("drop", "accept")
TOP_KEYS = (
    "nfc",
    "name",
    "table",
    "counters",
    "include",
    "define",
    "interfaces",
    "conntrack",
    *CHAIN_NAMES,
    "nat",
    "sets",
)
INCLUDE_KEYS = ("nfc", "include", "define", "interfaces", "conntrack")
RULES_FILE_KEYS = ("nfc", "define", "interfaces", "rules")  # a file that `{include: FILE}` splices
CHAIN_KEYS = ("policy", "rules", "state", "icmp", "loopback")
SPLICE_KEYS = ("include",)
LIST_FILE_KEYS = ("file",)
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

    @property
    def has_state_rules(self) -> bool:
        """Whether `state: auto` puts its rules in: not in a chain that
        accepts everything anyway."""
        return self.state == "auto" and (self.policy == "drop" or bool(self.rules))


@dataclass(frozen=True)
class Define:
    name: str
    loc: Loc
    node: YNode
    list_file: str | None = None  # `{file: PATH}`: PATH, relative to the policy's directory as given


@dataclass(frozen=True)
class InterfaceList:
    """An entry of `interfaces`: a name for one or more interface names."""

    name: str
    loc: Loc
    names: tuple[str, ...]  # checked, in the order written, without repeats
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
    interfaces: dict[str, InterfaceList] = field(default_factory=dict)
    nat: tuple[RuleText, ...] = ()
    counters: bool = False  # every rule counts its packets and bytes (nfc stats)
    sets: dict[str, SetDeclaration] = field(default_factory=dict)  # runtime sets, `sets:`


# --------------------------------------------------------------------------
# Policy structure


def _chain(name: ChainName, node: YNode, path: str, loading: _Loading) -> ChainSection:
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
    rules = (
        _chain_rules(fields["rules"], path, loading, (os.path.realpath(path),)) if "rules" in fields else ()
    )
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
        rule_list(fields["notrack"], "notrack", "notrack entry", ENTRY_KEYS) if "notrack" in fields else ()
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


def _names(node: YNode, section: str, what: str) -> dict[str, tuple[Loc, YNode]]:
    """The entries of a `define` or `interfaces` mapping, their names checked."""
    fields = expect_mapping(node, f"'{section}'")
    for name in fields:
        if not IDENTIFIER.match(name):
            raise PolicyError(
                node.key_locs[name],
                f"{what} name '{printable(name)}' is not a valid name",
                "use letters, digits and '_', starting with a letter or '_', at most 32 characters",
            )
    return {name: (node.key_locs[name], value) for name, value in fields.items()}


def _defines(node: YNode, path: str, state: _Loading) -> dict[str, Define]:
    defines = {}
    for name, (loc, value) in _names(node, "define", "define").items():
        list_file = None
        if isinstance(value.value, dict):
            if "file" not in value.value:
                raise PolicyError(
                    value.loc,
                    f"define '{name}' is a mapping without 'file'",
                    "a define is an address, a port, a list of them, or a list file: {file: PATH}",
                )
            check_keys(value, LIST_FILE_KEYS, "a list file define")
            file_node = value.value["file"]
            target = expect_str(file_node, "a list file")
            if not target or "\0" in target:
                raise PolicyError(file_node.loc, "'file' must name a list file")
            list_file = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if list_file not in state.files:
                state.files.append(list_file)
        defines[name] = Define(name, loc, value, list_file)
    return defines


def _interfaces(node: YNode) -> dict[str, InterfaceList]:
    lists = {}
    for name, (loc, value) in _names(node, "interfaces", "interface list").items():
        items = value.value if isinstance(value.value, list) else [value]
        if not items:
            raise PolicyError(value.loc, f"interface list '{name}' is empty")
        names: list[str] = []
        for item in items:
            if isinstance(item.value, str) and item.value.startswith("$"):
                raise PolicyError(
                    item.loc,
                    "an interface list holds interface names, not $names",
                    "write the names out, or use 'iif {$a, $b}' in the rule",
                )
            interface = check_interface_name(expect_str(item, "an interface name"), item.loc)
            if interface not in names:
                names.append(interface)
        lists[name] = InterfaceList(name, loc, tuple(names), value)
    return lists


@dataclass
class _Loading:
    files: list[str] = field(default_factory=list)
    defines: dict[str, Define] = field(default_factory=dict)
    interfaces: dict[str, InterfaceList] = field(default_factory=dict)
    notrack: list[RuleText] = field(default_factory=list)
    included: set[str] = field(default_factory=set)
    main_conntrack: ConntrackSection = field(default_factory=ConntrackSection)

    def merge_defines(self, new: dict[str, Define]) -> None:
        for name, define in new.items():
            _refuse_clash(name, define.loc, "define", self.interfaces.get(name))
            self.defines[name] = _first_of_equals(self.defines.get(name), define)

    def merge_interfaces(self, new: dict[str, InterfaceList]) -> None:
        for name, interfaces in new.items():
            _refuse_clash(name, interfaces.loc, "interfaces", self.defines.get(name))
            self.interfaces[name] = _first_of_equals(self.interfaces.get(name), interfaces)


def _refuse_clash(name: str, loc: Loc, section: str, other: Define | InterfaceList | None) -> None:
    """A name is defined once across `define` and `interfaces`."""
    if other is not None:
        other_section = "interfaces" if section == "define" else "define"
        raise PolicyError(
            loc,
            f"'{name}' is defined under '{section}' here and under '{other_section}' at {other.loc}",
            "a name is defined once across 'define' and 'interfaces'",
        )


Named = TypeVar("Named", Define, InterfaceList)


def _first_of_equals(old: Named | None, new: Named) -> Named:
    """The first definition of a name; the same value again (one file
    included from two places) is no conflict, another value is."""
    if old is None:
        return new
    other_file = isinstance(old, Define) and isinstance(new, Define) and old.list_file != new.list_file
    if old.node.plain() != new.node.plain() or other_file:
        raise PolicyError(
            new.loc, f"'{new.name}' is defined again with a different value (first defined at {old.loc})"
        )
    return old


def _include_target(item: YNode, path: str, stack: tuple[str, ...]) -> tuple[str, str]:
    """The file an include names, as shown (relative to the including file)
    and as its real path; a cycle or too deep a nest is refused at `item`."""
    target = expect_str(item, "an include")
    if not target or "\0" in target:
        raise PolicyError(item.loc, "an include must name a file")
    shown = os.path.normpath(os.path.join(os.path.dirname(path), target))
    real = os.path.realpath(shown)
    if real in stack:
        raise PolicyError(item.loc, f"include cycle: {printable(shown)} includes itself")
    if len(stack) >= MAX_INCLUDE_DEPTH:
        raise PolicyError(item.loc, f"includes nest deeper than {MAX_INCLUDE_DEPTH} levels")
    return shown, real


def _chain_rules(node: YNode, path: str, state: _Loading, stack: tuple[str, ...]) -> tuple[RuleText, ...]:
    """A `rules` list, with each `{include: FILE}` item replaced by FILE's rules."""
    if node.value is None:
        return ()
    rules: list[RuleText] = []
    for item in expect_list(node, "'rules'"):
        if isinstance(item.value, dict) and "include" in item.value:
            rules.extend(_spliced_rules(item, path, state, stack))
        else:
            rules.append(rule_text(item, "rule"))
    return tuple(rules)


def _spliced_rules(item: YNode, path: str, state: _Loading, stack: tuple[str, ...]) -> tuple[RuleText, ...]:
    """The rules of the file an `{include: FILE}` item names. Their text
    nodes keep FILE's own positions, so errors and provenance name FILE."""
    check_keys(item, SPLICE_KEYS, "a rules include")
    target = item.value["include"]
    shown, real = _include_target(target, path, stack)
    root = load_yaml(shown, target.loc)
    fields = expect_mapping(root, "an included rules file")
    check_keys(root, RULES_FILE_KEYS, "an included rules file")
    _version(fields, root, required=False)
    if shown not in state.files:
        state.files.append(shown)
    if "define" in fields:
        state.merge_defines(_defines(fields["define"], shown, state))
    if "interfaces" in fields:
        state.merge_interfaces(_interfaces(fields["interfaces"]))
    if "rules" not in fields:
        return ()
    return _chain_rules(fields["rules"], shown, state, (*stack, real))


def _includes(node: YNode, path: str, state: _Loading, stack: tuple[str, ...]) -> None:
    items = node.value if isinstance(node.value, list) else [node]
    for item in items:
        shown, real = _include_target(item, path, stack)
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
    if "rules" in fields:
        raise PolicyError(
            root.key_locs["rules"],
            f"'rules' belong in a chain{', not in a file under include' if in_include else ''}",
            "splice a file's rules into a chain with an item {include: FILE} in its 'rules'",
        )
    check_keys(
        root, INCLUDE_KEYS if in_include else TOP_KEYS, "an included file" if in_include else "the policy"
    )
    _version(fields, root, required=not in_include)
    state.files.append(path)
    if "include" in fields:
        _includes(fields["include"], path, state, stack)
    if "define" in fields:
        state.merge_defines(_defines(fields["define"], path, state))
    if "interfaces" in fields:
        state.merge_interfaces(_interfaces(fields["interfaces"]))
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
    chains = {name_: _chain(name_, fields[name_], path, state) for name_ in CHAIN_NAMES if name_ in fields}
    nat = rule_list(fields["nat"], "nat", "NAT rule", RULE_KEYS) if "nat" in fields else ()
    counters = False
    if "counters" in fields:
        counters = fields["counters"].value
        if not isinstance(counters, bool):
            raise PolicyError(
                fields["counters"].loc, f"'counters' must be true or false, not {type_name(counters)}"
            )
    sets = declarations(fields["sets"], _names(fields["sets"], "sets", "set")) if "sets" in fields else {}
    for set_name, declaration in sets.items():
        other = state.defines.get(set_name) or state.interfaces.get(set_name)
        if other is not None:
            raise PolicyError(
                declaration.loc,
                f"'{set_name}' is a set here and defined again at {other.loc}",
                "a name is defined once across 'define', 'interfaces' and 'sets'",
            )
    return PolicySource(
        path=path,
        name=name,
        table=table,
        defines=dict(state.defines),
        conntrack=conntrack,
        chains=chains,
        files=tuple(state.files),
        interfaces=dict(state.interfaces),
        nat=nat,
        counters=counters,
        sets=sets,
    )
