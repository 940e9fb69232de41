"""Damaged contents of each state file, made from a valid one: bytes that
are not JSON, JSON that is not an object, and objects of the wrong shape
(a key missing or unknown, a value of the wrong type or range). Every one
must be refused with a message naming the file; none may reach the kernel.

Used by test_state (against nfc.state directly) and by state_driver (through
the nfc command line in a namespace)."""

from __future__ import annotations

import json
from typing import Any

PLACEHOLDER = "\ue000value\ue000"
# A rule of origins.json.
ENTRY = '{"handle": 4, "chain": "input", "file": "p.yaml", "line": 5, "meter_drops": false}'

# Contents that are damaged whatever the file: not JSON, or not an object.
NOT_AN_OBJECT: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("spaces", b" \n"),
    ("empty object", b"{}"),
    ("empty list", b"[]"),
    ("null", b"null"),
    ("number", b"42"),
    ("string", b'"previous"'),
    ("true", b"true"),
    ("NaN", b"NaN"),
    ("one huge number", b"9" * 5000),
    ("a list nested 100000 deep", b"[" * 100000 + b"]" * 100000),
    ("an object nested 50000 deep", b'{"a":' * 50000 + b"1" + b"}" * 50000),
    ("one brace", b"{"),
    ("NUL bytes", b"\0" * 16),
    ("binary", bytes(range(256))),
]

# Substitutions per key that are wrong for it, as JSON text.
COMMON_WRONG = ["null", "true", "[]", "{}", '"\\u0000"', "NaN", "1e999"]
WRONG_VALUES: dict[str, list[str]] = {
    "pid": ['"1234"', "0", "-1", "1", "1.5", "4194305", "100000000000000000000000000000", "[1234]"],
    "deadline": ['"soon"', "-1", "Infinity", "-Infinity", "1e300", '"1700000000"'],
    "token": [
        "7",
        '""',
        '"xyz"',
        '"ABABABABABABABAB"',
        '"not hex at all!!"',
        '"abcd"',
        '"\\ud800abababababababab"',
    ],
    "at": ['"now"', "-5", "1e300", "Infinity"],
    "backend": ['"nftables"', '"bogus"', "1", '""', '"NFT"', '["nft"]', '"iptables"'],
    "table": ['""', '"bad name"', '"x;delete"', "1", '"' + "a" * 40 + '"', '"9lives"', '"a-b"'],
    "listing": ["1", '"table inet other {\\n}\\n"', '"table inet nfc {\\n\\tchain input {\\n"'],
    "sysctl": ['"x"', '{"/etc/passwd": "1"}', '{"net.x": 1}', '{"net.x": null}', '{"net..x": "1"}'],
    "rules.v4": ["1", '""', '"*raw\\n:PREROUTING ACCEPT [0:0]\\n"', '"*nat\\nCOMMIT\\n"', '"garbage\\n"'],
    "rules.v6": [
        "[]",
        '"*filter\\nCOMMIT\\n*filter\\nCOMMIT\\n"',
        '"*raw\\nCOMMIT\\n*filter\\n-X INPUT\\nCOMMIT\\n"',
    ],
    "table_handle": ['"7"', "-1", "1.5", "18446744073709551616"],
    "loaded": ['"abc"', '"' + "AB" * 32 + '"', '"' + "ab" * 33 + '"'],
    "dumps": ['{"rules.v4": "' + "01" * 32 + '"}', '{"rules.v4": "x", "rules.v6": "y"}', '{"filter": "00"}'],
    "rules": [
        "[1]",
        '["p.yaml:5"]',
        "[" + ENTRY.replace('"handle": 4', '"handle": "4"') + "]",
        "[" + ENTRY.replace('"line": 5', '"line": 0') + "]",
        "[" + ENTRY.replace('"chain": "input"', '"chain": "in put"') + "]",
        "[" + ENTRY.replace('"file": "p.yaml"', '"file": "\\u0000"') + "]",
        "[" + ENTRY.replace("false", "0") + "]",
        "[" + ENTRY.replace(', "meter_drops": false', "") + "]",
        "[" + ENTRY.replace("{", '{"extra": 1, ') + "]",
        "[" + ENTRY + ", " + ENTRY + "]",  # one rule twice
        "[" + ENTRY.replace('"handle": 4', '"handle": 4, "dump": "rules.v4", "index": 4') + "]",
    ],
}
# What a key may hold besides what the valid file has: not damage.
ALSO_VALID = {("listing", "null"), ("sysctl", "{}"), ("started", "null"), ("rules", "[]")}


def _with(valid: dict[str, Any], key: str, text: str) -> bytes:
    """`valid` with `key`'s value replaced by the JSON text `text`."""
    encoded = json.dumps({**valid, key: PLACEHOLDER}, indent=2, sort_keys=True)
    return encoded.replace(json.dumps(PLACEHOLDER), text).encode()


def damaged(valid: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(label, content) of damaged variants of the valid content `valid`."""
    good = json.dumps(valid, indent=2, sort_keys=True).encode()
    first = next(iter(sorted(valid)))
    cases = list(NOT_AN_OBJECT)
    cases += [
        ("cut in half", good[: len(good) // 2]),
        ("first byte cut", good[1:]),
        ("invalid UTF-8", b"\xff" + good),
        ("UTF-16", good.decode().encode("utf-16")),
        ("byte order mark", b"\xef\xbb\xbf" + good),
        ("trailing garbage", good + b"x"),
        ("twice", good + good),
        ("in a list", b"[" + good + b"]"),
        ("inside another object", b'{"state": ' + good + b"}"),
        ("an unknown key", json.dumps({**valid, "extra": 1}).encode()),
        ("a key twice", good.replace(b"{", b'{"' + first.encode() + b'": null,', 1)),
    ]
    for key in sorted(valid):
        cases.append((f"'{key}' missing", json.dumps({k: v for k, v in valid.items() if k != key}).encode()))
        for text in COMMON_WRONG + WRONG_VALUES.get(key, []):
            if (key, text) not in ALSO_VALID:
                cases.append((f"'{key}': {text[:40]}", _with(valid, key, text)))
    return cases
