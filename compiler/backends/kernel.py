"""What the kernel sides of all backends share: the artifact they load, the
interface `apply` drives them through, their errors, and running a tool."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nfc.errors import Loc

PR_SET_PDEATHSIG = 1
RULE_ORIGIN = re.compile(r'comment "(?P<file>[^"]+?):(?P<line>\d+)(?::[^"]*)?"')
TOOL_TIMEOUT = 120.0  # seconds; far more than a tool takes at a million rules or elements
PERMISSION_HINT = "this needs CAP_NET_ADMIN: run as root (or in a user namespace: unshare -rn nfc ...)"

Json = dict[str, Any]
"""A JSON object as read from manifest.json or the state directory."""


class ApplyError(Exception):
    """Apply could not run (usage, permissions, state); exit code 2."""


class KernelRefused(Exception):
    """The kernel refused a ruleset; the previous one is in force. Exit code 3."""


class RestoreFailed(KernelRefused):
    """The kernel refused a saved state being put back: the rules in force
    may be half replaced, and the journal in the state directory stays."""


@dataclass(frozen=True)
class Artifact:
    """A compiled ruleset ready to load: its files and where it came from."""

    directory: Path  # holds the files on disk
    manifest: Json
    name: str  # what the user named: the policy or the artifact directory

    @property
    def table(self) -> str:
        return str(self.manifest["table"])

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    def path(self, name: str) -> Path:
        return self.directory / name

    def origin_of(self, generated_line: str) -> Loc | None:
        """The policy position named in a generated rule's comment."""
        found = RULE_ORIGIN.search(generated_line)
        if found is None:
            return None
        policy_dir = Path(self.manifest["policy"]).parent
        return Loc(str(policy_dir / found["file"]), int(found["line"]), 1)


class Kernel(Protocol):
    """A backend's kernel side: what `apply` needs to load its artifacts.

    `snapshot` saves what `load` would replace, as JSON with a "backend"
    key; `restore` puts such a snapshot back, or the `saved_form` of an
    artifact (how the journal and `nfc restore` keep a loaded ruleset).
    `committed` is the nf_tables generation the last `load` or `restore`
    committed, if no other commit came between (None on iptables-legacy)."""

    committed: int | None

    def check(self, artifact: Artifact) -> None:
        """Have the kernel validate the artifact without committing it."""

    def snapshot(self, artifact: Artifact, loaded: Json | None = None, untouched: bool = False) -> Json:
        """What loading the artifact would replace. `loaded`, when given, is
        the saved form nfc put in force and the rules in force are still
        that load's: what nfc itself put in needs no listing back; with
        `untouched`, nothing was committed since that load, so its rules
        are exactly `loaded`'s too."""

    def saved_form(self, artifact: Artifact) -> Json:
        """The artifact's ruleset in the form `snapshot` saves, for `restore` to load."""

    def load(self, artifact: Artifact) -> None:
        """Replace the rules in force with the artifact's, or leave them as they
        were; RestoreFailed if putting them back failed too."""

    def restore(self, saved: Json) -> None:
        """Put back what `snapshot` saved; RestoreFailed if the kernel refuses it."""

    def describe(self, saved: Json) -> str:
        """What `restore` puts back, for a report."""

    def foreign_rules(self) -> str | None:
        """Rules of the other kind loaded beside ours, which mix badly."""


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


def permission_problem(error: str) -> bool:
    return "Operation not permitted" in error or "Permission denied" in error


def run_tool(
    command: list[str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a netfilter tool; ApplyError if it is missing or (with `check`) lacks permission.
    A tool that outlives `TOOL_TIMEOUT` is killed and fails like one the
    kernel refused, so that its caller undoes a half-done load as it undoes
    any failed one, instead of nfc stopping with an internal error."""
    if shutil.which(command[0]) is None:
        raise ApplyError(f"'{command[0]}' is not installed")
    try:
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            preexec_fn=dying_with(os.getpid()),
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, -9, "", timed_out(command[0]))
    if check and result.returncode != 0 and permission_problem(result.stderr):
        raise ApplyError(f"{command[0]}: {result.stderr.strip()}; {PERMISSION_HINT}")
    return result


def timed_out(tool: str) -> str:
    """What a tool killed at `TOOL_TIMEOUT` says, in place of its own error."""
    return f"{tool} did not finish within {TOOL_TIMEOUT:g}s and was stopped"


def dying_with(parent: int) -> Callable[[], None]:
    """What a tool's child process runs first: have the kernel kill it when nfc
    dies, so that a tool of a killed nfc cannot go on changing the rules after
    the next nfc command has repaired them (see the journal in nfc.apply)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # nfc died before the request took effect
            os._exit(1)

    return die_with_parent
