"""`nfc refresh`: the sets of list files (`define: NAME: {file: PATH}`)
reloaded in one nft transaction, `flush set` and `add element` for each,
without touching rules, meters or runtime sets.

Only when the rules in force are the policy's: the ruleset nfc last put in
force (its journal in the state directory) must equal the new one but for
the list sets' elements; anything else wants `nfc apply`. iptables-legacy
has no sets to refill (a list is a rule per network there): refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from nfc import stats_origins
from nfc.apply import applied_path, confirmed_path
from nfc.backends import nft_dump
from nfc.backends.kernel import ApplyError, Artifact, Json, run_tool
from nfc.backends.nft import BACKEND, RULESET
from nfc.backends.nft_sets import set_element_counts
from nfc.errors import printable
from nfc.state import State

ELEMENTS = re.compile(r"^\t\telements = \{ .* \}$", re.MULTILINE)


def _in_force(state: State) -> tuple[Json, Path]:
    """The journal of what nfc last put in force, and its path."""
    if state.read(state.rolled_back) is not None:
        raise ApplyError("the last apply was rolled back: 'nfc apply' the policy instead of refreshing it")
    for path in (applied_path(state), confirmed_path(state)):
        record = state.read(path)
        if record is not None:
            return record, path
    raise ApplyError("nfc has applied no ruleset here: 'nfc apply' it first")


def _generation() -> int | None:
    try:
        return nft_dump.generation()
    except ApplyError:
        return None


def last_target(state: State) -> str:
    """The policy or artifact directory nfc last put in force."""
    record, _ = _in_force(state)
    return str(record["target"])


def _list_set_blocks(text: str, names: list[str]) -> dict[str, str]:
    """The `elements = { ... }` line of each list set in a ruleset.nft."""
    found = {}
    for name in names:
        block = re.search(
            rf"^\tset {re.escape(name)} {{\n(?:\t\t.*\n)*?(\t\telements = {{ .* }})$", text, re.M
        )
        if block is None:
            raise ApplyError(f"set {name} is not in the compiled ruleset")
        found[name] = block[1].strip()[len("elements = ") :]
    return found


def _rules_only(text: str) -> str:
    """A ruleset.nft without its comment lines and set elements: what must not change."""
    return "\n".join(line for line in ELEMENTS.sub("", text).splitlines() if not line.startswith("#"))


def run_script(script: str) -> None:
    """Load `script` with nft in one transaction. nft runs as a child that
    dies with nfc (`run_tool`): of an nfc killed mid-refresh, no nft may
    commit the lists later, over what the next nfc command loaded."""
    done = run_tool(["nft", "-f", "-"], stdin=script)
    if done.returncode != 0:
        error = done.stderr.strip() or "nft failed"
        found = [line.split("Error:", 1)[1].strip() for line in error.splitlines() if "Error:" in line]
        raise ApplyError(f"the kernel refused the lists: {printable(found[0] if found else error, 200)}")


def refresh(artifact: Artifact, state: State, report: Callable[[str], None], lock_timeout: float) -> None:
    if artifact.backend != BACKEND:
        raise ApplyError(
            "iptables-legacy keeps a list as a rule per network, not a set: 'nfc apply' reloads it"
        )
    names = sorted(artifact.manifest.get("list_sets", {}))
    if not names:
        raise ApplyError(f"{artifact.name} has no list file (define: NAME: {{file: PATH}}) to refresh")
    text = artifact.path(RULESET).read_text()
    with state.locked(lock_timeout):
        record, path = _in_force(state)
        loaded = record.get("to", {})
        if loaded.get("backend") != BACKEND or loaded.get("table") != artifact.table:
            raise ApplyError(f"the ruleset in force is not {artifact.name}'s table inet {artifact.table}")
        if _rules_only(loaded.get("listing") or "") != _rules_only(text):
            raise ApplyError(
                f"the rules in force differ from {artifact.name}'s, not only its lists: 'nfc apply' it"
            )
        elements = _list_set_blocks(text, names)
        before = _generation()
        run_script(
            "".join(
                f"flush set inet {artifact.table} {name}\nadd element inet {artifact.table} {name} {value}\n"
                for name, value in elements.items()
            )
        )
        after = _generation()
        # What the next refresh compares with, and what boot (`nfc restore`) loads.
        record["to"] = loaded | {"listing": text}
        try:
            state.write(path, record)
        except ApplyError as exc:  # a full disk: the kernel has the new lists all the same
            raise ApplyError(
                f"the lists are refreshed in the kernel, but {exc}: 'nfc restore' and a rollback would "
                "load them as they were before; refresh again once there is room"
            ) from None
        # The rules and their handles are those of the map `nfc stats` keeps;
        # only what identifies the ruleset in force, and the lists' fill,
        # changed. Listing the table anew would dump every list element out
        # of the kernel. If nothing but this refresh committed since the
        # load the map records, the table is still exactly the one loaded.
        origins = state.read(stats_origins.origins_path(state))
        if origins is not None and origins.get("table") == artifact.table:
            counts = set_element_counts(text)
            filled = {name: counts.get(name, 0) for name in origins.get("set_elements", {})}
            alone = before is not None and before == origins.get("generation")
            committed = (
                after if before is not None and alone and after == nft_dump.next_generation(before) else None
            )
            refreshed = {"loaded": stats_origins.loaded_digest(record["to"]), "set_elements": filled}
            state.write(stats_origins.origins_path(state), origins | refreshed | {"generation": committed})
    for name in names:
        report(f"refreshed set {name} from {artifact.manifest['list_sets'][name]}")
