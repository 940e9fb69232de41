"""What apply and `nfc stats` read back of nfc's table, straight over
netlink: the ruleset's generation, the table's handle, its rules (chain,
handle, comment, counter, what `nfc stats` needs of their statements) and
its limit objects.

nft lists rules in a time that grows faster than their number (over a
second at 10,000 rules, over a minute at 100,000): it builds its whole
cache and turns every expression back into text. A dump of the rules of
one table, of which nfc reads a few attributes, stays linear
(linux/netfilter/nf_tables.h; messages built as in nft_netlink)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from nfc.backends.kernel import PERMISSION_HINT, ApplyError
from nfc.backends.nft_netlink import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    TIMEOUT_S,
    attribute,
    message,
)

NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETGEN, NFT_MSG_GETOBJ = 1, 4, 7, 16, 19
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
TABLE_NAME, TABLE_HANDLE = 1, 4
CHAIN_TABLE, CHAIN_NAME = 1, 3
RULE_TABLE, RULE_CHAIN, RULE_HANDLE, RULE_EXPRESSIONS, RULE_USERDATA = 1, 2, 3, 4, 7
OBJ_TABLE, OBJ_NAME, OBJ_TYPE, OBJ_DATA = 1, 2, 3, 4
OBJECT_LIMIT = 4
LIST_ELEM = 1
EXPR_NAME, EXPR_DATA = 1, 2
COUNTER_BYTES, COUNTER_PACKETS = 1, 2
LIMIT_FLAGS, LIMIT_INVERTED = 5, 1
IMMEDIATE_DATA, DATA_VERDICT, VERDICT_CODE = 2, 2, 1
VERDICT_DROP = 0
DYNSET_EXPR, DYNSET_EXPRESSIONS = 7, 10
OBJREF_TYPE, OBJREF_NAME = 1, 2
GEN_ID = 1
UDATA_RULE_COMMENT = 0
NLA_TYPE_MASK = 0x3FFF
GENERATIONS = 1 << 32
READ = frozenset((b"counter", b"immediate", b"reject", b"limit", b"objref", b"dynset"))
"""The expressions whose data nfc reads."""
HEADER = struct.Struct("=HH")
HALF = struct.Struct("=H")
DUMP_TRIES = 5


@dataclass(frozen=True)
class LiveRule:
    """A rule of the table as the kernel holds it, as far as nfc reads it."""

    chain: str
    handle: int
    comment: str | None
    counter: tuple[int, int] | None  # (packets, bytes) of its first counter
    limits: tuple[bool | str, ...]  # each limit: over (True) or not, or the limit object it names
    drops: bool  # its verdict is drop, or it rejects

    def drops_over(self, over: dict[str, bool]) -> bool:
        """Whether it drops what is over a limit (`over`: the table's limit objects)."""
        return self.drops and any(over.get(k, False) if isinstance(k, str) else k for k in self.limits)


def _attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + length
        start += length + (-length % 4)


def _text(data: bytes, start: int, end: int) -> str:
    return data[start:end].split(b"\0", 1)[0].decode(errors="replace")


def _u32(data: bytes, start: int) -> int:
    return int(struct.unpack_from(">I", data, start)[0])


def _u64(data: bytes, start: int) -> int:
    return int(struct.unpack_from(">Q", data, start)[0])


def _request(kind: int, flags: int, body: bytes, family: int = NFPROTO_INET) -> list[tuple[bytes, int, int]]:
    """Send one request; each answer's (data, attributes start, end), after
    the nfgenmsg header. A dump the ruleset changed under is dumped again."""
    for _ in range(DUMP_TRIES):
        answers, interrupted = _exchange(NFNL_SUBSYS_NFTABLES << 8 | kind, flags, body, family)
        if not interrupted:
            return answers
    raise ApplyError("the ruleset kept changing while nfc read it over netlink")


def _exchange(kind: int, flags: int, body: bytes, family: int) -> tuple[list[tuple[bytes, int, int]], bool]:
    answers: list[tuple[bytes, int, int]] = []
    interrupted = False
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as link:
        link.settimeout(TIMEOUT_S)
        try:
            link.bind((0, 0))
            link.sendall(message(kind, NLM_F_REQUEST | flags, 1, family, body))
            while True:
                data = link.recv(1 << 20)
                offset = 0
                while offset + 16 <= len(data):
                    length, answer, answer_flags, _, _ = struct.unpack_from("=IHHII", data, offset)
                    if length < 16:
                        break
                    interrupted = interrupted or bool(answer_flags & NLM_F_DUMP_INTR)
                    if answer == NLMSG_DONE:
                        return answers, interrupted
                    if answer == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + 16)
                        if code == 0:
                            return answers, interrupted
                        _refused(-code)
                    answers.append((data, offset + 20, offset + length))
                    offset += length + (-length % 4)
                if not flags & NLM_F_DUMP:
                    return answers, interrupted
        except TimeoutError:
            raise ApplyError("the kernel did not answer nfc's netlink request in time") from None
        except OSError as exc:
            raise ApplyError(f"cannot reach nf_tables over netlink: {exc.strerror}") from None


class Missing(ApplyError):
    """The table (or what was asked for) does not exist."""


def _refused(code: int) -> None:
    if code == errno.ENOENT:
        raise Missing(os.strerror(code))
    hint = f"; {PERMISSION_HINT}" if code in (errno.EPERM, errno.EACCES) else ""
    raise ApplyError(f"the kernel refused to list nfc's table: {os.strerror(code)}{hint}")


def generation() -> int:
    """The ruleset's generation: one more with every commit of any table."""
    for data, start, end in _request(NFT_MSG_GETGEN, 0, b"", family=0):
        for kind, at, _ in _attributes(data, start, end):
            if kind == GEN_ID:
                return _u32(data, at)
    raise ApplyError("the kernel gave no ruleset generation")


def next_generation(before: int) -> int:
    """The generation after one commit (it skips 0 when it wraps)."""
    return (before + 1) % GENERATIONS or 1


def table_handle(table: str) -> int | None:
    """The handle of table inet TABLE, None if there is none; a table
    deleted and made anew gets another."""
    try:
        answers = _request(NFT_MSG_GETTABLE, 0, attribute(TABLE_NAME, table.encode() + b"\0"))
    except Missing:
        return None
    for data, start, end in answers:
        for kind, at, _ in _attributes(data, start, end):
            if kind == TABLE_HANDLE:
                return _u64(data, at)
    return None


def tables() -> list[tuple[str, str]]:
    """(family, name) of every nf_tables table of the namespace, as nft names families."""
    names = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
    found = []
    for data, start, end in _request(NFT_MSG_GETTABLE, NLM_F_DUMP, b"", family=0):
        family = data[start - 4]
        for kind, at, stop in _attributes(data, start, end):
            if kind == TABLE_NAME:
                found.append((names.get(family, str(family)), _text(data, at, stop)))
    return found


def rules(table: str) -> list[LiveRule]:
    """The rules of table inet TABLE, chain by chain, each in order; empty if there is no table.

    One dump per chain: a dump of the whole table restarts every batch
    (about 32 KiB, some 60 rules) by skipping all the rules it has sent
    before, so its cost grows with the square of the table's rules (6 s of
    kernel time at 100,000 rules); a chain's dump skips only within the
    chain. Dumps made apart can see different rulesets: if a commit came
    between the first and the last, the table is read again."""
    for _ in range(DUMP_TRIES):
        before = generation()
        try:
            found = [rule for chain in _chains(table) for rule in _chain_rules(table, chain)]
        except Missing:
            if table_handle(table) is None:
                return []
            continue  # a chain went away with a commit: read again
        if generation() == before:
            return found
    raise ApplyError("the ruleset kept changing while nfc read it over netlink")


def _chains(table: str) -> list[bytes]:
    """The names of table inet TABLE's chains, NUL-terminated as the kernel
    gives and takes them, in the kernel's order."""
    wanted = table.encode() + b"\0"
    names = []
    for data, start, end in _request(NFT_MSG_GETCHAIN, NLM_F_DUMP, attribute(CHAIN_TABLE, wanted)):
        of_table, name = False, b""
        for kind, at, stop in _attributes(data, start, end):
            if kind == CHAIN_TABLE:
                of_table = data[at:stop] == wanted
            elif kind == CHAIN_NAME:
                name = data[at:stop]
        if of_table and name:
            names.append(name)
    return names


def _chain_rules(table: str, chain_name: bytes) -> list[LiveRule]:
    wanted = table.encode() + b"\0"
    body = attribute(RULE_TABLE, wanted) + attribute(RULE_CHAIN, chain_name)
    chain = _text(chain_name, 0, len(chain_name))
    found = []
    for data, start, end in _request(NFT_MSG_GETRULE, NLM_F_DUMP, body):
        of_table, of_chain, handle, comment = False, False, 0, None
        counter: tuple[int, int] | None = None
        limits: list[bool | str] = []
        drops = False
        for kind, at, stop in _attributes(data, start, end):
            if kind == RULE_TABLE:
                of_table = data[at:stop] == wanted
            elif kind == RULE_CHAIN:
                of_chain = data[at:stop] == chain_name
            elif kind == RULE_HANDLE:
                handle = _u64(data, at)
            elif kind == RULE_USERDATA:
                comment = _comment(data, at, stop)
            elif kind == RULE_EXPRESSIONS:
                for expression, inner, inner_end in _expressions(data, at, stop):
                    if expression not in READ:
                        continue  # most of a rule: payloads, comparisons, lookups
                    if expression == b"counter" and counter is None:
                        counter = _counter(data, inner, inner_end)
                    elif expression == b"immediate":
                        drops = drops or _verdict(data, inner, inner_end) == VERDICT_DROP
                    elif expression == b"reject":
                        drops = True
                    else:
                        limits += _limits(data, expression, inner, inner_end)
        if of_table and of_chain:
            found.append(LiveRule(chain, handle, comment, counter, tuple(limits), drops))
    return found


def limit_objects(table: str) -> dict[str, bool]:
    """The limit objects of table inet TABLE: whether each limits what is over its rate."""
    body = attribute(OBJ_TABLE, table.encode() + b"\0") + attribute(OBJ_TYPE, struct.pack(">I", OBJECT_LIMIT))
    try:
        answers = _request(NFT_MSG_GETOBJ, NLM_F_DUMP, body)
    except Missing:
        return {}
    found = {}
    for data, start, end in answers:
        name, object_type, over = None, None, False
        for kind, at, stop in _attributes(data, start, end):
            if kind == OBJ_NAME:
                name = _text(data, at, stop)
            elif kind == OBJ_TYPE:
                object_type = _u32(data, at)
            elif kind == OBJ_DATA:
                over = any(
                    k == LIMIT_FLAGS and _u32(data, a) & LIMIT_INVERTED
                    for k, a, _ in _attributes(data, at, stop)
                )
        if name is not None and object_type == OBJECT_LIMIT:
            found[name] = over
    return found


def _expressions(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """Each expression of a list: its name, and where its data lies. The
    kernel writes the name first and the data next; this is the loop that
    runs for every expression of every rule, so it reads just those two."""
    found = []
    while start + 4 <= end:
        length = HALF.unpack_from(data, start)[0]
        if length < 4:
            break
        name_length, kind = HEADER.unpack_from(data, start + 4)
        if kind & NLA_TYPE_MASK == EXPR_NAME and name_length > 4:
            inner = start + 4 + name_length + (-name_length % 4)
            inner_end = inner + HALF.unpack_from(data, inner)[0] if inner + 4 <= start + length else inner + 4
            found.append((data[start + 8 : start + 4 + name_length].rstrip(b"\0"), inner + 4, inner_end))
        else:
            found.append(_expression(data, start + 4, start + length))
        start += length + (-length % 4)
    return found


def _expression(data: bytes, start: int, end: int) -> tuple[bytes, int, int]:
    """An expression's name and where its data lies, in any order."""
    name, inner, inner_end = b"", 0, 0
    for kind, at, stop in _attributes(data, start, end):
        if kind == EXPR_NAME:
            name = data[at:stop].rstrip(b"\0")
        elif kind == EXPR_DATA:
            inner, inner_end = at, stop
    return name, inner, inner_end


def _counter(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    values = {kind: _u64(data, at) for kind, at, stop in _attributes(data, start, end) if stop - at == 8}
    if COUNTER_PACKETS not in values or COUNTER_BYTES not in values:
        return None
    return values[COUNTER_PACKETS], values[COUNTER_BYTES]


def _verdict(data: bytes, start: int, end: int) -> int | None:
    for kind, at, stop in _attributes(data, start, end):
        if kind == IMMEDIATE_DATA:
            for inner, inner_at, inner_stop in _attributes(data, at, stop):
                if inner == DATA_VERDICT:
                    for code, code_at, _ in _attributes(data, inner_at, inner_stop):
                        if code == VERDICT_CODE:
                            return int(struct.unpack_from(">i", data, code_at)[0])
    return None


def _limits(data: bytes, name: bytes, start: int, end: int) -> list[bool | str]:
    """The limits an expression applies: its own, a limit object's, or those of a meter's update."""
    if name == b"limit":
        return [
            any(
                k == LIMIT_FLAGS and _u32(data, a) & LIMIT_INVERTED
                for k, a, _ in _attributes(data, start, end)
            )
        ]
    if name == b"objref":
        fields = {kind: (at, stop) for kind, at, stop in _attributes(data, start, end)}
        if (
            OBJREF_TYPE in fields
            and OBJREF_NAME in fields
            and _u32(data, fields[OBJREF_TYPE][0]) == OBJECT_LIMIT
        ):
            return [_text(data, *fields[OBJREF_NAME])]
        return []
    if name != b"dynset":
        return []
    found: list[bool | str] = []
    for kind, at, stop in _attributes(data, start, end):
        if kind == DYNSET_EXPR:
            found += _limits(data, *_expression(data, at, stop))
        elif kind == DYNSET_EXPRESSIONS:
            for expression, inner, inner_end in _expressions(data, at, stop):
                found += _limits(data, expression, inner, inner_end)
    return found


def _comment(data: bytes, start: int, end: int) -> str | None:
    """The comment in a rule's user data (libnftnl's type-length-value records)."""
    while start + 2 <= end:
        kind, length = data[start], data[start + 1]
        if kind == UDATA_RULE_COMMENT:
            return _text(data, start + 2, start + 2 + length)
        start += 2 + length
    return None
