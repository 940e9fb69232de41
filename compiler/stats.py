"""`nfc stats`: the packets and bytes of each policy line in force, the
lines never hit, the fill of meters and sets, and of the conntrack table.

Which kernel rule came from which policy line is recorded once, when nfc
puts a ruleset in force (`remember`, called by apply, rollback and
restore under the state lock): the rules are listed right after the load
and each one's origin, from the comment nfc itself wrote, is saved in the
state directory (`origins.json`) under the rule's identity in the kernel,
its nft handle or its position in an iptables-legacy dump. `read` then
maps the live counters through that table and never reads a comment: a
rule someone added by hand maps to nothing, and a ruleset replaced since
(another table of the same name, other iptables rules) is refused rather
than misread. nft counts only the rules that carry a counter (`counter`,
or `counters: true` in the policy); iptables counts every rule.

An apply on nft loads through `load`: the counters of the rules it keeps
(the same content in the same chain) start from the counts they had, in
the load's own transaction, so counts survive a re-apply there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfc.backends import iptables, nft
from nfc.backends.iptables_kernel import LegacyKernel, rule_words
from nfc.backends.kernel import ApplyError, Artifact, Json, Kernel, KernelRefused, RestoreFailed, run_tool
from nfc.backends.nft_sets import filled_at_run_time, nft_json, set_element_counts, set_object, table_objects
from nfc.state import State, StateError
from nfc.state_shapes import ORIGINS

LABEL = re.compile(r"(?P<file>.+?):(?P<line>[0-9]{1,9})(?:: .*)?\Z", re.S)
"""A generated rule's comment: FILE:LINE, then ': note' (nfc.backends.common)."""
CHAIN_START = re.compile(r"\tchain (\S+) \{\Z")
COUNTER = re.compile(r" counter(?: packets [0-9]+ bytes [0-9]+)?(?= |\Z)")
COUNTED = re.compile(r"\[(?P<packets>[0-9]+):(?P<bytes>[0-9]+)\] (?P<rule>-A .*)\Z")
HASHLIMIT_DIRS = {"ipv4": Path("/proc/net/ipt_hashlimit"), "ipv6": Path("/proc/net/ip6t_hashlimit")}
CONNTRACK = Path("/proc/sys/net/netfilter")
FAMILY_OF_DUMP = {iptables.RULES_V4: "ipv4", iptables.RULES_V6: "ipv6"}
FAMILY_OF_SET = {"ipv4_addr": "ipv4", "ipv6_addr": "ipv6"}
DROPPING = ("drop", "reject")


def origins_path(state: State) -> Path:
    return state.dir / ORIGINS


def loaded_digest(record: Json) -> str:
    """What identifies a ruleset put in force: its saved form without sysctls."""
    rules = {key: value for key, value in record.items() if key != "sysctl"}
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------
# at apply, rollback and restore


def remember(state: State, record: Json, target: str, report: Callable[[str], None]) -> None:
    """Save the origin of each rule `record` (a saved form, just put in
    force) loaded. The rules are in force whatever happens here, so a
    failure is a warning, and the stale table goes."""
    try:
        if record["backend"] == nft.BACKEND and record["listing"] is None:
            state.remove(origins_path(state))  # no table of nfc's is in force
            return
        if record["backend"] == nft.BACKEND:
            origins = _nft_origins(record["table"], record["listing"])
        else:
            origins = _iptables_origins()
        origins |= {"target": target, "at": time.time(), "loaded": loaded_digest(record)}
        state.write(origins_path(state), origins)
    except (ApplyError, LookupError, TypeError, ValueError) as exc:  # or a listing not as nft writes it
        with contextlib.suppress(ApplyError):
            state.remove(origins_path(state))
        report(f"warning: nfc stats cannot map the rules in force to policy lines: {exc}")


def still_in_force(state: State, record: Json) -> bool:
    """Whether the nft table in force is the one nfc loaded from `record` (a
    saved form): origins.json maps that load, and the table has the handle
    it had then (a table deleted and made anew gets another). Its rules
    may have changed since, its sets' elements only through nfc (`nfc set`,
    `nfc refresh`) or the kernel (meters), unless someone edits nfc's
    table by hand."""
    if record.get("backend") != nft.BACKEND or not record.get("listing"):
        return False
    try:
        origins = state.read(origins_path(state))
        if origins is None or origins["backend"] != nft.BACKEND or origins["table"] != record["table"]:
            return False
        if origins["loaded"] != loaded_digest(record):
            return False
        tables = [o["table"] for o in nft_json("list", "tables") if isinstance(o.get("table"), dict)]
    except ApplyError:
        return False
    live: Json = next(
        (t for t in tables if t.get("family") == "inet" and t.get("name") == record["table"]), {}
    )
    return bool(live.get("handle") == origins["table_handle"])


def _nft_origins(table: str, loaded: str) -> Json:
    """The origin of each rule of the table, and its content as `loaded`
    (the text just loaded) wrote it, matched rule by rule in each chain."""
    objects = _nft_listing(table)
    handle = next((o["table"].get("handle") for o in objects if "table" in o), None)
    if handle is None:
        raise ApplyError(f"the listing of table inet {table} has no table handle")
    over = {o["limit"]["name"]: bool(o["limit"].get("inv")) for o in objects if "limit" in o}
    live = [o["rule"] for o in objects if "rule" in o]
    written = _rule_lines(loaded)
    in_force = {chain: [r for r in live if r["chain"] == chain] for chain in {r["chain"] for r in live}}
    contents: dict[int, str] = {}
    for chain, rules_in_chain in in_force.items():
        lines = written.get(chain, [])
        if len(lines) == len(rules_in_chain):
            contents |= {
                r["handle"]: _content(chain, line) for r, line in zip(rules_in_chain, lines, strict=True)
            }
    rules = []
    for rule in live:
        origin = LABEL.match(rule.get("comment", ""))
        if origin is not None:
            rules.append(
                {
                    "handle": rule["handle"],
                    "chain": rule["chain"],
                    "file": origin["file"],
                    "line": int(origin["line"]),
                    "meter_drops": _nft_drops_over_meter(rule["expr"], over),
                    "content": contents.get(rule["handle"]),
                }
            )
    policy_sets = {
        o["set"]["name"]: o["set"] for o in objects if "set" in o and not filled_at_run_time(o["set"])
    }
    counts = {name: count for name, count in set_element_counts(loaded).items() if name in policy_sets}
    found = {"backend": nft.BACKEND, "table": table, "table_handle": handle, "rules": rules}
    return found | {"set_elements": counts}


def _rule_lines(listing: str) -> dict[str, list[str]]:
    """The rules of each chain of an nft text (nfc's ruleset.nft, or a
    listing), one line each, in order."""
    chains: dict[str, list[str]] = {}
    chain: list[str] | None = None
    for line in listing.splitlines():
        if (start := CHAIN_START.match(line)) is not None:
            chain = chains.setdefault(start[1], [])
        elif line == "\t}":
            chain = None
        elif (
            chain is not None
            and line.startswith("\t\t")
            and not line.startswith(("\t\ttype ", "\t\tpolicy "))
        ):
            chain.append(line.strip())
    return chains


def _content(chain: str, rule: str) -> str:
    """What a rule does, without its comment and counter: the same content
    keeps its counts across an apply."""
    body = rule.rsplit(' comment "', 1)[0]
    return hashlib.sha256(f"{chain} {COUNTER.sub('', body)}".encode()).hexdigest()


def load(kernel: Kernel, state: State, artifact: Artifact) -> None:
    """Load `artifact` as apply does, its counters starting from the counts of
    the same rules in force (`carrying_counts`). Should the kernel refuse
    that text, nothing changed: the artifact itself is loaded, or refused
    in its own words."""
    with carrying_counts(state, artifact) as loadable:
        if loadable is artifact:
            kernel.load(artifact)
            return
        try:
            kernel.load(loadable)
        except RestoreFailed:
            raise
        except KernelRefused:
            kernel.load(artifact)


@contextlib.contextmanager
def carrying_counts(state: State, artifact: Artifact) -> Iterator[Artifact]:
    """`artifact` with, on nft, each counter of a rule whose content the
    table in force has too (mapped by origins.json) starting from that
    rule's counts, so that they survive the apply; the packets counted
    between this read and the load are lost. Anything unusual (no map, a
    damaged one, another table) carries nothing."""
    counts = _counts_by_content(state, artifact.table) if artifact.backend == nft.BACKEND else {}
    if not counts:
        yield artifact
        return
    out = []
    chain = None
    for line in artifact.path(nft.RULESET).read_text().splitlines(keepends=True):
        bare = line.rstrip("\n")
        if (start := CHAIN_START.match(bare)) is not None:
            chain = start[1]
        elif bare == "\t}":
            chain = None
        elif chain is not None and " counter " in bare.rsplit(' comment "', 1)[0]:
            waiting = counts.get(_content(chain, bare.strip()))
            if waiting:
                packets, size = waiting.pop(0)
                line = line.replace(" counter ", f" counter packets {packets} bytes {size} ", 1)
        out.append(line)
    with tempfile.TemporaryDirectory(prefix="nfc-counts-") as directory:
        (Path(directory) / nft.RULESET).write_text("".join(out))
        yield Artifact(Path(directory), artifact.manifest, artifact.name)


def _counts_by_content(state: State, table: str) -> dict[str, list[tuple[int, int]]]:
    """The counts of the mapped rules of the table in force, by content, in order."""
    try:
        origins = state.read(origins_path(state))
        if origins is None or origins["backend"] != nft.BACKEND or origins["table"] != table:
            return {}
        objects = _nft_listing(table)
    except ApplyError:
        return {}  # a damaged map or no table: the new rules count from zero
    if next((o["table"].get("handle") for o in objects if "table" in o), None) != origins["table_handle"]:
        return {}
    counters = {o["rule"].get("handle"): _counter(o["rule"]) for o in objects if "rule" in o}
    counts: dict[str, list[tuple[int, int]]] = {}
    for rule in origins["rules"]:
        counted = counters.get(rule["handle"])
        if rule["content"] is not None and counted is not None:
            counts.setdefault(rule["content"], []).append(counted)
    return counts


def _counter(rule: Json) -> tuple[int, int] | None:
    found = [c for c in _values_of("counter", rule.get("expr", [])) if isinstance(c, dict)]
    if not found or type(found[0].get("packets")) is not int or type(found[0].get("bytes")) is not int:
        return None
    return found[0]["packets"], found[0]["bytes"]


def _nft_drops_over_meter(expressions: list[Any], over: dict[str, bool]) -> bool:
    """Whether the rule drops what is over a limit: its counter counts the meter's drops."""
    limits = list(_values_of("limit", expressions))
    overs = [
        over.get(limit, False) if isinstance(limit, str) else limit.get("inv", False) for limit in limits
    ]
    return any(overs) and any(verdict in e for e in expressions for verdict in DROPPING)


def _values_of(key: str, tree: object) -> Iterator[Any]:
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                yield value
            yield from _values_of(key, value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _values_of(key, value)


def _iptables_origins() -> Json:
    rules: list[Json] = []
    dumps = {}
    for dump, lines in _iptables_rules(counted=False).items():
        dumps[dump] = _digest(lines)
        parents: dict[str, str] = {}  # nfc's own chains, by the built-in chain that jumps to them
        split = [rule_words(spec) for _, (_, spec) in lines]
        for (table, _), words in zip(lines, split, strict=True):
            target = _option(words, "-j") or _option(words, "-g")
            if target is not None and target.startswith("nfc-"):
                parents[target] = parents.get(words[1], _chain_name(table, words[1]))
        for index, ((table, _), words) in enumerate(zip(lines, split, strict=True)):
            origin = LABEL.match(_option(words, "--comment") or "")
            target = _option(words, "-j") or ""
            if origin is None or target.startswith("nfc-not-"):
                continue  # the chain it jumps to decides and counts, in its last rule
            rules.append(
                {
                    "dump": dump,
                    "index": index,
                    "chain": parents.get(words[1], _chain_name(table, words[1])),
                    "file": origin["file"],
                    "line": int(origin["line"]),
                    "meter_drops": "--hashlimit-above" in words and target in ("DROP", "REJECT"),
                }
            )
    return {"backend": iptables.BACKEND, "dumps": dumps, "rules": rules}


def _option(words: list[str], flag: str) -> str | None:
    """The value of the last `flag` in a rule's words."""
    found = [words[n + 1] for n, word in enumerate(words[:-1]) if word == flag]
    return found[-1] if found else None


def _chain_name(table: str, chain: str) -> str:
    """A chain as nft names nfc's: input, forward, output, raw_prerouting, ..."""
    return chain.lower() if table == "filter" else f"{table}_{chain.lower()}"


# --------------------------------------------------------------------------
# the kernel


def _nft_listing(table: str) -> list[Json]:
    """The objects of table inet TABLE, rules with their handles and counters,
    and its sets without their elements (nft_sets.table_objects)."""
    return table_objects(table)


def _iptables_rules(counted: bool) -> dict[str, list[tuple[str, tuple[tuple[int, int] | None, str]]]]:
    """Each family's rules in the tables nfc owns, in order: (table, (counters, rule))."""
    found = {}
    for dump, tool in iptables.TOOLS.items():
        lines: list[tuple[str, tuple[tuple[int, int] | None, str]]] = []
        for table in LegacyKernel.TABLES:
            done = run_tool([f"{tool}-save", "-t", table, *(["-c"] if counted else [])])
            if done.returncode != 0:
                raise ApplyError(f"{tool}-save -t {table}: {done.stderr.strip()}")
            for line in done.stdout.splitlines():
                if counted and (match := COUNTED.match(line)):
                    lines.append((table, ((int(match["packets"]), int(match["bytes"])), match["rule"])))
                elif line.startswith("-A "):
                    lines.append((table, (None, line)))
        found[dump] = lines
    return found


def _digest(lines: list[tuple[str, tuple[tuple[int, int] | None, str]]]) -> str:
    """The rules of a family as the kernel has them, without their counters."""
    return hashlib.sha256("\n".join(f"{table} {spec}" for table, (_, spec) in lines).encode()).hexdigest()


# --------------------------------------------------------------------------
# nfc stats


@dataclass(frozen=True)
class LineCount:
    """The rules of one policy line in one chain. `packets` and `bytes` are
    None where none of them has a counter (nft without `counter`)."""

    file: str
    line: int
    chain: str
    packets: int | None
    bytes: int | None
    meter_drops: int | None  # of its rules that drop over a meter's rate, if any


@dataclass(frozen=True)
class Fill:
    """A meter's table or a named set: how many entries it holds."""

    name: str
    family: str | None
    elements: int
    size: int | None  # its maximum, where the kernel says


@dataclass(frozen=True)
class Stats:
    backend: str
    target: str  # what the last apply, rollback or restore put in force
    since: float  # when
    lines: tuple[LineCount, ...]  # by file, line and chain
    meters: tuple[Fill, ...]
    sets: tuple[Fill, ...]
    conntrack_count: int | None
    conntrack_max: int | None

    @property
    def dead(self) -> tuple[LineCount, ...]:
        """The counted lines that no packet matched since `since`."""
        return tuple(line for line in self.lines if line.packets == 0)

    @property
    def uncounted(self) -> tuple[LineCount, ...]:
        return tuple(line for line in self.lines if line.packets is None)


def read(state: State, expected: str | None = None) -> Stats:
    """The counters of the rules in force, by policy line; with `expected`
    (a `loaded_digest`), only if that ruleset is the one in force."""
    origins = state.read(origins_path(state))
    if origins is None:
        raise ApplyError(
            f"no rules of nfc's are known to be in force: {state.dir} holds no {ORIGINS} "
            "(it is written by nfc apply, rollback and restore)"
        )
    if expected is not None and expected != origins["loaded"]:
        raise ApplyError(f"the rules in force are not those of this policy, but of {origins['target']}")
    if origins["backend"] == nft.BACKEND:
        counts, meters, sets = _nft_counts(origins)
    else:
        counts, meters, sets = _iptables_counts(origins, origins_path(state)), _hashlimits(), []
    lines: dict[tuple[str, int, str], list[tuple[tuple[int, int] | None, bool]]] = {}
    for rule, counted in zip(origins["rules"], counts, strict=True):
        lines.setdefault((rule["file"], rule["line"], rule["chain"]), []).append(
            (counted, rule["meter_drops"])
        )
    return Stats(
        backend=origins["backend"],
        target=origins["target"],
        since=origins["at"],
        lines=tuple(_line(key, rules) for key, rules in sorted(lines.items())),
        meters=tuple(meters),
        sets=tuple(sets),
        conntrack_count=_proc_number(CONNTRACK / "nf_conntrack_count"),
        conntrack_max=_proc_number(CONNTRACK / "nf_conntrack_max"),
    )


def _line(key: tuple[str, int, str], rules: list[tuple[tuple[int, int] | None, bool]]) -> LineCount:
    counted = [(count, drops) for count, drops in rules if count is not None]
    if not counted:
        return LineCount(*key, None, None, None)
    drops = [count[0] for count, over in counted if over]
    return LineCount(
        *key,
        packets=sum(count[0] for count, _ in counted),
        bytes=sum(count[1] for count, _ in counted),
        meter_drops=sum(drops) if drops else None,
    )


def _changed(origins: Json, how: str) -> ApplyError:
    return ApplyError(
        f"the rules in force changed since nfc put those of {origins['target']} in force ({how}): "
        "their counters no longer map to policy lines; nfc apply maps them anew"
    )


def _nft_counts(origins: Json) -> tuple[list[tuple[int, int] | None], list[Fill], list[Fill]]:
    objects = _nft_listing(origins["table"])
    if next((o["table"].get("handle") for o in objects if "table" in o), None) != origins["table_handle"]:
        raise _changed(origins, f"table inet {origins['table']} was replaced")
    counters = {o["rule"].get("handle"): _counter(o["rule"]) for o in objects if "rule" in o}
    missing = [rule["handle"] for rule in origins["rules"] if rule["handle"] not in counters]
    if missing:
        raise _changed(origins, f"the rule of handle {missing[0]} is gone")
    meters: list[Fill] = []
    sets: list[Fill] = []
    loaded = origins.get("set_elements", {})
    for named in (o["set"] for o in objects if "set" in o):
        flags = named.get("flags", [])
        name = named["name"]
        if name in loaded and not filled_at_run_time(named):
            elements = loaded[name]  # as loaded: a list file's set is not listed from the kernel
        else:
            elements = len(set_object(origins["table"], name).get("elem", []))
        kind = named.get("type")  # a list for a concatenation
        family = FAMILY_OF_SET.get(kind) if isinstance(kind, str) else None
        fill = Fill(name, family, elements, named.get("size"))
        (meters if "timeout" in flags or "dynamic" in flags else sets).append(fill)
    return [counters[rule["handle"]] for rule in origins["rules"]], meters, sets


def _iptables_counts(origins: Json, path: Path) -> list[tuple[int, int] | None]:
    dumps = _iptables_rules(counted=True)
    for dump, lines in dumps.items():
        if _digest(lines) != origins["dumps"][dump]:
            raise _changed(origins, f"the {iptables.TOOLS[dump]} rules differ")
        beyond = [
            rule["index"] for rule in origins["rules"] if rule["dump"] == dump and rule["index"] >= len(lines)
        ]
        if beyond:
            raise StateError(f"damaged state file {path}: rule {beyond[0]} of {dump} is past its last rule")
    return [dumps[rule["dump"]][rule["index"]][1][0] for rule in origins["rules"]]


def _hashlimits() -> list[Fill]:
    """The hashlimit tables of this namespace (nfc owns the tables that use them): one line per entry."""
    fills = []
    for family, directory in HASHLIMIT_DIRS.items():
        with contextlib.suppress(OSError):
            for entry in sorted(directory.iterdir()):
                with contextlib.suppress(OSError):
                    fills.append(Fill(entry.name, family, len(entry.read_text().splitlines()), None))
    return fills


def _proc_number(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # no conntrack module loaded, or no such file in this kernel
