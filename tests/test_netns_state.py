"""The state directory through the nfc command line on a real kernel, the
way the defects were found: damaged state files, a full and a read-only
filesystem (a real 64 KiB tmpfs), real foreign owners, writable modes and
symbolic links. Each scenario of state_driver runs in fresh mount, network
and pid namespaces that end with it, taking its rules, mounts and timers
along; nothing touches the host's own namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from state_driver import PLANTED_PIDS

from nfc.state import LOCK
from nfc.state_shapes import APPLIED, CONFIRMED, ORIGINS, PENDING, SAVED

from conftest import require_tools
from lab import require_lab

DRIVER = Path(__file__).with_name("state_driver.py")
NAMESPACES = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private"]


def observe(scenario: str, work: Path) -> dict[str, Any]:
    require_lab()
    require_tools("unshare", "mount", "umount")
    done = subprocess.run(
        [*NAMESPACES, sys.executable, str(DRIVER), scenario, str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XTABLES_LOCKFILE": str(work / "xtables.lock")},
        start_new_session=True,  # a stray kill(0) in nfc would end the driver, not pytest
    )
    assert done.returncode == 0, done.stderr
    observed: dict[str, Any] = json.loads((work / "observed.json").read_text())
    return observed


def refused(found: dict[str, Any], message: str) -> str | None:
    """What is wrong with a run that nfc should have refused with `message`."""
    if found["code"] != 2:
        return f"exit {found['code']}"
    if not found["stderr"].startswith("nfc: error: ") or message not in found["stderr"]:
        return f"said {found['stderr']!r}"
    if found["changed"]:
        return "the rules in force changed"
    return None


def test_no_damaged_state_file_changes_the_rules(tmp_path: Path) -> None:
    observed = observe("corpus", tmp_path)
    # Each file through each command that reads it: 30 contents at least.
    runs = Counter((case["file"], case["command"].split()[0]) for case in observed["cases"])
    assert len(runs) == 9 and min(runs.values()) >= 30, runs
    wrong = [
        f"{case['file']} {case['case']}: nfc {case['command']}: {problem}"
        for case in observed["cases"]
        if (problem := refused(case, f"damaged state file {case['file']}: ")) is not None
    ]
    assert not wrong, f"{len(wrong)} damaged state files were not refused cleanly:\n" + "\n".join(wrong[:20])
    # With the valid files back, the same commands act: confirm comes too
    # late, and each rollback changes the rules.
    late, legacy, nft = observed["controls"]
    assert late["code"] == 3 and "too late" in late["stderr"], late
    for control in (legacy, nft):
        assert control["code"] == 0 and control["changed"], control


def test_a_full_or_read_only_filesystem_is_a_clean_error(tmp_path: Path) -> None:
    observed = observe("full", tmp_path)
    for found in observed["full"]:
        assert refused(found, "No space left on device") is None, found
    assert observed["full_files"] == {"state": True, "fresh": [LOCK]}, "a temporary file was left behind"
    for found in observed["read_only"]:
        assert refused(found, "Read-only file system") is None, found
    assert observed["kept"], "the state files changed"
    afterwards = observed["afterwards"]
    assert afterwards["code"] == 0 and afterwards["changed"], "the state was not usable once space was back"
    # the rollback, finished, is the confirmed ruleset, its rules mapped for nfc stats
    assert observed["left"] == [CONFIRMED, LOCK, ORIGINS, SAVED]


def test_a_state_directory_others_could_subvert_is_refused(tmp_path: Path) -> None:
    observed = observe("hostile", tmp_path)
    messages = {
        "file of nobody": f"state file {tmp_path}/file-of-nobody/{SAVED} belongs to nobody (uid 65534)",
        "directory of nobody": f"state directory {tmp_path}/directory-of-nobody belongs to nobody",
        "directory 0775": "is writable by its group (mode 0775)",
        "directory 0757": "is writable by others (mode 0757)",
        "file 0664": f"{SAVED} is writable by its group (mode 0664)",
        "file 0646": f"{SAVED} is writable by others (mode 0646)",
        "file behind a link": f"{SAVED} is a symbolic link",
        "lock behind a link": f"{LOCK} is a symbolic link",
    }
    for way, message in messages.items():
        found = observed["refused"][way]
        assert refused(found, message) is None, (way, found)
    # Where the directory itself is not trusted, nfc makes nothing in it.
    for way in ("directory of nobody", "directory 0775", "directory 0757"):
        assert observed["refused"][way]["entries"] == [SAVED], way
    assert not observed["made_by_nfc"], "the lock symlink made nfc create its target"
    # Symbolic links at every temporary name an older nfc would have used:
    # never written through, and removed.
    assert [found["code"] for found in observed["planted"]] == [0, 0], observed["planted"]
    assert observed["victim"] == "precious\n"
    assert observed["planted_left"] == [APPLIED, CONFIRMED, LOCK, ORIGINS, PENDING, SAVED]
    assert observed["timer_pid"] < PLANTED_PIDS, "the names planted missed the pids nfc had"
    # The control: the same previous.json, root's own, deletes the table.
    assert observed["control"]["code"] == 0 and observed["control"]["changed"], observed["control"]


def test_the_default_state_directory_is_made_0700(tmp_path: Path) -> None:
    observed = observe("default", tmp_path)
    assert observed["apply"]["code"] == 0, observed["apply"]
    made = {
        "/var/lib/nfc": "0700",
        f"/var/lib/nfc/{CONFIRMED}": "0600",
        f"/var/lib/nfc/{LOCK}": "0600",
        f"/var/lib/nfc/{ORIGINS}": "0600",
        f"/var/lib/nfc/{SAVED}": "0600",
    }
    assert observed["modes"] == made
