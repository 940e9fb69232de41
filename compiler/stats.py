"""`nfc stats`: the packets and bytes of each policy line in force, the
lines never hit, the fill of meters and sets, and of the conntrack table.

Which kernel rule came from which policy line is recorded once, when nfc
puts a ruleset in force (nfc.stats_origins). `read` maps the live counters
through that table and never reads a comment: a rule someone added by
hand maps to nothing, and a ruleset replaced since (another table of the
same name, other iptables rules) is refused rather than misread. nft
counts only the rules that carry a counter (`counter`, or `counters:
true` in the policy); iptables counts every rule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from nfc.backends import iptables, nft
from nfc.backends.kernel import ApplyError, Json
from nfc.backends.nft_sets import filled_at_run_time, nft_json, set_object
from nfc.state import State, StateError
from nfc.state_shapes import ORIGINS
from nfc.stats_origins import dump_digest, iptables_rules, nft_table, origins_path

HASHLIMIT_DIRS = {"ipv4": Path("/proc/net/ipt_hashlimit"), "ipv6": Path("/proc/net/ip6t_hashlimit")}
CONNTRACK = Path("/proc/sys/net/netfilter")
FAMILY_OF_SET = {"ipv4_addr": "ipv4", "ipv6_addr": "ipv6"}


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
    table = origins["table"]
    handle, live, _ = nft_table(table)
    if handle != origins["table_handle"]:
        raise _changed(origins, f"table inet {table} was replaced")
    counters = {rule.handle: rule.counter for rule in live}
    missing = [rule["handle"] for rule in origins["rules"] if rule["handle"] not in counters]
    if missing:
        raise _changed(origins, f"the rule of handle {missing[0]} is gone")
    meters: list[Fill] = []
    sets: list[Fill] = []
    loaded = origins.get("set_elements", {})
    # the declarations alone: `-t list sets` leaves every set's elements in the kernel
    declared = [o["set"] for o in nft_json("-t", "list", "sets", "inet") if isinstance(o.get("set"), dict)]
    for named in (d for d in declared if d.get("table") == table):
        flags = named.get("flags", [])
        name = named["name"]
        if name in loaded and not filled_at_run_time(named):
            elements = loaded[name]  # as loaded: a list file's set is not listed from the kernel
        else:
            elements = len(set_object(table, name).get("elem", []))
        kind = named.get("type")  # a list for a concatenation
        family = FAMILY_OF_SET.get(kind) if isinstance(kind, str) else None
        fill = Fill(name, family, elements, named.get("size"))
        (meters if "timeout" in flags or "dynamic" in flags else sets).append(fill)
    return [counters[rule["handle"]] for rule in origins["rules"]], meters, sets


def _iptables_counts(origins: Json, path: Path) -> list[tuple[int, int] | None]:
    dumps = iptables_rules(counted=True)
    for dump, lines in dumps.items():
        if dump_digest(lines) != origins["dumps"][dump]:
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
