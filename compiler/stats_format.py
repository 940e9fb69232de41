"""The three forms of `nfc stats`: a table to read, JSON with stable keys,
and the Prometheus text format for node_exporter's textfile collector."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from nfc.errors import printable
from nfc.stats import Fill, LineCount, Stats

FORMATS = ("text", "json", "prometheus")
PATH_WIDTH = 200  # characters of a policy path shown in the text table


def render(stats: Stats, form: str) -> str:
    if form == "json":
        return json.dumps(to_json(stats), indent=2) + "\n"
    if form == "prometheus":
        return prometheus(stats)
    return text(stats)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _where(line: LineCount) -> str:
    return f"{printable(line.file, PATH_WIDTH)}:{line.line}"


# --------------------------------------------------------------------------
# text


def text(stats: Stats) -> str:
    since = _when(stats.since)
    out = [f"rules of {printable(stats.target, PATH_WIDTH)} ({stats.backend}), in force since {since}", ""]
    rows = [("POLICY LINE", "CHAIN", "PACKETS", "BYTES")]
    rows += [(_where(n), n.chain, _number(n.packets), _number(n.bytes)) for n in stats.lines]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[2].rjust(widths[2]), row[3].rjust(widths[3])]
        out.append("  ".join(cells).rstrip())
    drops = [n for n in stats.lines if n.meter_drops is not None]
    if drops:
        out += ["", "dropped over a meter's rate:"]
        out += [f"  {_where(n)} ({n.chain}): {n.meter_drops} packets" for n in drops]
    out += ["", f"never hit since {since}: {len(stats.dead)}"]
    out += [f"  {_where(n)} ({n.chain})" for n in stats.dead]
    if stats.uncounted:
        out += ["", f"not counted (no 'counter' on their nft rules): {len(stats.uncounted)}"]
        out += [f"  {_where(n)} ({n.chain})" for n in stats.uncounted]
    out += ["", "meters:" if stats.meters else "meters: none"]
    out += [f"  {_fill(fill)}" for fill in stats.meters]
    out += ["sets:" if stats.sets else "sets: none"]
    out += [f"  {_fill(fill)}" for fill in stats.sets]
    out.append(f"conntrack: {_number(stats.conntrack_count)} of {_number(stats.conntrack_max)} entries")
    return "\n".join(out) + "\n"


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _fill(fill: Fill) -> str:
    family = f" ({fill.family})" if fill.family else ""
    size = f" of {fill.size}" if fill.size is not None else ""
    return f"{printable(fill.name)}{family}: {fill.elements}{size} entries"


# --------------------------------------------------------------------------
# json


def to_json(stats: Stats) -> dict[str, object]:
    def where(line: LineCount) -> dict[str, object]:
        return {"file": line.file, "line": line.line, "chain": line.chain}

    def fill(each: Fill) -> dict[str, object]:
        return {"name": each.name, "family": each.family, "elements": each.elements, "size": each.size}

    return {
        "backend": stats.backend,
        "target": stats.target,
        "since": _when(stats.since),
        "rules": [
            where(n) | {"packets": n.packets, "bytes": n.bytes, "meter_drops": n.meter_drops}
            for n in stats.lines
        ],
        "dead": [where(n) for n in stats.dead],
        "uncounted": [where(n) for n in stats.uncounted],
        "meters": [fill(each) for each in stats.meters],
        "sets": [fill(each) for each in stats.sets],
        "conntrack": {"count": stats.conntrack_count, "max": stats.conntrack_max},
    }


# --------------------------------------------------------------------------
# prometheus

Sample = tuple[dict[str, str], float]


def prometheus(stats: Stats) -> str:
    counted = [n for n in stats.lines if n.packets is not None]

    def by_line(lines: Iterable[LineCount], value: str) -> list[Sample]:
        return [({"file": n.file, "line": str(n.line), "chain": n.chain}, getattr(n, value)) for n in lines]

    def fills(items: tuple[Fill, ...], label: str, value: str) -> list[Sample]:
        return [
            ({label: f.name, "family": f.family or ""}, getattr(f, value))
            for f in items
            if getattr(f, value) is not None
        ]

    def gauge(value: int | None) -> list[Sample]:
        return [] if value is None else [({}, value)]

    families: list[tuple[str, str, str, list[Sample]]] = [
        (
            "nfc_rule_packets_total",
            "counter",
            "Packets matched by the rules of a policy line (on nft, across applies that keep the rule).",
            by_line(counted, "packets"),
        ),
        (
            "nfc_rule_bytes_total",
            "counter",
            "Bytes matched by the rules of a policy line (on nft, across applies that keep the rule).",
            by_line(counted, "bytes"),
        ),
        (
            "nfc_meter_drops_total",
            "counter",
            "Packets a policy line dropped for being over its meter's rate.",
            by_line([n for n in counted if n.meter_drops is not None], "meter_drops"),
        ),
        ("nfc_dead_rules", "gauge", "Counted policy lines no packet matched.", [({}, len(stats.dead))]),
        (
            "nfc_meter_elements",
            "gauge",
            "Entries in a meter's table.",
            fills(stats.meters, "meter", "elements"),
        ),
        (
            "nfc_meter_size",
            "gauge",
            "Entries a meter's table holds at most.",
            fills(stats.meters, "meter", "size"),
        ),
        ("nfc_set_elements", "gauge", "Elements of a named set.", fills(stats.sets, "set", "elements")),
        (
            "nfc_rules_loaded_timestamp_seconds",
            "gauge",
            "When nfc last put the rules in force (apply, rollback or restore).",
            [({}, stats.since)],
        ),
        (
            "nfc_conntrack_entries",
            "gauge",
            "Entries in this namespace's conntrack table.",
            gauge(stats.conntrack_count),
        ),
        (
            "nfc_conntrack_max",
            "gauge",
            "Entries this namespace's conntrack table holds at most.",
            gauge(stats.conntrack_max),
        ),
    ]
    out = []
    for name, kind, help_text, samples in families:
        if not samples:
            continue
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        out += [f"{name}{_labels(labels)} {_value(value)}" for labels, value in samples]
    return "\n".join(out) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escaped(value)}"' for key, value in labels.items()) + "}"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
