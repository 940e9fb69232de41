"""Golden files: every flagship and feature policy compiles to committed
artifacts for each backend, byte for byte, and the kernel accepts every
committed ruleset (`nft -c -f`, `iptables-legacy-restore --test`), each in
a throwaway network namespace.

Regenerate after an intended change with NFC_UPDATE_GOLDEN=1 and review the
diff like any other code change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nfc.artifacts import SYSCTL_CONF
from nfc.backends import iptables, nft
from nfc.backends.iptables import RULES_V4, RULES_V6

from conftest import FEATURES, FLAGSHIP, GOLDEN, ROOT, TEST_MEMORY, iptables_check, nft_check, run_nfc

POLICIES = FLAGSHIP + FEATURES
UPDATE = bool(os.environ.get("NFC_UPDATE_GOLDEN"))
# Artifact name in the output directory → suffix of its golden file.
ARTIFACTS = {
    nft.BACKEND: {nft.RULESET: "nft", SYSCTL_CONF: "sysctl.conf"},
    iptables.BACKEND: {RULES_V4: "rules.v4", RULES_V6: "rules.v6", SYSCTL_CONF: "sysctl.conf"},
}
# Policies a backend must refuse, with the feature its error names.
UNSUPPORTED = {("features-nft-only", "iptables-legacy"): "cannot express this exactly"}
CASES = [(policy, backend) for policy in POLICIES for backend in ARTIFACTS]


def _compile(policy: Path, outdir: Path, backend: str = "nft") -> Path:
    result = run_nfc(
        "compile", str(policy), "-b", backend, "-o", str(outdir), "--memory", TEST_MEMORY, "--word-bits", "64"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return outdir


@pytest.mark.parametrize(("policy", "backend"), CASES, ids=lambda v: getattr(v, "stem", v))
def test_compiles_to_golden(policy: Path, backend: str, tmp_path: Path) -> None:
    feature = UNSUPPORTED.get((policy.stem, backend))
    if feature is not None:
        result = run_nfc("compile", str(policy), "-b", backend, "-o", str(tmp_path / "out"))
        assert result.returncode == 2
        assert f"{policy}:" in result.stderr and feature in result.stderr and backend in result.stderr
        assert not (tmp_path / "out").exists()
        return
    outdir = _compile(policy, tmp_path / "out", backend)
    for artifact, suffix in ARTIFACTS[backend].items():
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
def test_kernel_accepts_nft_golden(golden: Path) -> None:
    result = nft_check(golden)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.rules.v[46]")), ids=lambda p: p.name)
def test_kernel_accepts_iptables_golden(golden: Path) -> None:
    result = iptables_check(golden)
    assert result.returncode == 0, result.stderr


def test_every_policy_has_its_goldens() -> None:
    assert {p.stem for p in GOLDEN.glob("*.nft")} == {p.stem for p in POLICIES}
    refused = {stem for stem, backend in UNSUPPORTED if backend == "iptables-legacy"}
    expected = {p.stem for p in POLICIES} - refused
    assert {p.name.split(".")[0] for p in GOLDEN.glob("*.rules.v4")} == expected
    assert {p.name.split(".")[0] for p in GOLDEN.glob("*.rules.v6")} == expected


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
    assert printed.stdout == (outdir / nft.RULESET).read_text()


@pytest.mark.parametrize("backend", sorted(ARTIFACTS))
def test_output_does_not_depend_on_where_the_policy_lives(backend: str, tmp_path: Path) -> None:
    """A checkout elsewhere compiles to the same bytes: no absolute path
    leaks into names, comments or digests."""
    for policy in POLICIES:
        if (policy.stem, backend) in UNSUPPORTED:
            continue
        moved = tmp_path / "elsewhere" / policy.parent.relative_to(ROOT)
        if not moved.exists():
            shutil.copytree(policy.parent, moved)  # includes travel along
        outdir = _compile(moved / policy.name, tmp_path / f"{policy.stem}-{backend}", backend)
        for artifact, suffix in ARTIFACTS[backend].items():
            golden = GOLDEN / f"{policy.stem}.{suffix}"
            if golden.exists():
                assert (outdir / artifact).read_text() == golden.read_text(), (policy.stem, artifact)
