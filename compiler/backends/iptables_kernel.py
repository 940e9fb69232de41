"""The iptables-legacy kernel side: iptables-legacy-restore and
ip6tables-legacy-restore, each family tested before either is loaded, and
the -save tools for what a load replaces."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

from nfc.backends.iptables import BACKEND, TOOLS, nat_table
from nfc.backends.kernel import ApplyError, Artifact, Json, KernelRefused, RestoreFailed, refusal, run_tool

RESTORE_ERROR = re.compile(r"(?:Error occurred at line: |line )(?P<line>\d+)")
QUOTED_WORD = r'"(?:[^"\\]|\\[\\"])*"'
WORD = rf"{QUOTED_WORD}|[^\s\"'\\]+"
PLAIN_LINE = re.compile(rf" *(?:(?:{WORD})(?: +(?:{WORD}))*)? *\Z")
"""Words a space apart, each bare or in double quotes with only `\\` and
`\"` escaped, as iptables-save writes them: split by a regular expression."""


class LegacyKernel:
    """The raw, filter and nat tables of iptables-legacy and ip6tables-legacy,
    owned whole, as iptables-persistent owns them."""

    TABLES = ("raw", "filter", "nat")
    # A rules file of a policy without NAT holds no nat table, and neither
    # does a state saved before nfc owned it: loading one empties nat.
    OPTIONAL = ("nat",)

    def _restore(self, family_file: str, text: str, test: bool = False) -> subprocess.CompletedProcess[str]:
        tool = TOOLS[family_file] + "-restore"
        return run_tool([tool, "-w", *(["--test"] if test else [])], stdin=with_owned_tables(text))

    def _refused(self, artifact: Artifact, family_file: str, error: str) -> KernelRefused:
        message = " ".join(line for line in error.splitlines() if line and not line.startswith("Try "))
        found = RESTORE_ERROR.search(error)
        if found is None:
            return KernelRefused(f"{artifact.path(family_file)}: error: the kernel refused it: {message}")
        return KernelRefused(refusal(artifact, artifact.path(family_file), int(found["line"]), message))

    def check(self, artifact: Artifact) -> None:
        for family_file in TOOLS:
            result = self._restore(family_file, artifact.path(family_file).read_text(), test=True)
            if result.returncode != 0:
                raise self._refused(artifact, family_file, result.stderr)

    committed: int | None = None  # the tools commit a transaction per table and family

    def snapshot(self, artifact: Artifact, loaded: Json | None = None, untouched: bool = False) -> Json:
        del loaded, untouched  # the -save tools are fast: the rules in force are listed as they are
        saved: Json = {"backend": BACKEND}
        for family_file, tool in TOOLS.items():
            dumps = []
            for table in self.TABLES:
                result = run_tool([f"{tool}-save", "-t", table])
                if result.returncode != 0:
                    raise ApplyError(f"{tool}-save -t {table}: {result.stderr.strip()}")
                dumps.append(result.stdout)
            saved[family_file] = "".join(dumps)
        return saved

    def saved_form(self, artifact: Artifact) -> Json:
        # a rules file holds the tables of its family, as a snapshot does
        return {"backend": BACKEND} | {name: artifact.path(name).read_text() for name in TOOLS}

    def load(self, artifact: Artifact) -> None:
        self.check(artifact)  # both families first, so neither is half applied
        before = self.snapshot(artifact)
        for family_file in TOOLS:
            result = self._restore(family_file, artifact.path(family_file).read_text())
            if result.returncode != 0:
                self.restore(before)
                raise self._refused(artifact, family_file, result.stderr)

    def restore(self, saved: Json) -> None:
        # Both families tested first: a saved dump the kernel refuses leaves
        # every table as it is, rather than one family or one table restored.
        for family_file in TOOLS:
            tested = self._restore(family_file, saved[family_file], test=True)
            if tested.returncode != 0:
                raise KernelRefused(
                    f"the saved state is refused, nothing was changed: {TOOLS[family_file]}-restore: "
                    f"{tested.stderr.strip()}"
                )
        for family_file in TOOLS:
            result = self._restore(family_file, saved[family_file])
            if result.returncode != 0:
                raise RestoreFailed(f"rollback failed: {TOOLS[family_file]}-restore: {result.stderr.strip()}")

    def describe(self, saved: Json) -> str:
        return "the iptables-legacy raw, filter and nat tables"

    def foreign_rules(self) -> str | None:
        """nftables tables beside the legacy ones, which mix badly."""
        if shutil.which("nft") is None:
            return None
        result = run_tool(["nft", "list", "tables"], check=False)
        tables = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return f"nftables tables are loaded too ({', '.join(tables)})" if tables else None


def with_owned_tables(text: str) -> str:
    """`text` with every table nfc owns: without a nat table of its own it
    gets an empty one, so that no translation outlives the policy that asked
    for it. Lines that follow the text keep their numbers in errors."""
    if "*nat" in text.splitlines():
        return text
    return text + "\n".join(nat_table([])) + "\n"


def rule_words(line: str) -> list[str]:
    """A line of iptables-save split into words as the shell splits it
    (shlex.split), which takes ten times as long on the lines of 100,000
    rules: every other line goes to shlex."""
    if not (line.isascii() and line.isprintable() and PLAIN_LINE.match(line)):
        return shlex.split(line)
    return [
        re.sub(r"\\(.)", r"\1", word[1:-1]) if word[0] == '"' else word for word in re.findall(WORD, line)
    ]
