"""nfc.api against a real kernel, in the lab's server namespace only: for
each backend, check an artifact directory and a policy, apply, roll back,
with the state files `nfc apply` has always written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nfc import api
from nfc.backends import BACKENDS
from nfc.backends.iptables import TOOLS
from nfc.backends.nft import BACKEND as NFT
from nfc.state import State

from conftest import FLAGSHIP
from lab import Lab

WEB = next(p for p in FLAGSHIP if p.stem == "web-notrack")
PROGRAM = """
import sys
from nfc import api
command, target, backend, state_dir = sys.argv[1:]
if command == "check":
    api.check(target, backend)
    print("checked")
elif command == "apply":
    api.apply(target, report=print, backend=backend, state_dir=state_dir)
else:
    api.rollback(report=print, state_dir=state_dir)
"""


def _api(lab: Lab, command: str, target: str | Path, backend: str) -> str:
    """Run nfc.api in the server namespace: never in the host's own."""
    done = lab.server.run(
        sys.executable, "-c", PROGRAM, command, str(target), backend, str(lab.state_dir), check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _rules_in_force(lab: Lab, backend: str) -> str:
    if backend == NFT:
        return lab.server.nft("list", "ruleset")
    dumps = "".join(lab.server.run(f"{tool}-save").stdout for tool in TOOLS.values())
    return "\n".join(line for line in dumps.splitlines() if line.startswith("-A "))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_check_apply_and_rollback_through_the_api(lab: Lab, backend: str, tmp_path: Path) -> None:
    record = BACKENDS[backend]
    outdir = tmp_path / "out"
    ruleset, sources = api.compile_policy(str(WEB))
    api.write(str(outdir), api.build(ruleset, backend, sources))
    before = _rules_in_force(lab, backend)

    assert _api(lab, "check", outdir, backend) == "checked\n"
    assert _api(lab, "check", WEB, backend) == "checked\n"
    assert _rules_in_force(lab, backend) == before, "check loaded something"

    assert _api(lab, "apply", outdir, backend).startswith(f"applied {outdir} ({backend})\n")
    assert "web-notrack.yaml:" in _rules_in_force(lab, backend)
    saved = json.loads(State(lab.state_dir).saved.read_text())
    state = {"table", "listing"} if backend == NFT else set(record.files)
    assert saved["backend"] == backend and set(saved) == {"backend", "sysctl", *state}

    assert "as before the last apply" in _api(lab, "rollback", "-", backend)
    assert "web-notrack.yaml:" not in _rules_in_force(lab, backend)


def test_a_saved_state_the_kernel_refuses_changes_nothing(lab: Lab) -> None:
    """A previous.json whose dumps are whole but hold a rule the kernel
    refuses: rollback is refused before either family or table changes."""
    backend = "iptables-legacy"
    for policy in FLAGSHIP[:2]:
        applied = lab.apply(policy, backend=backend)
        assert applied.returncode == 0, applied.stderr
    in_force = _rules_in_force(lab, backend)
    saved_path = State(lab.state_dir).saved
    saved = json.loads(saved_path.read_text())
    v6 = next(name for name in TOOLS if name.endswith("v6"))
    saved[v6] = saved[v6].replace("COMMIT", "-A INPUT -p tcp -m tcp --dport 99999 -j ACCEPT\nCOMMIT", 1)
    saved_path.write_text(json.dumps(saved))
    refused = lab.server.nfc("rollback", "--state-dir", str(lab.state_dir))
    assert refused.returncode == 3, refused.stderr
    assert "nothing was changed" in refused.stderr
    assert _rules_in_force(lab, backend) == in_force
    assert not (lab.state_dir / "journal.json").exists()  # nothing half done for the next command


def test_applying_an_include_fragment_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    """A file with no chain and no notrack entry would load an empty
    firewall: apply refuses it, and the rules in force stay."""
    applied = lab.apply(FLAGSHIP[0])
    assert applied.returncode == 0, applied.stderr
    before = _rules_in_force(lab, NFT)
    fragment = tmp_path / "fragment.yaml"
    fragment.write_text("nfc: 1\ndefine:\n  admins: [192.0.2.10]\n")
    refused = lab.apply(fragment)
    assert refused.returncode == 2, refused.stderr
    assert "it would load an empty firewall" in refused.stderr
    assert _rules_in_force(lab, NFT) == before
