"""The backend records and the library API: one registry, each record's
file names are what its generator writes, and a program compiles, builds,
writes and reads artifacts through nfc.api without the command line."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nfc import api, cli, lint
from nfc.artifacts import MANIFEST, SYSCTL_CONF
from nfc.backends import BACKENDS, DEFAULT_BACKEND, Backend
from nfc.backends.kernel import Kernel
from nfc.backends.nft import RULESET
from nfc.errors import PolicyError

from conftest import FLAGSHIP, GOLDEN, ROOT, TEST_MEMORY, run_nfc

MEMORY = int(TEST_MEMORY)
POLICIES = {p.stem: p for p in FLAGSHIP}
RECURSIVE = POLICIES["dns-recursive"]
WEB = POLICIES["web-notrack"]


def _compiled(policy: Path) -> api.Compiled:
    return api.compile_policy(str(policy), memory=MEMORY, word_bits=64)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def test_the_backends_package_holds_the_only_registry() -> None:
    """No other module keeps a table of backends (apply once had its own)."""
    holders = []
    for path in sorted((ROOT / "compiler").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            targets += [node.target] if isinstance(node, ast.AnnAssign) else []
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if "BACKENDS" in names:
                holders.append(path.relative_to(ROOT).as_posix())
            if isinstance(node, ast.FunctionDef) and node.name == "backend_for":
                holders.append(f"{path.relative_to(ROOT).as_posix()}:backend_for")
    assert holders == ["compiler/backends/__init__.py"]


def test_the_cli_offers_exactly_the_registered_backends() -> None:
    for name in ("compile", "check", "apply"):
        backend = next(a for a in _subcommands()[name]._actions if a.dest == "backend")
        assert list(backend.choices or ()) == sorted(BACKENDS), name
        assert backend.default == DEFAULT_BACKEND


def test_each_record_is_frozen_and_registered_under_its_name() -> None:
    interface = {name for name in vars(Kernel) if not name.startswith("_")}
    assert interface == {"check", "snapshot", "saved_form", "load", "restore", "describe", "foreign_rules"}
    for name, record in BACKENDS.items():
        assert isinstance(record, Backend) and record.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.name = "other"  # type: ignore[misc]
        kernel = record.kernel()  # made, not used: nothing touches the kernel
        assert all(callable(getattr(kernel, method)) for method in interface), name


@pytest.mark.parametrize("policy", FLAGSHIP, ids=lambda p: p.stem)
def test_each_record_names_the_files_its_generator_writes(policy: Path) -> None:
    ruleset, sources = _compiled(policy)
    for record in BACKENDS.values():
        assert tuple(record.generate(ruleset)) == record.files, record.name
        files = api.build(ruleset, record.name, sources)
        listed = json.loads(files[MANIFEST])["artifacts"]
        assert set(listed) == {*record.files, SYSCTL_CONF} & set(files), record.name


def test_compile_policy_returns_the_ruleset_and_its_sources() -> None:
    compiled = _compiled(RECURSIVE)
    ruleset, sources = compiled
    assert (ruleset, sources) == (compiled.ruleset, compiled.sources)
    assert sources[0] == str(RECURSIVE) and ruleset.name == "dns-recursive"
    with pytest.raises(PolicyError):
        api.compile_policy(str(ROOT / "tests" / "policies" / "no-such-policy.yaml"))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_api_writes_what_nfc_compile_writes(backend: str, tmp_path: Path) -> None:
    ruleset, sources = _compiled(WEB)
    api.write(str(tmp_path / "api"), api.build(ruleset, backend, sources))
    command = run_nfc(
        "compile", str(WEB), "-b", backend, "-o", str(tmp_path / "cli"), "--memory", TEST_MEMORY,
        "--word-bits", "64",
    )  # fmt: skip
    assert command.returncode == 0, command.stderr
    written = sorted(p.name for p in (tmp_path / "api").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "cli").iterdir())
    for name in written:
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    if backend == "nft":
        assert (tmp_path / "api" / RULESET).read_text() == (GOLDEN / f"{WEB.stem}.nft").read_text()


def test_a_program_needs_no_command_line(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from nfc import api\n"
        "ruleset, sources = api.compile_policy(sys.argv[1])\n"
        "api.write(sys.argv[2], api.build(ruleset, 'nft', sources))\n"
        "assert 'nfc.cli' not in sys.modules and 'argparse' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(WEB), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / RULESET).exists() and (tmp_path / "out" / MANIFEST).exists()


KILLED_IN_WRITE = """
import os, signal, sys
from nfc import artifacts, cli
fsync = os.fsync
def killed_at_the_second(fd, seen=[]):
    seen.append(fd)
    if len(seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # after one file is written, before the rename
    fsync(fd)
artifacts.os.fsync = killed_at_the_second
cli.main(["compile", sys.argv[1], "-o", sys.argv[2]])
"""


def test_a_compile_killed_while_it_writes_leaves_nothing_past_the_next(tmp_path: Path) -> None:
    """A SIGKILL between the files and the rename left the staging directory
    '.out.RANDOM' beside the output for good; the next compile removes it, and
    leaves a running compile's own."""
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_WRITE, str(WEB), str(out)], timeout=60)
    assert killed.returncode == -9
    (leftover,) = [p.name for p in tmp_path.iterdir()]
    assert leftover.startswith(".out.") and not out.exists()
    running = tmp_path / f".out.{os.getpid()}.abcd_123"  # this process's: running
    running.mkdir()
    assert cli.main(["compile", str(WEB), "-o", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "out"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_artifact_reads_a_directory_or_compiles_a_policy(backend: str, tmp_path: Path) -> None:
    ruleset, sources = api.compile_policy(str(WEB))
    files = api.build(ruleset, backend, sources)
    outdir = str(tmp_path / "out")
    api.write(outdir, files)
    with api.artifact(outdir) as written:
        assert (written.backend, written.table, written.name) == (backend, ruleset.table, outdir)
        assert written.manifest == json.loads(files[MANIFEST])
    with api.artifact(str(WEB), backend) as compiled:
        assert compiled.backend == backend and compiled.name == str(WEB)
        assert {p.name: p.read_text() for p in compiled.directory.iterdir()} == files
    assert not compiled.directory.exists()


# A manifest.json damaged or written by hand: each is refused before anything reads it.
NAMED = '"backend": "nft", "table": "nfc", "policy": "p"'
DAMAGED_MANIFESTS = {
    "a list": ("[]", "is not a JSON object"),
    "no backend": ('{"table": "nfc"}', "names no backend nfc has"),
    "a backend of the wrong type": ('{"backend": []}', "names no backend nfc has"),
    "a table nft would read as commands": (
        '{"backend": "nft", "table": "nfc; flush ruleset"}',
        "names no table nfc could have written",
    ),
    "no policy": ('{"backend": "nft", "table": "nfc"}', "names no policy"),
    "digests a list": (f'{{{NAMED}, "artifacts": []}}', "no digests"),
    "no digest of the ruleset": (f'{{{NAMED}, "artifacts": {{}}}}', "does not list the files of backend nft"),
    "a digest of a name with a NUL": (
        f'{{{NAMED}, "artifacts": {{"ruleset.nft": "0", "a\\u0000": "0"}}}}',
        "does not list the files of backend nft",
    ),
    "list sets a list": (
        f'{{{NAMED}, "artifacts": {{"ruleset.nft": "0"}}, "list_sets": []}}',
        "has a damaged 'list_sets'",
    ),
    "nested too deep": ("[" * 100_000 + "]" * 100_000, "is not an nfc artifact directory"),
}


@pytest.mark.parametrize("manifest", DAMAGED_MANIFESTS, ids=list(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_refused_before_it_is_used(
    manifest: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = DAMAGED_MANIFESTS[manifest]
    ruleset, sources = api.compile_policy(str(WEB))
    api.write(str(tmp_path / "out"), api.build(ruleset, "nft", sources))
    (tmp_path / "out" / MANIFEST).write_text(text)
    for command in ("check", "stats"):  # each refuses it before it asks the kernel anything
        extra = ["--state-dir", str(tmp_path / "state")] if command == "stats" else []
        assert cli.main([command, str(tmp_path / "out"), *extra]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("nfc: error: ") and message in err, err


def test_the_analyses_take_policy_paths() -> None:
    explanation = api.explain(str(RECURSIVE), "udp 10.1.2.3:5353 > 10.0.0.1:53")
    assert explanation.verdict == "accept"
    assert api.diff(str(WEB), str(WEB)) == []
    assert api.diff(str(RECURSIVE), str(WEB))
    codes = {finding.code for finding in api.lint([str(WEB)])}
    assert codes == {f.code for f in lint.lint(api.compile_policy(str(WEB)).ruleset)}


FRAGMENT = "nfc: 1\ndefine:\n  admins: [192.0.2.10]\n"


def test_an_empty_firewall_is_refused_unless_asked_for(tmp_path: Path) -> None:
    fragment = tmp_path / "fragment.yaml"
    fragment.write_text(FRAGMENT)
    with pytest.raises(PolicyError, match="it would load an empty firewall") as error:
        api.compile_policy(str(fragment))
    assert (error.value.loc.line, error.value.loc.col) == (1, 1)
    assert api.compile_policy(str(fragment), allow_empty=True).ruleset.chains == ()

    for command in (["compile", "-o", str(tmp_path / "out")], ["check"], ["lint"]):
        result = run_nfc(command[0], str(fragment), *command[1:])
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith(f"{fragment}:1:1: error: this policy has no input"), result.stderr
    assert not (tmp_path / "out").exists()
    allowed = run_nfc("compile", str(fragment), "-o", str(tmp_path / "out"), "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert "table inet nfc {\n}" in (tmp_path / "out" / RULESET).read_text()
