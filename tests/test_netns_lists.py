"""List files, runtime sets and `nfc refresh` against the real kernel: a
listed address is dropped and an unlisted one passes, `nfc set add` bans
at once, a refresh changes the list without emptying the runtime set or
the meter, and a full re-apply keeps the banned address banned."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_nfc
from lab import (
    CLIENT_A4,
    CLIENT_B4,
    SERVER_A4,
    SERVER_B4,
    Lab,
    Namespace,
    _kill_namespace_processes,
    require_lab,
    wait_until,
)

pytestmark = pytest.mark.netns

ENTRIES = 20_000
REPO = Path(__file__).resolve().parents[1]
POLICY = """nfc: 1
define:
  blocklist: {file: lists/drop.txt}
sets:
  banned: {type: address, timeout: 1h, size: 1024}
input:
  policy: drop
  rules:
    - drop from $blocklist
    - drop from $banned
    - accept tcp dport 22
    - accept tcp dport 80 limit 100/minute per saddr name web
"""
SET_ONLY = """nfc: 1
sets:
  banned: {type: address, timeout: 1h, size: 65536}
input:
  policy: accept
  rules:
    - drop from $banned
"""


def write_list(path: Path, *listed: str) -> None:
    """`ENTRIES` addresses of 172.16.0.0/12 (none of the lab's) and `listed`."""
    lines = [f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}" for i in range(0, 2 * ENTRIES, 2)]
    path.write_text("# blocklist\n" + "\n".join([*lines, *listed]) + "\n")


def test_lists_sets_refresh_and_reapply(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    listed = tmp_path / "lists" / "drop.txt"
    write_list(listed, CLIENT_A4)
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    lab.start_servers(tcp=(22, 80))
    done = lab.apply(policy)
    assert done.returncode == 0, done.stderr
    server = lab.server
    assert lab.connects(lab.client_a, SERVER_A4, 22, CLIENT_A4) == 0  # listed
    assert lab.connects(lab.client_b, SERVER_B4, 22, CLIENT_B4) == 1  # not listed
    assert lab.connects(lab.client_b, SERVER_B4, 80, CLIENT_B4) == 1  # fills the meter
    assert CLIENT_B4 in server.nft("list", "set", "inet", "nfc", "web_v4")

    state = ("--state-dir", str(lab.state_dir))
    assert server.nfc("set", "add", "banned", CLIENT_B4, "--timeout", "10m").returncode == 0
    assert lab.connects(lab.client_b, SERVER_B4, 22, CLIENT_B4) == 0
    listing = server.nfc("set", "list", "banned")
    assert listing.stdout.startswith(f"banned {CLIENT_B4} timeout 600s expires "), listing
    bad_input = [("add", "banned", "10.0.0.300"), ("add", "bannd", CLIENT_B4)]
    bad_input.append(("del", "banned", "10.0.0.0/8"))
    with ThreadPoolExecutor(len(bad_input)) as pool:  # each refused alone: they may run at once
        for refused in pool.map(lambda bad: server.nfc("set", *bad), bad_input):
            assert refused.returncode == 2 and refused.stderr.startswith("nfc: error: "), refused

    write_list(listed)  # client A is no longer listed
    refreshed = server.nfc("refresh", str(policy), *state)
    assert refreshed.returncode == 0, refreshed.stderr
    assert lab.connects(lab.client_a, SERVER_A4, 22, CLIENT_A4) == 1
    assert CLIENT_B4 in server.nft("list", "set", "inet", "nfc", "web_v4")  # the meter kept its element
    assert lab.connects(lab.client_b, SERVER_B4, 22, CLIENT_B4) == 0  # and the runtime set its
    assert server.nfc("stats", str(policy), *state).returncode == 0  # still the policy's rules, says stats

    policy.write_text(POLICY + "    - accept tcp dport 23\n")
    changed = server.nfc("refresh", str(policy), *state)
    assert changed.returncode == 2 and "differ" in changed.stderr, changed

    done = lab.apply(policy)  # a full re-apply: the banned address stays banned
    assert done.returncode == 0, done.stderr
    assert lab.connects(lab.client_b, SERVER_B4, 22, CLIENT_B4) == 0
    assert lab.connects(lab.client_a, SERVER_A4, 22, CLIENT_A4) == 1
    assert server.nfc("set", "del", "banned", CLIENT_B4).returncode == 0
    assert lab.connects(lab.client_b, SERVER_B4, 22, CLIENT_B4) == 1


@pytest.fixture
def bare() -> Iterator[Namespace]:
    """A network namespace of its own, nothing in it; deleted whatever happens."""
    require_lab()
    host = Namespace(f"nfc-{secrets.token_hex(3)}-s")
    subprocess.run(["ip", "netns", "add", host.name], check=True, timeout=30)
    try:
        yield host
    finally:
        _kill_namespace_processes(host.name)
        subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=30)


def test_ten_thousand_elements_in_one_set_add_and_one_set_del(bare: Namespace, tmp_path: Path) -> None:
    """More elements at once than the socket's default send buffer holds (the
    kernel takes a batch in one send): all added, all deleted."""
    policy = tmp_path / "p.yaml"
    policy.write_text(SET_ONLY)
    out = tmp_path / "out"
    assert run_nfc("compile", str(policy), "-o", str(out)).returncode == 0
    many = [f"198.18.{i >> 8}.{i & 255}" for i in range(10_000)]
    assert bare.nfc("apply", str(out), "--state-dir", str(tmp_path / "state")).returncode == 0
    added = bare.nfc("set", "add", "banned", *many, "--timeout", "1h")
    assert added.returncode == 0, added.stderr
    assert bare.nfc("set", "list", "banned").stdout.count("\n") == len(many)
    deleted = bare.nfc("set", "del", "banned", *many)
    assert deleted.returncode == 0, deleted.stderr
    assert bare.nfc("set", "list", "banned").stdout == ""


def test_the_nft_of_a_killed_refresh_dies_with_it(bare: Namespace, tmp_path: Path) -> None:
    """A refresh SIGKILLed while its nft runs: that nft must not commit the
    lists later, over whatever the next nfc command loads. Its nft is held
    back by a wrapper until the kill."""
    listed = tmp_path / "drop.txt"
    listed.write_text("192.0.2.1\n")
    policy = tmp_path / "p.yaml"
    policy.write_text("nfc: 1\ndefine:\n  bad: {file: drop.txt}\ninput:\n  policy: accept\n  rules:\n")
    with policy.open("a") as more:
        more.write("    - drop from $bad\n")
    out, out2 = tmp_path / "out", tmp_path / "out2"
    assert run_nfc("compile", str(policy), "-o", str(out)).returncode == 0
    listed.write_text("192.0.2.2\n")
    assert run_nfc("compile", str(policy), "-o", str(out2)).returncode == 0
    state = ("--state-dir", str(tmp_path / "state"))
    assert bare.nfc("apply", str(out), *state).returncode == 0
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    wrapper = wrappers / "nft"
    real = shutil.which("nft")
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -f - "*) sleep 30 ;; esac\nexec {real} "$@"\n')
    wrapper.chmod(0o755)

    def waiting() -> bool:
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and str(wrapper).encode() in (entry / "cmdline").read_bytes():
                    return True
        return False

    command = ["ip", "netns", "exec", bare.name, "env", f"PATH={wrappers}:{os.environ['PATH']}"]
    refresh = subprocess.Popen([*command, sys.executable, "-m", "nfc", "refresh", str(out2), *state])
    try:
        assert wait_until(waiting, 30), "the refresh never ran nft"
    finally:
        refresh.kill()  # ip netns exec and env exec nfc: this is nfc's pid
        refresh.wait()
    assert wait_until(lambda: not waiting(), 5), "the nft of the killed refresh lives on"
    kept = bare.run("nft", "get", "element", "inet", "nfc", "bad_v4", "{ 192.0.2.1 }", check=False)
    assert kept.returncode == 0, "the refresh committed after all"


FULL_TMP_SCRIPT = """
set -u
mount -t tmpfs -o size=64m nfc-work /mnt
cp -a "$OUT" /mnt/out
cp "$POLICY" /mnt/p.yaml
nfc() { "$PYTHON" -m nfc "$@"; }
nfc apply /mnt/out --state-dir /mnt/state >/dev/null || exit 10
nfc set add banned 192.0.2.1 >/dev/null || exit 11
for directory in /tmp /var/tmp; do
    # the checkout and the interpreter's prefix, if under the directory (a CI clone in /tmp),
    # stay in sight: bound back in place over the full tmpfs
    for path in "$REPO" "$PREFIX"; do
        case "$path/" in "$directory"/*)
            mkdir -p "/mnt/keep$path" && mount --bind "$path" "/mnt/keep$path" ;;
        esac
    done
    mount -t tmpfs -o size=64k nfc-full "$directory"
    for path in "$REPO" "$PREFIX"; do
        case "$path/" in "$directory"/*) mkdir -p "$path" && mount --bind "/mnt/keep$path" "$path" ;; esac
    done
    head -c 1048576 /dev/zero > "$directory/filler" 2>/dev/null
done
cd /tmp
nfc apply /mnt/out --state-dir /mnt/state >/dev/null; echo "apply: $?"
nft get element inet nfc banned_v4 '{ 192.0.2.1 }' >/dev/null; echo "kept: $?"
nfc rollback --state-dir /mnt/state >/dev/null; echo "rollback: $?"
nfc restore --state-dir /mnt/state >/dev/null; echo "restore: $?"
nfc apply /mnt/p.yaml --state-dir /mnt/state >/dev/null 2>/mnt/error; echo "policy: $?"
cat /mnt/error
"""


def test_apply_rollback_and_restore_need_no_temporary_file(bare: Namespace, tmp_path: Path) -> None:
    """With /tmp and /var/tmp full (a full root disk), a re-apply that
    carries a runtime set's elements and a rule's counts (these restart
    from zero, having no room), a rollback and a restore still load:
    the scripts they build go to nft from memory. A policy applied as it
    is, which is compiled into a temporary directory, is a clean error. In
    a mount namespace of its own, the state directory on a tmpfs with room."""
    policy = tmp_path / "p.yaml"
    policy.write_text(SET_ONLY + "    - accept tcp dport 22 counter\n")  # counts a re-apply carries over
    out = tmp_path / "out"
    assert run_nfc("compile", str(policy), "-o", str(out)).returncode == 0
    env = {"OUT": str(out), "POLICY": str(policy), "PYTHON": sys.executable}
    env |= {"REPO": str(REPO), "PREFIX": sys.prefix}  # what the full /tmp must not hide
    inside = Namespace(bare.name, {**bare.env, **env})
    done = inside.run(
        "env",
        "-u",
        "TMPDIR",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        FULL_TMP_SCRIPT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("apply: 0\nkept: 0\nrollback: 0\nrestore: 0\npolicy: 2\n"), done.stdout
    assert "nfc: error: cannot make a temporary directory for the compiled ruleset: " in done.stdout
    assert "internal error" not in done.stderr
