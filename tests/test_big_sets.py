"""What lets apply, rollback, stats and `nfc set` ignore the elements of a
big list: the snapshot that takes the policy's sets from what nfc loaded,
the element counts `nfc stats` shows, the netlink messages of `nfc set`,
and the fast split of iptables-save lines. The kernel side is in
test_netns_bigsets.py."""

from __future__ import annotations

import errno
import random
import shlex
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from nfc.backends import nft_kernel, nft_netlink
from nfc.backends.iptables_kernel import rule_words
from nfc.backends.kernel import ApplyError, Artifact
from nfc.backends.nft_sets import set_element_counts
from nfc.state import State

LOADED = """#!/usr/sbin/nft -f
table inet nfc
delete table inet nfc

table inet nfc {
\tset blocklist_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 192.0.2.1, 198.51.100.1-198.51.100.9 }
\t}

\tset banned_v4 {
\t\ttype ipv4_addr
\t\tcomment "nfc runtime set banned"
\t}

\tmap ports {
\t\ttype inet_service : verdict
\t\telements = {
\t\t\t22 comment "p.yaml:5, with a comma" : accept,
\t\t\t80 comment "p.yaml:6" : drop
\t\t}
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tip saddr @blocklist_v4 drop comment "p.yaml:3"
\t}
}
"""
TERSE = """table inet nfc {
\tset blocklist_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t}

\tset banned_v4 {
\t\ttype ipv4_addr
\t\tcomment "nfc runtime set banned"
\t}

\tmap ports {
\t\ttype inet_service : verdict
\t}

\tset web_v4 {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 1m
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tip saddr @blocklist_v4 drop comment "p.yaml:3"
\t\tip saddr 192.0.2.7 accept
\t}
}
"""
LIVE = {
    "set inet nfc banned_v4": '\tset banned_v4 {\n\t\ttype ipv4_addr\n\t\tcomment "nfc runtime set banned"\n'
    "\t\telements = { 192.0.2.66 timeout 10m }\n\t}\n",
    "set inet nfc web_v4": "\tset web_v4 {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n"
    "\t\ttimeout 1m\n\t\telements = { 192.0.2.77,\n\t\t\t     192.0.2.78 }\n\t}\n",
}


class FakeNft:
    """Nft.list as the kernel answers it; a full listing of the table is a failure."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    def list(self, what: str, terse: bool = False) -> tuple[str | None, str]:
        self.asked.append((what, terse))
        if what == "ruleset" and terse:
            return "table ip other {\n}\n" + TERSE, ""
        if what in LIVE:
            return "table inet nfc {\n" + LIVE[what] + "}\n", ""
        raise AssertionError(f"listed {what} (terse={terse})")


def kernel_with(fake: FakeNft) -> nft_kernel.NftKernel:
    kernel = nft_kernel.NftKernel.__new__(nft_kernel.NftKernel)
    kernel.nft = fake  # type: ignore[assignment]
    return kernel


def artifact() -> Artifact:
    return Artifact(Path("/nonexistent"), {"table": "nfc", "backend": "nft"}, "p.yaml")


def test_the_snapshot_takes_the_policy_sets_from_the_load_and_the_rest_from_the_kernel() -> None:
    fake = FakeNft()
    saved = kernel_with(fake).snapshot(artifact(), {"backend": "nft", "table": "nfc", "listing": LOADED})
    listing = saved["listing"]
    assert listing.startswith("table inet nfc {\n") and listing.endswith("\n}\n")
    assert "table ip other" not in listing
    # the policy's sets as loaded, set and map
    given = "{ 10.0.0.0/8, 192.0.2.1, 198.51.100.1-198.51.100.9 }"
    assert f"\t\tflags interval\n\t\telements = {given}\n\t}}\n" in listing
    assert '\t\t\t22 comment "p.yaml:5, with a comma" : accept,\n' in listing
    # runtime sets and meters as they are in the kernel
    assert "\t\telements = { 192.0.2.66 timeout 10m }\n" in listing
    assert "\t\telements = { 192.0.2.77,\n\t\t\t     192.0.2.78 }\n" in listing
    # the rules as they are, a rule added by hand included
    assert "\t\tip saddr 192.0.2.7 accept\n" in listing
    assert ("table inet nfc", False) not in fake.asked
    asked = sorted(what for what, _ in fake.asked)
    assert asked == ["ruleset", "set inet nfc banned_v4", "set inet nfc web_v4"]


def test_without_a_load_to_trust_the_snapshot_lists_the_table() -> None:
    class Whole(FakeNft):
        def list(self, what: str, terse: bool = False) -> tuple[str | None, str]:
            self.asked.append((what, terse))
            return ("table inet nfc {\n}\n", "") if what == "table inet nfc" else (None, "unexpected")

    fake = Whole()
    assert kernel_with(fake).snapshot(artifact())["listing"] == "table inet nfc {\n}\n"
    other_table = {"backend": "nft", "table": "other", "listing": LOADED}
    assert kernel_with(fake).snapshot(artifact(), other_table)["listing"] == "table inet nfc {\n}\n"
    assert fake.asked == [("table inet nfc", False)] * 2


def test_a_table_gone_is_no_listing() -> None:
    class Gone(FakeNft):
        def list(self, what: str, terse: bool = False) -> tuple[str | None, str]:
            return "table ip other {\n}\n", ""

    loaded = {"backend": "nft", "table": "nfc", "listing": LOADED}
    assert kernel_with(Gone()).snapshot(artifact(), loaded)["listing"] is None


def test_element_counts_as_nft_lists_them() -> None:
    assert set_element_counts(LOADED) == {"blocklist_v4": 3, "banned_v4": 0, "ports": 2}
    listed = (
        "table inet nfc {\n\tset a {\n\t\ttype ipv4_addr\n\t\telements = { 1.2.3.4, 1.2.3.5,\n"
        "\t\t\t     1.2.3.6 }\n\t}\n\tset empty {\n\t\ttype ipv4_addr\n\t\telements = { }\n\t}\n}\n"
    )
    assert set_element_counts(listed) == {"a": 3, "empty": 0}
    big = "".join(f"10.{i >> 8 & 255}.{i & 255}.0/24, " for i in range(100_000))
    text = f"table inet nfc {{\n\tset big {{\n\t\ttype ipv4_addr\n\t\telements = {{ {big[:-2]} }}\n\t}}\n}}\n"
    assert set_element_counts(text) == {"big": 100_000}


def test_rule_words_split_as_the_shell_does() -> None:
    rng = random.Random(7)
    lines = [
        '-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "p.yaml:3" -j ACCEPT',
        '-A nfc-input -m comment --comment "dir \\"a b\\\\c/p\\u00e9.yaml:3: note" -j DROP',
        "-A X  -s 10.0.0.0/8   -j Y",
    ]
    lines += ["".join(rng.choice(" ab\"'\\$`\t-\x0b\xe9") for _ in range(14)) for _ in range(5000)]
    for line in lines:
        try:
            expected = shlex.split(line)
        except ValueError:
            continue
        assert rule_words(line) == expected, line


class FakeNetlink:
    """A netlink socket that takes what nft_netlink sets up and sends: each
    test says what its kernel answers."""

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *args: object) -> None:
        pass

    def settimeout(self, seconds: float) -> None:
        pass

    def bind(self, address: Any) -> None:
        pass

    def getsockopt(self, level: int, option: int) -> int:
        return 1 << 20  # a send buffer that holds the batch

    def setsockopt(self, level: int, option: int, value: int) -> None:
        pass


def test_set_changes_are_one_batch_of_netlink_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[bytes] = []

    class Link(FakeNetlink):
        def sendall(self, data: bytes) -> None:
            sent.append(data)

        def recv(self, size: int) -> bytes:
            # every element message acknowledged; the second refused with ENOENT
            replies = b""
            for seq, code in ((2, 0), (3, -2)):
                replies += struct.pack("=IHHIIi", 20, nft_netlink.NLMSG_ERROR, 0, seq, 0, code)
            return replies

    monkeypatch.setattr(nft_netlink.socket, "socket", Link)
    with pytest.raises(ApplyError, match="the kernel refused it: No such file or directory"):
        nft_netlink.change_elements("nfc", False, {"b_v4": ["192.0.2.1"], "b_v6": ["2001:db8::1"]}, None)
    (batch,) = sent
    kinds = []
    while batch:
        length, kind, _, seq, _ = struct.unpack_from("=IHHII", batch)
        kinds.append((kind, seq))
        batch = batch[length:]
    delete = nft_netlink.NFNL_SUBSYS_NFTABLES << 8 | nft_netlink.NFT_MSG_DELSETELEM
    assert kinds == [(0x10, 1), (delete, 2), (delete, 3), (0x11, 4)]


def test_the_send_buffer_holds_the_whole_batch() -> None:
    """The kernel takes a batch in one send and refuses one bigger than the
    socket's send buffer (EMSGSIZE): 10,000 elements at once overflow the
    default. Beyond net.core.wmem_max only SO_SNDBUFFORCE helps, which a
    user namespace of one's own may not use: then SO_SNDBUF, as nft does."""
    asked: list[tuple[int, int]] = []

    class Link:
        def getsockopt(self, level: int, option: int) -> int:
            return 212_992

        def setsockopt(self, level: int, option: int, value: int) -> None:
            asked.append((option, value))
            if option == nft_netlink.SO_SNDBUFFORCE:
                raise PermissionError

    nft_netlink._fit_send_buffer(Link(), 10_000)  # type: ignore[arg-type]
    assert asked == []  # the default holds it
    nft_netlink._fit_send_buffer(Link(), 400_000)  # type: ignore[arg-type]
    wanted = 400_000 + (1 << 16)
    assert asked == [(nft_netlink.SO_SNDBUFFORCE, wanted), (socket.SO_SNDBUF, wanted)]


def test_a_batch_too_big_for_the_buffer_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Link(FakeNetlink):
        def getsockopt(self, level: int, option: int) -> int:
            return 1 << 30  # a buffer that holds any batch: the batch limit is what refuses

        def sendall(self, data: bytes) -> None:
            raise OSError(errno.EMSGSIZE, "Message too long")

    monkeypatch.setattr(nft_netlink.socket, "socket", Link)
    with pytest.raises(ApplyError, match="3 elements are more than one netlink batch may hold"):
        nft_netlink.change_elements("nfc", True, {"b_v4": ["192.0.2.1", "192.0.2.2", "192.0.2.3"]}, None)


def test_an_address_becomes_its_key_with_its_timeout() -> None:
    element = nft_netlink._element("192.0.2.1", 600_000)
    assert bytes([192, 0, 2, 1]) in element and struct.pack(">Q", 600_000) in element
    assert bytes.fromhex("20010db8" + "0" * 23 + "1") in nft_netlink._element("2001:db8::1", None)


def test_only_a_load_that_origins_json_maps_is_trusted(tmp_path: Path) -> None:
    from nfc import apply

    state = State(tmp_path / "state")
    loaded = {"backend": "nft", "table": "nfc", "listing": LOADED, "sysctl": {}}
    record = {"action": "apply", "target": "p.yaml", "to": loaded}
    with state.locked():
        assert apply._loaded_in_force(state)[0] is None  # nothing applied
        state.write(apply.confirmed_path(state), record)
        assert apply._loaded_in_force(state)[0] is None  # no origins.json: nothing known of the table
        apply.confirmed_path(state).write_text("{}")
        assert apply._loaded_in_force(state)[0] is None  # damaged: the table is listed whole


def test_a_tool_past_its_timeout_is_stopped_and_fails_like_a_refusal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """At a million elements a tool on a slow host may outlive the timeout:
    nfc stops it and fails as when the kernel refuses (the callers undo a
    half-done load), never with an internal error (exit 70)."""
    from nfc.backends import kernel

    monkeypatch.setattr(kernel, "TOOL_TIMEOUT", 0.2)
    done = kernel.run_tool(["sleep", "5"])
    assert done.returncode != 0 and done.stderr == "sleep did not finish within 0.2s and was stopped"

    slow = tmp_path / "nft"  # an nft that hangs, used when the Python binding is missing
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    nft = nft_kernel.Nft()
    nft.binding = None
    assert nft.run_file(tmp_path / "ruleset.nft") == "nft did not finish within 0.2s and was stopped"
    assert nft.list("ruleset") == (None, "nft did not finish within 0.2s and was stopped")
    assert nft.list_json() is None


def test_the_heap_a_load_freed_goes_back_to_the_system() -> None:
    """What libnftables frees after a load is handed back (glibc keeps it
    otherwise), so nfc's work after the load does not add to it."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def resident_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    def load() -> None:  # a load's allocations, small ones as nft makes, all freed at the end
        blocks = [libc.malloc(1024) for _ in range(200_000)]
        for block in blocks:
            ctypes.memset(block, 1, 1024)
        for block in reversed(blocks):
            libc.free(block)

    before = resident_kib()
    kernel = nft_kernel.NftKernel.__new__(nft_kernel.NftKernel)
    kernel._commit(lambda: load() or None)
    assert resident_kib() - before < 50_000  # of the 200 MiB the load touched
