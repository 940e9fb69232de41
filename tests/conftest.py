"""Shared test helpers: paths, compiling, and access to the real kernel.

Kernel checks run inside throwaway network namespaces (`unshare -n`), never
in the host's own. Where a tool or privilege is missing they skip, except
under CI (the CI variable set), where a missing prerequisite fails the run
and says what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = sorted((ROOT / "policies").glob("*.yaml"))
FEATURES = sorted((ROOT / "tests" / "policies").glob("features-*.yaml"))
CONTROL = ROOT / "tests" / "policies" / "control-dns-stateful.yaml"
GOLDEN = ROOT / "tests" / "golden"
TEST_MEMORY = str(8 << 30)  # conntrack.max: auto is computed for an 8 GiB, 64-bit host


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def missing_prerequisite(reason: str) -> None:
    """Skip locally; fail under CI, where every test must really run."""
    if in_ci():
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            missing_prerequisite(f"'{tool}' is not installed (make install sets it up)")


def unshare_prefix() -> list[str]:
    """A command prefix that runs in a fresh, empty network namespace."""
    require_tools("unshare")
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


def nft_check(path: Path | str) -> subprocess.CompletedProcess[str]:
    """`nft -c -f path` in a throwaway namespace: the kernel validates, nothing is loaded."""
    require_tools("nft")
    return subprocess.run(
        [*unshare_prefix(), "nft", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def iptables_check(path: Path | str) -> subprocess.CompletedProcess[str]:
    """`iptables-legacy-restore --test` (ip6tables for rules.v6) in a throwaway namespace."""
    tool = "ip6tables-legacy-restore" if str(path).endswith("v6") else "iptables-legacy-restore"
    require_tools(tool)
    with open(path) as rules:
        return subprocess.run(
            [*unshare_prefix(), tool, "--test"],
            stdin=rules,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "XTABLES_LOCKFILE": "/dev/null"},
        )


def run_nfc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nfc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


from lab import lab, make_lab  # noqa: E402, F401 - the namespace lab fixtures
