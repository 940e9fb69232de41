"""The scenarios of test_netns_state, each run by it as root in fresh mount,
network and pid namespaces (`unshare --mount --net --pid --fork`): the rules
a scenario loads, the tmpfs it mounts and the processes it starts (rollback
timers too) all end with it, whatever happens. Nothing is loaded into the
host's own namespace.

    python state_driver.py SCENARIO WORKDIR

writes what the scenario observed to WORKDIR/observed.json; the test
asserts on it."""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from state_corpus import damaged

from nfc import cli
from nfc.state import LOCK
from nfc.state_shapes import PENDING, ROLLED_BACK, SAVED

POLICIES = Path(__file__).resolve().parent.parent / "policies"
WEB, RECURSIVE, AUTHORITATIVE = (
    POLICIES / f"{name}.yaml" for name in ("web-notrack", "dns-recursive", "dns-authoritative")
)
NOBODY = 65534
TOKEN = "0123456789abcdef"
PLANTED_PIDS = 1000
SUBPROCESS_CASES = 1  # per file and command: the rest run through cli.main in this process

Observed = dict[str, Any]


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def ruleset() -> str:
    """Everything loaded in this namespace: nftables and both iptables-legacy families."""
    legacy = run("iptables-legacy-save") + run("ip6tables-legacy-save")
    return nft_ruleset() + "".join(line + "\n" for line in legacy.splitlines() if not line.startswith("#"))


def nft_ruleset() -> str:
    """`nft list ruleset`, through libnftables where nfc has it: 300 listings take 3 s less."""
    try:
        import nftables
    except ImportError:
        return run("nft", "list", "ruleset")
    code, output, error = nftables.Nftables().cmd("list ruleset")
    if code != 0:
        raise RuntimeError(f"nft list ruleset: {error}")
    return str(output)


def nfc_process(*args: str | Path) -> tuple[int, str]:
    """`python -m nfc ARGS`: exit code and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "nfc", *map(str, args)], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr


def nfc_in_process(*args: str | Path) -> tuple[int, str]:
    """The same command line through cli.main, without the cost of starting
    Python (or of building the argument parser anew: see the end)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(arg) for arg in args])
    return code, err.getvalue()


def must(*args: str | Path) -> None:
    code, stderr = nfc_in_process(*args)
    if code != 0:
        raise SystemExit(f"setting up: nfc {' '.join(map(str, args))}: exit {code}: {stderr}")


def said(run_nfc: Callable[..., tuple[int, str]], *args: str | Path) -> Observed:
    code, stderr = run_nfc(*args)
    return {"command": " ".join(map(str, args)), "code": code, "stderr": stderr}


def attempt(run_nfc: Callable[..., tuple[int, str]], *args: str | Path) -> Observed:
    """Run nfc; what it said and whether the rules in force changed."""
    before = ruleset()
    return {**said(run_nfc, *args), "changed": ruleset() != before}


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


# --------------------------------------------------------------------------
# defect 7: damaged state files


def corpus(work: Path) -> Observed:
    """Every damaged content of each state file, through every command that
    reads it; then, with the valid files back, the same commands do change
    the rules (so an unchanged ruleset means something)."""
    web_nft, web_legacy = work / "web-nft", work / "web-legacy"
    must("compile", WEB, "-o", web_nft)
    must("compile", WEB, "-b", "iptables-legacy", "-o", web_legacy)
    nft_state, legacy_state, late_state = work / "nft", work / "legacy", private_dir(work / "late")
    for policy in (WEB, RECURSIVE):
        must("apply", policy, "--state-dir", nft_state)
        must("apply", policy, "-b", "iptables-legacy", "--state-dir", legacy_state)
    must("apply", WEB, "--confirm", "3600", "--state-dir", nft_state)  # previous.json: RECURSIVE's table
    shutil.copy(nft_state / SAVED, late_state / SAVED)
    late = {"at": time.time(), "why": "the deadline passed", "restored": "table inet nfc"}
    (late_state / ROLLED_BACK).write_text(json.dumps(late))
    token = json.loads((nft_state / PENDING).read_text())["token"]

    commands: dict[str, list[tuple[str | Path, ...]]] = {
        f"{nft_state / SAVED}": [("rollback",), ("apply", web_nft)],
        f"{legacy_state / SAVED}": [("rollback",), ("apply", web_legacy)],
        f"{nft_state / PENDING}": [
            ("confirm",),
            ("rollback",),
            ("apply", web_nft),
            ("_rollback-timer", token, "0"),
        ],
        f"{late_state / ROLLED_BACK}": [("confirm",)],
    }
    valid = {
        path: path.read_bytes() for state in (nft_state, legacy_state, late_state) for path in state.iterdir()
    }
    observed: Observed = {"cases": [], "controls": []}
    for name, uses in commands.items():
        path = Path(name)
        before = ruleset()
        for number, (case, content) in enumerate(damaged(json.loads(valid[path]))):
            path.write_bytes(content)
            run_nfc = nfc_process if number < SUBPROCESS_CASES else nfc_in_process
            runs = [said(run_nfc, *use, "--state-dir", path.parent) for use in uses]
            # A change would last: every command of a case fails before the kernel, or should.
            changed = ruleset() != before
            observed["cases"] += [{"file": name, "case": case, **found, "changed": changed} for found in runs]
            for each, content in valid.items():  # as they were, even if a command wrongly went on
                each.write_bytes(content)
    for state, use in ((late_state, ("confirm",)), (legacy_state, ("rollback",)), (nft_state, ("rollback",))):
        observed["controls"].append(attempt(nfc_process, *use, "--state-dir", state))
    return observed


# --------------------------------------------------------------------------
# defect 6: a full filesystem


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Any:
    path.mkdir()
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(directory: Path) -> None:
    filler = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(filler, b"\0" * 1024)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(filler)


def files(directory: Path) -> dict[str, str]:
    return {entry.name: entry.read_text() for entry in sorted(directory.iterdir())}


def full(work: Path) -> Observed:
    """A state directory on a 64 KiB tmpfs, filled, then read-only: apply,
    rollback and confirm fail cleanly, the rules and the state files stay."""
    observed: Observed = {}
    with tmpfs(work / "small", "64k") as small:
        state, fresh = small / "state", small / "fresh"
        must("apply", WEB, "--state-dir", state)
        must("apply", RECURSIVE, "--confirm", "3600", "--state-dir", state)
        nfc_process("confirm", "--state-dir", fresh)  # makes the directory and its lock: nothing to confirm
        kept = files(state)
        fill(small)
        observed["full"] = [
            attempt(nfc_process, "apply", AUTHORITATIVE, "--confirm", "1", "--state-dir", state),
            attempt(nfc_process, "apply", AUTHORITATIVE, "--state-dir", fresh),
        ]
        observed["full_files"] = {"state": files(state) == kept, "fresh": sorted(os.listdir(fresh))}
        run("mount", "-o", "remount,ro", str(small))
        observed["read_only"] = [
            attempt(nfc_process, "apply", AUTHORITATIVE, "--state-dir", fresh),
            attempt(nfc_process, "rollback", "--state-dir", state),
            attempt(nfc_process, "confirm", "--state-dir", state),
        ]
        run("mount", "-o", "remount,rw", str(small))
        (small / "filler").unlink()
        observed["kept"] = files(state) == kept
        observed["afterwards"] = attempt(nfc_process, "rollback", "--state-dir", state)
        observed["left"] = sorted(os.listdir(state))
    return observed


# --------------------------------------------------------------------------
# defect 5: a state directory others could subvert


def _hostile_dirs(work: Path) -> dict[str, Path]:
    """State directories, each subverted one way, holding a previous.json
    whose rollback would delete table inet foreign."""
    saved = json.dumps({"backend": "nft", "table": "foreign", "listing": None, "sysctl": {}})
    dirs = {}
    for way in ("file of nobody", "directory of nobody", "directory 0775", "directory 0757", "file 0664",
                "file 0646", "file behind a link", "lock behind a link"):  # fmt: skip
        directory = dirs[way] = private_dir(work / way.replace(" ", "-"))
        (directory / SAVED).write_text(saved)
        (directory / SAVED).chmod(0o600)
    os.chown(dirs["file of nobody"] / SAVED, NOBODY, NOBODY)
    os.chown(dirs["directory of nobody"], NOBODY, NOBODY)
    dirs["directory 0775"].chmod(0o775)
    dirs["directory 0757"].chmod(0o757)
    (dirs["file 0664"] / SAVED).chmod(0o664)
    (dirs["file 0646"] / SAVED).chmod(0o646)
    linked = dirs["file behind a link"] / SAVED
    linked.rename(work / "elsewhere.json")
    linked.symlink_to(work / "elsewhere.json")
    (dirs["lock behind a link"] / LOCK).symlink_to(work / "made-by-nfc")
    return dirs


def hostile(work: Path) -> Observed:
    """Real foreign owners, writable modes and symbolic links: each refused
    before anything is read from it; planted temporary names never written
    through. Last, the control: the same previous.json, root's own, does
    delete the table."""
    run("nft", "add", "table", "inet", "foreign")
    observed: Observed = {"refused": {}}
    for way, directory in _hostile_dirs(work).items():
        observed["refused"][way] = attempt(nfc_process, "rollback", "--state-dir", directory)
        observed["refused"][way]["entries"] = sorted(os.listdir(directory))
    observed["made_by_nfc"] = (work / "made-by-nfc").exists()

    # An older nfc wrote .previous.json.PID and .pending.json.PID; in this
    # pid namespace the pids nfc gets are small (the test checks the timer's).
    victim = work / "victim"
    victim.write_text("precious\n")
    planted = private_dir(work / "planted")
    for pid in range(1, PLANTED_PIDS):
        for name in (SAVED, PENDING):
            (planted / f".{name}.{pid}").symlink_to(victim)
    observed["planted"] = [
        attempt(nfc_process, "apply", WEB, "--state-dir", planted),
        attempt(nfc_process, "apply", RECURSIVE, "--confirm", "3600", "--state-dir", planted),
    ]
    observed["victim"] = victim.read_text()
    observed["planted_left"] = sorted(os.listdir(planted))
    observed["timer_pid"] = json.loads((planted / PENDING).read_text())["pid"]

    control = private_dir(work / "control")
    shutil.copy(work / "elsewhere.json", control / SAVED)
    observed["control"] = attempt(nfc_process, "rollback", "--state-dir", control)
    return observed


def default(work: Path) -> Observed:
    """/var/lib/nfc, made by the first apply (over an empty /var/lib here)."""
    run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/var/lib")
    os.environ.pop("NFC_STATE_DIR", None)
    applied = attempt(nfc_process, "apply", WEB)
    modes = {str(path): f"{os.stat(path).st_mode & 0o7777:04o}" for path in Path("/var/lib").rglob("*")}
    return {"apply": applied, "modes": modes}


SCENARIOS = {"corpus": corpus, "full": full, "hostile": hostile, "default": default}

if __name__ == "__main__":
    cli.parser = functools.cache(cli.parser)  # the same parser each time: 600 runs take 4 s less
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    result = SCENARIOS[scenario](workdir)
    (workdir / "observed.json").write_text(json.dumps(result, indent=1))
