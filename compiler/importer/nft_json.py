"""`nft -j list ruleset` JSON, written back as the nft text the text reader
reads, with each generated line mapped to the place of its object in the
JSON file (so reports and comments name the JSON's own line and column)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from nfc.errors import Loc, PolicyError

Json = object
# json.loads reads whole numbers of at most 4300 digits (int()'s limit): longer ones are no JSON error
LONG_NUMBER = re.compile(r"[0-9]{4301,}")
# nft nests a ruleset about 12 levels deep; Python's decoder, and the readers here, recurse
MAX_DEPTH = 64
NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
# Statements that decide no verdict; any other statement nfc does not know may decide one.
NON_TERMINAL = (
    "counter",
    "mangle",
    "quota",
    "ct",
    "meta",
    "xt",
    "dup",
    "fwd",
    "tproxy",
    "synproxy",
    "secmark",
)


def items(path: str, text: str) -> Iterator[tuple[dict[str, Json], Loc]]:
    """The objects of the top-level 'nftables' list, each with its position."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(Loc(path, exc.lineno, exc.colno), f"not JSON: {exc.msg}", None) from None
    except RecursionError:
        raise PolicyError(_too_deep(path, text), f"nested deeper than {MAX_DEPTH} levels", None) from None
    except ValueError:
        found = LONG_NUMBER.search(text)
        raise PolicyError(
            _at(path, text, found.start() if found else 0), "a number of more than 4300 digits", None
        ) from None
    if _depth(whole) > MAX_DEPTH:
        raise PolicyError(_too_deep(path, text), f"nested deeper than {MAX_DEPTH} levels", None)
    if not isinstance(whole, dict) or not isinstance(whole.get("nftables"), list):
        raise PolicyError(
            Loc(path, 1, 1), "no 'nftables' list: not the output of 'nft -j list ruleset'", None
        )
    decoder = json.JSONDecoder()
    for index in _list_items(decoder, text, _nftables_value(decoder, text)):
        item, _ = decoder.raw_decode(text, index)
        loc = _at(path, text, index)
        if not isinstance(item, dict):
            raise PolicyError(loc, "an item of 'nftables' that is not an object", None)
        if len(item) != 1:  # nft writes each object under one key: its kind
            raise PolicyError(loc, "an item of 'nftables' that is not one key", None)
        yield item, loc


def _at(path: str, text: str, index: int) -> Loc:
    return Loc(path, text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1)


def _depth(value: Json) -> int:
    """How many lists and objects deep `value` goes, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (inner, depth + 1) for inner in (value.values() if isinstance(value, dict) else value)
            )
    return deepest


def _too_deep(path: str, text: str) -> Loc:
    """Where a list or object first opens more than MAX_DEPTH levels down."""
    depth = 0
    for token in NESTING.finditer(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(token[0], 0)
        if depth > MAX_DEPTH:
            return _at(path, text, token.start())
    return Loc(path, 1, 1)


def _skip(text: str, index: int) -> int:
    while text[index] in " \t\r\n":
        index += 1
    return index


def _nftables_value(decoder: json.JSONDecoder, text: str) -> int:
    """Where the top-level object's last 'nftables' value starts (the one
    json.loads keeps), found by reading the object's keys: the text
    '"nftables"' may also sit in a string, or the key be written with escapes."""
    index, found = _skip(text, 0) + 1, 0  # past the '{': the whole text is a valid object
    while text[index := _skip(text, index)] != "}":
        key, index = decoder.raw_decode(text, index)
        index = _skip(text, _skip(text, index) + 1)  # past the ':'
        if key == "nftables":
            found = index
        _, index = decoder.raw_decode(text, index)
        index = _skip(text, index)
        index += text[index] == ","
    return found


def _list_items(decoder: json.JSONDecoder, text: str, index: int) -> Iterator[int]:
    """Where each item of the JSON list at `index` starts."""
    index += 1  # past the '['
    while text[index := _skip(text, index)] != "]":
        yield index
        _, index = decoder.raw_decode(text, index)
        index = _skip(text, index)
        index += text[index] == ","


def to_text(path: str, text: str) -> tuple[str, dict[int, Loc]]:
    """The ruleset as nft text, and generated line → JSON position."""
    tables: dict[tuple[str, str], dict[str, list[tuple[str, Loc]]]] = {}
    chains: dict[tuple[str, str, str], list[tuple[str, Loc]]] = {}
    for item, loc in items(path, text):
        kind, body = next(iter(item.items()))
        if not isinstance(body, dict) or kind == "metainfo":
            continue
        key = (str(body.get("family", "")), str(body.get("table", body.get("name", ""))))
        if kind == "table":
            tables.setdefault(key, {"sets": [], "chains": []})
        elif kind == "set":
            tables.setdefault(key, {"sets": [], "chains": []})["sets"].append((_set(body), loc))
        elif kind == "chain":
            tables.setdefault(key, {"sets": [], "chains": []})["chains"].append((str(body.get("name")), loc))
            chains[(*key, str(body.get("name")))] = [(_chain_head(body), loc)]
        elif kind == "rule":
            chain = chains.get((*key, str(body.get("chain"))))
            if chain is None:
                raise PolicyError(
                    loc, f"a rule for chain '{body.get('chain')}', which comes nowhere before it", None
                )
            chain.append((_rule(body), loc))
    lines: list[str] = []
    positions: dict[int, Loc] = {}

    def add(line: str, loc: Loc | None = None) -> None:
        lines.append(line)
        if loc is not None:
            positions[len(lines)] = loc

    for (family, name), parts in tables.items():
        add(f"table {family} {name} {{")
        for set_text, loc in parts["sets"]:
            for line in set_text.splitlines():
                add(line, loc)
            add("}")
        for chain_name, _ in parts["chains"]:
            head, *rules = chains[(family, name, chain_name)]
            add(f"chain {chain_name} {{", head[1])
            if head[0]:
                add(head[0], head[1])
            for rule, loc in rules:
                add(rule, loc)
            add("}")
        add("}")
    return "\n".join(lines) + "\n", positions


def _set(body: dict[str, Json]) -> str:
    kind = body.get("type")
    types = " . ".join(kind) if isinstance(kind, list) else str(kind)
    lines = [f"set {body.get('name')} {{", f"type {types}"]
    flags = body.get("flags")
    if isinstance(flags, list) and flags:
        lines.append("flags " + ",".join(map(str, flags)))
    elements = body.get("elem")
    if isinstance(elements, list) and elements:
        lines.append("elements = { " + ", ".join(_value(e) for e in elements) + " }")
    return "\n".join(lines)


def _chain_head(body: dict[str, Json]) -> str:
    if "hook" not in body:
        return ""
    hook = f"type {body.get('type')} hook {body.get('hook')} priority {body.get('prio')}"
    return f"{hook}; policy {body.get('policy', 'accept')};"


def _value(value: Json) -> str:
    if isinstance(value, bool) or value is None:
        return "unknown-value"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    if isinstance(value, dict) and len(value) == 1:
        kind, inner = next(iter(value.items()))
        if kind == "set" and isinstance(inner, list):
            return "{ " + ", ".join(_value(v) for v in inner) + " }"
        if kind == "prefix" and isinstance(inner, dict):
            return f"{inner.get('addr')}/{inner.get('len')}"
        if kind == "range" and isinstance(inner, list) and len(inner) == 2:
            return f"{_value(inner[0])}-{_value(inner[1])}"
        if kind == "concat" and isinstance(inner, list):
            return " . ".join(_value(v) for v in inner)
        if kind == "elem" and isinstance(inner, dict):
            return _value(inner.get("val"))
    return _expression(value)


def _expression(expr: Json) -> str:
    if not isinstance(expr, dict) or len(expr) != 1:
        return "unknown-expression"
    kind, inner = next(iter(expr.items()))
    if kind == "concat" and isinstance(inner, list):
        return " . ".join(_expression(e) for e in inner)
    if not isinstance(inner, dict):
        return "unknown-expression"
    if kind == "meta":
        key = str(inner.get("key"))
        return key if key in ("iif", "oif", "iifname", "oifname") else f"meta {key}"
    if kind == "payload" and "protocol" in inner:
        return f"{inner['protocol']} {inner.get('field')}"
    if kind == "ct":
        return f"ct {inner.get('key')}"
    if kind == "fib":
        flags = inner.get("flags")
        return f"fib {' . '.join(flags) if isinstance(flags, list) else flags} {inner.get('result')}"
    return f"unknown-{kind}"


def _rule(body: dict[str, Json]) -> str:
    statements = body.get("expr")
    words = [_statement(s) for s in statements] if isinstance(statements, list) else ["unknown-rule"]
    if isinstance(body.get("comment"), str):
        words.append(json.dumps(body["comment"]).join(("comment ", "")))
    return " ".join(words)


def _limit(inner: dict[str, Json]) -> str:
    unit = "" if inner.get("rate_unit", "packets") == "packets" else f" {inner.get('rate_unit')}"
    over = "over " if inner.get("inv") else ""
    burst = f" burst {inner['burst']} packets" if "burst" in inner and not unit else ""
    return f"limit rate {over}{inner.get('rate')}{unit}/{inner.get('per')}{burst}"


def _statement(statement: Json) -> str:
    if not isinstance(statement, dict) or len(statement) != 1:
        return "unknown-statement"
    kind, inner = next(iter(statement.items()))
    kind = str(kind)
    if kind in ("accept", "drop", "return", "continue", "notrack"):
        return kind
    if kind == "masquerade" and inner is None:
        return "masquerade"
    if not isinstance(inner, dict):
        return "counter" if kind == "counter" else f"unknown-verdict-{kind}"
    if kind == "match":
        op = {"==": "", "in": ""}.get(str(inner.get("op")), str(inner.get("op")))
        return " ".join(w for w in (_expression(inner.get("left")), op, _value(inner.get("right"))) if w)
    if kind in ("jump", "goto"):
        return f"{kind} {inner.get('target')}"
    if kind == "reject":
        what = str(inner.get("type", ""))
        if what == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {what} {inner['expr']}" if "expr" in inner else "reject"
    if kind == "counter":
        return "counter"
    if kind == "limit":
        return _limit(inner)
    if kind == "log":
        prefix = f" prefix {json.dumps(inner['prefix'])}" if "prefix" in inner else ""
        level = f" level {inner['level']}" if "level" in inner else ""
        return f"log{prefix}{level}"
    if kind == "vmap":
        data = inner.get("data")
        pairs = data.get("set") if isinstance(data, dict) else None
        if isinstance(pairs, list):
            mapped = [
                f"{_value(p[0])} : {_statement(p[1])}" for p in pairs if isinstance(p, list) and len(p) == 2
            ]
            return f"{_expression(inner.get('key'))} vmap {{ {', '.join(mapped)} }}"
    if kind in ("dnat", "snat", "masquerade", "redir", "redirect"):
        return _nat(kind, inner)
    if kind in NON_TERMINAL:
        return f"unknown-{kind}"
    if kind == "set" and inner.get("op") in ("update", "add"):
        stmts = inner.get("stmt")
        first = stmts[0] if isinstance(stmts, list) and stmts else None
        limit = ""
        if isinstance(first, dict) and isinstance(first.get("limit"), dict):
            limit = _limit(first["limit"])
        return f"{inner.get('op')} {inner.get('set')} {{ {_expression(inner.get('elem'))} {limit} }}"
    return f"unknown-verdict-{kind}"  # a statement that may decide: the rule drops


def _nat(kind: str, inner: dict[str, Json]) -> str:
    """A NAT statement as nft writes it: `dnat ip to ADDR:PORT`, `redirect to :PORT`, ..."""
    words = ["redirect" if kind.startswith("redir") else kind]
    if "family" in inner:
        words.append(str(inner["family"]))
    address = _value(inner["addr"]) if "addr" in inner else ""
    if ":" in address and "port" in inner:
        address = f"[{address}]"
    port = f":{_value(inner['port'])}" if "port" in inner else ""
    if address or port:
        words += ["to", address + port]
    flags = inner.get("flags")
    if flags:
        words += [_value(flags)]
    return " ".join(words)
