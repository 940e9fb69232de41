"""Read an `nft list ruleset` (or an nft -f script of the same shape) into
the import model.

Tables of family inet, ip and ip6 are read: filter chains on the input,
forward and output hooks; prerouting and output chains at raw priority
(their `notrack` rules); nat chains (reported). Named sets become defines;
a concatenation (`ip saddr . tcp dport { a . 22, b . 80 }`) becomes one rule
per element. Rules of an inet table go to each family they can match."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from nfc import vocab
from nfc.errors import Loc, PolicyError
from nfc.importer.model import Chain, Problem, Rule, Source

WORD = re.compile(r'"[^"]*"|\{|\}|;|[^\s{};"]+')
FAMILIES = {"inet": ("ip", "ip6"), "ip": ("ip",), "ip6": ("ip6",)}
PORT_KEYS = {"dport": "dport", "sport": "sport"}
RAW_PRIORITY = -200  # at or below: before conntrack (raw is -300)
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
TYPES = {"ipv4_addr": "address", "ipv6_addr": "address", "inet_service": "port", "ifname": "ifname"}
VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "notrack", "queue")


@dataclass
class Statement:
    words: list[str]
    cols: list[int]
    loc: Loc


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
            elements += _items(" ".join(words[3:-1]))
        del loc

    def finish(self) -> None:
        for name, (types, elements, _) in self.sets.items():
            simple = all(" " not in element for element in elements)  # no run-time state, no concatenation
            if len(types) == 1 and types[0] in TYPES and elements and simple:
                self.source.sets[name] = elements
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
            parsed = [r for st in rules for r in _RuleReader(self, st).read()]
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


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


class _RuleReader:
    """One rule statement → one or more model rules (one per concatenation element)."""

    def __init__(self, reader: _Reader, st: Statement) -> None:
        self.reader, self.st = reader, st
        self.rule = Rule(st.loc, "")
        self.index = 0
        self.concat: tuple[list[str], list[list[str]]] | None = None  # fields, elements
        self.narrowed: list[str] = []  # ICMP types nfc has no name for

    def word(self, offset: int = 0) -> str:
        position = self.index + offset
        return self.st.words[position] if position < len(self.st.words) else ""

    def take(self) -> str:
        word = self.word()
        if not word:
            raise self.reader.error(self.st, self.index, "the rule ends too early")
        self.index += 1
        return word

    def value(self) -> str:
        """A value: a word, or a '{ ... }' set literal as nfc writes it."""
        word = self.take()
        if word != "{":
            return word.strip('"')
        items = []
        while self.word() != "}":
            items.append(self.take())
        self.take()
        return "{" + ", ".join(_items(" ".join(items).replace(" ,", ","))) + "}"

    def inexact(self, what: str) -> None:
        self.rule.inexact.append(what)
        if self.rule.loc == self.st.loc:
            self.rule.loc = (
                self.st.loc._replace(col=self.st.cols[max(0, self.index - 1)])
                if self.st.loc.col
                else self.st.loc
            )

    def read(self) -> list[Rule]:
        while self.index < len(self.st.words):
            self.statement()
        rule = self.rule
        if not rule.verdict:
            rule.verdict = "log" if rule.log else "nothing"
        if self.concat is None:
            return [rule]
        names, elements = self.concat
        return [
            replace(rule, fields={**rule.fields, **dict(zip(names, element, strict=True))})
            for element in elements
        ]

    def statement(self) -> None:
        word = self.take()
        fields = self.rule.fields
        if word in ("iif", "iifname", "oif", "oifname"):
            negated = self.word() == "!="
            value = self.value() if not negated else (self.take(), self.value())[1]
            if negated or value.startswith(("{", "@")):
                self.inexact(f"{word} {'!= ' if negated else ''}{value}")
            else:
                fields["iif" if word.startswith("i") else "oif"] = value
        elif word == "meta":
            self.meta()
        elif word in ("ip", "ip6") and self.word() in ("saddr", "daddr", "protocol", "nexthdr"):
            self.payload(word)
        elif word in ("tcp", "udp", "sctp") and self.word() in ("dport", "sport"):
            fields["proto"] = word
            key = self.take()
            if self.word() == ".":
                self.concatenation([("proto", word), (key, None)])
            else:
                self.ports(key)
        elif word == "th" or (word in ("tcp", "udp", "sctp") and self.word() not in ("dport", "sport")):
            self.inexact(f"{word} {self.take()} {self.value()}")
        elif word in ("icmp", "icmpv6") and self.word() == "type":
            self.take()
            self.icmp(word)
        elif word == "ct":
            self.conntrack()
        elif word == "limit":
            self.limit()
        elif word in ("update", "add") and self.word().startswith("@"):
            self.meter()
        elif word == "counter":
            while self.word() in ("packets", "bytes"):
                self.index += 2
        elif word == "log":
            self.log()
        elif word == "comment":
            self.rule.comment = self.take().strip('"').replace('"', "'")
        elif word == "fib":
            words = [self.take() for _ in range(3)]
            if words != ["daddr", "type", "local"]:
                self.inexact(f"fib {' '.join(words)}")
        elif word in VERDICTS:
            self.verdict(word)
        else:
            # a match nfc has no word for: everything up to the next statement nfc knows
            skipped = [word]
            while self.word() and self.word() not in (*VERDICTS, "log", "counter", "comment"):
                skipped.append(self.take())
            self.inexact(" ".join(skipped)[:60])

    def meta(self) -> None:
        key = self.take()
        value = self.value()
        if key == "nfproto" and value in ("ipv4", "ipv6"):
            self.rule.fields["family"] = "ip" if value == "ipv4" else "ip6"
        elif key == "l4proto" and not value.startswith("{"):
            self.protocol(value)
        else:
            self.inexact(f"meta {key} {value}")

    def protocol(self, value: str) -> None:
        name = {"ipv6-icmp": "icmpv6", "icmp6": "icmpv6"}.get(value, value)
        if name in ("tcp", "udp", "sctp", "icmp", "icmpv6"):
            self.rule.fields["proto"] = name
        elif name in vocab.PROTOCOLS:
            self.rule.fields["proto"] = f"proto {name}"
        else:
            self.inexact(f"protocol {value}")

    def payload(self, family: str) -> None:
        key = self.take()
        if key in ("protocol", "nexthdr"):
            self.rule.fields["family"] = family
            self.protocol(self.value())
            return
        if self.word() == ".":
            self.concatenation([("family", family), ("saddr" if key == "saddr" else "daddr", None)])
            return
        negated = self.word() == "!="
        if negated:
            self.take()
        written = self.value()
        value = self.named_set(written) if written.startswith("@") else written
        if value is None or ("-" in value.split("/")[0] and not value.startswith("$")):
            self.inexact(f"{family} {key} {written}")
            return
        self.rule.fields["family"] = family
        self.rule.fields["saddr" if key == "saddr" else "daddr"] = ("not " if negated else "") + value

    def named_set(self, word: str) -> str | None:
        """`$NAME` for a set that became a define; None for one nfc cannot name (a concatenation's)."""
        name = word[1:]
        if name not in self.reader.source.sets:
            return None
        return f"${name}"

    def ports(self, key: str) -> None:
        negated = self.word() == "!="
        if negated:
            self.take()
        value = self.value()
        if value.startswith("@"):
            value = self.named_set(value) or ""
        if negated or not value:
            self.inexact(f"{key} {'!= ' if negated else ''}{value}")
            return
        self.rule.fields[PORT_KEYS[key]] = value

    def concatenation(self, first: list[tuple[str, str | None]]) -> None:
        selectors = [first[-1][0]]
        while self.word() == ".":
            self.take()
            head = self.take()
            selector = self.take()
            if head in ("tcp", "udp", "sctp") and selector in ("dport", "sport"):
                self.rule.fields["proto"] = head
                selectors.append(selector)
            elif head in ("ip", "ip6") and selector in ("saddr", "daddr"):
                self.rule.fields["family"] = head
                selectors.append(selector)
            else:
                self.inexact(f"a concatenation with {head} {selector}")
                return
        for name, value in first[:-1]:
            if value is not None:
                self.rule.fields[name] = value
        value = self.value()
        if value.startswith("@"):
            elements = self.reader.sets.get(value[1:], ([], [], self.st.loc))[1]
        else:
            elements = _items(value[1:-1])
        split = [[part.strip() for part in element.split(" . ")] for element in elements]
        if not split or any(len(parts) != len(selectors) for parts in split):
            self.inexact(f"the concatenation {value}")
            return
        self.concat = (selectors, split)

    def icmp(self, protocol: str) -> None:
        names = vocab.ICMPV6_TYPES if protocol == "icmpv6" else vocab.ICMP_TYPES
        by_number = {str(number): name for name, number in names.items()}
        value = self.value()
        items = _items(value[1:-1]) if value.startswith("{") else [value]
        known = sorted(
            {by_number.get(i, i) for i in items if by_number.get(i, i) in names}, key=names.__getitem__
        )
        unknown = [i for i in items if by_number.get(i, i) not in names]
        self.rule.fields["proto"] = protocol
        self.narrowed += unknown
        if known:
            self.rule.fields["icmp"] = f"{protocol} type {','.join(known)}"
        else:
            self.inexact(f"{protocol} type {value}")

    def conntrack(self) -> None:
        key = self.take()
        value = self.value()
        states = _items(value[1:-1]) if value.startswith("{") else value.split(",")
        if key != "state" or not set(states) <= set(vocab.CT_STATES):
            self.inexact(f"ct {key} {value}")
            return
        self.rule.fields["ct"] = ",".join(sorted(states, key=vocab.CT_STATES.index))

    def limit(self) -> None:
        if self.take() != "rate":
            raise self.reader.error(self.st, self.index - 1, "a limit is written 'limit rate [over] N/UNIT'")
        over = self.word() == "over"
        if over:
            self.take()
        rate = self.take()
        burst = "5"
        if self.word() == "burst":
            self.take()
            burst = self.take()
            if self.take() != "packets":
                self.inexact("a byte burst")
        if "bytes" in rate or not re.fullmatch(r"\d+/(second|minute|hour|day)", rate):
            self.inexact(f"limit rate {rate}")
            return
        self.rule.fields["limit"] = f"limit {'over ' if over else ''}{rate} burst {burst}"

    def meter(self) -> None:
        name = self.take()[1:]
        if self.take() != "{":
            raise self.reader.error(
                self.st, self.index - 1, "a meter update is written 'update @SET { KEY limit rate ... }'"
            )
        family, key = self.take(), self.take()
        if self.word() == "limit":
            self.take()
            self.limit()
        limit = self.rule.fields.get("limit")
        if (
            self.take() != "}"
            or limit is None
            or key not in ("saddr", "daddr")
            or family not in ("ip", "ip6")
        ):
            self.inexact(f"the meter update @{name}")
            return
        self.rule.fields["family"] = family
        self.rule.fields["limit"] = f"{limit} per {key} name {name}"

    def log(self) -> None:
        words = ["log"]
        while self.word() in ("prefix", "level", "flags"):
            key = self.take()
            value = self.take()
            if key == "flags":
                self.inexact(f"log flags {value}")
            elif key == "level":
                words.append(f"level {value}")
            else:
                words.append(f'prefix "{value.strip(chr(34))}"')
        self.rule.log = " ".join(words)

    def verdict(self, word: str) -> None:
        narrowed = self.narrowed
        if word == "reject":
            self.rule.verdict = "reject"
            if self.word() == "with":
                self.take()
                kind = self.take()
                what = self.take()
                if what == "type":
                    what = self.take()
                if kind == "tcp":
                    self.rule.verdict = "reject with tcp reset"
                elif what != "port-unreachable":
                    nfc_name = {"addr-unreachable": "host-unreachable", "no-route": "net-unreachable"}.get(
                        what, what
                    )
                    self.rule.verdict = f"reject with icmp {nfc_name}"
        elif word in ("jump", "goto"):
            target = self.take()
            self.rule.verdict = f"jump {target}"
            if word == "goto":
                self.rule.verdict = "drop"
                self.inexact(f"goto {target}")
        elif word == "continue":
            return
        elif word == "queue":
            self.rule.verdict = "drop"
            self.inexact("queue")
        else:
            self.rule.verdict = word
        if narrowed:
            what = f"{self.rule.fields.get('proto')} types {', '.join(narrowed)}"
            if self.rule.verdict == "accept":
                self.reader.source.problems.append(
                    Problem(
                        self.rule.loc,
                        f"nfc has no name for {what}",
                        "the policy accepts the rule's other types only",
                    )
                )
            else:
                del self.rule.fields["icmp"]
                self.inexact(what)
