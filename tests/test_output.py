"""Standard output that cannot take what nfc writes: a full disk, a disk
that takes only part of it, a closed descriptor, an encoding without a
character of the output. Each is `nfc: error: cannot write standard
output: ...`, exit 2: never exit 0 with the output cut short, never a
traceback or exit 70. (That an apply's report cannot stop the apply half-way
is proven on a real kernel in test_netns_boot.)"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT

ROUTER = ROOT / "policies" / "router.yaml"
PACKET = "tcp 198.51.100.7:5353 > 192.0.2.1:22 iif eth0"
READERS = {
    "compile": ("compile", str(ROUTER), "--stdout"),
    "lint": ("lint", str(ROUTER), "--format", "sarif"),
    "explain": ("explain", str(ROUTER), PACKET),
    "import": ("import", str(ROOT / "tests" / "fixtures" / "import" / "router.rules")),
}


def nfc(
    args: tuple[str, ...], stdout: int | object, before: Callable[[], None] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nfc", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        preexec_fn=before,  # a resource limit or a closed descriptor: nothing threaded
    )


@pytest.mark.parametrize("command", sorted(READERS))
def test_a_full_disk_is_an_error(command: str) -> None:
    with open("/dev/full", "w") as full:
        done = nfc(READERS[command], full)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith("nfc: error: cannot write standard output: No space left on device\n")
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_output_a_disk_takes_only_part_of_is_an_error_not_a_file_cut_short(tmp_path: Path) -> None:
    """A disk with room for 4 KiB of the ruleset, as a file size limit makes
    it: the write takes part and the next one fails. Python's buffered
    writer dropped the rest of a write larger than its buffer without a
    word, and nfc exited 0."""
    policy = tmp_path / "p.yaml"
    many = "".join(f"    - accept tcp dport {port} from 10.0.0.{port % 250}\n" for port in range(1, 400))
    policy.write_text(f"nfc: 1\ninput:\n  policy: drop\n  rules:\n{many}")
    args = ("compile", str(policy), "-O0", "--stdout")
    whole = subprocess.run([sys.executable, "-m", "nfc", *args], capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0 and len(whole.stdout) > 16384, whole.stderr

    def four_kib() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    with open(tmp_path / "ruleset.nft", "w") as out:
        done = nfc(args, out, four_kib)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "nfc: error: cannot write standard output: File too large\n"
    assert whole.stdout.startswith((tmp_path / "ruleset.nft").read_text())


def test_a_closed_standard_output_is_an_error_only_for_output() -> None:
    def close_stdout() -> None:
        os.close(1)

    done = nfc(READERS["lint"], subprocess.DEVNULL, close_stdout)
    assert (done.returncode, done.stderr) == (2, "nfc: error: cannot write standard output: it is closed\n")
    quiet = nfc(("lint", str(ROUTER), "--format", "text"), subprocess.DEVNULL, close_stdout)
    assert (quiet.returncode, quiet.stderr) == (0, ""), "a command that writes nothing has nothing refused"


def test_an_encoding_without_a_character_of_the_output_is_an_error(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text('nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 22 comment "café"\n')
    done = nfc(("compile", str(policy), "--stdout"), subprocess.DEVNULL, PYTHONIOENCODING="ascii")
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "nfc: error: cannot write standard output: its encoding ascii has no character U+00E9 "
        "(use a UTF-8 locale)\n"
    )
