"""Which policy line each rule in force came from, recorded when nfc puts a
ruleset in force, and the counters an apply carries over (see nfc.stats).

`remember` (called by apply, rollback and restore under the state lock)
reads the rules back right after the load and saves each one's origin,
from the comment nfc itself wrote, in the state directory (`origins.json`)
under the rule's identity in the kernel: its nft handle or its position in
an iptables-legacy dump. On nft the rules are read over netlink
(nft_dump), not listed by nft, whose listings grow faster than the rules;
and the map keeps the ruleset's generation the load committed, so that
the next apply knows the table is still exactly as loaded without
listing it.

An apply on nft loads through `load`: the counters of the rules it keeps
(the same content in the same chain) start from the counts they had, in
the load's own transaction, so counts survive a re-apply there. A rule's
content is read in the policy's words, not the optimizer's (`_content`): the
names -O1 gives by number change when a rule is added or removed before,
and the rules of a run move in and out of chains of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nfc.backends import iptables, nft, nft_dump
from nfc.backends.iptables_kernel import LegacyKernel, rule_words
from nfc.backends.kernel import ApplyError, Artifact, Json, Kernel, KernelRefused, RestoreFailed, run_tool
from nfc.backends.nft_dump import LiveRule
from nfc.backends.nft_sets import RUN_TIME, SET_BLOCK, set_element_counts
from nfc.ir import CHAIN_NAMES
from nfc.state import State
from nfc.state_shapes import ORIGINS
from nfc.vocab import PORT_PROTOCOLS

LABEL = re.compile(r"(?P<file>.+?):(?P<line>[0-9]{1,9})(?:: .*)?\Z", re.S)
"""A generated rule's comment: FILE:LINE, then ': note' (nfc.backends.common)."""
CHAIN_START = re.compile(r"\tchain (\S+) \{\Z")
COUNTER = re.compile(r" counter(?: packets [0-9]+ bytes [0-9]+)?(?= |\Z)")
COUNTED = re.compile(r"\[(?P<packets>[0-9]+):(?P<bytes>[0-9]+)\] (?P<rule>-A .*)\Z")
# The names the nft optimizer (-O1, nft_runs.Declarations) gives by number,
# in the order of the chain: the sets and maps of its lookups and of the
# long lists rules keep (CHAIN_setN, CHAIN_mapN; the policy's own sets end
# in _v4, _v6, _ports, never in a digit), and the chains runs of ICMP, TCP,
# UDP and SCTP rules move to (CHAIN_icmp, CHAIN_tcp, CHAIN_udp2, ...).
_CHAINS = "|".join(CHAIN_NAMES)
NUMBERED_SET = re.compile(rf"\t(?:set|map) (?P<name>(?:{_CHAINS})_(?:set|map)[0-9]+) \{{\Z")
RUN_CHAIN = re.compile(rf"(?P<chain>{_CHAINS})_(?:icmp|{'|'.join(PORT_PROTOCOLS)})[0-9]*\Z")
LOOKUP = re.compile(r"@(\w+)")
ELEMENT_COMMENT = re.compile(r' comment "(?:[^"\\]|\\.)*"')

DumpLines = list[tuple[str, tuple[tuple[int, int] | None, str]]]
"""A family's rules as iptables-legacy dumps them: (table, (counters, rule))."""


def origins_path(state: State) -> Path:
    return state.dir / ORIGINS


def loaded_digest(record: Json) -> str:
    """What identifies a ruleset put in force: its saved form without sysctls."""
    rules = {key: value for key, value in record.items() if key != "sysctl"}
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()


def nft_table(table: str) -> tuple[int | None, list[LiveRule], dict[str, bool]]:
    """Table inet TABLE in force: its handle (None if there is none), its
    rules, and whether each of its limit objects limits what is over."""
    handle = nft_dump.table_handle(table)
    if handle is None:
        return None, [], {}
    return handle, nft_dump.rules(table), nft_dump.limit_objects(table)


def remember(
    state: State, record: Json, target: str, report: Callable[[str], None], committed: int | None = None
) -> None:
    """Save the origin of each rule `record` (a saved form, just put in
    force) loaded; `committed`, the generation of the ruleset that load
    committed if nothing else committed since (nft). The rules are in
    force whatever happens here, so a failure is a warning, and the stale
    table goes."""
    try:
        if record["backend"] == nft.BACKEND and record["listing"] is None:
            state.remove(origins_path(state))  # no table of nfc's is in force
            return
        if record["backend"] == nft.BACKEND:
            origins = _nft_origins(record["table"], record["listing"]) | {"generation": committed}
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
    return in_force(state, record)[0]


def in_force(state: State, record: Json) -> tuple[bool, bool]:
    """`still_in_force`, and whether nothing at all was committed to the
    ruleset since: the generation the load made, which origins.json
    keeps, is still the kernel's, so the rules and declarations in force
    are those of `record` to the byte (the elements of meters and runtime
    sets change without a commit, from packets, or with `nfc set`, which
    commits)."""
    if record.get("backend") != nft.BACKEND or not record.get("listing"):
        return False, False
    try:
        origins = state.read(origins_path(state))
        if origins is None or origins["backend"] != nft.BACKEND or origins["table"] != record["table"]:
            return False, False
        if origins["loaded"] != loaded_digest(record):
            return False, False
        if nft_dump.table_handle(record["table"]) != origins["table_handle"]:
            return False, False
        recorded = origins.get("generation")
        return True, recorded is not None and nft_dump.generation() == recorded
    except ApplyError:
        return False, False


def _nft_origins(table: str, loaded: str) -> Json:
    """The origin of each rule of the table, and its content as `loaded`
    (the text just loaded) wrote it, matched rule by rule in each chain."""
    handle, live, over = nft_table(table)
    if handle is None:
        raise ApplyError(f"table inet {table} is not in force")
    written = _rule_contents(loaded)
    in_force: dict[str, list[LiveRule]] = {}
    for rule in live:
        in_force.setdefault(rule.chain, []).append(rule)
    contents: dict[int, str | None] = {}
    for chain, rules_in_chain in in_force.items():
        lines = written.get(chain, [])
        if len(lines) == len(rules_in_chain):
            contents |= {r.handle: content for r, content in zip(rules_in_chain, lines, strict=True)}
    rules = []
    for rule in live:
        origin = LABEL.match(rule.comment or "")
        if origin is not None:
            rules.append(
                {
                    "handle": rule.handle,
                    "chain": policy_chain(rule.chain),  # the same across applies
                    "file": origin["file"],
                    "line": int(origin["line"]),
                    "meter_drops": rule.drops_over(over),
                    "content": contents.get(rule.handle),
                }
            )
    # the sets of the policy, whose elements nfc knows as loaded
    policy_sets = {
        b["name"] for b in SET_BLOCK.finditer(loaded) if b["kind"] == "set" and not RUN_TIME.search(b[0])
    }
    counts = {name: count for name, count in set_element_counts(loaded).items() if name in policy_sets}
    found = {"backend": nft.BACKEND, "table": table, "table_handle": handle, "rules": rules}
    return found | {"set_elements": counts}


def _rule_contents(listing: str) -> dict[str, list[str | None]]:
    """The content (`_content`) of the counted rules of each chain of an
    nft text (nfc's ruleset.nft, or a listing), in order: None for a rule
    without a counter, which has no counts to carry."""
    numbered = _numbered_lists(listing)
    chains: dict[str, list[str | None]] = {}
    rules: list[str | None] | None = None
    in_policy = ""  # the policy's chain of `rules`
    for line in listing.splitlines():
        if (start := CHAIN_START.match(line)) is not None:
            rules, in_policy = chains.setdefault(start[1], []), policy_chain(start[1])
        elif line == "\t}":
            rules = None
        elif (
            rules is not None
            and line.startswith("\t\t")
            and not line.startswith(("\t\ttype ", "\t\tpolicy "))
        ):
            counted = " counter " in line.rsplit(' comment "', 1)[0]
            rules.append(_content(in_policy, line.strip(), numbered) if counted else None)
    return chains


def policy_chain(chain: str) -> str:
    """The policy's chain of a chain of nfc's table: the one whose run of
    rules the optimizer moved to `chain`, else `chain` itself."""
    run = RUN_CHAIN.match(chain)
    return chain if run is None else run["chain"]


def _numbered_lists(listing: str) -> dict[str, str]:
    """The declaration of each set and map of an nft text that the
    optimizer numbered, by name: its lines after the first."""
    found = {}
    for kind in ("\n\tset ", "\n\tmap "):  # a find, not a regex: a list file's set may be a million lines
        at = listing.find(kind)
        while at != -1:
            head_end = listing.find("\n", at + 1)
            end = listing.find("\n\t}", head_end)  # its elements are indented further
            if end == -1:
                break
            if (declared := NUMBERED_SET.match(listing, at + 1, head_end)) is not None:
                found[declared["name"]] = listing[head_end:end]
            at = listing.find(kind, end)
    return found


def _content(chain: str, rule: str, numbered: dict[str, str]) -> str:
    """What `rule` of the policy's `chain` does, without its comment and
    counter, in the policy's words: the same content keeps its counts
    across an apply. So it leaves out what -O1 numbers in the order of the
    chain, which an unrelated rule added or removed before changes: a rule
    of a run moved to a chain of its own is of the policy's chain (a run
    that grows to the optimizer's threshold or shrinks below it moves its
    rules there or back), and a numbered set or map it looks up (declared
    in `numbered`) is its type and elements (a rule whose list changed
    starts from zero). The policy's named sets stay names: their elements
    (a list file's, which `nfc refresh` reloads) are not the rule's."""
    body = COUNTER.sub("", rule.rsplit(' comment "', 1)[0])
    if "_set" in body or "_map" in body:  # a quick test: most lookups are of the policy's sets
        body = LOOKUP.sub(
            lambda found: _as_elements(numbered[found[1]]) if found[1] in numbered else found[0], body
        )
    return hashlib.sha256(f"{chain} {body}".encode()).hexdigest()


def _as_elements(declaration: str) -> str:
    """A set's declaration as its type and elements, without their comments
    and however nft wraps them, digested: `@{DIGEST}`, a name nft could not take."""
    elements = "".join(ELEMENT_COMMENT.sub("", declaration).split())
    return f"@{{{hashlib.sha256(elements.encode()).hexdigest()}}}"


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
    text = artifact.path(nft.RULESET).read_text()
    numbered = _numbered_lists(text)
    out = []
    chain = None  # the policy's chain of the lines read
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if (start := CHAIN_START.match(bare)) is not None:
            chain = policy_chain(start[1])
        elif bare == "\t}":
            chain = None
        elif chain is not None and " counter " in bare.rsplit(' comment "', 1)[0]:
            waiting = counts.get(_content(chain, bare.strip(), numbered))
            if waiting:
                packets, size = waiting.pop(0)
                line = line.replace(" counter ", f" counter packets {packets} bytes {size} ", 1)
        out.append(line)
    try:
        directory = tempfile.mkdtemp(prefix="nfc-counts-")
    except OSError:  # no room for a temporary directory (a full /tmp): the counts restart, the apply goes on
        yield artifact
        return
    try:
        try:
            (Path(directory) / nft.RULESET).write_text("".join(out))
        except OSError:  # as above
            yield artifact
            return
        yield Artifact(Path(directory), artifact.manifest, artifact.name)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _counts_by_content(state: State, table: str) -> dict[str, list[tuple[int, int]]]:
    """The counts of the mapped rules of the table in force, by content, in order."""
    try:
        origins = state.read(origins_path(state))
        if origins is None or origins["backend"] != nft.BACKEND or origins["table"] != table:
            return {}
        handle, live, _ = nft_table(table)
    except ApplyError:
        return {}  # a damaged map or no table: the new rules count from zero
    if handle != origins["table_handle"]:
        return {}
    counters = {rule.handle: rule.counter for rule in live}
    counts: dict[str, list[tuple[int, int]]] = {}
    for rule in origins["rules"]:
        counted = counters.get(rule["handle"])
        if rule["content"] is not None and counted is not None:
            counts.setdefault(rule["content"], []).append(counted)
    return counts


def _iptables_origins() -> Json:
    rules: list[Json] = []
    dumps = {}
    for dump, lines in iptables_rules(counted=False).items():
        dumps[dump] = dump_digest(lines)
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


def iptables_rules(counted: bool) -> dict[str, DumpLines]:
    """Each family's rules in the tables nfc owns, in order: (table, (counters, rule))."""
    found = {}
    for dump, tool in iptables.TOOLS.items():
        lines: DumpLines = []
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


def dump_digest(lines: DumpLines) -> str:
    """The rules of a family as the kernel has them, without their counters."""
    return hashlib.sha256("\n".join(f"{table} {spec}" for table, (_, spec) in lines).encode()).hexdigest()
