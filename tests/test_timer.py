"""The confirm timer's process, without a kernel: what it imports. (Its
rollback at the deadline, its replacement and its stop are proven on a real
kernel in test_netns_journal.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nfc import timer


def test_the_timer_never_imports_a_module_planted_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m nfc` put the working directory first on the path: root's
    `nfc apply --confirm` run from /tmp started a timer that imported
    /tmp/nfc.py. With nothing pending in the state directory, the real timer
    finds nothing due at its deadline and ends."""
    planted = tmp_path / "cwd"
    planted.mkdir()
    marker = tmp_path / "planted-code-ran"
    (planted / "nfc.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted)
    record = timer.start(tmp_path / "state", time.time())
    _, status = os.waitpid(record["pid"], 0)  # the timer is this process's child
    assert os.waitstatus_to_exitcode(status) == 0
    assert not marker.exists(), "the timer ran the nfc.py of the working directory"
    assert (tmp_path / "state").is_dir(), "the timer did not run (it makes the state directory to lock it)"
