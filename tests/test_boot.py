"""What the boot needs: the unit (systemd-analyze verify, its ordering and
command), what `make install` installs (the unit, completion, the schema;
the unit enabled only where systemd runs), and the conntrack module loaded
before the conntrack sysctls that `nfc restore` sets."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import nfc.apply
from nfc.apply import apply_sysctls

from conftest import ROOT, missing_prerequisite

UNIT = ROOT / "dist" / "nfc.service"
# where systemd looks for a command given without a path (ExecStart=nfc)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def unit() -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read(UNIT)
    return parsed


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_prerequisite("'systemd-analyze' is not installed (make install sets it up: systemd)")
    if shutil.which("nfc", path=SYSTEMD_PATH) is None:
        missing_prerequisite("nfc is not on systemd's search path (make install, as root, links it there)")
    done = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    # the control: verify does object to a unit it cannot run
    broken = tmp_path / "nfc.service"
    broken.write_text(UNIT.read_text().replace("ExecStart=nfc ", "ExecStart=nfc-no-such-command "))
    done = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "nfc-no-such-command" in done.stderr


def test_the_unit_restores_before_the_network_comes_up() -> None:
    parsed = unit()
    section, service = parsed["Unit"], parsed["Service"]
    assert section["DefaultDependencies"] == "no"
    assert "network-pre.target" in section["Before"].split()
    assert section["Wants"] == "network-pre.target"
    assert "local-fs.target" in section["After"].split()
    assert (service["Type"], service["RemainAfterExit"]) == ("oneshot", "yes")
    assert service["ExecStart"] == "nfc restore"
    # what restore needs stays allowed: netlink and raw sockets, sysctls, modprobe
    assert "AF_NETLINK" in service["RestrictAddressFamilies"].split()
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_MODULE"} <= set(service["CapabilityBoundingSet"].split())
    for breaking in ("ProtectKernelTunables", "ProtectKernelModules", "PrivateNetwork"):
        assert service.get(breaking, "no") == "no", breaking


def test_make_install_system_installs_everything_and_enables_only_under_systemd(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        missing_prerequisite("'make' is not installed")
    stage = tmp_path / "stage"
    done = subprocess.run(
        [make, "-s", "-C", str(ROOT), "install-system", f"DESTDIR={stage}", "PREFIX=/usr"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "systemctl" not in done.stdout + done.stderr, "a staged install must not enable anything"
    installed = {
        "usr/lib/systemd/system/nfc.service": UNIT,
        "usr/share/bash-completion/completions/nfc": ROOT / "dist" / "nfc.bash",
        "usr/share/zsh/site-functions/_nfc": ROOT / "dist" / "_nfc",
        "usr/share/nfc/nfc-policy.schema.json": ROOT / "compiler" / "nfc-policy.schema.json",
    }
    for path, source in installed.items():
        assert (stage / path).read_bytes() == source.read_bytes(), path
        assert (stage / path).stat().st_mode & 0o777 == 0o644, path
    makefile = (ROOT / "Makefile").read_text()
    enable = "[ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable nfc.service"
    assert enable in makefile


@pytest.fixture
def sysctl_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proc-sys"
    root.mkdir()
    monkeypatch.setattr(nfc.apply, "SYSCTL_ROOT", root)
    return root


def fake_modprobe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "modprobe.log"
    script = bin_dir / "modprobe"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


CONNTRACK = {"net.netfilter.nf_conntrack_max": "131072", "net.netfilter.nf_conntrack_udp_timeout": "10"}


def test_conntrack_sysctls_load_the_module_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sysctl_root: Path
) -> None:
    """At boot nothing may have loaded nf_conntrack yet, and its sysctls
    exist only once it is: modprobe it, then set them."""
    netfilter = sysctl_root / "net" / "netfilter"
    log = fake_modprobe(
        tmp_path,
        monkeypatch,
        f"mkdir -p {netfilter} && touch {netfilter}/nf_conntrack_max {netfilter}/nf_conntrack_udp_timeout",
    )
    reports: list[str] = []
    apply_sysctls(CONNTRACK, reports.append)
    assert log.read_text() == "nf_conntrack\n"
    assert (netfilter / "nf_conntrack_max").read_text() == "131072\n"
    assert (netfilter / "nf_conntrack_udp_timeout").read_text() == "10\n"
    assert reports == []
    apply_sysctls(CONNTRACK, reports.append)  # loaded now (or built in): no modprobe
    assert log.read_text() == "nf_conntrack\n"
    apply_sysctls({"net.ipv4.ip_forward": "1"}, reports.append)  # no conntrack sysctl: no modprobe
    assert log.read_text() == "nf_conntrack\n"


def test_a_failing_modprobe_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sysctl_root: Path
) -> None:
    fake_modprobe(tmp_path, monkeypatch, 'echo "modprobe: FATAL: Module nf_conntrack not found" >&2; exit 1')
    reports: list[str] = []
    apply_sysctls(CONNTRACK, reports.append)
    failed = "sysctl: modprobe nf_conntrack failed: modprobe: FATAL: Module nf_conntrack not found"
    assert reports[0] == failed
    assert reports[1].startswith("sysctl: not set here ")
    assert "net.netfilter.nf_conntrack_max" in reports[1]
