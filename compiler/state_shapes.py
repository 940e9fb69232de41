"""The shape of each JSON file in the state directory, checked on every read
and write: the keys nfc writes and no other, each value of its type and
range (a whole number is never a string of digits, a boolean or a
fraction; a number is finite), the backend one that nfc knows, and saved
rulesets whole, so that a damaged file is refused before anything acts on
it. A new state file registers its shape with `register_schema`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from nfc.backends import BACKENDS, iptables, nft
from nfc.backends.iptables_kernel import LegacyKernel
from nfc.backends.kernel import Json
from nfc.load import IDENTIFIER

SAVED = "previous.json"
PENDING = "pending.json"
ROLLED_BACK = "rolled-back.json"
JOURNAL = "journal.json"  # a change to the kernel in progress
APPLIED = "applied.json"  # the finished journal of an apply waiting for confirm
CONFIRMED = "confirmed.json"  # the finished journal of the last confirmed ruleset
ORIGINS = "origins.json"  # the policy line of each rule in force, for nfc stats
JOURNAL_ACTIONS = ("apply", "rollback", "restore")

PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT: no process id is larger
LATEST_TIME = float(1 << 32)  # seconds since the epoch (2106): later ones overflow time.sleep
TOKEN = re.compile(r"[0-9a-f]{16,64}\Z")
SYSCTL_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+\Z")  # no '/', so a path under /proc/sys
SYSCTL_VALUE = re.compile(r"[\t\x20-\x7e]{0,256}\Z")
STATE_FILE_NAME = re.compile(r"[a-z][a-z0-9-]*\.json\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
CHAIN = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
SET_NAME = re.compile(r"[^\s\"\\{}]{1,256}\Z")  # as nft prints a set name
RULES_MAX = 1 << 20  # rules in one origins.json: far more than any ruleset nfc writes

Check = Callable[[object], str | None]
"""What is wrong with a value, or None when it is as nfc writes it."""

Schema = Callable[[object], str | None]
"""What is wrong with a state file's whole content, or None."""


def _shown(value: object) -> str:
    """A value as JSON text (escaped, so safe to print), cut short."""
    shown = json.dumps(value, default=repr)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _kind(value: object) -> str:
    kinds: dict[type, str] = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    kinds |= {int: "a whole number", float: "a decimal number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def whole(low: int, high: int) -> Check:
    """An integer from `low` to `high`: not a boolean, a fraction or a string of digits."""

    def check(value: object) -> str | None:
        if type(value) is not int:
            return f"is {_kind(value)}, not a whole number"
        return None if low <= value <= high else f"is {_shown(value)}, not between {low} and {high}"

    return check


def seconds(high: float) -> Check:
    """A finite number of seconds (since the epoch) from 0 to `high`."""

    def check(value: object) -> str | None:
        if type(value) not in (int, float):
            return f"is {_kind(value)}, not a number"
        assert isinstance(value, int | float)
        return None if 0 <= value <= high else f"is {_shown(value)}, not between 0 and {high:.0f}"

    return check


def text(pattern: re.Pattern[str] | None = None, what: str = "") -> Check:
    """A string, without NUL and encodable as UTF-8; with `pattern`, one it
    matches, which is `what`."""

    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return f"is {_kind(value)}, not a string"
        if "\0" in value or (not value.isascii() and not _encodable(value)):
            return "holds a character that no tool takes (NUL or a lone surrogate)"
        if pattern is not None and not pattern.match(value):
            return f"is {_shown(value)}, not {what}"
        return None

    return check


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def one_of(*choices: str) -> Check:
    def check(value: object) -> str | None:
        return None if value in choices else f"is {_shown(value)}, not {' or '.join(map(repr, choices))}"

    return check


def nullable(inner: Check) -> Check:
    return lambda value: None if value is None else inner(value)


def mapping(key: Check, value: Check) -> Check:
    """An object whose keys and values each pass their check."""

    def check(data: object) -> str | None:
        if not isinstance(data, dict):
            return f"is {_kind(data)}, not an object"
        for name, item in data.items():
            problem = key(name)
            if problem is None:
                problem = value(item)
            if problem is not None:
                return f"entry {_shown(name)} {problem}"
        return None

    return check


def items(check: Check, limit: int) -> Check:
    """A list of at most `limit` values, each passing `check`."""

    def check_list(data: object) -> str | None:
        if not isinstance(data, list):
            return f"is {_kind(data)}, not a list"
        if len(data) > limit:
            return f"has more than {limit} entries"
        for number, item in enumerate(data):
            problem = check(item)
            if problem is not None:
                return f"entry {number} {problem}"
        return None

    return check_list


@dataclass(frozen=True)
class Shape:
    """A JSON object with exactly these keys (`optional` ones may be missing),
    each value passing its check. A Shape is a Schema."""

    fields: Mapping[str, Check]
    optional: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, data: object) -> str | None:
        if not isinstance(data, dict):
            return f"it is {_kind(data)}, not a JSON object"
        missing = [key for key in self.fields if key not in data and key not in self.optional]
        if missing:
            return f"'{missing[0]}' is missing"
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            return f"it has an unknown key {_shown(unknown[0])}"
        for key, check in self.fields.items():
            problem = check(data[key]) if key in data else None
            if problem is not None:
                return f"'{key}' {problem}"
        return None


def _nft_listing(table: str, listing: str) -> str | None:
    """`nft list table inet TABLE` of that table, whole, or the ruleset.nft
    nfc generated for it (comments, then the lines that declare and delete
    the table before defining it anew): loading anything else, or a listing
    cut short, would not put back what was saved."""
    lines = [line for line in listing.rstrip("\n").split("\n") if line and not line.startswith("#")]
    if lines[:2] == [f"table inet {table}", f"delete table inet {table}"]:
        lines = lines[2:]
    if not lines or lines[0] != f"table inet {table} {{" or lines[-1] != "}":
        return f"'listing' is not the whole of table inet {table}"
    if any(line and not line.startswith("\t") for line in lines[1:-1]):
        return f"'listing' holds more than table inet {table}"
    return None


def _iptables_dump(dump: str) -> str | None:
    """The -save output of the tables `LegacyKernel` saves, each complete:
    the restore commits table by table, so a cut dump would restore half."""
    table, seen = None, []
    for number, line in enumerate(dump.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        if table is None:
            if line[1:] not in LegacyKernel.TABLES or line[:1] != "*" or line[1:] in seen:
                return f"line {number} is not the start of a saved {' or '.join(LegacyKernel.TABLES)} table"
            table = line[1:]
            seen.append(table)
        elif line == "COMMIT":
            table = None
        elif not line.startswith((":", "-A ")):
            return f"line {number} is not a chain or a rule of table {table}"
    if table is not None:
        return f"table {table} has no COMMIT: the dump is cut short"
    required = [name for name in LegacyKernel.TABLES if name not in LegacyKernel.OPTIONAL]
    if not set(required) <= set(seen):
        return f"it does not hold each of the tables {', '.join(required)}"
    return None


SYSCTLS = mapping(text(SYSCTL_KEY, "a sysctl name"), text(SYSCTL_VALUE, "a sysctl value"))
NFT_SNAPSHOT = Shape(
    {
        "backend": one_of(nft.BACKEND),
        "table": text(IDENTIFIER, "a table name"),
        "listing": nullable(text()),
        "sysctl": SYSCTLS,
    }
)
IPTABLES_SNAPSHOT = Shape(
    {"backend": one_of(iptables.BACKEND), **dict.fromkeys(iptables.TOOLS, text()), "sysctl": SYSCTLS}
)


def _nft_snapshot(data: object) -> str | None:
    problem = NFT_SNAPSHOT(data)
    if problem is None and isinstance(data, dict) and data["listing"] is not None:
        return _nft_listing(data["table"], data["listing"])
    return problem


def _iptables_snapshot(data: object) -> str | None:
    problem = IPTABLES_SNAPSHOT(data)
    if problem is None and isinstance(data, dict):
        for family_file in iptables.TOOLS:
            family_problem = _iptables_dump(data[family_file])
            if family_problem is not None:
                return f"'{family_file}': {family_problem}"
    return problem


SNAPSHOTS: dict[str, Schema] = {nft.BACKEND: _nft_snapshot, iptables.BACKEND: _iptables_snapshot}
"""What each backend's `Kernel.snapshot` saves."""


def saved_state(data: object) -> str | None:
    """previous.json: the snapshot of a backend nfc knows."""
    if not isinstance(data, dict):
        return f"it is {_kind(data)}, not a JSON object"
    if "backend" not in data:
        return "'backend' is missing"
    backend = data["backend"]
    if not isinstance(backend, str):
        return f"'backend' is {_kind(backend)}, not a string"
    if backend not in SNAPSHOTS:
        return f"'backend' is {_shown(backend)}, not one of nfc's ({', '.join(sorted(BACKENDS))})"
    return SNAPSHOTS[backend](data)


SCHEMAS: dict[str, Schema] = {}
"""The JSON files of the state directory by name, each with its shape."""


def register_schema(name: str, schema: Schema) -> None:
    """Make `name` a JSON file of the state directory, read and written only in
    the shape `schema` accepts."""
    if not STATE_FILE_NAME.match(name) or name in SCHEMAS:
        raise ValueError(f"'{name}' cannot be a new state file")
    SCHEMAS[name] = schema


# origins.json: each rule nfc loaded, by its nft handle or its position in
# an iptables-legacy dump, with the policy line it came from (nfc.stats).
ORIGIN_FIELDS: dict[str, Check] = {
    "chain": text(CHAIN, "a chain name"),
    "file": text(),
    "line": whole(1, 2**31 - 1),
    "meter_drops": lambda value: None if isinstance(value, bool) else f"is {_kind(value)}, not a boolean",
}
NFT_ORIGINS = Shape(
    {
        "backend": one_of(nft.BACKEND),
        "target": text(),
        "at": seconds(LATEST_TIME),
        "loaded": text(SHA256, "a sha256 digest"),
        "table": text(IDENTIFIER, "a table name"),
        "table_handle": whole(0, 2**64 - 1),
        "rules": items(
            Shape(
                {
                    "handle": whole(0, 2**64 - 1),
                    **ORIGIN_FIELDS,
                    "content": nullable(text(SHA256, "a sha256 digest")),  # to carry its counts over
                }
            ),
            RULES_MAX,
        ),
        # the elements of each set of the policy as loaded, for the fill nfc stats shows
        "set_elements": mapping(text(SET_NAME, "a set name"), whole(0, 2**32 - 1)),
        # the ruleset's generation the load committed, if nothing else committed
        # between: while it is still the kernel's, the table is as loaded
        "generation": nullable(whole(1, 2**32 - 1)),
    },
    # origins.json of an nfc that listed every set instead, or the table before each apply
    optional=frozenset({"set_elements", "generation"}),
)
IPTABLES_ORIGINS = Shape(
    {
        "backend": one_of(iptables.BACKEND),
        "target": text(),
        "at": seconds(LATEST_TIME),
        "loaded": text(SHA256, "a sha256 digest"),
        "dumps": Shape(dict.fromkeys(iptables.TOOLS, text(SHA256, "a sha256 digest"))),
        "rules": items(
            Shape({"dump": one_of(*iptables.TOOLS), "index": whole(0, RULES_MAX), **ORIGIN_FIELDS}), RULES_MAX
        ),
    }
)

ORIGIN_SHAPES = {nft.BACKEND: NFT_ORIGINS, iptables.BACKEND: IPTABLES_ORIGINS}


def origins(data: object) -> str | None:
    """origins.json: the map of one backend, each rule in it once."""
    if not isinstance(data, dict):
        return f"it is {_kind(data)}, not a JSON object"
    backend = data.get("backend")
    shape = ORIGIN_SHAPES.get(backend) if isinstance(backend, str) else None
    if shape is None:
        return f"'backend' is {_shown(backend)}, not one of nfc's ({', '.join(sorted(BACKENDS))})"
    problem = shape(data)
    if problem is None:
        keys = [(rule.get("dump"), rule.get("handle"), rule.get("index")) for rule in data["rules"]]
        if len(set(keys)) < len(keys):
            return "'rules' names one rule twice"
    return problem


TOKEN_TEXT = text(TOKEN, "a token of hex digits")
register_schema(SAVED, saved_state)
register_schema(
    PENDING,
    Shape(
        {
            "token": TOKEN_TEXT,
            "deadline": seconds(LATEST_TIME),
            "pid": whole(2, PID_MAX),
            "started": nullable(whole(0, 2**63 - 1)),  # the timer's start, in clock ticks after boot
        }
    ),
)
register_schema(ROLLED_BACK, Shape({"at": seconds(LATEST_TIME), "why": text(), "restored": text()}))
# A journal names what it loads ("to") in the form of a saved state.
JOURNAL_SHAPE = Shape({"action": one_of(*JOURNAL_ACTIONS), "target": text(), "to": saved_state})
for finished in (JOURNAL, APPLIED, CONFIRMED):
    register_schema(finished, JOURNAL_SHAPE)
register_schema(ORIGINS, origins)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number nfc writes")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    data = dict(pairs)
    if len(data) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {_shown(key)} appears twice")
            seen.add(key)
    return data


def parse(raw: bytes, schema: Schema) -> Json:
    """A state file's content: UTF-8 JSON that `schema` accepts, else a
    ValueError saying what is wrong with it."""
    try:
        data = json.loads(raw.decode(), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError too; their text is ASCII
        raise ValueError(f"it is not JSON: {exc}") from None
    problem = schema(data)
    if problem is not None:
        raise ValueError(problem)
    return dict(data)
