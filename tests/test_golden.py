"""Golden files: every flagship and feature policy compiles to a committed
ruleset, byte for byte, and the kernel accepts every committed ruleset.

Regenerate after an intended change with NFC_UPDATE_GOLDEN=1 and review the
diff like any other code change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import FEATURES, FLAGSHIP, GOLDEN, TEST_MEMORY, nft_check, run_nfc

POLICIES = FLAGSHIP + FEATURES
UPDATE = bool(os.environ.get("NFC_UPDATE_GOLDEN"))


def _compile(policy: Path, outdir: Path) -> Path:
    result = run_nfc("compile", str(policy), "-o", str(outdir), "--memory", TEST_MEMORY, "--word-bits", "64")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return outdir


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.stem)
def test_compiles_to_golden(policy: Path, tmp_path: Path) -> None:
    outdir = _compile(policy, tmp_path / "out")
    for artifact, suffix in (("ruleset.nft", "nft"), ("sysctl.conf", "sysctl.conf")):
        produced = outdir / artifact
        golden = GOLDEN / f"{policy.stem}.{suffix}"
        if not produced.exists():
            assert not golden.exists(), f"{artifact} expected but not produced"
            continue
        if UPDATE:
            golden.write_text(produced.read_text())
        assert golden.exists(), f"no golden file {golden.name}: run with NFC_UPDATE_GOLDEN=1"
        assert produced.read_text() == golden.read_text()


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.nft")), ids=lambda p: p.stem)
def test_kernel_accepts_golden(golden: Path) -> None:
    result = nft_check(golden)
    assert result.returncode == 0, result.stderr


def test_every_policy_has_a_golden() -> None:
    stems = {p.stem for p in GOLDEN.glob("*.nft")}
    assert stems == {p.stem for p in POLICIES}


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.stem)
def test_output_is_deterministic(policy: Path, tmp_path: Path) -> None:
    first = _compile(policy, tmp_path / "a")
    second = _compile(policy, tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_stdout_matches_artifact(tmp_path: Path) -> None:
    policy = FLAGSHIP[0]
    outdir = _compile(policy, tmp_path / "out")
    printed = run_nfc("compile", str(policy), "--stdout", "--memory", TEST_MEMORY, "--word-bits", "64")
    assert printed.returncode == 0
    assert printed.stdout == (outdir / "ruleset.nft").read_text()
