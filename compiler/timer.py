"""The process behind `apply --confirm`: starting it, and stopping it
without ever signalling another process.

A pid alone names whatever process has it now: 0 or -1 in a damaged
pending.json would signal nfc itself or everything, and a timer that died
leaves its pid to a stranger. So a timer is known by its pid, its start
time and its command line (which holds a random token), all recorded when
it starts; it is signalled through a pidfd, which keeps to the process
that was checked."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from nfc.backends.kernel import Json

COMMAND = "_rollback-timer"


def start(state_dir: Path, deadline: float) -> Json:
    """Start a timer for `deadline`: what pending.json records of it."""
    token = secrets.token_hex(8)
    process = subprocess.Popen(
        # -P: `-m` would put the working directory first on the path, and root
        # would import an nfc.py (or nfc/) planted there, in /tmp say
        [sys.executable, "-P", "-m", "nfc", COMMAND, "--state-dir", str(state_dir), token, str(deadline)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives the deploy's shell and its hangup
        close_fds=True,
    )
    return {"token": token, "deadline": deadline, "pid": process.pid, "started": _start_time(process.pid)}


def stop(pending: Json) -> None:
    """SIGTERM the timer `pending` names, if it still runs, and nothing else.
    A timer left running does no harm: at its deadline it finds nothing due."""
    pid = pending.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return
    try:
        handle = os.pidfd_open(pid)
    except OSError:  # gone already, or no pidfd in this kernel
        return
    try:
        if _is_timer(pid, pending):
            signal.pidfd_send_signal(handle, signal.SIGTERM)
    except ProcessLookupError:
        pass
    finally:
        os.close(handle)


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of
    /proc/PID/stat, counted after the command name, which may hold ") ")."""
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return None


def _is_timer(pid: int, pending: Json) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    token = str(pending.get("token")).encode()
    return pending.get("started") == _start_time(pid) and {COMMAND.encode(), token} <= set(arguments)
