"""One iptables-save rule ('-A CHAIN' and what follows) read into the
import model: nfc's words for what nfc can say, the rest noted as inexact
(the emitter then leaves the rule out, or lets it drop more)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nfc import vocab
from nfc.errors import Loc, PolicyError
from nfc.importer.model import Problem, Rule

TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
PROTOCOL_NUMBERS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", "132": "sctp"}
RATE_UNITS = {
    "s": "second",
    "sec": "second",
    "second": "second",
    "m": "minute",
    "min": "minute",
    "minute": "minute",
    "h": "hour",
    "hour": "hour",
    "d": "day",
    "day": "day",
}
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
REJECT_WITH = {
    "icmp-port-unreachable": "reject",
    "icmp6-port-unreachable": "reject",
    "tcp-reset": "reject with tcp reset",
    "icmp-net-unreachable": "reject with icmp net-unreachable",
    "icmp6-no-route": "reject with icmp net-unreachable",
    "icmp-host-unreachable": "reject with icmp host-unreachable",
    "icmp6-addr-unreachable": "reject with icmp host-unreachable",
    "icmp-proto-unreachable": "reject with icmp prot-unreachable",
    "icmp-net-prohibited": "reject with icmp net-prohibited",
    "icmp-host-prohibited": "reject with icmp host-prohibited",
    "icmp-admin-prohibited": "reject with icmp admin-prohibited",
    "icmp6-adm-prohibited": "reject with icmp admin-prohibited",
}
# Targets that change no verdict: left out, and reported.
NON_TERMINAL = {
    "MARK",
    "CONNMARK",
    "TCPMSS",
    "CLASSIFY",
    "DSCP",
    "TOS",
    "TTL",
    "HL",
    "SET",
    "TRACE",
    "AUDIT",
    "NFLOG",
    "ULOG",
    "SECMARK",
    "CONNSECMARK",
    "LED",
    "IDLETIMER",
    "CT",
}
KNOWN_OPTIONS = {
    "--dport", "--destination-port", "--sport", "--source-port", "--dports", "--sports",
    "--destination-ports", "--source-ports", "--ports", "--ctstate", "--ctstatus", "--state", "--icmp-type",
    "--icmpv6-type", "--limit", "--limit-burst", "--comment", "--syn", "--tcp-flags",
    "--hashlimit-upto", "--hashlimit-above", "--hashlimit-burst", "--hashlimit-mode", "--hashlimit-name",
    "--hashlimit-srcmask", "--hashlimit-dstmask", "--hashlimit-htable-size", "--hashlimit-htable-max",
    "--hashlimit-htable-expire", "--hashlimit-htable-gcinterval", "--hashlimit-rate-match",
    "--hashlimit-rate-interval",
}  # fmt: skip
TOP_OPTIONS = {
    "-p",
    "--protocol",
    "-s",
    "--source",
    "-d",
    "--destination",
    "-i",
    "--in-interface",
    "-o",
    "--out-interface",
    "-m",
    "--match",
    "-j",
    "--jump",
    "-g",
    "--goto",
    "-f",
    "--fragment",
    "!",
}


@dataclass
class Token:
    text: str
    col: int


def tokens(line: str) -> list[Token]:
    return [
        Token(m[1].replace('\\"', '"') if m[1] is not None else m[2], m.start() + 1)
        for m in TOKEN.finditer(line)
    ]


class _Rule:
    """The state of reading one rule's options."""

    def __init__(
        self, path: str, number: int, words: list[Token], table: str, problems: list[Problem]
    ) -> None:
        self.path, self.number, self.words, self.table, self.problems = path, number, words, table, problems
        self.rule = Rule(Loc(path, number, 1), "")
        self.position = 0
        self.hashlimit = {
            "burst": "5",
            "mode": "",
            "srcmask": "",
            "dstmask": "",
            "name": "",
            "over": "",
            "rate": "",
        }
        self.limit = ("3/hour", "5")  # iptables' defaults: rate, burst

    def loc(self, token: Token) -> Loc:
        return Loc(self.path, self.number, token.col)

    def take(self, option: Token) -> Token:
        if self.position >= len(self.words):
            raise PolicyError(self.loc(option), f"'{option.text}' needs a value", None)
        token = self.words[self.position]
        self.position += 1
        return token

    def inexact(self, token: Token, what: str) -> None:
        """Note a match or target nfc cannot say (the token places the report)."""
        self.rule.inexact.append(what)
        if self.rule.loc.col == 1:
            self.rule.loc = self.loc(token)


def read_rule(path: str, number: int, words: list[Token], table: str, problems: list[Problem]) -> Rule:
    state = _Rule(path, number, words, table, problems)
    rule = state.rule
    module = ""
    while state.position < len(words):
        token = words[state.position]
        state.position += 1
        negated = token.text == "!"
        if negated:
            token = state.take(token)
        option = token.text
        if option in ("-j", "--jump"):
            _target(state, state.take(token))
            break
        if option in ("-g", "--goto"):
            rule.verdict = "drop"  # what a goto leads to is not followed: the policy drops it
            state.inexact(token, f"-g {state.take(token).text}")
            break
        if option in ("-f", "--fragment", "--syn"):
            state.inexact(token, ("! " if negated else "") + option)
            continue
        if option in ("--tcp-flags",):
            state.inexact(token, f"{option} {state.take(token).text} {state.take(token).text}")
            continue
        if option in ("-m", "--match"):
            module = state.take(token).text
            if module == "addrtype" and _local_destination(state):
                continue
            if module not in (
                "tcp",
                "udp",
                "sctp",
                "multiport",
                "conntrack",
                "state",
                "icmp",
                "icmp6",
                "icmpv6",
                "limit",
                "hashlimit",
                "comment",
            ):
                state.inexact(token, f"-m {module}")
                _skip_options(state)
            continue
        if module and option.startswith("--") and option not in KNOWN_OPTIONS:
            # an option of a module nfc reads, that nfc has no word for (--ctstatus, ...)
            state.inexact(token, f"{'! ' if negated else ''}{option}")
            _skip_options(state, then=True)
            continue
        value = state.take(token)
        _option(state, token, option, value, negated, module)
    if not rule.verdict:
        rule.verdict = "none"
    return rule


def _skip_options(state: _Rule, then: bool = False) -> None:
    """Past a module's options (`then`: past one option's values only)."""
    while state.position < len(state.words):
        text = state.words[state.position].text
        if text in TOP_OPTIONS or (then and text.startswith("--")):
            break
        state.position += 1


def _local_destination(state: _Rule) -> bool:
    """`-m addrtype --dst-type LOCAL` alone: the host's own addresses (notrack `scope: host`)."""
    words = [w.text for w in state.words[state.position : state.position + 2]]
    if words != ["--dst-type", "LOCAL"]:
        return False
    state.position += 2
    state.rule.fields["scope"] = "host"
    return True


def _option(state: _Rule, token: Token, option: str, value: Token, negated: bool, module: str) -> None:
    rule = state.rule
    text = value.text
    if option in ("-p", "--protocol"):
        proto = PROTOCOL_NUMBERS.get(text, text.lower())
        proto = {"ipv6-icmp": "icmpv6", "icmp6": "icmpv6"}.get(proto, proto)
        if negated or (proto not in vocab.PROTOCOLS and proto != "all"):
            state.inexact(token, f"-p {'! ' if negated else ''}{text}")
        elif proto != "all":
            rule.fields["proto"] = (
                proto if proto in ("tcp", "udp", "sctp", "icmp", "icmpv6") else f"proto {proto}"
            )
    elif option in ("-s", "--source", "-d", "--destination"):
        key = "saddr" if option in ("-s", "--source") else "daddr"
        rule.fields[key] = ("not " if negated else "") + _address(state, value)
    elif option in ("-i", "--in-interface", "-o", "--out-interface"):
        if negated:
            state.inexact(token, f"! {option} {text}")
        else:
            rule.fields["iif" if option in ("-i", "--in-interface") else "oif"] = (
                text[:-1] + "*" if text.endswith("+") else text
            )
    elif option in (
        "--dport",
        "--destination-port",
        "--sport",
        "--source-port",
        "--dports",
        "--sports",
        "--destination-ports",
        "--source-ports",
    ):
        key = "dport" if option.startswith(("--d", "--destination")) else "sport"
        if negated:
            state.inexact(token, f"! {option}")
        else:
            rule.fields[key] = _ports(state, value)
    elif option == "--ports":
        state.inexact(token, "-m multiport --ports (either port)")
    elif option in ("--ctstate", "--ctstatus") and text in ("DNAT", "SNAT") and not negated:
        rule.fields["ctstatus"] = text.lower()  # one status: nfc's 'ct status dnat'
    elif option == "--ctstatus":
        state.inexact(token, f"--ctstatus {'! ' if negated else ''}{text}")
    elif option in ("--ctstate", "--state"):
        states = text.lower().split(",")
        if negated or not set(states) <= set(vocab.CT_STATES):
            state.inexact(token, f"{option} {'! ' if negated else ''}{text}")
        else:
            rule.fields["ct"] = ",".join(sorted(states, key=vocab.CT_STATES.index))
    elif option in ("--icmp-type", "--icmpv6-type"):
        _icmp_type(state, token, option, value, negated)
    elif option in ("--limit", "--limit-burst"):
        _limit(state, token, option, value)
    elif option.startswith("--hashlimit"):
        _hashlimit(state, token, option, value)
    elif option == "--comment":
        rule.comment = text.replace('"', "'").replace("\n", " ")
    else:
        raise PolicyError(
            state.loc(token),
            f"unknown option '{option}'" + (f" of -m {module}" if module else ""),
            "is this iptables-save output?",
        )


def _address(state: _Rule, value: Token) -> str:
    try:
        network = ipaddress.ip_network(value.text, strict=False)
    except ValueError:
        raise PolicyError(state.loc(value), f"'{value.text}' is not an address or network", None) from None
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _ports(state: _Rule, value: Token) -> str:
    items = []
    for item in value.text.split(","):
        low, _, high = item.partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            raise PolicyError(state.loc(value), f"'{value.text}' is not a port list", None)
        items.append(f"{low}-{high}" if high and high != low else low)
    return items[0] if len(items) == 1 else "{" + ", ".join(items) + "}"


def _icmp_type(state: _Rule, token: Token, option: str, value: Token, negated: bool) -> None:
    v6 = option == "--icmpv6-type"
    names = vocab.ICMPV6_TYPES if v6 else vocab.ICMP_TYPES
    by_number = {str(number): name for name, number in names.items()}
    kind, _, code = value.text.partition("/")
    name = by_number.get(kind, kind if kind in names else None)
    if name is None and not v6:
        name = {"echo-request": "echo-request", "ping": "echo-request", "pong": "echo-reply"}.get(kind)
    if negated or code or name is None or kind == "any":
        if kind != "any" or negated:
            state.inexact(token, f"{option} {'! ' if negated else ''}{value.text}")
        return
    state.rule.fields["icmp"] = f"{'icmpv6' if v6 else 'icmp'} type {name}"


def _rate(state: _Rule, value: Token) -> str:
    match = re.fullmatch(r"(\d+)/(\w+)", value.text)
    if match is None or match[2] not in RATE_UNITS:
        raise PolicyError(state.loc(value), f"'{value.text}' is not a rate such as 10/sec", None)
    return f"{match[1]}/{RATE_UNITS[match[2]]}"


def _limit(state: _Rule, token: Token, option: str, value: Token) -> None:
    rate, burst = state.limit
    if option == "--limit":
        rate = _rate(state, value)
    elif value.text.isdigit():
        burst = value.text
    else:
        raise PolicyError(state.loc(value), f"'{value.text}' is not a burst", None)
    state.limit = (rate, burst)
    state.rule.fields["limit"] = f"limit {rate} burst {burst}"
    del token


def _hashlimit(state: _Rule, token: Token, option: str, value: Token) -> None:
    parts = state.hashlimit
    key = option[len("--hashlimit-") :]
    if key in ("upto", "above"):
        parts["over"] = "over " if key == "above" else ""
        parts["rate"] = _rate(state, value) if not re.search(r"b/|kb/|mb/", value.text) else ""
        if not parts["rate"]:
            state.inexact(token, f"{option} {value.text} (a byte rate)")
    elif key in ("burst", "mode", "name", "srcmask", "dstmask"):
        parts[key] = value.text
    elif not key.startswith("htable-"):
        state.inexact(token, option)
    if not parts["rate"]:
        return
    modes = parts["mode"].split(",") if parts["mode"] else []
    per = ""
    if modes == ["srcip"] or modes == ["dstip"]:
        mask = parts["srcmask" if modes == ["srcip"] else "dstmask"]
        per = f" per {'saddr' if modes == ['srcip'] else 'daddr'}" + (
            f"/{mask}" if mask and mask not in ("32", "128") else ""
        )
    elif modes:
        state.inexact(token, f"--hashlimit-mode {parts['mode']}")
        return
    name = re.sub(r"[^A-Za-z0-9_-]", "_", parts["name"]) or "hashlimit"
    name = name if name[0].isalpha() else "m_" + name
    state.rule.fields["limit"] = (
        f"limit {parts['over']}{parts['rate']} burst {parts['burst']}{per} name {name}"
    )


def _target(state: _Rule, target: Token) -> None:
    rule = state.rule
    name = target.text
    rest = [word.text for word in state.words[state.position :]]
    options = {
        state.words[i].text: state.words[i + 1].text if i + 1 < len(state.words) else ""
        for i in range(state.position, len(state.words))
    }
    state.position = len(state.words)
    if name in ("ACCEPT", "DROP"):
        rule.verdict = name.lower()
    elif name == "REJECT":
        kind = options.get("--reject-with", "icmp-port-unreachable")
        rule.verdict = REJECT_WITH.get(kind, "")
        if not rule.verdict:
            rule.verdict = "drop"
            state.inexact(target, f"REJECT --reject-with {kind}")
    elif name == "LOG":
        rule.verdict = "log"
        level = options.get("--log-level", "4")
        level = LOG_LEVELS[int(level)] if level.isdigit() and int(level) < 8 else level
        prefix = options.get("--log-prefix")
        rule.log = (
            "log"
            + (f' prefix "{prefix}"' if prefix is not None else "")
            + (f" level {level}" if level != "warn" else "")
        )
    elif name == "NOTRACK" or (name == "CT" and "--notrack" in options):
        rule.verdict = "notrack"
    elif name == "RETURN":
        rule.verdict = "return"
    elif name in NON_TERMINAL:
        rule.verdict = "nothing"
        state.inexact(target, f"-j {name}")
    elif name in ("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"):
        _nat_target(state, target, rest)
    else:  # a user chain; a target nfc does not know is a chain that does not exist: dropped
        rule.verdict = f"jump {name}"


NAT_TARGET_OPTIONS = {"DNAT": "--to-destination", "SNAT": "--to-source", "REDIRECT": "--to-ports"}


def _nat_target(state: _Rule, target: Token, options: list[str]) -> None:
    """DNAT, SNAT, MASQUERADE, REDIRECT as nfc's NAT actions. What nfc's
    actions cannot say (--random, --persistent, several ranges, an address
    range, NETMAP, masquerade --to-ports) makes the rule inexact: left out."""
    name = target.text
    rule = state.rule
    rule.verdict = {"DNAT": "dnat", "SNAT": "snat", "MASQUERADE": "masquerade", "REDIRECT": "redirect"}.get(
        name, "nat"
    )
    if name == "NETMAP":
        state.inexact(target, "-j NETMAP")
        return
    wanted = NAT_TARGET_OPTIONS.get(name)
    values = [options[i + 1] for i, word in enumerate(options[:-1]) if word == wanted]
    others = [word for word in options if word.startswith("--") and word != wanted]
    if others:
        state.inexact(target, f"-j {name} {' '.join(others)}")
        return
    if wanted is None:
        return
    if len(values) != 1:
        state.inexact(target, f"-j {name} {f'with {len(values)}' if values else 'without'} {wanted}")
        return
    to = (
        _nat_to(values[0])
        if name != "REDIRECT"
        else (values[0] if re.fullmatch(r"\d+(-\d+)?", values[0]) else None)
    )
    if to is None:
        state.inexact(target, f"-j {name} {wanted} {values[0]}")
        return
    rule.verdict += f" to {to}"


def _nat_to(text: str) -> str | None:
    """`ADDR[:PORT[-PORT]]` / `[ADDR]:PORT` as nfc writes it; None for an address range."""
    bracketed = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+(?:-\d+)?))?", text)
    if bracketed:
        address, ports = bracketed[1], bracketed[2]
    elif text.count(":") == 1:
        address, _, ports = text.partition(":")
    else:
        address, ports = text, None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ports is not None and not re.fullmatch(r"\d+(-\d+)?", ports):
        return None
    if ports is not None and ports.partition("-")[0] == ports.partition("-")[2]:
        ports = ports.partition("-")[0]
    if ports is None:
        return str(parsed)
    return f"[{parsed}]:{ports}" if parsed.version == 6 else f"{parsed}:{ports}"
