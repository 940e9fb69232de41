"""Elements added to and deleted from a set of nfc's table straight over
netlink, in one nf_tables transaction: what `nfc set add|del` sends.

nft itself cannot do this cheaply beside a big list: before it adds an
element to any set, nft 1.0.6 fetches every element of every interval set
of the table, and over a list file's million it takes minutes. The kernel
needs none of that for the address sets of `sets:` (hash sets, one key per
element), so nfc speaks the few messages of the nf_tables netlink protocol
itself (linux/netfilter/nf_tables.h)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from nfc.backends.kernel import PERMISSION_HINT, ApplyError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLA_F_NESTED = 0x8000
NFPROTO_INET = 1
# attributes: of the element list, of one element, of a key
LIST_TABLE, LIST_SET, LIST_ELEMENTS = 1, 2, 3
LIST_ELEM = 1
ELEM_KEY, ELEM_TIMEOUT = 1, 4
DATA_VALUE = 1
ELEMENTS_PER_MESSAGE = 512  # well under the 64 KiB of one netlink message
TIMEOUT_S = 30.0
# socket options: a send buffer as big as the batch (the kernel takes a batch
# in one send, and refuses one bigger than the buffer), and acknowledgements
# of refused messages without the message echoed (they would overflow the
# receive buffer)
SO_SNDBUFFORCE = 32
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10


def attribute(kind: int, payload: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def _element(address: str, timeout_ms: int | None) -> bytes:
    key = attribute(ELEM_KEY | NLA_F_NESTED, attribute(DATA_VALUE, ipaddress.ip_address(address).packed))
    if timeout_ms is not None:
        key += attribute(ELEM_TIMEOUT, struct.pack(">Q", timeout_ms))
    return attribute(LIST_ELEM | NLA_F_NESTED, key)


def change_elements(table: str, add: bool, by_set: dict[str, list[str]], timeout_ms: int | None) -> None:
    """Add (as `nft add element`: an element already there stays as it is)
    or delete the addresses of each set of table inet `table` in `by_set`,
    all or none; ApplyError with the kernel's reason when it refuses."""
    kind = NFNL_SUBSYS_NFTABLES << 8 | (NFT_MSG_NEWSETELEM if add else NFT_MSG_DELSETELEM)
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if add else 0)
    batch = [message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, b"", NFNL_SUBSYS_NFTABLES)]
    for set_name, addresses in by_set.items():
        names = attribute(LIST_TABLE, table.encode() + b"\0") + attribute(LIST_SET, set_name.encode() + b"\0")
        for start in range(0, len(addresses), ELEMENTS_PER_MESSAGE):
            chunk = b"".join(_element(a, timeout_ms) for a in addresses[start : start + ELEMENTS_PER_MESSAGE])
            body = names + attribute(LIST_ELEMENTS | NLA_F_NESTED, chunk)
            batch.append(message(kind, flags, len(batch) + 1, NFPROTO_INET, body))
    waiting = set(range(2, len(batch) + 1))
    batch.append(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, len(batch) + 1, 0, b"", NFNL_SUBSYS_NFTABLES))
    error = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as link:
        link.settimeout(TIMEOUT_S)
        try:
            link.bind((0, 0))
            _fit_send_buffer(link, sum(map(len, batch)))
            link.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            link.sendall(b"".join(batch))
            while waiting and not error:  # the kernel answers every message of a batch it refuses
                error = _read_acks(link.recv(1 << 16), waiting)
        except TimeoutError:
            raise ApplyError("the kernel did not answer nfc's change of the set in time") from None
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise ApplyError(
                    f"{sum(map(len, by_set.values())):,} elements are more than one netlink batch may hold "
                    "here (net.core.wmem_max, without CAP_NET_ADMIN over the host): give fewer at once"
                ) from None
            raise ApplyError(f"cannot reach nf_tables over netlink: {exc.strerror}") from None
    if error:
        hint = f"; {PERMISSION_HINT}" if error in (errno.EPERM, errno.EACCES) else ""
        raise ApplyError(f"the kernel refused it: {os.strerror(error)}{hint}")


def _fit_send_buffer(link: socket.socket, size: int) -> None:
    """Make the send buffer hold `size` bytes, as nft does: beyond
    net.core.wmem_max only with CAP_NET_ADMIN over the whole host (not in
    a user namespace of one's own, where a batch over the maximum is
    refused with EMSGSIZE)."""
    wanted = size + (1 << 16)  # the kernel counts its own overhead against the buffer too
    if link.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= wanted:
        return
    try:
        link.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, wanted)
    except PermissionError:
        link.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)


def _read_acks(data: bytes, waiting: set[int]) -> int:
    """Take the acknowledgements in `data` off `waiting`; the first error's errno, or 0."""
    error = 0
    while len(data) >= 16:
        length, kind, _, seq, _ = struct.unpack_from("=IHHII", data)
        if kind == NLMSG_ERROR and length >= 20:
            (code,) = struct.unpack_from("=i", data, 16)
            error = error or -code
            waiting.discard(seq)
        data = data[max(length + (-length % 4), 16) :]
    return error
