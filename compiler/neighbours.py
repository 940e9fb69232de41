"""Other firewalls beside nfc's: the tables that also hook `forward`.

Netfilter runs every base chain on a hook in turn and a packet must pass
them all: an accept ends only its own chain, a drop is final. So when
nfc's forward chain drops by policy, what Docker's iptables-nft `table ip
filter` (chains FORWARD, DOCKER-USER), kube-proxy's tables or the FORWARD
chain of iptables-legacy accept for containers still dies in nfc's chain,
and published ports with it. `forward_warning` reads both sides from the
kernel, after `nfc apply` loaded nfc's rules or when `nfc doctor` looks,
and names the foreign chains and the fix. It never raises: what it cannot
read, it does not judge."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nfc.backends import iptables, nft
from nfc.backends.iptables_kernel import rule_words
from nfc.backends.kernel import ApplyError
from nfc.backends.nft_kernel import Nft
from nfc.ir import Interfaces

WARNING = "nfc: warning: "
LEGACY_TOOLS = ("iptables-legacy", "ip6tables-legacy")
# The built-in chains of iptables and the hooks they sit on.
LEGACY_HOOKS = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward", "OUTPUT": "output",
                "POSTROUTING": "postrouting"}  # fmt: skip
# Options that only name interfaces or say which connections a rule is
# about: a rule with no other match accepts all of an interface's traffic.
LEGACY_WORDS = {"-i", "-o", "-j", "-g", "-m", "--ctstate", "--ctstatus", "--state", "--comment", "!"}
LEGACY_VERDICTS = ("ACCEPT", "DROP", "REJECT", "RETURN")


@dataclass(frozen=True)
class Rule:
    """A rule, as far as living beside another firewall goes."""

    iif: tuple[str, ...] = ()  # names a packet's iifname must be one of ('*' ends a prefix)
    oif: tuple[str, ...] = ()
    ct_state: bool = False  # matches a connection state or status (established, dnat)
    ct_dnat: bool = False  # matches connections whose destination was translated
    narrowed: bool = False  # has a match besides interfaces and connection state
    verdict: str | None = None  # accept, drop, jump, goto, return, ...
    targets: tuple[str, ...] = ()  # of a jump or goto, or of each in a verdict map
    dnat: bool = False  # translates destinations (a published port)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return self.iif + self.oif


@dataclass
class Chain:
    name: str
    hook: str | None = None  # None: a chain reached only by jumps
    policy: str | None = None
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Table:
    label: str  # as the user would look it up: 'table ip filter', 'iptables-legacy filter'
    chains: dict[str, Chain] = field(default_factory=dict)

    def reachable(self, start: str) -> Iterator[Chain]:
        """`start` and every chain its rules jump or go to, each once."""
        seen: set[str] = set()
        todo = [start]
        while todo:
            name = todo.pop()
            chain = self.chains.get(name)
            if name in seen or chain is None:
                continue
            seen.add(name)
            yield chain
            todo += [target for rule in chain.rules for target in rule.targets]

    def accepts(self, start: str) -> list[Rule]:
        return [rule for chain in self.reachable(start) for rule in chain.rules if rule.verdict == "accept"]

    def forward_chains(self) -> list[Chain]:
        return [chain for chain in self.chains.values() if chain.hook == "forward"]

    @property
    def owner(self) -> str | None:
        """Whose table this looks like, by the names its owners give chains."""
        names = [self.label, *self.chains]
        if any(name.startswith("DOCKER") for name in names):
            return "Docker's"
        if any(name.startswith("KUBE-") or "kube" in name for name in names):
            return "kube-proxy's"
        return None

    @property
    def dnats(self) -> bool:
        return any(rule.dnat for chain in self.chains.values() for rule in chain.rules)


# --------------------------------------------------------------------------
# nft -j list ruleset


def _names(right: Any, sets: dict[str, list[str]]) -> tuple[str, ...]:
    """An interface match's right side: a name, an anonymous set, or @a named one."""
    if isinstance(right, str):
        return tuple(sets.get(right[1:], ())) if right.startswith("@") else (right,)
    if isinstance(right, dict) and "set" in right:
        return _names(right["set"], sets)
    if isinstance(right, list):
        return tuple(name for item in right for name in _names(item, sets))
    return ()


def _ct_key(left: Any) -> str | None:
    """`ct state` or `ct status`, also masked (`ct status & dnat == dnat`)."""
    if isinstance(left, dict) and "&" in left:
        return _ct_key(left["&"][0])
    return left.get("ct", {}).get("key") if isinstance(left, dict) else None


def _nft_rule(expressions: list[Any], sets: dict[str, list[str]], maps: dict[str, list[Any]]) -> Rule:
    iif: tuple[str, ...] = ()
    oif: tuple[str, ...] = ()
    ct_state = ct_dnat = narrowed = dnat = False
    verdict = None
    targets: tuple[str, ...] = ()
    for expression in expressions:
        (kind, body), *_ = expression.items()
        if kind == "match":
            left = body["left"]
            key = left.get("meta", {}).get("key") if isinstance(left, dict) else None
            if key in ("iifname", "oifname") and body["op"] in ("==", "in"):
                names = _names(body["right"], sets)
                iif, oif = (iif + names, oif) if key == "iifname" else (iif, oif + names)
            elif _ct_key(left) in ("state", "status"):
                ct_state = True
                ct_dnat = ct_dnat or (_ct_key(left) == "status" and "dnat" in json.dumps(body["right"]))
            elif key not in ("iifname", "oifname"):  # a negated interface narrows no further than it says
                narrowed = True
        elif kind == "xt":
            narrowed = narrowed or body.get("type") == "match"
            dnat = dnat or body.get("name") == "DNAT"
        elif kind == "dnat":
            dnat = True
        elif kind in ("accept", "drop", "reject", "return", "queue"):
            verdict = kind
        elif kind in ("jump", "goto"):
            verdict, targets = kind, (body["target"],)
        elif kind == "vmap":  # `meta l4proto vmap { tcp : jump CHAIN, ... }`: nfc -O1's dispatch by protocol
            data = body["data"]
            entries = maps.get(data[1:], []) if isinstance(data, str) else data["set"]
            decided = [next(iter(each[1].items())) for each in entries if isinstance(each[1], dict)]
            targets = tuple(value["target"] for name, value in decided if name in ("jump", "goto"))
            # an accept in the map accepts what its key matches: connections in a state
            # (`ct state vmap { established : accept, ... }`), or else a narrowed accept
            verdict = "accept" if any(name == "accept" for name, _ in decided) else "jump"
            if _ct_key(body["key"]) in ("state", "status"):
                ct_state = True
            else:
                narrowed = True
    return Rule(iif, oif, ct_state, ct_dnat, narrowed, verdict, targets, dnat)


def parse_nft(listing: list[Any]) -> dict[tuple[str, str], Table]:
    """`nft -j list ruleset`'s objects → tables by (family, name)."""
    tables: dict[tuple[str, str], Table] = {}
    sets: dict[tuple[str, str, str], list[str]] = {}
    maps: dict[tuple[str, str, str], list[Any]] = {}  # verdict maps' elements: [key, verdict]
    for item in listing:
        (kind, body), *_ = item.items()
        if kind == "table":
            tables[body["family"], body["name"]] = Table(f"table {body['family']} {body['name']}")
        elif kind == "set":
            elements = [e for e in body.get("elem", []) if isinstance(e, str)]
            sets[body["family"], body["table"], body["name"]] = elements
        elif kind == "map" and body.get("map") == "verdict":
            maps[body["family"], body["table"], body["name"]] = body.get("elem", [])
        elif kind == "chain":
            chain = Chain(body["name"], body.get("hook"), body.get("policy"))
            tables[body["family"], body["table"]].chains[chain.name] = chain
    for item in listing:
        body = item.get("rule")
        if body is not None:
            table = body["family"], body["table"]
            table_sets = {n: e for (f, t, n), e in sets.items() if (f, t) == table}
            table_maps = {n: e for (f, t, n), e in maps.items() if (f, t) == table}
            chain = tables[table].chains[body["chain"]]
            chain.rules.append(_nft_rule(body["expr"], table_sets, table_maps))
    return tables


# --------------------------------------------------------------------------
# iptables-legacy-save


def _legacy_rule(words: list[str]) -> Rule:
    iif: tuple[str, ...] = ()
    oif: tuple[str, ...] = ()
    ct_state = ct_dnat = narrowed = dnat = False
    verdict = None
    targets: tuple[str, ...] = ()
    for index, word in enumerate(words):
        value = words[index + 1] if index + 1 < len(words) else ""
        negated = index > 0 and words[index - 1] == "!"
        name = value[:-1] + "*" if value.endswith("+") else value  # iptables' wildcard, written as nft's
        if word == "-i" and not negated:
            iif += (name,)
        elif word == "-o" and not negated:
            oif += (name,)
        elif word in ("--ctstate", "--ctstatus", "--state"):
            ct_state = True
            ct_dnat = ct_dnat or (word != "--state" and "DNAT" in value.split(","))  # --ctstate DNAT too
        elif word in ("-j", "-g") and value in LEGACY_VERDICTS:
            verdict = value.lower()
        elif word in ("-j", "-g"):  # a chain, or a target such as DNAT or LOG
            verdict, targets, dnat = ("jump" if word == "-j" else "goto"), (value,), value == "DNAT"
        elif word.startswith("-") and word not in LEGACY_WORDS:
            narrowed = True
    return Rule(iif, oif, ct_state, ct_dnat, narrowed, verdict, targets, dnat)


def parse_legacy(tool: str, dump: str) -> dict[tuple[str, str], Table]:
    """An iptables-legacy-save dump → tables by (tool, table name)."""
    tables: dict[tuple[str, str], Table] = {}
    table: Table | None = None
    for line in dump.splitlines():
        if line.startswith("*"):
            table = tables.setdefault((tool, line[1:]), Table(f"{tool} {line[1:]}"))
        elif table is not None and line.startswith(":"):
            name, policy, *_ = line[1:].split()
            hook = LEGACY_HOOKS.get(name)
            table.chains[name] = Chain(name, hook, policy.lower() if hook else None)
        elif table is not None and line.startswith("-A "):
            words = rule_words(line)
            chain = table.chains.setdefault(words[1], Chain(words[1]))
            chain.rules.append(_legacy_rule(words[2:]))
    return tables


# --------------------------------------------------------------------------
# reading the kernel


def read_nft() -> dict[tuple[str, str], Table]:
    """Every table, without the elements of named sets (an address list can
    hold a million), then the elements of the interface sets rules name."""
    try:
        nft = Nft()
    except ApplyError:
        return {}
    listing = nft.list_json(terse=True)
    if listing is None:
        return {}
    for family, table, name in _interface_sets(listing):
        listing += [item for item in nft.list_json(f"set {family} {table} {name}") or () if "set" in item]
    return parse_nft(listing)


def _interface_sets(listing: list[Any]) -> set[tuple[str, str, str]]:
    found = set()
    for item in listing:
        rule = item.get("rule")
        for expression in rule["expr"] if rule is not None else ():
            match = expression.get("match")
            left = match["left"] if match is not None else None
            key = left.get("meta", {}).get("key") if isinstance(left, dict) else None
            if (
                key in ("iifname", "oifname")
                and isinstance(match["right"], str)
                and match["right"][:1] == "@"
            ):
                found.add((rule["family"], rule["table"], match["right"][1:]))
    return found


def read_legacy() -> dict[tuple[str, str], Table]:
    """Only the tables already loaded: a bare -save loads no module."""
    tables: dict[tuple[str, str], Table] = {}
    for tool in LEGACY_TOOLS:
        if shutil.which(f"{tool}-save") is None:
            continue
        try:
            result = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            tables |= parse_legacy(tool, result.stdout)
    return tables


def kernel_tables() -> dict[tuple[str, str], Table]:
    return read_nft() | read_legacy()


def nfc_backend(tables: dict[tuple[str, str], Table], table: str) -> str | None:
    """Which backend's rules of nfc are in force, for `nfc doctor`: nft's
    table if it is loaded, else iptables-legacy's filter table if a forward
    policy there is drop."""
    if ("inet", table) in tables:
        return nft.BACKEND
    legacy = [tables.get((tool, "filter")) for tool in LEGACY_TOOLS]
    if any(t is not None and t.chains.get("FORWARD", Chain("")).policy == "drop" for t in legacy):
        return iptables.BACKEND
    return None


# --------------------------------------------------------------------------
# judging


def _is_nfc(key: tuple[str, str], backend: str, table: str) -> bool:
    if backend == nft.BACKEND:
        return key == ("inet", table)
    return key[0] in LEGACY_TOOLS  # the legacy backend owns every table it writes


def forward_warning(tables: dict[tuple[str, str], Table], backend: str, table: str) -> str | None:
    """The warning, or None: nfc's forward chain does not drop by policy,
    or it accepts what the other tables hooking forward accept."""
    ours = [t for key, t in tables.items() if _is_nfc(key, backend, table)]
    forwards = [(t, c) for t in ours for c in t.forward_chains()]
    if not any(chain.policy == "drop" for _, chain in forwards):
        return None
    accepted = [rule for t, chain in forwards for rule in t.accepts(chain.name) if not rule.narrowed]
    if any(not (rule.interfaces or rule.ct_state) for rule in accepted):
        return None  # an accept of everything: the policy drops nothing
    ours_admit = Interfaces(tuple(name for rule in accepted for name in rule.interfaces))
    ours_dnat = any(rule.ct_dnat for rule in accepted)
    problems: list[str] = []
    translations: list[str] = []  # after the chains, which the reader looks for first
    missing: list[str] = []
    owners: set[str] = set()
    for key, foreign in tables.items():
        if _is_nfc(key, backend, table) or key == (
            "inet",
            table,
        ):  # nft's nfc beside legacy's: not a neighbour
            continue
        owner = f"; {foreign.owner}" if foreign.owner else ""
        for chain in foreign.forward_chains():
            accepts = foreign.accepts(chain.name)
            names = sorted({n for rule in accepts for n in rule.interfaces if not ours_admit.admits(n)})
            # an accept of established connections only, nfc's own state rules also make
            unnamed = any(not rule.interfaces and (rule.narrowed or not rule.ct_state) for rule in accepts)
            where = f"{foreign.label} (chain {chain.name}{owner}) accepts forwarded traffic"
            if names:
                missing += [n for n in names if n not in missing]
                problems.append(f"{where} on {', '.join(names)}")
            elif unnamed:
                problems.append(f"{where} that names no interface (by address or mark)")
            if (names or unnamed) and foreign.owner:
                owners.add(foreign.owner)
        if foreign.dnats and not ours_dnat:
            translations.append(
                f"{foreign.label}{f' ({foreign.owner})' if foreign.owner else ''} translates "
                "destinations (published ports) with dnat"
            )
            owners |= {foreign.owner} if foreign.owner else set()
    problems += translations
    if not problems:
        return None
    if "Docker's" in owners and "br-*" not in missing:
        missing.append("br-*")  # the bridges of networks Docker creates later
    fixes = [f"'accept iif {{{', '.join(_quoted(n) for n in missing)}}}'"] if missing else []
    if translations:
        fixes.append("'accept ct status dnat'")
    return (
        f"{WARNING}nfc's forward chain drops by policy, and a drop there is final whatever another table "
        f"accepts: {'; '.join(problems)}; nfc drops that traffic. Fix: in nfc's forward chain, "
        f"{' and '.join(fixes) or 'accept what those tables forward'} (see policies/docker-host.yaml)"
    )


def _quoted(name: str) -> str:
    return f'"{name}"' if "*" in name else name


def warning_here(backend: str | None, table: str) -> str | None:
    """`forward_warning` on what the kernel holds now, for `backend`'s rules
    of nfc, or (None) those in force; None where it cannot read."""
    try:
        tables = kernel_tables()
        backend = backend or nfc_backend(tables, table)
        return forward_warning(tables, backend, table) if backend is not None else None
    except (KeyError, ValueError, TypeError, AttributeError):  # output of a tool nfc does not know
        return None
