"""One rule of an nft ruleset (the statements of a chain's line) read into
the import model: nfc's words for what nfc can say, the rest noted as
inexact; a concatenation gives one rule per element."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Protocol

from nfc import vocab
from nfc.errors import Loc, PolicyError
from nfc.importer.model import Problem, Rule, Source

PORT_KEYS = {"dport": "dport", "sport": "sport"}
VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "notrack", "queue")
NAT_STATEMENTS = ("dnat", "snat", "masquerade", "redirect")
NAT_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[0-9.]+|[0-9a-fA-F:]+)(?::(\d+(?:-\d+)?))?\Z")


@dataclass
class Statement:
    words: list[str]
    cols: list[int]
    loc: Loc


class Context(Protocol):
    """What a rule needs of the ruleset being read."""

    source: Source
    sets: dict[str, tuple[list[str], list[str], Loc]]  # name -> types, elements, where declared
    generated: bool  # the text was written from JSON: places are the JSON's

    def error(
        self, statement: Statement, index: int, message: str, hint: str | None = None
    ) -> PolicyError: ...


def items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


class RuleReader:
    """One rule statement → one or more model rules (one per concatenation element)."""

    def __init__(self, reader: Context, st: Statement) -> None:
        self.reader, self.st = reader, st
        self.rule = Rule(st.loc, "")
        self.index = 0
        self.concat: tuple[list[str], list[list[str]]] | None = None  # fields, elements
        self.narrowed: list[str] = []  # ICMP types nfc has no name for
        self.vmap: list[tuple[str, str]] = []  # ct state vmap: (state, verdict) pairs

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
        words = []
        while self.word() != "}":
            words.append(self.take())
        self.take()
        return "{" + ", ".join(items(" ".join(words).replace(" ,", ","))) + "}"

    def inexact(self, what: str) -> None:
        self.rule.inexact.append(what.replace("unknown-verdict-", "").replace("unknown-", ""))
        if self.rule.loc == self.st.loc and not self.reader.generated:  # JSON: the object's place stays
            self.rule.loc = self.st.loc._replace(col=self.st.cols[max(0, self.index - 1)])

    def read(self) -> list[Rule]:
        while self.index < len(self.st.words):
            self.statement()
        rule = self.rule
        if self.vmap:
            return self.mapped(rule)
        if not rule.verdict:
            rule.verdict = "log" if rule.log else "nothing"
        if self.concat is None:
            return [rule]
        names, elements = self.concat
        return [
            replace(rule, fields={**rule.fields, **dict(zip(names, element, strict=True))})
            for element in elements
        ]

    def mapped(self, rule: Rule) -> list[Rule]:
        """`ct state vmap { invalid : drop, established : accept, ... }`: one
        rule per verdict (the states are disjoint, so in any order). A verdict
        nfc cannot follow there (a jump), or a map of anything else, drops."""
        verdicts: dict[str, list[str]] = {}
        for state, verdict in self.vmap:
            if verdict not in ("accept", "drop") or state not in vocab.CT_STATES:
                verdicts = {}
                break
            verdicts.setdefault(verdict, []).append(state)
        if not verdicts:
            fields = {k: v for k, v in rule.fields.items() if k != "ct"}
            inexact = rule.inexact or ["a verdict map"]
            return [replace(rule, verdict="drop", fields=fields, inexact=inexact)]
        return [
            replace(
                rule,
                verdict=verdict,
                fields={**rule.fields, "ct": ",".join(sorted(states, key=vocab.CT_STATES.index))},
            )
            for verdict, states in sorted(verdicts.items(), key=lambda v: v[0] != "drop")
        ]

    def statement(self) -> None:
        word = self.take()
        fields = self.rule.fields
        if word == "meta" and self.word() in ("iif", "iifname", "oif", "oifname"):
            word = self.take()  # 'meta iifname' is 'iifname'
        if word in ("iif", "iifname", "oif", "oifname"):
            negated = self.word() == "!="
            value = self.value() if not negated else (self.take(), self.value())[1]
            if negated or value.startswith("@") or (word in ("iif", "oif") and value.startswith("{")):
                self.inexact(f"{word} {'!= ' if negated else ''}{value}")
            elif value.startswith("{"):  # a list of names, as nfc's 'iif {a, b*}'
                fields["iif" if word.startswith("i") else "oif"] = value.replace('"', "")
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
            if words == ["daddr", "type", "local"]:
                self.rule.fields["scope"] = "host"  # the host's own addresses
            else:
                self.inexact(f"fib {' '.join(words)}")
        elif word in VERDICTS:
            self.verdict(word)
        elif word in NAT_STATEMENTS:
            self.nat(word)
        elif word == "vmap":  # a map of verdicts on a key read before: nfc cannot follow it, the rule drops
            self.inexact(f"vmap {self.value()}")
            self.vmap = [("", "drop")]
        else:
            # a match nfc has no word for: everything up to the next statement nfc knows
            skipped = [word]
            while self.word() and self.word() not in (*VERDICTS, "log", "counter", "comment"):
                if self.word() == "vmap" or self.word().startswith("unknown-verdict"):
                    # verdicts nfc cannot follow: the rule drops instead
                    word = self.take()
                    skipped.append(f"vmap {self.value()}" if word == "vmap" else word)
                    self.vmap = [("", "drop")]
                    continue
                skipped.append(self.take())
            self.inexact(" ".join(skipped)[:60])

    def meta(self) -> None:
        key = self.take()
        value = self.value()
        if value == "set":
            value = f"set {self.value()}"
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
            elements = items(value[1:-1])
        split = [[part.strip() for part in element.split(" . ")] for element in elements]
        if not split or any(len(parts) != len(selectors) for parts in split):
            self.inexact(f"the concatenation {value}")
            return
        self.concat = (selectors, split)

    def icmp(self, protocol: str) -> None:
        names = vocab.ICMPV6_TYPES if protocol == "icmpv6" else vocab.ICMP_TYPES
        by_number = {str(number): name for name, number in names.items()}
        value = self.value()
        listed = items(value[1:-1]) if value.startswith("{") else [value]
        known = sorted(
            {by_number.get(i, i) for i in listed if by_number.get(i, i) in names}, key=names.__getitem__
        )
        unknown = [i for i in listed if by_number.get(i, i) not in names]
        self.rule.fields["proto"] = protocol
        self.narrowed += unknown
        if known:
            self.rule.fields["icmp"] = f"{protocol} type {','.join(known)}"
        else:
            self.inexact(f"{protocol} type {value}")

    def nat(self, word: str) -> None:
        """`dnat [ip|ip6] to ADDR[:PORT]`, `snat ...`, `masquerade`, `redirect to :PORT`:
        nfc's NAT actions. Anything else of the statement (a range of addresses,
        a map, random, persistent, masquerade's ports) makes the rule inexact."""
        words: list[str] = []
        while self.word() and self.word() not in ("comment", "counter", "log"):
            words.append(self.take())
        self.rule.verdict = word
        if words[:1] in (["ip"], ["ip6"]):
            self.rule.fields["family"] = words[0]
            words = words[1:]
        to = None
        if word in ("dnat", "snat") and len(words) == 2 and words[0] == "to":
            match = NAT_ADDRESS.match(words[1])
            to = words[1] if match and "." not in (match[2] or "") else None
            if match and match[1].startswith("[") and match[2] is None:
                to = match[1][1:-1]
        elif word == "redirect" and len(words) == 2 and words[0] == "to":
            port = words[1].removeprefix(":")
            to = port if re.fullmatch(r"\d+(-\d+)?", port) else None
        elif word == "masquerade" and not words:
            return
        if to is None:
            self.inexact(f"{word} {' '.join(words)}".strip())
            return
        low, _, high = to.rpartition(":")[2].partition("-")
        if high == low:  # 80-80: one port
            to = to[: -len(high) - 1]
        self.rule.verdict = f"{word} to {to}"
        if word in ("dnat", "snat"):  # an address of one family: the rule is of that family
            self.rule.fields["family"] = "ip6" if ":" in to.rpartition(":")[0] or to.startswith("[") else "ip"

    def conntrack(self) -> None:
        key = self.take()
        if self.word() == "vmap":
            self.take()
            pairs = [item.partition(" : ") for item in items(self.value()[1:-1])]
            self.vmap = [(k.strip(), v.strip()) for k, _, v in pairs] if key == "state" else [("", "drop")]
            return
        value = self.value()
        if key == "status" and value in ("dnat", "snat"):
            self.rule.fields["ctstatus"] = value
            return
        states = items(value[1:-1]) if value.startswith("{") else value.split(",")
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
