"""What every input format is read into: rules whose matches are already
nfc's words, chains per address family, and the problems found on the way.

A reader (iptables-save, nft text, nft JSON) produces a `Source`; `flatten`
inlines user chains and folds LOG rules into the rule they announce, so the
emitter sees each hook's rules as one flat list per family. Every rule keeps
the input line it came from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nfc.errors import Loc

# The order in which a rule's matches are written, as nfc's examples write them.
FIELDS = (
    "family", "proto", "icmp", "dport", "sport", "saddr", "daddr", "iif", "oif", "ct", "ctstatus", "limit"
)  # fmt: skip
# Matches whose text names one value set: two rules' fields are combined by equality only.
TERMINAL = ("accept", "drop", "reject")
HOOKS = ("input", "forward", "output")


@dataclass(frozen=True)
class Problem:
    """A construct the import could not translate exactly, and what it did instead."""

    loc: Loc
    message: str
    effect: str

    def render(self) -> str:
        return f"{self.loc}: warning: {self.message}; {self.effect}"


@dataclass
class Rule:
    """One input rule in nfc's words. `verdict` is a terminal verdict
    (accept, drop, reject [with ...]), or, before `flatten`: 'log', 'notrack',
    'return', 'jump CHAIN'. `inexact` lists the matches left out because nfc
    cannot say them; the rule then matches more packets than the input's."""

    loc: Loc
    verdict: str
    fields: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    comment: str | None = None
    inexact: list[str] = field(default_factory=list)
    locs: tuple[Loc, ...] = ()  # further input lines this rule stands for (a folded LOG, a call site)
    note: str | None = None  # why the import wrote this rule (a drop instead of a NAT rule)

    def match_text(self) -> str:
        return " ".join(self._words())

    def _words(self) -> list[str]:
        words = []
        for name in FIELDS:
            value = self.fields.get(name)
            if value is None or (name == "family" and implied_family(self.fields) == value):
                continue
            if name == "proto" and value in ("icmp", "icmpv6") and "icmp" in self.fields:
                continue  # 'icmp type ...' says the protocol
            words.append(value if name in ("family", "proto", "limit") else _KEYWORD[name] + value)
        return words

    def text(self) -> str:
        """The rule in nfc's grammar."""
        words = [self.verdict, *self._words()]
        if self.log is not None:
            words.append(self.log)
        if self.comment is not None:
            words.append(f'comment "{self.comment}"')
        return " ".join(words)

    def all_locs(self) -> tuple[Loc, ...]:
        return tuple(sorted({self.loc, *self.locs}))


def implied_family(fields: dict[str, str]) -> str | None:
    """The family the rule's other matches already restrict it to, as nfc reads them."""
    if fields.get("proto") == "icmp" or fields.get("icmp", "").startswith("icmp "):
        return "ip"
    if fields.get("proto") == "icmpv6" or fields.get("icmp", "").startswith("icmpv6 "):
        return "ip6"
    for key in ("saddr", "daddr"):
        value = fields.get(key, "")
        if value and not value.startswith(("not", "$", "{")):
            return "ip6" if ":" in value else "ip"
    return None


_KEYWORD = {
    "icmp": "",  # the text holds 'icmp type ...' or 'icmpv6 type ...'
    "dport": "dport ",
    "sport": "sport ",
    "saddr": "from ",
    "daddr": "to ",
    "iif": "iif ",
    "oif": "oif ",
    "ct": "ct state ",
    "ctstatus": "ct status ",
}


@dataclass
class Chain:
    name: str
    hook: str | None  # input | forward | output | prerouting | postrouting, None for a user chain
    policy: str  # accept | drop (a user chain: accept, meaning 'return')
    loc: Loc
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Table:
    """One family's table: 'filter', 'raw' or 'nat' (nft: the hook's kind)."""

    kind: str
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass
class Source:
    """The whole input: per family ('ip', 'ip6'), per table kind."""

    path: str
    format: str
    families: dict[str, dict[str, Table]] = field(default_factory=dict)
    sets: dict[str, list[str]] = field(default_factory=dict)  # named sets (nft), as nfc define values
    set_locs: dict[str, Loc] = field(default_factory=dict)  # where each named set is declared
    problems: list[Problem] = field(default_factory=list)

    def table(self, family: str, kind: str) -> Table:
        return self.families.setdefault(family, {}).setdefault(kind, Table(kind))


def places(locs: tuple[Loc, ...]) -> str:
    """FILE:LINE[,LINE...]; LINE:COL where one line holds many rules (nft -j)."""
    by_line = len({loc.line for loc in locs}) == len(locs) and locs[0].line > 1
    return f"{locs[0].file}:" + ",".join(
        str(loc.line) if by_line else f"{loc.line}:{loc.col}" for loc in locs
    )


def combine(call: Rule, inner: Rule) -> Rule | None:
    """The rule `inner` of a user chain as seen through the rule `call` that
    jumps there: both rules' matches at once. None when the two name the same
    field with different values (nfc cannot intersect them here)."""
    fields = dict(call.fields)
    for name, value in inner.fields.items():
        if name in fields and fields[name] != value:
            return None
        fields[name] = value
    return replace(
        inner,
        fields=fields,
        inexact=call.inexact + inner.inexact,
        locs=tuple(sorted({*inner.locs, call.loc, *call.locs})),
        comment=inner.comment or call.comment,
    )


def flatten(chains: dict[str, Chain], problems: list[Problem]) -> dict[str, Chain]:
    """The base chains with every user chain inlined and every LOG folded
    into the drop or reject it announces."""
    flat = {}
    for _name, chain in chains.items():
        if chain.hook is None:
            continue
        rules = _inline(chain.rules, chains, problems, chain.policy, depth=0)
        flat[chain.hook] = replace(chain, rules=_fold_logs(rules, problems))
    return flat


def _inline(
    rules: list[Rule], chains: dict[str, Chain], problems: list[Problem], policy: str, depth: int
) -> list[Rule]:
    out: list[Rule] = []
    for rule in rules:
        if rule.verdict == "return":
            if depth == 0:  # a RETURN in a base chain is its policy
                out.append(replace(rule, verdict=policy))
            continue  # only a user chain's last rule gets here (see _inlinable)
        if not rule.verdict.startswith("jump "):
            out.append(rule)
            continue
        target = chains.get(rule.verdict[5:])
        reason = _inlinable(target, chains, depth)
        inner = (
            [combine(rule, each) for each in _inline(target.rules, chains, problems, policy, depth + 1)]
            if target is not None and reason is None
            else []
        )
        if reason is None and all(each is not None for each in inner):
            out.extend(each for each in inner if each is not None)
            continue
        problems.append(
            Problem(
                rule.loc,
                f"the jump to '{rule.verdict[5:]}' cannot be inlined "
                f"({reason or 'its rules contradict the jump'})",
                "the policy drops what the jump would send there",
            )
        )
        out.append(replace(rule, verdict="drop", log=None))
    return out


def _inlinable(target: Chain | None, chains: dict[str, Chain], depth: int) -> str | None:
    if target is None:
        return "no such chain"
    if depth > 8:
        return "the chains call each other too deeply"
    for index, rule in enumerate(target.rules):
        if rule.verdict == "return" and (index != len(target.rules) - 1 or rule.fields):
            return f"a conditional RETURN at {rule.loc.file}:{rule.loc.line}"
        if rule.verdict.startswith("jump ") and _inlinable(chains.get(rule.verdict[5:]), chains, depth + 1):
            return f"the chain it calls at line {rule.loc.line} cannot be inlined"
    return None


def _fold_logs(rules: list[Rule], problems: list[Problem]) -> list[Rule]:
    """LOG then DROP with the same matches is one nfc rule `drop ... log`. A
    LOG with a limit then an unlimited DROP becomes the limited drop with the
    log, then the drop: the same verdicts, the same log lines."""
    out: list[Rule] = []
    index = 0
    while index < len(rules):
        rule = rules[index]
        following = rules[index + 1] if index + 1 < len(rules) else None
        if rule.verdict != "log":
            out.append(rule)
            index += 1
            continue
        without_limit = {k: v for k, v in rule.fields.items() if k != "limit"}
        announces = (
            following is not None
            and (following.verdict == "drop" or following.verdict.startswith("reject"))
            and following.fields == without_limit
            and not following.inexact
            and not rule.inexact
        )
        if following is not None and announces:
            out.append(
                replace(
                    following,
                    fields=rule.fields,
                    log=rule.log,
                    locs=(*following.locs, following.loc),
                    loc=rule.loc,
                )
            )
            if "limit" in rule.fields:
                out.append(following)
            index += 2
            continue
        problems.append(
            Problem(
                rule.loc,
                "a LOG rule that no DROP or REJECT with the same matches follows",
                "left out: no log line, the same verdicts",
            )
        )
        index += 1
    return out


JOINABLE = ("dport", "sport", "saddr", "daddr")


def join_alike(rules: list[Rule]) -> list[Rule]:
    """Neighbours that differ in one list-valued match only become one rule
    with the union (`accept tcp dport 80` and `accept tcp dport 443`: `accept
    tcp dport {80, 443}`): the same packets, decided in the same place. A
    limit is one bucket per rule, so limited rules stay as they are."""
    out: list[Rule] = []
    for rule in rules:
        last = out[-1] if out else None
        key = _joinable_with(last, rule) if last is not None else None
        if last is None or key is None:
            out.append(rule)
            continue
        members = _members(last.fields[key]) + [
            m for m in _members(rule.fields[key]) if m not in _members(last.fields[key])
        ]
        fields = dict(last.fields)
        fields[key] = "{" + ", ".join(members) + "}"
        if last.fields.get("family") != rule.fields.get("family"):
            fields.pop("family", None)  # the addresses say each one's family
        out[-1] = replace(last, fields=fields, locs=tuple(sorted({*last.locs, rule.loc, *rule.locs})))
    return out


def _joinable_with(last: Rule, rule: Rule) -> str | None:
    if (last.verdict, last.log, last.comment, last.inexact, rule.inexact) != (
        rule.verdict,
        rule.log,
        rule.comment,
        [],
        [],
    ):
        return None
    if "limit" in last.fields or "limit" in rule.fields:
        return None
    differing = {k for k in {*last.fields, *rule.fields} if last.fields.get(k) != rule.fields.get(k)}
    if differing - {"family"} and len(differing - {"family"}) == 1:
        key = next(iter(differing - {"family"}))
        values = (last.fields.get(key), rule.fields.get(key))
        plain = all(v and not v.startswith(("not ", "$")) for v in values)
        # a family match may differ only where the addresses say the family
        if key in JOINABLE and plain and ("family" not in differing or key in ("saddr", "daddr")):
            return key
    return None


def _members(value: str) -> list[str]:
    return [m.strip() for m in value.strip("{}").split(",")] if value.startswith("{") else [value]
