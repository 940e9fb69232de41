"""Put a compiled ruleset into the kernel: check, apply, confirm, rollback, restore.

`apply` saves what it is about to replace before it loads anything, so
`rollback` (or the timer that `apply --confirm` starts) can put it back.
Everything runs under one lock in the state directory. What loading,
saving and testing mean is each backend's kernel side (see
`nfc.backends`); this module holds what they have in common: the
journal, the confirmation timer and the sysctls. The lock and the state
files are `nfc.state`'s.

The kernel cannot change both iptables-legacy families, nor the raw and
filter tables of one, in one transaction; so every change is journaled
first (`journal.json`). The next command finds the journal of an nfc that
died half-way (`_settle`, which every command that touches the kernel runs
first): it undoes an interrupted apply, as a rollback would, and finishes
an interrupted rollback or restore. A finished journal becomes
`confirmed.json`, what `nfc restore` loads at boot, or `applied.json`
while a confirmation is pending. `_settle` also rolls back an unconfirmed
apply whose deadline passed, in case its timer died.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nfc import neighbours, persist, stats_origins, timer
from nfc.artifacts import SYSCTL_CONF
from nfc.backends import BACKENDS, nft, nft_dump
from nfc.backends.kernel import ApplyError, Artifact, Json, Kernel, KernelRefused, RestoreFailed
from nfc.errors import shown_path
from nfc.state import LOCK_TIMEOUT, State, StateError
from nfc.state_shapes import APPLIED, CONFIRMED, JOURNAL

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


SYSCTL_ROOT = Path("/proc/sys")
CONNTRACK_MODULE = "nf_conntrack"
CONNTRACK_SYSCTLS = "net.netfilter.nf_conntrack_"


def _sysctl_path(key: str) -> Path:
    return SYSCTL_ROOT / key.replace(".", "/")


def current_sysctls(keys: list[str]) -> dict[str, str]:
    """The present values of `keys`, for rollback; unreadable ones are left out."""
    values = {}
    for key in keys:
        with contextlib.suppress(OSError):
            values[key] = _sysctl_path(key).read_text().strip()
    return values


def _load_conntrack(settings: dict[str, str], report: Report) -> None:
    """Load nf_conntrack if a setting is one of its sysctls and they are
    missing: they exist only once the module is loaded, which a ruleset
    does only if it uses connection tracking, and at boot (`nfc restore`,
    before the network) nothing may have loaded it yet. A kernel with
    conntrack built in, or with the module loaded, has them already."""
    missing = [key for key in settings if key.startswith(CONNTRACK_SYSCTLS)]
    if not missing or all(_sysctl_path(key).exists() for key in missing):
        return
    if shutil.which("modprobe") is None:
        report(f"sysctl: cannot load {CONNTRACK_MODULE}: 'modprobe' is not installed")
        return
    loaded = subprocess.run(["modprobe", CONNTRACK_MODULE], capture_output=True, text=True, timeout=60)
    if loaded.returncode != 0:
        report(f"sysctl: modprobe {CONNTRACK_MODULE} failed: {loaded.stderr.strip()}")


def apply_sysctls(settings: dict[str, str], report: Report) -> None:
    """Set `settings` where the namespace allows it, nf_conntrack loaded
    first if they need it; say in one line what it refused."""
    _load_conntrack(settings, report)
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
# the journal and the other state files of this module


def journal_path(state: State) -> Path:
    """A change to the kernel in progress: {"action", "target", "to"}, "to"
    being the ruleset it loads in the form of a saved state."""
    return state.dir / JOURNAL


def applied_path(state: State) -> Path:
    """The finished journal of the last apply while a confirmation is pending."""
    return state.dir / APPLIED


def confirmed_path(state: State) -> Path:
    """The finished journal of the change that put the last confirmed ruleset in force."""
    return state.dir / CONFIRMED


def _loaded_in_force(state: State) -> tuple[Json | None, bool]:
    """The saved form of the ruleset nfc last put in force (the pending
    apply's, else the confirmed one), if the rules in force are still those
    it loaded, and whether nothing was committed since
    (`stats_origins.in_force`). A damaged record trusts nothing: the apply
    lists the table whole, and then replaces the record."""
    for path in (applied_path(state), confirmed_path(state)):
        try:
            record = state.read(path)
        except StateError:
            return None, False
        if record is not None:
            still, untouched = stats_origins.in_force(state, record["to"])
            return (record["to"] if still else None), untouched
    return None, False


# --------------------------------------------------------------------------
# repairs


def _put_in_force(record: Json, report: Report) -> tuple[str, int | None]:
    """Load a saved state or journaled ruleset, sysctls too; say what it
    was, with the generation its load committed (`Kernel.committed`). Its
    shape was checked when it was read (nfc.state_shapes)."""
    kernel = _kernel(record["backend"])
    kernel.restore(record)
    apply_sysctls(record["sysctl"], report)
    return kernel.describe(record), kernel.committed


def _finish(state: State, journal: Path | None, pending: Json | None, late: str | None, what: str) -> None:
    """After a rollback, restore or repair has put `what` in force: end the
    pending confirmation (`late` says why, for a later `confirm`), and make
    the finished journal the last confirmed ruleset. The journal goes last,
    so that a kill before it only makes the next command do it all again."""
    if pending is not None:
        if late is not None:  # best effort: the rules are back, whatever the disk says
            with contextlib.suppress(ApplyError):
                state.write(state.rolled_back, {"at": time.time(), "why": late, "restored": what})
        state.remove(state.pending)
        timer.stop(pending)
    state.remove(applied_path(state))
    if journal is not None:
        state.move(journal, confirmed_path(state))


def _roll_back(state: State, report: Report, late: str | None = None) -> str:
    """Put the saved state back and end a pending confirmation."""
    saved = state.read(state.saved)
    if saved is None:
        raise ApplyError(f"nothing to roll back: no saved state in {state.dir}")
    pending = state.read(state.pending)
    journal: Path | None = journal_path(state)
    try:
        state.write(journal_path(state), {"action": "rollback", "target": state.saved.name, "to": saved})
    except ApplyError:
        if pending is None:
            raise
        # The way back to safety needs no free space: pending.json, removed
        # only once the rules are back, makes the next command do it again.
        journal = None
    try:
        what, committed = _put_in_force(saved, report)
    except RestoreFailed:
        raise  # half put back: the journal stays, for the next command to finish
    except KernelRefused:
        if journal is not None:  # refused before anything changed: nothing to finish
            state.remove(journal)
        raise
    stats_origins.remember(state, saved, "the state saved before the last apply", report, committed)
    _finish(state, journal, pending, late, what)
    return what


def _settle(state: State, report: Report) -> None:
    """Repair what an earlier nfc left: an interrupted change (undo an apply,
    finish a rollback or restore), then an unconfirmed apply whose deadline
    passed. Every command that touches the kernel runs this first."""
    journal = state.read(journal_path(state))
    if journal is not None:
        pending = state.read(state.pending)
        if journal["action"] == "apply":
            saved = state.read(state.saved)
            if saved is None:
                raise ApplyError(f"cannot undo the interrupted apply of {journal['target']}: no saved state")
            what, _ = _put_in_force(saved, report)
            _finish(state, None, pending, f"the apply of {journal['target']} was interrupted", what)
            state.remove(journal_path(state))
            report(f"repaired: the interrupted apply of {journal['target']} is undone: {what} as before it")
        else:
            what, _ = _put_in_force(journal["to"], report)
            late = _late(pending)
            _finish(state, journal_path(state), pending, late, what)
            report(f"repaired: the interrupted {journal['action']} is finished; restored {what}")
    pending = state.read(state.pending)
    late = _late(pending)
    if late is not None:
        what = _roll_back(state, report, late)
        report(f"{late}: restored {what} as before the unconfirmed apply")


def _late(pending: Json | None) -> str | None:
    """Why a pending confirmation is over, if it is: its deadline passed."""
    if pending is None or pending["deadline"] > time.time():
        return None
    return time.strftime(
        "the confirmation deadline passed at %Y-%m-%d %H:%M:%S UTC", time.gmtime(pending["deadline"])
    )


# --------------------------------------------------------------------------
# the confirmation timer


def _arm(state: State, deadline: float) -> Json:
    """Start a timer for `deadline` and record it; the caller stops an
    earlier one only after this, so a deadline is armed at every moment."""
    armed = timer.start(state.dir, deadline)
    try:
        state.write(state.pending, armed)
    except ApplyError as exc:
        timer.stop(armed)
        raise ApplyError(f"{exc}; nothing was loaded, and an earlier deadline stays armed") from None
    return armed


def _disarm(state: State, armed: Json | None, previous: Json | None) -> None:
    """Undo the arming of a refused apply: back to the earlier pending
    confirmation, whose timer still runs, if there was one."""
    if armed is not previous and armed is not None:
        if previous is None:
            state.remove(state.pending)
        else:
            state.write(state.pending, previous)
        timer.stop(armed)


def rollback_timer(state: State, token: str, deadline: float) -> None:
    """The detached process behind `apply --confirm`; `token`, in its command
    line, identifies it to `timer.stop`. At the deadline it rolls back
    through `_settle`, which finds nothing due if the apply was confirmed,
    rolled back by hand, or superseded by a later deadline."""
    del token
    while (left := deadline - time.time()) > 0:
        time.sleep(left)
    with state.locked(timeout=LOCK_TIMEOUT * 5):
        _settle(state, lambda _: None)


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
    persist_dir: Path | None = None,
) -> None:
    """Load the artifact after saving what it replaces, journaled; with
    `persist_dir`, write it there for iptables-persistent too."""
    kernel = _kernel(artifact.backend)
    if persist_dir is not None:
        persist.require_legacy(artifact.backend)
        if confirm_seconds is not None:
            raise ApplyError(
                "--persist with --confirm would have the host load an unconfirmed ruleset at boot: "
                "give --persist to 'nfc confirm' instead"
            )
    with state.locked(lock_timeout):
        _settle(state, report)
        pending = state.read(state.pending)
        saved = state.read(state.saved)
        if persist_dir is not None and pending is not None:
            raise ApplyError(
                "--persist while an earlier apply waits for 'nfc confirm' would persist an unconfirmed "
                "ruleset: confirm or roll back first, or give --persist to 'nfc confirm'"
            )
        sysctl = artifact.path(SYSCTL_CONF)
        settings = read_sysctl_conf(sysctl) if sysctl.exists() else {}
        if pending is None or saved is None or saved["backend"] != artifact.backend:
            # With a confirmation pending, the saved state is the last
            # confirmed one: keep it, so a rollback goes back to safety.
            snapshot = kernel.snapshot(artifact, *_loaded_in_force(state))
            snapshot["sysctl"] = current_sysctls(sorted(settings))
            state.write(state.saved, snapshot)
        journal = journal_path(state)
        to = kernel.saved_form(artifact) | {"sysctl": settings}
        state.write(journal, {"action": "apply", "target": artifact.name, "to": to})
        armed = pending
        try:
            if confirm_seconds is not None:
                # Armed before the load, so no moment passes with the new rules
                # in force and nothing to take them back.
                armed = _arm(state, time.time() + confirm_seconds)
            stats_origins.load(kernel, state, artifact)  # kernel.load, with the counts of unchanged rules
        except RestoreFailed as exc:  # half loaded: the journal stays
            raise RestoreFailed(f"{exc}\nnfc: the next nfc command puts the saved state back") from None
        except KernelRefused as exc:
            _disarm(state, armed, pending)
            state.remove(journal)
            raise KernelRefused(f"{exc}\nnfc: the previous ruleset is still in force") from None
        except ApplyError:
            _disarm(state, armed, pending)
            state.remove(journal)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                _settle(state, report)  # undo at once whatever the interruption left
            raise
        refused: list[str] = []
        apply_sysctls(settings, refused.append)
        if armed is not pending and pending is not None:
            timer.stop(pending)
        state.move(journal, confirmed_path(state) if armed is None else applied_path(state))
        state.remove(state.rolled_back)
        report(f"applied {artifact.name} ({artifact.backend})")
        stats_origins.remember(state, to, artifact.name, report, kernel.committed)
        mixed = kernel.foreign_rules()
        if mixed:
            report(f"warning: {mixed}; mixing nftables and iptables-legacy is a known source of surprises")
        beside = _neighbours_warning(artifact.backend, artifact.table)
        if beside is not None:
            report(beside)  # e.g. Docker's table: its accepts cannot undo a drop of nfc's forward chain
        for line in refused:
            report(line)
        if persist_dir is not None:
            _persist(persist_dir, to, report)
        if confirm_seconds is not None:
            report(
                f"rolls back in {confirm_seconds:g}s unless 'nfc confirm' runs (state directory {state.dir})"
            )


def _neighbours_warning(backend: str, table: str) -> str | None:
    """`neighbours.warning_here`, which lists the whole ruleset, only when
    there are other tables for it to judge: nf_tables ones beside nfc's
    table, or iptables-legacy ones beside nfc's nft table."""
    try:
        others = [found for found in nft_dump.tables() if backend != nft.BACKEND or found != ("inet", table)]
    except ApplyError:
        others = [("?", "?")]  # cannot tell: let it look
    if not others and (backend != nft.BACKEND or not neighbours.read_legacy()):
        return None
    return neighbours.warning_here(backend, table)


def rollback(state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with state.locked(lock_timeout):
        _settle(state, report)
        what = _roll_back(state, report)
        report(f"restored {what} as before the last apply")


def _persist(directory: Path, record: Json, report: Report) -> None:
    """Write the confirmed iptables-legacy ruleset `record` (a saved form)
    where iptables-persistent loads it at boot."""
    try:
        written = persist.write(directory, record)
    except ApplyError as exc:
        raise ApplyError(f"{exc}: the ruleset is in force and confirmed, but not persisted") from None
    report(f"persisted for iptables-persistent: {', '.join(shown_path(str(path)) for path in written)}")


def confirm(
    state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT, persist_dir: Path | None = None
) -> None:
    """Keep the ruleset of `apply --confirm`; with `persist_dir`, write it
    there for iptables-persistent too."""
    with state.locked(lock_timeout):
        _settle(state, report)
        pending = state.read(state.pending)
        if pending is None:
            late = state.read(state.rolled_back)
            if late is not None:
                raise KernelRefused(
                    f"too late: {late['why']}, and {late['restored']} was restored as before the apply"
                )
            raise ApplyError("no apply is waiting for confirmation")
        applied = state.read(applied_path(state))
        if persist_dir is not None:
            if applied is None:
                raise ApplyError(f"nothing to persist: {applied_path(state)} is missing")
            persist.require_legacy(applied["to"]["backend"])
        if applied is not None:
            state.move(applied_path(state), confirmed_path(state))
        state.remove(state.pending)
        timer.stop(pending)
        report("confirmed: the applied ruleset stays")
        if persist_dir is not None and applied is not None:
            _persist(persist_dir, applied["to"], report)


def restore(state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Load the last confirmed ruleset, as at boot: never one that waits for
    a confirmation (that one is rolled back)."""
    with state.locked(lock_timeout):
        _settle(state, report)
        if state.read(state.pending) is not None:
            what = _roll_back(state, report, "nfc restore ran before the apply was confirmed")
            report(f"restored {what}, the last confirmed ruleset; the unconfirmed apply is rolled back")
            return
        confirmed = state.read(confirmed_path(state))
        if confirmed is None:
            raise ApplyError(f"nothing to restore: no confirmed ruleset in {state.dir}")
        journal = journal_path(state)
        state.write(journal, {**confirmed, "action": "restore"})
        what, committed = _put_in_force(confirmed["to"], report)
        state.move(journal, confirmed_path(state))
        stats_origins.remember(state, confirmed["to"], confirmed["target"], report, committed)
        report(f"restored {what}, the last confirmed ruleset (from {confirmed['target']})")
