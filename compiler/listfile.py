"""List files: `define: NAME: {file: PATH}`, a plain text file of one
address or network per line, `#` comments and blank lines.

A blocklist may hold a million entries, so this path stays linear and
avoids what makes `ipaddress` slow at that scale: entries are parsed by
`inet_pton`, sorted, merged and cut into prefixes as integers, and only
the result becomes `Network` objects, built without `ipaddress`'s parser.
Anything the fast path does not take goes through `parse_network`, the
reference, which either takes it or raises the error at the entry's own
FILE:LINE:COL. The YAML node cap does not apply here."""

from __future__ import annotations

from nfc.errors import Loc, PolicyError, printable
from nfc.ir import Network
from nfc.textfile import read_text
from nfc.values import AddressValue, network_of, parse_network, strict_prefix

MAX_LIST_BYTES = 512 * 1024 * 1024
V4_BITS, V6_BITS = 32, 128


def read_address_list(path: str, where: Loc) -> AddressValue:
    """The addresses of the list file `path`, collapsed and sorted per
    family; `where` (the `{file: ...}` in the policy) places a file that
    cannot be read."""
    v4, v6 = _entries(path, _read(path, where))
    if not v4 and not v6:
        raise PolicyError(
            Loc(path, 1, 1),
            "this list file holds no address",
            "write one address or network per line; an empty list would match nothing",
        )
    return AddressValue(_collapsed(v4, 4), _collapsed(v6, 6))


def _read(path: str, where: Loc) -> str:
    text = read_text(path, where, limit=MAX_LIST_BYTES, kind="list file", hint="a list file is plain text")
    return text.removeprefix("\ufeff")  # a byte order mark, which some editors write


def _entries(path: str, text: str) -> tuple[list[int], list[int]]:
    """The IPv4 and the IPv6 entries, each as one integer: its first
    address shifted left by 8 bits, with its prefix length in those bits
    (integers sort several times faster than tuples)."""
    v4: list[int] = []
    v6: list[int] = []
    # split("\n"), not splitlines(): that would also end a line at U+2028
    # and the like, and put every later error on the wrong line.
    for number, line in enumerate(text.split("\n"), 1):
        entry = line[: line.index("#")] if "#" in line else line
        entry = entry.strip(" \t\r")
        if not entry:
            continue
        prefix = strict_prefix(entry)
        if prefix is None:
            network = _slow(path, number, line, entry)
            value, length, is_v6 = int(network.network_address), network.prefixlen, network.version == 6
        else:
            value, length, is_v6 = prefix
        (v6 if is_v6 else v4).append(value << 8 | length)
    return v4, v6


def _slow(path: str, number: int, line: str, entry: str) -> Network:
    """An entry the fast path did not take: `parse_network` takes it or
    says what is wrong with it, at its column."""
    loc = Loc(path, number, line.index(entry) + 1)
    for index, char in enumerate(entry):
        if not char.isprintable():
            raise PolicyError(
                Loc(path, number, loc.col + index),
                f"the character U+{ord(char):04X} is not allowed in a list file",
            )
    for index, char in enumerate(entry):
        if char in " \t":
            raise PolicyError(
                Loc(path, number, loc.col + index),
                f"'{printable(entry)}' is more than one address",
                "write one address or network per line ('#' starts a comment)",
            )
    return parse_network(entry, loc)


def _collapsed(entries: list[int], version: int) -> tuple[Network, ...]:
    """The fewest prefixes that cover `entries` (from `_entries`), in address order."""
    bits = V6_BITS if version == 6 else V4_BITS
    entries.sort()
    merged: list[list[int]] = []
    for entry in entries:
        low, length = entry >> 8, entry & 0xFF
        high = low | ((1 << (bits - length)) - 1)
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1][1] = high
        else:
            merged.append([low, high])
    networks: list[Network] = []
    for low, high in merged:
        while low <= high:
            # the longest block that starts at `low` (its trailing zero
            # bits) and ends within `high`
            aligned = (low & -low).bit_length() - 1 if low else bits
            fits = (high - low + 1).bit_length() - 1
            length = bits - min(aligned, fits)
            # Not ipaddress's constructor: parsing again what was just
            # checked would triple the time of a long list.
            networks.append(network_of(low, length, version == 6))
            low += 1 << (bits - length)
    return tuple(networks)
