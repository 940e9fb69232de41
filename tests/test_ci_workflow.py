"""docs/ci.md's workflow, run for real: each `run:` step (but the install)
on a fixture repository with a base branch and a pull-request change."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from nfc.backends.iptables import RULES_V4

from conftest import ROOT

WORKFLOW = ROOT / "docs" / "ci.md"


def workflow_steps() -> list[dict]:
    block = re.search(r"```yaml\n(name: firewall policy review.*?)```", WORKFLOW.read_text(), re.S)
    assert block, "docs/ci.md has no workflow block"
    return yaml.safe_load(block.group(1))["jobs"]["nfc"]["steps"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=30)


def test_workflow_commands_on_a_fixture_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "firewall").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ci@example.invalid")
    git(repo, "config", "user.name", "ci")
    for policy in ("dns-recursive.yaml", "web-notrack.yaml"):
        (repo / "firewall" / policy).write_text((ROOT / "policies" / policy).read_text())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(repo, "checkout", "-qb", "change")
    web = repo / "firewall" / "web-notrack.yaml"
    web.write_text(web.read_text().replace("accept tcp dport ssh from $admins", "accept tcp dport ssh"))
    git(repo, "commit", "-qam", "open ssh")

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_BASE_REF": "main",
    }
    ran = []
    for step in workflow_steps():
        if "run" not in step or step["name"] == "Install nfc":
            continue
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]], cwd=repo, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        ran.append(step["name"])
        if step["name"].startswith("Lint (annotations"):
            # the change opens ssh to everyone: a warning, not an error
            assert result.returncode == 0, result.stderr
            assert "::warning file=firewall/web-notrack.yaml" in result.stdout and "NFC060" in result.stdout
        else:
            assert result.returncode == 0, (step["name"], result.stderr)
    assert len(ran) == 4
    assert (repo / "build" / "legacy" / "web-notrack" / RULES_V4).exists()
    sarif = json.loads((repo / "nfc.sarif").read_text())
    jsonschema.validate(sarif, json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text()))
    comment = (repo / "nfc-diff.md").read_text()
    assert "#### firewall/web-notrack.yaml" in comment
    assert "newly ACCEPTS `ip tcp dport 22 from not 192.0.2.10" in comment
    assert "no change in what traffic is allowed" in comment.split("#### firewall/web-notrack.yaml")[0]
