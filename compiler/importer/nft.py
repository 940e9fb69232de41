"""Read an `nft list ruleset` (or an nft -f script of the same shape) into
the import model.

Tables of family inet, ip and ip6 are read: filter chains on the input,
forward and output hooks; prerouting and output chains at raw priority
(their `notrack` rules); nat chains (see `nat`). Named sets become defines;
a concatenation (`ip saddr . tcp dport { a . 22, b . 80 }`) becomes one rule
per element. Rules of an inet table go to each family they can match."""

from __future__ import annotations

import re
from dataclasses import replace

from nfc.errors import Loc, PolicyError
from nfc.importer.model import Chain, Problem, Rule, Source
from nfc.importer.nft_rules import RuleReader, Statement, items

WORD = re.compile(r'"[^"]*"|\{|\}|;|[^\s{};"]+')
FAMILIES = {"inet": ("ip", "ip6"), "ip": ("ip",), "ip6": ("ip6",)}
RAW_PRIORITY = -200  # at or below: before conntrack (raw is -300)
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
TYPES = {"ipv4_addr": "address", "ipv6_addr": "address", "inet_service": "port", "ifname": "ifname"}


def statements(path: str, text: str, positions: dict[int, Loc] | None) -> list[Statement]:
    """The input as statements: a line, split at ';', with a set literal
    that spans lines joined into the statement it belongs to."""
    out: list[Statement] = []
    pending: Statement | None = None
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        words, cols = [], []
        for match in WORD.finditer(line):
            if match[0].startswith("#"):
                break
            words.append(match[0])
            cols.append(match.start() + 1)
        if not words:
            continue
        loc = positions.get(number, Loc(path, number, cols[0])) if positions else Loc(path, number, cols[0])
        if pending is not None:
            pending.words += words
            pending.cols += cols
        else:
            pending = Statement(words, cols, loc)
        # a '{' that ends the line opens a block; one inside the line opens a set literal
        depth = 0
        for index, word in enumerate(pending.words):
            if word == "{" and index != len(pending.words) - 1:
                depth += 1
            elif word == "}" and depth > 0:
                depth -= 1
        if depth > 0:
            continue
        out += _split(pending, keep_place=positions is not None)
        pending = None
    if pending is not None:
        raise PolicyError(pending.loc, "a set literal that is never closed: the file is truncated", None)
    return out


def _split(statement: Statement, keep_place: bool) -> list[Statement]:
    parts: list[Statement] = []
    words: list[str] = []
    cols: list[int] = []
    depth = 0
    for word, col in zip(statement.words, statement.cols, strict=True):
        if word == ";" and depth == 0:
            if words:
                parts.append(
                    Statement(
                        words, cols, statement.loc if keep_place else statement.loc._replace(col=cols[0])
                    )
                )
            words, cols = [], []
            continue
        depth += {"{": 1, "}": -1}.get(word, 0)
        words.append(word)
        cols.append(col)
    if words:
        parts.append(
            Statement(words, cols, statement.loc if keep_place else statement.loc._replace(col=cols[0]))
        )
    return parts


def read(path: str, text: str, format_name: str = "nft", positions: dict[int, Loc] | None = None) -> Source:
    source = Source(path, format_name)
    reader = _Reader(path, source, positions is not None)
    for statement in statements(path, text, positions):
        reader.feed(statement)
    if reader.stack:
        raise PolicyError(
            reader.stack[-1][1],
            f"the {reader.stack[-1][0]} opened here is never closed: the file is truncated",
            None,
        )
    reader.finish()
    return source


class _Reader:
    def __init__(self, path: str, source: Source, generated: bool) -> None:
        self.path, self.source = path, source
        self.generated = generated  # text written from JSON: its columns are not the input's
        self.stack: list[tuple[str, Loc]] = []  # block kind, where it opened
        self.table: tuple[str, str] = ("", "")  # family, name
        self.chain: Chain | None = None
        self.chain_rules: list[tuple[Statement, tuple[str, ...]]] = []
        self.set_name = ""
        self.set_types: list[str] = []
        self.sets: dict[str, tuple[list[str], list[str], Loc]] = {}  # name -> types, elements
        self.chains: list[tuple[str, Chain, list[Statement]]] = []  # family, chain, rule statements

    def error(self, statement: Statement, index: int, message: str, hint: str | None = None) -> PolicyError:
        col = statement.cols[min(index, len(statement.cols) - 1)]
        return PolicyError(
            statement.loc._replace(col=col)
            if statement.loc.file == self.path and statement.loc.line
            else statement.loc,
            message,
            hint,
        )

    def feed(self, st: Statement) -> None:
        words = st.words
        if words == ["}"]:
            if not self.stack:
                raise self.error(st, 0, "a '}' that closes nothing")
            kind, _ = self.stack.pop()
            if kind == "chain" and self.chain is not None:
                self.chain = None
            return
        context = self.stack[-1][0] if self.stack else "top"
        if context == "top":
            self._top(st)
        elif context == "table":
            self._table_item(st)
        elif context == "chain":
            self._chain_item(st)
        elif context == "set":
            self._set_item(st)
        elif words[-1] == "{":
            self.stack.append(("block", st.loc))

    def _top(self, st: Statement) -> None:
        words = st.words
        if words[:2] == ["flush", "ruleset"]:
            return
        if words[0] != "table" or len(words) < 3 or words[-1] != "{":
            raise self.error(
                st,
                0,
                f"'{' '.join(words)[:40]}' is not part of an nft ruleset",
                "expected 'table FAMILY NAME {'",
            )
        family, name = (words[1], words[2]) if len(words) == 4 else ("ip", words[1])
        if family not in ("inet", "ip", "ip6", "arp", "bridge", "netdev"):
            raise self.error(
                st, 1, f"unknown table family '{family}'", "inet, ip, ip6, arp, bridge or netdev"
            )
        if family not in FAMILIES:
            self.source.problems.append(
                Problem(st.loc, f"a table of family {family}", "left out: nfc filters IP only")
            )
            self.stack.append(("block", st.loc))
            return
        self.table = (family, name)
        self.stack.append(("table", st.loc))

    def _table_item(self, st: Statement) -> None:
        words = st.words
        if words[0] in ("chain", "set") and len(words) == 3 and words[2] == "{":
            if words[0] == "chain":
                self.chain = Chain(words[1], None, "accept", st.loc)
                self.chains.append((self.table[0], self.chain, []))
                self.stack.append(("chain", st.loc))
            else:
                self.set_name, self.set_types = words[1], []
                self.sets[self.set_name] = ([], [], st.loc)
                self.stack.append(("set", st.loc))
            return
        if words[-1] == "{":
            self.source.problems.append(Problem(st.loc, f"a {words[0]} of the table", "left out"))
            self.stack.append(("block", st.loc))
            return
        raise self.error(
            st, 0, f"'{words[0]}' is not a table item", "expected 'chain NAME {' or 'set NAME {'"
        )

    def _chain_item(self, st: Statement) -> None:
        assert self.chain is not None
        words = st.words
        if words[0] == "type":
            if len(words) < 6 or words[2] != "hook" or words[4] != "priority":
                raise self.error(st, 0, "a base chain is declared 'type filter hook HOOK priority PRIORITY'")
            priority = PRIORITIES.get(words[5], None)
            if priority is None:
                try:
                    priority = int(words[5])
                except ValueError:
                    raise self.error(st, 5, f"unknown priority '{words[5]}'") from None
            self.chain.hook = words[3]
            self.chain.name = f"{words[1]}:{words[3]}:{'raw' if priority <= RAW_PRIORITY else 'filter'}"
            return
        if words[0] == "policy":
            if len(words) < 2 or words[1] not in ("accept", "drop"):
                raise self.error(st, 1, "a chain's policy is accept or drop")
            self.chain.policy = words[1]
            return
        self.chains[-1][2].append(st)

    def _set_item(self, st: Statement) -> None:
        words = st.words
        types, elements, loc = self.sets[self.set_name]
        if words[0] == "type":
            types += [w for w in words[1:] if w != "."]
        elif words[0] == "flags" and "dynamic" in " ".join(words):
            types.append("dynamic")  # a meter's set: its elements are run-time state
        elif words[0] == "elements":
            if len(words) < 4 or words[1] != "=" or words[2] != "{" or words[-1] != "}":
                raise self.error(st, 0, "elements are written 'elements = { a, b }'")
            elements += items(" ".join(words[3:-1]))
        del loc

    def finish(self) -> None:
        for name, (types, elements, loc) in self.sets.items():
            # no run-time state, no concatenation, no address range (nfc has none)
            simple = all(" " not in e and not ("-" in e and any(c in e for c in ".:")) for e in elements)
            if len(types) == 1 and types[0] in TYPES and elements and simple:
                self.source.sets[name] = elements
                self.source.set_locs[name] = loc
        for family, chain, rules in self.chains:
            kind = chain.name.split(":")[-1] if chain.hook else None
            table_kind = (
                {"filter": "filter", "nat": "nat"}.get(chain.name.split(":")[0], "filter")
                if chain.hook
                else None
            )
            if chain.hook in ("prerouting", "output") and kind == "raw":
                table_kind = "raw"
            elif chain.hook == "prerouting" or chain.hook == "postrouting":
                table_kind = "nat" if chain.name.startswith("nat:") else "mangle"
            parsed = [r for st in rules for r in RuleReader(self, st).read()]
            for each in FAMILIES[family]:
                table = self.source.table(each, table_kind or "filter")
                key = chain.hook.upper() if chain.hook else chain.name
                if table_kind == "filter" and chain.hook and key in table.chains:
                    raise PolicyError(
                        chain.loc,
                        f"a second {each} base chain on the {chain.hook} hook",
                        "nfc import takes one filter chain per hook: merge them first",
                    )
                kept = [r for r in parsed if _matches_family(r, each)]
                if table_kind == "nat" and key in table.chains:
                    # the family's nat chains on one hook act as one list (the first translation wins)
                    table.chains[key].rules += [_for_family(r, family) for r in kept]
                    continue
                table.chains[key] = Chain(
                    key, chain.hook, chain.policy, chain.loc, [_for_family(r, family) for r in kept]
                )
            if not chain.hook:
                for each in FAMILIES[family]:
                    self.source.table(each, "filter").chains[chain.name].hook = None


def _matches_family(rule: Rule, family: str) -> bool:
    f = rule.fields
    if "family" in f:
        return f["family"] == family
    for key in ("saddr", "daddr"):
        value = f.get(key, "").removeprefix("not ")
        if value and not value.startswith("$"):
            return (":" in value) == (family == "ip6")
    if f.get("proto") == "icmp" or f.get("icmp", "").startswith("icmp "):
        return family == "ip"
    if f.get("proto") == "icmpv6" or f.get("icmp", "").startswith("icmpv6"):
        return family == "ip6"
    return True


def _for_family(rule: Rule, table_family: str) -> Rule:
    if table_family == "inet" or "family" not in rule.fields:
        return rule
    return replace(rule, fields={k: v for k, v in rule.fields.items() if k != "family"})
