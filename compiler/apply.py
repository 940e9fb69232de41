"""Put a compiled ruleset into the kernel: check, apply, confirm, rollback.

`apply` saves the current state of nfc's table before it loads anything, so
`rollback` (or the timer that `apply --confirm` starts) can put it back.
Everything runs under one lock in the state directory; loading is one nft
transaction, so a ruleset the kernel refuses leaves the old one in force.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nfc.artifacts import MANIFEST, build
from nfc.errors import Loc

DEFAULT_STATE_DIR = "/var/lib/nfc"
LOCK_TIMEOUT = 60.0
RULE_ORIGIN = re.compile(r'comment "(?P<file>[^"]+?):(?P<line>\d+)(?::[^"]*)?"')
NFT_ERROR = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)(?:-\d+)?: Error: (?P<message>.*)$")

Report = Callable[[str], None]


class ApplyError(Exception):
    """Apply could not run (usage, permissions, state); exit code 2."""


class KernelRefused(Exception):
    """The kernel refused a ruleset; the previous one is in force. Exit code 3."""


# --------------------------------------------------------------------------
# artifacts


@dataclass(frozen=True)
class Artifact:
    """A compiled ruleset ready to load: its files and where it came from."""

    directory: Path  # holds the files on disk
    manifest: dict
    name: str  # what the user named: the policy or the artifact directory

    @property
    def table(self) -> str:
        return self.manifest["table"]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def policy_dir(self) -> Path:
        return Path(self.manifest["policy"]).parent

    def path(self, name: str) -> Path:
        return self.directory / name


def read_artifact(directory: Path, name: str) -> Artifact:
    """An artifact directory, its files checked against manifest.json."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ApplyError(f"{directory} is not an nfc artifact directory: {exc}") from None
    for name, digest in manifest.get("artifacts", {}).items():
        try:
            data = (directory / name).read_bytes()
        except OSError as exc:
            raise ApplyError(f"{directory / name}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ApplyError(f"{directory / name} does not match its manifest: edited after compile?")
    return Artifact(directory, manifest, name)


@contextlib.contextmanager
def artifact_for(target: str, compile_policy: Callable[[str], tuple]) -> Iterator[Artifact]:
    """The artifact of `target`: an artifact directory as it is, or a policy
    compiled into a temporary directory for the duration of the block."""
    path = Path(target)
    if path.is_dir():
        yield read_artifact(path, target)
        return
    ruleset, sources = compile_policy(target)
    files = build(ruleset, "nft", sources)
    with tempfile.TemporaryDirectory(prefix="nfc-") as scratch:
        for name, text in files.items():
            (Path(scratch) / name).write_text(text)
        yield Artifact(Path(scratch), json.loads(files[MANIFEST]), target)


# --------------------------------------------------------------------------
# the kernel


class Nft:
    """libnftables through its Python binding, or the nft command without it."""

    def __init__(self) -> None:
        try:
            import nftables  # Debian's python3-nftables, matching libnftables1

            self.binding: object | None = nftables.Nftables()
        except (ImportError, OSError):
            self.binding = None
            if shutil.which("nft") is None:
                raise ApplyError(
                    "neither the nftables Python binding nor the nft command is installed"
                ) from None

    def run_file(self, path: Path, dry_run: bool = False) -> str | None:
        """Run an nft script; None on success, else nft's error text."""
        if self.binding is not None:
            binding = self.binding
            binding.set_dry_run(dry_run)  # type: ignore[attr-defined]
            try:
                rc, _, error = binding.cmd_from_file(str(path))  # type: ignore[attr-defined]
            finally:
                binding.set_dry_run(False)  # type: ignore[attr-defined]
            return None if rc == 0 else error or "nft failed"
        command = ["nft", "-c", "-f", str(path)] if dry_run else ["nft", "-f", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        return None if result.returncode == 0 else result.stderr or "nft failed"

    def list_table(self, table: str) -> str | None:
        """The table as `nft -s list` prints it, or None if it does not exist."""
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as script:
            script.write(f"list table inet {table}\n")
            script.flush()
            if self.binding is not None:
                binding = self.binding
                binding.set_stateless_output(True)  # type: ignore[attr-defined]
                rc, output, error = binding.cmd_from_file(script.name)  # type: ignore[attr-defined]
            else:
                result = subprocess.run(
                    ["nft", "-s", "-f", script.name], capture_output=True, text=True, timeout=60
                )
                rc, output, error = result.returncode, result.stdout, result.stderr
        if rc == 0:
            return output
        if "No such file or directory" in error:
            return None
        raise ApplyError(f"cannot read table inet {table}: {_first_error_line(error)}")


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def _permission_hint(error: str) -> str | None:
    if "Operation not permitted" in error:
        return "this needs CAP_NET_ADMIN: run as root (or in a user namespace: unshare -rn nfc ...)"
    return None


def kernel_errors(error: str, artifact: Artifact, ruleset: Path) -> list[str]:
    """nft's errors, each placed at the policy line whose rule failed."""
    lines = ruleset.read_text().splitlines()
    reports = []
    for line in error.splitlines():
        found = NFT_ERROR.match(line)
        if not found:
            continue
        number = int(found["line"])
        text = lines[number - 1].strip() if 0 < number <= len(lines) else ""
        origin = RULE_ORIGIN.search(text)
        message = f"the kernel refused this rule: {found['message']}"
        if origin:
            loc = Loc(str(artifact.policy_dir / origin["file"]), int(origin["line"]), 1)
            reports.append(f"{loc}: error: {message}\n{loc}: note: {ruleset.name}:{number}: {text}")
        else:
            reports.append(f"{ruleset}:{number}:{found['col']}: error: {message}")
    return reports or [f"{ruleset}: error: the kernel refused the ruleset: {_first_error_line(error)}"]


# --------------------------------------------------------------------------
# state


class State:
    """The state directory: lock, saved table, pending confirmation."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.saved = self.dir / "previous.nft"
        self.info = self.dir / "previous.json"
        self.pending = self.dir / "pending.json"
        self.rolled_back = self.dir / "rolled-back.json"

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(self.dir / "lock", "a")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise ApplyError(f"cannot use state directory {self.dir}: {exc.strerror}") from None
        with handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise ApplyError(
                            f"another nfc holds {self.dir / 'lock'} for more than {timeout:.0f}s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_json(self, path: Path, data: dict) -> None:
        _write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def read_json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ApplyError(f"cannot read {path}: {exc}") from None

    def save(self, table: str, listing: str | None) -> None:
        _write_atomically(self.saved, listing or "")
        self.write_json(self.info, {"table": table, "existed": listing is not None})

    def restore_script(self) -> tuple[str, str]:
        """The table name and an nft script that puts the saved state back."""
        info = self.read_json(self.info)
        if info is None:
            raise ApplyError(f"nothing to roll back: no saved state in {self.dir}")
        table = info["table"]
        script = f"table inet {table}\ndelete table inet {table}\n"
        if info["existed"]:
            script += self.saved.read_text()
        return table, script


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# --------------------------------------------------------------------------
# sysctl


def apply_sysctls(conf: Path, report: Report) -> None:
    """Set what sysctl.conf says where the namespace allows it; say what it refused."""
    refused = []
    for line in conf.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            path.write_text(value + "\n")
        except OSError as exc:
            refused.append(f"{key} ({exc.strerror or exc})")
    if refused:
        report(
            "sysctl: not set here (read-only in a child network namespace, or no permission): "
            + ", ".join(refused)
        )


# --------------------------------------------------------------------------
# commands


def check(artifact: Artifact) -> None:
    """Have the kernel validate the ruleset without committing it."""
    ruleset = artifact.path("ruleset.nft")
    error = Nft().run_file(ruleset, dry_run=True)
    if error is not None:
        hint = _permission_hint(error)
        if hint:
            raise ApplyError(f"nfc check: {_first_error_line(error)}; {hint}")
        raise KernelRefused("\n".join(kernel_errors(error, artifact, ruleset)))


def apply(
    artifact: Artifact,
    state: State,
    report: Report,
    confirm_seconds: float | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> None:
    """Load the artifact in one transaction after saving the current table."""
    nft = Nft()
    ruleset = artifact.path("ruleset.nft")
    with state.locked(lock_timeout):
        pending = state.read_json(state.pending)
        if pending is None:
            # With a confirmation pending, the saved state is the last
            # confirmed one: keep it, so a rollback goes back to safety.
            state.save(artifact.table, nft.list_table(artifact.table))
        error = nft.run_file(ruleset)
        if error is not None:
            hint = _permission_hint(error)
            if hint:
                raise ApplyError(f"nfc apply: {_first_error_line(error)}; {hint}")
            raise KernelRefused(
                "\n".join(kernel_errors(error, artifact, ruleset))
                + "\nnfc: the previous ruleset is still in force"
            )
        report(f"applied {artifact.name} to table inet {artifact.table}")
        sysctl = artifact.path("sysctl.conf")
        if sysctl.exists():
            apply_sysctls(sysctl, report)
        state.rolled_back.unlink(missing_ok=True)
        if confirm_seconds is not None:
            _start_timer(state, confirm_seconds, pending)
            report(
                f"rolls back in {confirm_seconds:g}s unless 'nfc confirm' runs (state directory {state.dir})"
            )


def _start_timer(state: State, seconds: float, previous: dict | None) -> None:
    if previous is not None:
        _stop_timer(previous)
    token = secrets.token_hex(8)
    deadline = time.time() + seconds
    process = subprocess.Popen(
        [sys.executable, "-m", "nfc", "_rollback-timer", "--state-dir", str(state.dir), token, str(deadline)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives the deploy's shell and its hangup
        close_fds=True,
    )
    state.write_json(state.pending, {"token": token, "deadline": deadline, "pid": process.pid})


def _stop_timer(pending: dict) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(int(pending["pid"]), 15)


def restore(state: State, report: Report) -> None:
    table, script = state.restore_script()
    with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="nfc-rollback-") as handle:
        handle.write(script)
        handle.flush()
        error = Nft().run_file(Path(handle.name))
    if error is not None:
        raise KernelRefused(
            f"rollback failed: the kernel refused the saved state: {_first_error_line(error)}"
        )
    state.pending.unlink(missing_ok=True)
    report(f"restored table inet {table} as it was before the last apply")


def rollback(state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with state.locked(lock_timeout):
        pending = state.read_json(state.pending)
        restore(state, report)
        if pending is not None:
            _stop_timer(pending)


def confirm(state: State, report: Report, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with state.locked(lock_timeout):
        pending = state.read_json(state.pending)
        if pending is None:
            if state.read_json(state.rolled_back) is not None:
                raise KernelRefused("too late: the deadline passed and the previous ruleset was restored")
            raise ApplyError("no apply is waiting for confirmation")
        state.pending.unlink()
        _stop_timer(pending)
        report("confirmed: the applied ruleset stays")


def rollback_timer(state: State, token: str, deadline: float) -> None:
    """The detached process behind `apply --confirm`."""
    time.sleep(max(0.0, deadline - time.time()))
    with state.locked(timeout=LOCK_TIMEOUT * 5):
        pending = state.read_json(state.pending)
        if pending is None or pending.get("token") != token:
            return  # confirmed, rolled back by hand, or superseded
        restore(state, lambda _: None)
        state.write_json(state.rolled_back, {"token": token, "at": time.time()})
