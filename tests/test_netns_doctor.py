"""`nfc doctor` against the real failure: with the global nf_conntrack_max
lowered (restored in every case), a stateful DNS server in a namespace
really logs 'table full, dropping packet' and loses queries; doctor says so,
names udp/53 and hands out the notrack entry that fixes it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfc.doctor import count_table_full

from conftest import CONTROL, FLAGSHIP, missing_prerequisite
from lab import SERVER_A4, SPREAD4, Lab

HOST_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
PRESSURE = 1000  # global entries; a flood of 2000 overflows it
FLOOD = 2000
RECURSIVE = next(p for p in FLAGSHIP if p.stem == "dns-recursive")


@contextlib.contextmanager
def global_conntrack_max(value: int) -> Iterator[None]:
    """The one host setting a test may change; restored whatever happens."""
    try:
        previous = HOST_MAX.read_text().strip()
        HOST_MAX.write_text(f"{value}\n")
    except OSError as exc:
        missing_prerequisite(f"cannot lower the global nf_conntrack_max: {exc}")
    try:
        yield
    finally:
        HOST_MAX.write_text(previous + "\n")


def table_full_messages() -> int:
    log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30).stdout
    return count_table_full(log)[0]


def doctor(lab: Lab, started: float, *args: str) -> tuple[int, dict]:
    """Run doctor in the server namespace. The kernel reuses namespace
    numbers, so 'table full' lines of earlier tests' namespaces could pass
    for this one's: only the log since `started` counts."""
    window = f"{time.monotonic() - started + 1:.0f}"
    result = lab.server.nfc("doctor", "--json", "--memory", "8G", "--log-window", window, *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def flood(lab: Lab) -> dict:
    lab.start_servers()
    return lab.query(lab.client_a, SERVER_A4, SPREAD4, FLOOD, timeout=0.5)


def test_doctor_names_the_real_failure_and_its_fix(make_lab: Callable[[], Lab], tmp_path: Path) -> None:
    started = time.monotonic()
    lab = make_lab()
    assert lab.apply(CONTROL).returncode == 0
    before = table_full_messages()
    with global_conntrack_max(PRESSURE):
        result = flood(lab)
        code, report = doctor(lab, started)
    assert result["answered"] < FLOOD, "the flood should have lost queries"
    assert table_full_messages() > before, "the kernel should have logged 'table full'"
    assert code == 1 and report["verdict"] == "CRITICAL"
    assert report["top_services"][0]["service"] == "udp/53"
    assert "udp dport 53" in [s["notrack"] for s in report["suggestions"]]
    assert "    - udp dport 53\n" in report["yaml"]

    # the suggested YAML, pasted into the policy, holds under the same pressure
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(CONTROL.read_text() + report["yaml"])
    started = time.monotonic()
    again = make_lab()
    assert again.apply(fixed).returncode == 0
    with global_conntrack_max(PRESSURE):
        result = flood(again)
        count = again.server.conntrack_count()
        code, report = doctor(again, started, "--policy", str(fixed))
    assert result["answered"] == FLOOD
    assert count <= 5
    assert code == 0 and report["verdict"] == "OK"


def test_a_flood_below_the_limit_is_a_warning_only_on_request(lab: Lab) -> None:
    started = time.monotonic()
    assert lab.apply(CONTROL).returncode == 0
    assert flood(lab)["answered"] >= 0.99 * FLOOD
    code, report = doctor(lab, started)
    assert (code, report["verdict"]) == (0, "OK")
    assert report["top_services"][0]["service"] == "udp/53"
    code, report = doctor(lab, started, "--warn-fill", "0.001")
    assert (code, report["verdict"]) == (1, "WARNING")
    code, report = doctor(lab, started, "--warn-fill", "0.001", "--policy", str(CONTROL))
    assert any(s["notrack"] == "udp dport 53" and s["covered"] is False for s in report["suggestions"])


def test_a_healthy_policy_is_ok(lab: Lab) -> None:
    started = time.monotonic()
    assert lab.apply(RECURSIVE).returncode == 0
    assert flood(lab)["answered"] >= 0.99 * FLOOD
    code, report = doctor(lab, started, "--policy", str(RECURSIVE))
    assert (code, report["verdict"]) == (0, "OK")
    assert report["count"] <= 5


@pytest.fixture(autouse=True)
def _restore_guard() -> Iterator[None]:
    """Belt and braces: the host's max is the same after every test."""
    before = HOST_MAX.read_text() if HOST_MAX.exists() else None
    yield
    if before is not None:
        assert HOST_MAX.read_text() == before
