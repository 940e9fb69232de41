"""nfc as a library: what the `nfc` command does, for a program (an Ansible
module, a test) to call.

    from nfc import api

    ruleset, sources = api.compile_policy("policies/dns-recursive.yaml")
    api.write("build", api.build(ruleset, "nft", sources))
    api.check("build")  # the kernel validates, nothing is loaded
    api.apply("build", report=print, confirm_seconds=60)
    api.confirm(report=print)

Bad input raises `nfc.errors.PolicyError` (its `render()` is the compiler
message); an artifact directory that cannot be written raises
`nfc.artifacts.ArtifactError`; `nfc.backends.kernel.ApplyError` means apply
could not run (its `nfc.state.StateError`: the state directory or a file in
it is not to be trusted, is damaged or cannot be written) and
`KernelRefused` that the kernel refused a ruleset, the previous one still
in force. Functions that take a TARGET accept an
artifact directory or a policy, which they compile for `backend` first.
Apply, confirm, rollback and restore keep their state in `state_dir`: by
default $NFC_STATE_DIR, else /var/lib/nfc.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import nfc.apply
import nfc.artifacts
import nfc.diff
import nfc.doctor
import nfc.explain
import nfc.importer
import nfc.importer.model
import nfc.importer.review
import nfc.lint
import nfc.neighbours
import nfc.persist
import nfc.refresh
import nfc.state
import nfc.stats
import nfc.stats_origins
from nfc.artifacts import build, write
from nfc.backends import BACKENDS, DEFAULT_BACKEND
from nfc.backends.kernel import ApplyError, Artifact
from nfc.collector import collector_paused
from nfc.errors import Loc, PolicyError
from nfc.ir import NotrackRule, Rule, Ruleset
from nfc.lint_report import Finding
from nfc.load import load_policy
from nfc.lower import lower
from nfc.parse import parse_policy
from nfc.target import Target
from nfc.textfile import read_text

__all__ = [
    "Compiled",
    "Imported",
    "apply",
    "artifact",
    "build",
    "check",
    "compile_policy",
    "confirm",
    "diff",
    "diff_base",
    "doctor",
    "expired",
    "explain",
    "import_ruleset",
    "lint",
    "restore",
    "rollback",
    "rollback_timer",
    "stats",
    "write",
]

StateDir = str | os.PathLike[str] | None


class Imported(NamedTuple):
    """An imported policy, what could not be translated exactly, the input's
    mistakes it fixes or keeps, and lint's findings on it."""

    policy: str
    problems: list[nfc.importer.model.Problem]
    notes: list[str]
    findings: list[Finding]  # kept: the input's own mistakes, as lint finds them in the policy
    fixed: list[str]  # lint's findings on the input as it was that the policy no longer has


class Compiled(NamedTuple):
    """A lowered policy and the files it was read from (for the manifest)."""

    ruleset: Ruleset
    sources: tuple[str, ...]


def compile_policy(
    path: str, memory: int | None = None, word_bits: int | None = None, allow_empty: bool = False
) -> Compiled:
    """Load, parse and lower a policy; PolicyError on bad input. `memory` (bytes) and
    `word_bits` size 'conntrack.max: auto' for the target host (default: this one).
    A policy with no chain, no notrack entry and no NAT rule (an include fragment, say) is
    refused unless `allow_empty`: loading it would leave the host without a
    firewall."""
    host = Target.this_host()
    target = Target(memory or host.memory_bytes, word_bits or host.word_bits)
    with collector_paused():
        source = load_policy(path)
        if not (source.chains or source.conntrack.notrack or source.nat or allow_empty):
            raise PolicyError(
                Loc(source.path, 1, 1),
                "this policy has no input, forward or output chain, no notrack entry and no NAT rule: "
                "it would load an empty firewall",
                "an included file is compiled through the policy that includes it; "
                "'nfc compile --allow-empty' compiles an empty one on purpose",
            )
        return Compiled(lower(parse_policy(source), target), source.files)


def expired(ruleset: Ruleset, today: dt.date | None = None) -> list[Rule | NotrackRule]:
    """The rules whose expiry date is before `today`, one per policy line."""
    today = today or dt.date.today()
    rules: list[Rule | NotrackRule] = [r for chain in ruleset.chains for r in chain.rules]
    rules += ruleset.notrack
    found: dict[Loc, Rule | NotrackRule] = {}
    for rule in rules:
        if rule.expires is not None and rule.expires < today:
            found.setdefault(rule.origin, rule)
    return list(found.values())


# --------------------------------------------------------------------------
# the kernel


@contextmanager
def artifact(target: str, backend: str = DEFAULT_BACKEND, optimize: bool = True) -> Iterator[Artifact]:
    """The artifact of `target`: an artifact directory as it is, or a policy
    compiled for `backend` (`optimize` False: -O0) into a temporary directory
    for the block."""
    path = Path(target)
    if path.is_dir():
        yield nfc.artifacts.read(path, target)
        return
    ruleset, sources = compile_policy(target)
    with nfc.artifacts.scratch(build(ruleset, backend, sources, optimize), target) as compiled:
        yield compiled


def check(target: str, backend: str = DEFAULT_BACKEND, optimize: bool = True) -> None:
    """Have the kernel validate `target`'s ruleset without loading it."""
    with artifact(target, backend, optimize) as loadable:
        nfc.apply.check(loadable)


def _state(state_dir: StateDir) -> nfc.state.State:
    return nfc.state.State(state_dir or os.environ.get("NFC_STATE_DIR") or nfc.state.DEFAULT_STATE_DIR)


def apply(
    target: str,
    *,
    report: nfc.apply.Report,
    backend: str = DEFAULT_BACKEND,
    state_dir: StateDir = None,
    confirm_seconds: float | None = None,
    lock_timeout: float = nfc.state.LOCK_TIMEOUT,
    persist: bool = False,
    persist_dir: StateDir = None,
    optimize: bool = True,
) -> None:
    """Load `target`'s ruleset after saving what it replaces; with
    `confirm_seconds`, roll back then unless `confirm` runs first. With
    `persist` (iptables-legacy, without `confirm_seconds`), also write it
    for iptables-persistent into `persist_dir`: by default
    $NFC_PERSIST_DIR, else /etc/iptables. `optimize` False compiles a
    POLICY as -O0 does."""
    where = nfc.persist.directory(persist_dir) if persist else None
    with artifact(target, backend, optimize) as loadable:
        nfc.apply.apply(loadable, _state(state_dir), report, confirm_seconds, lock_timeout, where)


def refresh(
    target: str | None = None,
    *,
    report: nfc.apply.Report,
    state_dir: StateDir = None,
    lock_timeout: float = nfc.state.LOCK_TIMEOUT,
) -> None:
    """Reload the sets of `target`'s list files in one transaction, if its
    rules are those in force (`nfc.refresh`); by default the policy or
    directory last applied."""
    state = _state(state_dir)
    with artifact(target or nfc.refresh.last_target(state)) as loadable:
        nfc.refresh.refresh(loadable, state, report, lock_timeout)


def confirm(
    *,
    report: nfc.apply.Report,
    state_dir: StateDir = None,
    lock_timeout: float = nfc.state.LOCK_TIMEOUT,
    persist: bool = False,
    persist_dir: StateDir = None,
) -> None:
    """Keep the ruleset of an `apply` with `confirm_seconds`; with
    `persist`, write it for iptables-persistent as `apply` does."""
    where = nfc.persist.directory(persist_dir) if persist else None
    nfc.apply.confirm(_state(state_dir), report, lock_timeout, where)


def rollback(
    *, report: nfc.apply.Report, state_dir: StateDir = None, lock_timeout: float = nfc.state.LOCK_TIMEOUT
) -> None:
    """Restore what the last `apply` replaced."""
    nfc.apply.rollback(_state(state_dir), report, lock_timeout)


def restore(
    *, report: nfc.apply.Report, state_dir: StateDir = None, lock_timeout: float = nfc.state.LOCK_TIMEOUT
) -> None:
    """Load the last confirmed ruleset (at boot): never one still waiting for `confirm`."""
    nfc.apply.restore(_state(state_dir), report, lock_timeout)


def rollback_timer(token: str, deadline: float, state_dir: StateDir = None) -> None:
    """The detached process `apply` starts with `confirm_seconds` (nfc _rollback-timer)."""
    nfc.apply.rollback_timer(_state(state_dir), token, deadline)


def stats(target: str | None = None, *, state_dir: StateDir = None) -> nfc.stats.Stats:
    """The counters of the rules in force by policy line (`nfc.stats`), as
    mapped when apply, rollback or restore put them in force; with `target`
    (a policy or an artifact directory), only if its ruleset is the one in
    force (a policy compiles for the backend in force)."""
    state = _state(state_dir)
    if target is None:
        return nfc.stats.read(state)
    origins = state.read(nfc.stats_origins.origins_path(state))
    with artifact(target, origins["backend"] if origins else DEFAULT_BACKEND) as loadable:
        record = BACKENDS.get(loadable.backend)
        if record is None:
            raise ApplyError(f"unknown backend '{loadable.backend}' in {target}")
        saved_form = record.kernel().saved_form(loadable)
    return nfc.stats.read(state, nfc.stats_origins.loaded_digest(saved_form))


# --------------------------------------------------------------------------
# analysis


def lint(policies: Sequence[str], today: dt.date | None = None, management_port: int = 22) -> list[Finding]:
    """The findings of every check on each policy, in order."""
    findings: list[Finding] = []
    for policy in policies:
        ruleset, _ = compile_policy(policy)
        findings += nfc.lint.lint(ruleset, today=today, management_port=management_port)
    return findings


def explain(policy: str, packet: str, over_limit: bool = False) -> nfc.explain.Explanation:
    """Which rule decides `packet` (e.g. 'udp 198.51.100.7:5353 > 192.0.2.1:53')
    under `policy`; PacketError if the packet cannot be read."""
    ruleset, _ = compile_policy(policy)
    return nfc.explain.explain(ruleset, nfc.explain.parse_packet(packet), over_limit=over_limit)


def diff(old: str, new: str) -> list[nfc.diff.Change]:
    """What policy `new` newly allows, blocks or untracks compared with `old`."""
    return nfc.diff.diff(compile_policy(old).ruleset, compile_policy(new).ruleset)


def diff_base(base: str, policy: str) -> list[nfc.diff.Change]:
    """`diff` of `policy` as it is against itself at git revision `base`;
    BaseError if git cannot show it."""
    with tempfile.TemporaryDirectory(prefix="nfc-diff-") as scratch:
        old = compile_policy(nfc.diff.checkout_base(base, policy, scratch)).ruleset
    return nfc.diff.diff(old, compile_policy(policy).ruleset)


def doctor(
    policy: str | None = None,
    memory: int | None = None,
    warn_fill: float = nfc.doctor.DEFAULT_WARN_FILL,
    log_window: float = nfc.doctor.DEFAULT_LOG_WINDOW,
) -> nfc.doctor.Diagnosis:
    """Whether connection tracking is the problem on this host; with `policy`,
    which suggestions it already covers. `memory` sizes the suggested max.
    Its `forward_warning` says when nfc's forward chain, as loaded, drops
    what another table hooking forward (Docker's, say) accepts."""
    ruleset = compile_policy(policy).ruleset if policy else None
    host = Target.this_host()
    target = Target(memory or host.memory_bytes, host.word_bits)
    diagnosis = nfc.doctor.diagnose(nfc.doctor.read_system(log_window), target, warn_fill, ruleset)
    diagnosis.forward_warning = nfc.neighbours.warning_here(None, ruleset.table if ruleset else "nfc")
    return diagnosis


def import_ruleset(path: str, source_format: str | None = None, output: str | None = None) -> Imported:
    """`path`'s iptables-save or nft ruleset (format detected unless
    `source_format` is 'iptables-save' or 'nft') as a policy, written to
    `output` when given; lint runs on it (findings name `output`, else
    '<import>'). PolicyError when the input cannot be read."""
    text = read_text(path, Loc(path, 1, 1), limit=nfc.importer.MAX_RULESET_BYTES, kind="ruleset")
    translation = nfc.importer.translate(path, text, source_format)
    findings, fixed = nfc.importer.review.review(translation, output or "<import>")
    if output:
        target = Path(output)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            # a new file (O_EXCL) under a name no one can guess: never written through a planted link
            with open(
                os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8"
            ) as out:
                out.write(translation.policy)
            os.replace(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise PolicyError(Loc(output, 1, 1), f"cannot write the policy: {exc.strerror}") from None
    return Imported(translation.policy, translation.problems, translation.notes, findings, fixed)
