"""The nftables kernel side: `table inet <table>` loaded in one transaction
through libnftables, and nothing else read, saved or replaced."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfc.backends.kernel import (
    PERMISSION_HINT,
    ApplyError,
    Artifact,
    Json,
    KernelRefused,
    RestoreFailed,
    permission_problem,
    refusal,
    run_tool,
)
from nfc.backends.nft import BACKEND, RULESET
from nfc.backends.nft_dump import generation, next_generation
from nfc.backends.nft_sets import ELEMENTS, RUN_TIME, SET_BLOCK, with_carried_elements

NftObjects = list[Any]  # what `nft -j` lists, under its "nftables" key
NFT_ERROR = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)(?:-\d+)?: Error: (?P<message>.*)$")


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
        return self._run_command(command)

    def run_text(self, script: str) -> str | None:
        """Run an nft script held in memory, never written to disk: a full
        /tmp must not stop an apply or a rollback. libnftables reads it from
        a memfd as from a file, so its errors keep their line numbers."""
        if self.binding is None:
            return self._run_command(["nft", "-f", "-"], script)
        descriptor = os.memfd_create("nfc-ruleset", os.MFD_CLOEXEC)
        try:
            with os.fdopen(descriptor, "w", closefd=False) as handle:
                handle.write(script)
            return self.run_file(Path(f"/proc/self/fd/{descriptor}"))
        finally:
            os.close(descriptor)

    @staticmethod
    def _run_command(command: list[str], script: str | None = None) -> str | None:
        """The nft command (it dies with nfc, and one past the tools' timeout is
        stopped before its one commit: nothing changed); its error text, or None."""
        result = run_tool(command, stdin=script, check=False)
        return None if result.returncode == 0 else result.stderr or "nft failed"

    def list(self, what: str, terse: bool = False) -> tuple[str | None, str]:
        """`nft -s [-t] list WHAT`: (output, "") or (None, error)."""
        if self.binding is not None:
            binding = self.binding
            binding.set_stateless_output(True)  # type: ignore[attr-defined]
            binding.set_terse_output(terse)  # type: ignore[attr-defined]
            try:
                rc, output, error = binding.cmd(f"list {what}")  # type: ignore[attr-defined]
            finally:
                binding.set_terse_output(False)  # type: ignore[attr-defined]
        else:
            command = ["nft", "-s", *(["-t"] if terse else []), "list", *what.split()]
            result = run_tool(command, check=False)
            rc, output, error = result.returncode, result.stdout, result.stderr
        return (output, "") if rc == 0 else (None, error)

    def list_json(self, what: str = "ruleset", terse: bool = False) -> NftObjects | None:
        """`nft -j [-t] list WHAT` as objects; None if unreadable. `terse`
        leaves out the elements of named sets, which can be millions."""
        if self.binding is not None:
            binding = self.binding
            binding.set_json_output(True)  # type: ignore[attr-defined]
            binding.set_terse_output(terse)  # type: ignore[attr-defined]
            try:
                rc, output, _ = binding.cmd(f"list {what}")  # type: ignore[attr-defined]
            finally:
                binding.set_json_output(False)  # type: ignore[attr-defined]
                binding.set_terse_output(False)  # type: ignore[attr-defined]
        else:
            command = ["nft", "-j", *(["-t"] if terse else []), "list", *what.split()]
            result = run_tool(command, check=False)
            rc, output = result.returncode, result.stdout
        if rc != 0:
            return None
        try:
            listing = json.loads(output)["nftables"]
        except (ValueError, KeyError, TypeError):
            return None
        return listing if isinstance(listing, list) else None


def _give_back_freed_memory() -> None:
    """Hand the heap libnftables freed after a load back to the system
    (glibc's malloc_trim): it keeps about 1 GiB of a 100,000-rule load, and
    nfc's work after the load (the rules' origins, listed over netlink)
    would come on top of it instead of in its place."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(0)


def _nft_error(error: str) -> str:
    for line in error.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return error.strip().splitlines()[0] if error.strip() else "unknown error"


class NftKernel:
    """`table inet <table>`: nothing else is read, saved or replaced."""

    def __init__(self) -> None:
        self.nft = Nft()
        self.committed: int | None = None

    def _commit(self, run: Callable[[], str | None]) -> str | None:
        """Run a load; its error, or None with `committed` set to the
        generation it made if no other commit came between."""
        self.committed = None
        try:
            before = generation()
        except ApplyError:
            before = None  # nothing to vouch for: the next apply lists the table
        error = run()
        _give_back_freed_memory()
        if error is None and before is not None:
            with contextlib.suppress(ApplyError):
                after = generation()
                self.committed = after if after == next_generation(before) else None
        return error

    def _refused(self, artifact: Artifact, error: str) -> KernelRefused:
        ruleset = artifact.path(RULESET)
        reports = [
            refusal(artifact, ruleset, int(found["line"]), found["message"])
            for found in map(NFT_ERROR.match, error.splitlines())
            if found
        ]
        return KernelRefused(
            "\n".join(reports or [f"{ruleset}: error: the kernel refused it: {_nft_error(error)}"])
        )

    def _failed(self, artifact: Artifact, error: str, what: str) -> Exception:
        if permission_problem(error):
            return ApplyError(f"nfc {what}: {_nft_error(error)}; {PERMISSION_HINT}")
        return self._refused(artifact, error)

    def check(self, artifact: Artifact) -> None:
        error = self.nft.run_file(artifact.path(RULESET), dry_run=True)
        if error is not None:
            raise self._failed(artifact, error, "check")

    def snapshot(self, artifact: Artifact, loaded: Json | None = None, untouched: bool = False) -> Json:
        table = artifact.table
        listing: str | None
        if loaded is not None and loaded.get("table") == table and loaded.get("listing"):
            if untouched:
                listing = self._live_elements(table, loaded["listing"])
            else:
                listing = self._listing_as_loaded(table, loaded["listing"])
        else:
            listing = self._list(f"table inet {table}")
        return {"backend": BACKEND, "table": table, "listing": listing}

    def _list(self, what: str, terse: bool = False) -> str | None:
        """`nft -s list WHAT`; None if it does not exist."""
        listing, error = self.nft.list(what, terse)
        if listing is None and "No such file or directory" not in error:
            if permission_problem(error):
                raise ApplyError(f"nfc apply: {_nft_error(error)}; {PERMISSION_HINT}")
            raise ApplyError(f"cannot read {what}: {_nft_error(error)}")
        return listing

    def _listing_as_loaded(self, table: str, loaded: str) -> str | None:
        """What `nft -s list table inet TABLE` says, when the table in force is
        the one nfc loaded from `loaded`: its rules and declarations as they
        are (`-t list ruleset`, which leaves every set's elements in the
        kernel), the elements of meters and runtime sets as they are, and
        those of the policy's sets as `loaded` gave them. nft would take
        over a minute to list a list file's million elements back."""
        ruleset = self._list("ruleset", terse=True) or ""
        found = re.search(rf"^table inet {re.escape(table)} \{{\n.*?^\}}\n", ruleset, re.M | re.S)
        if found is None:
            return None
        as_loaded = {block["name"]: block[0] for block in SET_BLOCK.finditer(loaded)}

        def elements(declared: re.Match[str]) -> str:
            name, block = declared["name"], declared[0]
            if name not in as_loaded or RUN_TIME.search(block):
                live = SET_BLOCK.search(self._list(f"{declared['kind']} inet {table} {name}") or "")
                return live[0] if live is not None else block
            given = ELEMENTS.search(as_loaded[name])
            if given is None:
                return block
            return block[: -len("\t}\n")] + as_loaded[name][given.start() : -len("\t}\n")] + "\t}\n"

        return SET_BLOCK.sub(elements, found[0])

    def _live_elements(self, table: str, loaded: str) -> str:
        """`loaded`, the text whose load is in force with nothing committed
        since, with the elements meters and runtime sets hold now: the
        table as it is, without listing a rule (and as fast to load back
        as the ruleset nfc wrote; nft's listing of it loads slower)."""

        def elements(declared: re.Match[str]) -> str:
            if not RUN_TIME.search(declared[0]):
                return declared[0]
            live = SET_BLOCK.search(self._list(f"{declared['kind']} inet {table} {declared['name']}") or "")
            return live[0] if live is not None else declared[0]

        return SET_BLOCK.sub(elements, loaded)

    def saved_form(self, artifact: Artifact) -> Json:
        # ruleset.nft itself replaces the table, so it loads as a listing does
        return {"backend": BACKEND, "table": artifact.table, "listing": artifact.path(RULESET).read_text()}

    def load(self, artifact: Artifact) -> None:
        # The load deletes the table: the runtime sets' elements go back in
        # within the same transaction, with the time they have left.
        ruleset = artifact.path(RULESET).read_text()
        carried, notes = with_carried_elements(artifact, ruleset)
        for note in notes:
            print(f"nfc apply: note: {note}", file=sys.stderr)
        if carried != ruleset:
            error = self._commit(lambda: self.nft.run_text(carried))
        else:
            error = self._commit(lambda: self.nft.run_file(artifact.path(RULESET)))
        if error is not None:
            raise self._failed(artifact, error, "apply")

    def restore(self, saved: Json) -> None:
        table = saved["table"]
        script = f"table inet {table}\ndelete table inet {table}\n" + (saved["listing"] or "")
        error = self._commit(lambda: self.nft.run_text(script))
        if error is not None:
            raise RestoreFailed(f"rollback failed: the kernel refused the saved state: {_nft_error(error)}")

    def describe(self, saved: Json) -> str:
        return f"table inet {saved['table']}"

    def foreign_rules(self) -> str | None:
        """iptables-legacy rules loaded beside nfc's table, which mix badly."""
        found = []
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            if shutil.which(tool) is None:
                continue
            result = run_tool([tool], check=False)
            if any(line.startswith("-A ") for line in result.stdout.splitlines()):
                found.append(tool.replace("-save", ""))
        return " and ".join(found) + " rules are loaded too" if found else None
