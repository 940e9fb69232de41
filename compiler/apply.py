"""Put a compiled ruleset into the kernel: check, apply, confirm, rollback.

`apply` saves what it is about to replace before it loads anything, so
`rollback` (or the timer that `apply --confirm` starts) can put it back.
Everything runs under one lock in the state directory. What loading,
saving and testing mean is each backend's kernel side (see
`nfc.backends`); this module holds what they have in common: the
confirmation timer and the conntrack sysctls. The lock and the saved state
are `nfc.state`'s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nfc.artifacts import SYSCTL_CONF
from nfc.backends import BACKENDS
from nfc.backends.kernel import ApplyError, Artifact, Json, Kernel, KernelRefused
from nfc.state import LOCK_TIMEOUT, State

Report = Callable[[str], None]


# --------------------------------------------------------------------------
# sysctl


def read_sysctl_conf(conf: Path) -> dict[str, str]:
    settings = {}
    for line in conf.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value
    return settings


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def current_sysctls(keys: list[str]) -> dict[str, str]:
    """The present values of `keys`, for rollback; unreadable ones are left out."""
    values = {}
    for key in keys:
        with contextlib.suppress(OSError):
            values[key] = _sysctl_path(key).read_text().strip()
    return values


def apply_sysctls(settings: dict[str, str], report: Report) -> None:
    """Set `settings` where the namespace allows it; say in one line what it refused."""
    refused = []
    for key, value in settings.items():
        try:
            _sysctl_path(key).write_text(value + "\n")
        except OSError as exc:
            refused.append(f"{key} ({exc.strerror or exc})")
    if refused:
        report(
            "sysctl: not set here (read-only in a child network namespace, or no permission): "
            + ", ".join(refused)
        )


# --------------------------------------------------------------------------
# commands


def _kernel(name: str) -> Kernel:
    """The kernel side of the backend an artifact or saved state names."""
    record = BACKENDS.get(name)
    if record is None:
        raise ApplyError(f"unknown backend '{name}'")
    return record.kernel()


def check(artifact: Artifact) -> None:
    """Have the kernel validate the ruleset without committing it."""
    _kernel(artifact.backend).check(artifact)


def apply(
    artifact: Artifact,
    state: State,
    report: Report,
    confirm_seconds: float | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> None:
    """Load the artifact after saving what it replaces."""
    kernel = _kernel(artifact.backend)
    with state.locked(lock_timeout):
        pending = state.read(state.pending)
        saved = state.read(state.saved)
        sysctl = artifact.path(SYSCTL_CONF)
        settings = read_sysctl_conf(sysctl) if sysctl.exists() else {}
        if pending is None or saved is None or saved["backend"] != artifact.backend:
            # With a confirmation pending, the saved state is the last
            # confirmed one: keep it, so a rollback goes back to safety.
            snapshot = kernel.snapshot(artifact)
            snapshot["sysctl"] = current_sysctls(sorted(settings))
            state.write(state.saved, snapshot)
        if confirm_seconds is not None:
            # Armed before the load, so no moment passes with the new rules
            # in force and nothing to take them back.
            _start_timer(state, time.time() + confirm_seconds, pending)
        try:
            kernel.load(artifact)
        except KernelRefused as exc:
            if confirm_seconds is not None:
                _disarm(state, pending)
            raise KernelRefused(f"{exc}\nnfc: the previous ruleset is still in force") from None
        report(f"applied {artifact.name} ({artifact.backend})")
        mixed = kernel.foreign_rules()
        if mixed:
            report(f"warning: {mixed}; mixing nftables and iptables-legacy is a known source of surprises")
        apply_sysctls(settings, report)
        state.remove(state.rolled_back)
        if confirm_seconds is not None:
            report(
                f"rolls back in {confirm_seconds:g}s unless 'nfc confirm' runs (state directory {state.dir})"
            )


def _start_timer(state: State, deadline: float, previous: Json | None) -> None:
    if previous is not None:
        _stop_timer(previous)
    token = secrets.token_hex(8)
    process = subprocess.Popen(
        [sys.executable, "-m", "nfc", "_rollback-timer", "--state-dir", str(state.dir), token, str(deadline)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives the deploy's shell and its hangup
        close_fds=True,
    )
    state.write(state.pending, {"token": token, "deadline": deadline, "pid": process.pid})


def _disarm(state: State, previous: Json | None) -> None:
    """Undo the arming of a refused apply: back to the earlier pending
    confirmation, if there was one, with its own deadline."""
    armed = state.read(state.pending)
    if armed is not None:
        _stop_timer(armed)
    if previous is None:
        state.remove(state.pending)
    else:
        _start_timer(state, float(previous["deadline"]), None)


def _stop_timer(pending: Json) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(int(pending["pid"]), 15)


def _restore(state: State, report: Report) -> None:
    saved = state.read(state.saved)
    if saved is None:
        raise ApplyError(f"nothing to roll back: no saved state in {state.dir}")
    kernel = _kernel(saved["backend"])
    kernel.restore(saved)
    apply_sysctls(saved.get("sysctl", {}), report)
    state.remove(state.pending)
    report(f"restored {kernel.describe(saved)} as before the last apply")


def rollback(state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with state.locked(lock_timeout):
        pending = state.read(state.pending)
        _restore(state, report)
        if pending is not None:
            _stop_timer(pending)


def confirm(state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with state.locked(lock_timeout):
        pending = state.read(state.pending)
        if pending is None:
            if state.read(state.rolled_back) is not None:
                raise KernelRefused("too late: the deadline passed and the previous ruleset was restored")
            raise ApplyError("no apply is waiting for confirmation")
        state.remove(state.pending)
        _stop_timer(pending)
        report("confirmed: the applied ruleset stays")


def rollback_timer(state: State, token: str, deadline: float) -> None:
    """The detached process behind `apply --confirm`."""
    time.sleep(max(0.0, deadline - time.time()))
    with state.locked(timeout=LOCK_TIMEOUT * 5):
        pending = state.read(state.pending)
        if pending is None or pending.get("token") != token:
            return  # confirmed, rolled back by hand, or superseded
        _restore(state, lambda _: None)
        state.write(state.rolled_back, {"token": token, "at": time.time()})
