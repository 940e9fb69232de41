"""Put a compiled ruleset into the kernel: check, apply, confirm, rollback.

`apply` saves what it is about to replace before it loads anything, so
`rollback` (or the timer that `apply --confirm` starts) can put it back.
Everything runs under one lock in the state directory. On nftables, loading
is one transaction that touches only nfc's table; on iptables-legacy, the
raw and filter tables are replaced whole, each family tested first.
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
RESTORE_ERROR = re.compile(r"(?:Error occurred at line: |line )(?P<line>\d+)")
LEGACY_FILES = {"rules.v4": "iptables-legacy", "rules.v6": "ip6tables-legacy"}

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

    def path(self, name: str) -> Path:
        return self.directory / name

    def origin_of(self, generated_line: str) -> Loc | None:
        """The policy position named in a generated rule's comment."""
        found = RULE_ORIGIN.search(generated_line)
        if found is None:
            return None
        policy_dir = Path(self.manifest["policy"]).parent
        return Loc(str(policy_dir / found["file"]), int(found["line"]), 1)


def read_artifact(directory: Path, name: str) -> Artifact:
    """An artifact directory, its files checked against manifest.json."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ApplyError(f"{directory} is not an nfc artifact directory: {exc}") from None
    for file_name, digest in manifest.get("artifacts", {}).items():
        try:
            data = (directory / file_name).read_bytes()
        except OSError as exc:
            raise ApplyError(f"{directory / file_name}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ApplyError(f"{directory / file_name} does not match its manifest: edited after compile?")
    return Artifact(directory, manifest, name)


@contextlib.contextmanager
def artifact_for(target: str, backend: str, compile_policy: Callable[[str], tuple]) -> Iterator[Artifact]:
    """The artifact of `target`: an artifact directory as it is, or a policy
    compiled for `backend` into a temporary directory for the block."""
    path = Path(target)
    if path.is_dir():
        yield read_artifact(path, target)
        return
    ruleset, sources = compile_policy(target)
    files = build(ruleset, backend, sources)
    with tempfile.TemporaryDirectory(prefix="nfc-") as scratch:
        for file_name, text in files.items():
            (Path(scratch) / file_name).write_text(text)
        yield Artifact(Path(scratch), json.loads(files[MANIFEST]), target)


def refusal(artifact: Artifact, ruleset: Path, line: int, message: str) -> str:
    """A kernel error placed at the policy line whose generated rule failed."""
    lines = ruleset.read_text().splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    origin = artifact.origin_of(text)
    if origin is None:
        return f"{ruleset}:{line}:1: error: the kernel refused this: {message}"
    return (
        f"{origin}: error: the kernel refused this rule: {message}\n"
        f"{origin}: note: {ruleset.name}:{line}: {text}"
    )


def _permission_problem(error: str) -> bool:
    return "Operation not permitted" in error or "Permission denied" in error


PERMISSION_HINT = "this needs CAP_NET_ADMIN: run as root (or in a user namespace: unshare -rn nfc ...)"


# --------------------------------------------------------------------------
# nftables


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

    def run_text(self, script: str) -> str | None:
        with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="nfc-") as handle:
            handle.write(script)
            handle.flush()
            return self.run_file(Path(handle.name))

    def list(self, what: str) -> tuple[str | None, str]:
        """`nft -s list WHAT`: (output, "") or (None, error)."""
        if self.binding is not None:
            binding = self.binding
            binding.set_stateless_output(True)  # type: ignore[attr-defined]
            rc, output, error = binding.cmd(f"list {what}")  # type: ignore[attr-defined]
        else:
            result = subprocess.run(
                ["nft", "-s", "list", *what.split()], capture_output=True, text=True, timeout=60
            )
            rc, output, error = result.returncode, result.stdout, result.stderr
        return (output, "") if rc == 0 else (None, error)


def _nft_error(error: str) -> str:
    for line in error.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return error.strip().splitlines()[0] if error.strip() else "unknown error"


class NftBackend:
    """`table inet <table>`: nothing else is read, saved or replaced."""

    def __init__(self) -> None:
        self.nft = Nft()

    def _refused(self, artifact: Artifact, error: str) -> KernelRefused:
        ruleset = artifact.path("ruleset.nft")
        reports = [
            refusal(artifact, ruleset, int(found["line"]), found["message"])
            for found in map(NFT_ERROR.match, error.splitlines())
            if found
        ]
        return KernelRefused(
            "\n".join(reports or [f"{ruleset}: error: the kernel refused it: {_nft_error(error)}"])
        )

    def _failed(self, artifact: Artifact, error: str, what: str) -> Exception:
        if _permission_problem(error):
            return ApplyError(f"nfc {what}: {_nft_error(error)}; {PERMISSION_HINT}")
        return self._refused(artifact, error)

    def check(self, artifact: Artifact) -> None:
        error = self.nft.run_file(artifact.path("ruleset.nft"), dry_run=True)
        if error is not None:
            raise self._failed(artifact, error, "check")

    def snapshot(self, artifact: Artifact) -> dict:
        listing, error = self.nft.list(f"table inet {artifact.table}")
        if listing is None and "No such file or directory" not in error:
            if _permission_problem(error):
                raise ApplyError(f"nfc apply: {_nft_error(error)}; {PERMISSION_HINT}")
            raise ApplyError(f"cannot read table inet {artifact.table}: {_nft_error(error)}")
        return {"backend": "nft", "table": artifact.table, "listing": listing}

    def load(self, artifact: Artifact) -> None:
        error = self.nft.run_file(artifact.path("ruleset.nft"))
        if error is not None:
            raise self._failed(artifact, error, "apply")

    def restore(self, saved: dict) -> None:
        table = saved["table"]
        script = f"table inet {table}\ndelete table inet {table}\n" + (saved["listing"] or "")
        error = self.nft.run_text(script)
        if error is not None:
            raise KernelRefused(f"rollback failed: the kernel refused the saved state: {_nft_error(error)}")

    def describe(self, saved: dict) -> str:
        return f"table inet {saved['table']}"

    def foreign_rules(self) -> str | None:
        """iptables-legacy rules loaded beside nfc's table, which mix badly."""
        found = []
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            if shutil.which(tool) is None:
                continue
            result = _run([tool], check=False)
            if any(line.startswith("-A ") for line in result.stdout.splitlines()):
                found.append(tool.replace("-save", ""))
        return " and ".join(found) + " rules are loaded too" if found else None


# --------------------------------------------------------------------------
# iptables-legacy


def _run(
    command: list[str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise ApplyError(f"'{command[0]}' is not installed")
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0 and _permission_problem(result.stderr):
        raise ApplyError(f"{command[0]}: {result.stderr.strip()}; {PERMISSION_HINT}")
    return result


class LegacyBackend:
    """The raw and filter tables of iptables-legacy and ip6tables-legacy,
    owned whole, as iptables-persistent owns them."""

    TABLES = ("raw", "filter")

    def _restore(self, family_file: str, text: str, test: bool = False) -> subprocess.CompletedProcess[str]:
        tool = LEGACY_FILES[family_file] + "-restore"
        return _run([tool, "-w", *(["--test"] if test else [])], stdin=text)

    def _refused(self, artifact: Artifact, family_file: str, error: str) -> KernelRefused:
        message = " ".join(line for line in error.splitlines() if line and not line.startswith("Try "))
        found = RESTORE_ERROR.search(error)
        if found is None:
            return KernelRefused(f"{artifact.path(family_file)}: error: the kernel refused it: {message}")
        return KernelRefused(refusal(artifact, artifact.path(family_file), int(found["line"]), message))

    def check(self, artifact: Artifact) -> None:
        for family_file in LEGACY_FILES:
            result = self._restore(family_file, artifact.path(family_file).read_text(), test=True)
            if result.returncode != 0:
                raise self._refused(artifact, family_file, result.stderr)

    def snapshot(self, artifact: Artifact) -> dict:
        saved: dict = {"backend": "iptables-legacy"}
        for family_file, tool in LEGACY_FILES.items():
            dumps = []
            for table in self.TABLES:
                result = _run([f"{tool}-save", "-t", table])
                if result.returncode != 0:
                    raise ApplyError(f"{tool}-save -t {table}: {result.stderr.strip()}")
                dumps.append(result.stdout)
            saved[family_file] = "".join(dumps)
        return saved

    def load(self, artifact: Artifact) -> None:
        self.check(artifact)  # both families first, so neither is half applied
        before = self.snapshot(artifact)
        for family_file in LEGACY_FILES:
            result = self._restore(family_file, artifact.path(family_file).read_text())
            if result.returncode != 0:
                self.restore(before)
                raise self._refused(artifact, family_file, result.stderr)

    def restore(self, saved: dict) -> None:
        for family_file in LEGACY_FILES:
            result = self._restore(family_file, saved[family_file])
            if result.returncode != 0:
                raise KernelRefused(
                    f"rollback failed: {LEGACY_FILES[family_file]}-restore: {result.stderr.strip()}"
                )

    def describe(self, saved: dict) -> str:
        return "the iptables-legacy raw and filter tables"

    def foreign_rules(self) -> str | None:
        """nftables tables beside the legacy ones, which mix badly."""
        if shutil.which("nft") is None:
            return None
        result = _run(["nft", "list", "tables"], check=False)
        tables = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return f"nftables tables are loaded too ({', '.join(tables)})" if tables else None


BACKENDS = {"nft": NftBackend, "iptables-legacy": LegacyBackend}


def backend_for(name: str) -> NftBackend | LegacyBackend:
    if name not in BACKENDS:
        raise ApplyError(f"unknown backend '{name}'")
    return BACKENDS[name]()


# --------------------------------------------------------------------------
# state


class State:
    """The state directory: lock, saved state, pending confirmation."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.saved = self.dir / "previous.json"
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

    def write(self, path: Path, data: dict) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        with open(temporary, "w") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ApplyError(f"cannot read {path}: {exc}") from None


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


def check(artifact: Artifact) -> None:
    """Have the kernel validate the ruleset without committing it."""
    backend_for(artifact.backend).check(artifact)


def apply(
    artifact: Artifact,
    state: State,
    report: Report,
    confirm_seconds: float | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> None:
    """Load the artifact after saving what it replaces."""
    backend = backend_for(artifact.backend)
    with state.locked(lock_timeout):
        pending = state.read(state.pending)
        saved = state.read(state.saved)
        sysctl = artifact.path("sysctl.conf")
        settings = read_sysctl_conf(sysctl) if sysctl.exists() else {}
        if pending is None or saved is None or saved["backend"] != artifact.backend:
            # With a confirmation pending, the saved state is the last
            # confirmed one: keep it, so a rollback goes back to safety.
            snapshot = backend.snapshot(artifact)
            snapshot["sysctl"] = current_sysctls(sorted(settings))
            state.write(state.saved, snapshot)
        if confirm_seconds is not None:
            # Armed before the load, so no moment passes with the new rules
            # in force and nothing to take them back.
            _start_timer(state, time.time() + confirm_seconds, pending)
        try:
            backend.load(artifact)
        except KernelRefused as exc:
            if confirm_seconds is not None:
                _disarm(state, pending)
            raise KernelRefused(f"{exc}\nnfc: the previous ruleset is still in force") from None
        report(f"applied {artifact.name} ({artifact.backend})")
        mixed = backend.foreign_rules()
        if mixed:
            report(f"warning: {mixed}; mixing nftables and iptables-legacy is a known source of surprises")
        apply_sysctls(settings, report)
        state.rolled_back.unlink(missing_ok=True)
        if confirm_seconds is not None:
            report(
                f"rolls back in {confirm_seconds:g}s unless 'nfc confirm' runs (state directory {state.dir})"
            )


def _start_timer(state: State, deadline: float, previous: dict | None) -> None:
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


def _disarm(state: State, previous: dict | None) -> None:
    """Undo the arming of a refused apply: back to the earlier pending
    confirmation, if there was one, with its own deadline."""
    armed = state.read(state.pending)
    if armed is not None:
        _stop_timer(armed)
    if previous is None:
        state.pending.unlink(missing_ok=True)
    else:
        _start_timer(state, float(previous["deadline"]), None)


def _stop_timer(pending: dict) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(int(pending["pid"]), 15)


def _restore(state: State, report: Report) -> None:
    saved = state.read(state.saved)
    if saved is None:
        raise ApplyError(f"nothing to roll back: no saved state in {state.dir}")
    backend = backend_for(saved["backend"])
    backend.restore(saved)
    apply_sysctls(saved.get("sysctl", {}), report)
    state.pending.unlink(missing_ok=True)
    report(f"restored {backend.describe(saved)} as before the last apply")


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
        state.pending.unlink()
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
