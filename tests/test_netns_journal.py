"""Apply that survives being killed, on a real kernel in a namespace of its
own: the journal and its repair by the next command, the confirmation
deadline when the timer is gone, a state directory on a full tmpfs, pids
in pending.json that are not the timer, `nfc restore`, and a campaign of
random SIGKILLs. Each is done the way the fault was found: real kills at
the moment that matters, a real tmpfs filled up, a real killed timer."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from nfc.backends.iptables import BACKEND as LEGACY
from nfc.backends.nft import BACKEND as NFT

from conftest import FLAGSHIP, run_nfc
from lab import Namespace, _kill_namespace_processes, require_lab, wait_until

POLICIES = {p.stem: p for p in FLAGSHIP}
OLD, NEW, MID = POLICIES["dns-recursive"], POLICIES["web-notrack"], POLICIES["dns-authoritative"]
COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass
class Host:
    """One network namespace standing for a host, and its state directory."""

    ns: Namespace
    state_dir: Path

    def nfc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.nfc(*args, "--state-dir", str(self.state_dir))

    def apply(self, artifact: Path, *options: str) -> None:
        done = self.nfc("apply", str(artifact), *options)
        assert done.returncode == 0, done.stderr

    def rules(self, backend: str) -> str:
        """The whole ruleset of the backend, without counters."""
        if backend == NFT:
            return self.ns.run("nft", "-s", "list", "ruleset").stdout
        dumps = self.ns.run("iptables-legacy-save").stdout + self.ns.run("ip6tables-legacy-save").stdout
        return "\n".join(COUNTERS.sub("", line) for line in dumps.splitlines() if not line.startswith("#"))

    def spawn(self, *args: str, path: str | None = None) -> subprocess.Popen[str]:
        """nfc ARGS --state-dir DIR, leading a process group of its own."""
        env = {**os.environ, **self.ns.env, **({"PATH": path} if path else {})}
        command = ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "nfc", *args]
        return subprocess.Popen(
            [*command, "--state-dir", str(self.state_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )

    def reboot(self) -> None:
        """A fresh kernel: every process of the namespace (the timer too) gone, no rules."""
        _kill_namespace_processes(self.ns.name)
        subprocess.run(["ip", "netns", "del", self.ns.name], check=True, timeout=30)
        subprocess.run(["ip", "netns", "add", self.ns.name], check=True, timeout=30)


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[Callable[[], Host]]:
    """Makes fresh hosts, all deleted afterwards whatever happens."""
    require_lab()
    made: list[Host] = []

    def make() -> Host:
        home = tmp_path / f"host{len(made)}"
        home.mkdir()
        # iptables-legacy's lock is a host file; keep this namespace's to itself.
        ns = Namespace(f"nfc-{secrets.token_hex(3)}-j", {"XTABLES_LOCKFILE": str(home / "xtables.lock")})
        made.append(Host(ns, home / "state"))
        subprocess.run(["ip", "netns", "add", ns.name], check=True, timeout=30)
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            _kill_namespace_processes(each.ns.name)
            subprocess.run(["ip", "netns", "del", each.ns.name], capture_output=True, timeout=30)


@pytest.fixture
def host(make_host: Callable[[], Host]) -> Host:
    return make_host()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, Path], Path]:
    """OLD, NEW and MID compiled for each backend, once."""
    built = {}
    for backend in (NFT, LEGACY):
        for policy in (OLD, NEW, MID):
            outdir = tmp_path_factory.mktemp("artifacts") / f"{policy.stem}-{backend}"
            done = run_nfc("compile", str(policy), "-b", backend, "-o", str(outdir))
            assert done.returncode == 0, done.stderr
            built[backend, policy] = outdir
    return built


def _group_runs(group: int, needle: str, without: str) -> bool:
    """Whether a process of process group `group` runs with `needle` but not `without` in its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if os.getpgid(int(entry.name)) != group:
                continue
        except (OSError, ProcessLookupError):
            continue
        if any(needle in a for a in arguments) and without not in arguments:
            return True
    return False


def _slow_ip6tables_restore(directory: Path) -> str:
    """A PATH where ip6tables-legacy-restore, when it loads (not with --test),
    waits before it runs: the moment between the two families, held open
    for the kill instead of lasting a millisecond."""
    directory.mkdir()
    wrapper = directory / "ip6tables-legacy-restore"
    real = subprocess.run(
        ["which", "ip6tables-legacy-restore"], capture_output=True, text=True
    ).stdout.strip()
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" --test "*) ;; *) sleep 60 ;; esac\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return f"{directory}:{os.environ['PATH']}"


@pytest.mark.parametrize(
    ("killed", "then"), [("group", "confirm"), ("nfc", "apply"), ("nfc", "restore"), ("group", "reboot")]
)
def test_a_kill_between_the_families_is_undone_by_the_next_command(
    host: Host, artifacts: dict[tuple[str, Path], Path], tmp_path: Path, killed: str, then: str
) -> None:
    """SIGKILL once ip6tables-legacy-restore has started: the whole process
    group, or only nfc (whose tools must then die with it, not load IPv6
    after the repair). `restore` repairs in the namespace that holds the
    half-loaded rules; after a `reboot`, at boot in a fresh one."""
    old, new = artifacts[LEGACY, OLD], artifacts[LEGACY, NEW]
    host.apply(new)
    new_rules = host.rules(LEGACY)
    host.apply(old)
    old_rules = host.rules(LEGACY)
    victim = host.spawn("apply", str(new), path=_slow_ip6tables_restore(tmp_path / "bin"))
    loading_v6 = lambda: _group_runs(victim.pid, "ip6tables-legacy-restore", "--test")  # noqa: E731
    try:
        assert wait_until(loading_v6, 30, 0.01)
    finally:
        (os.killpg if killed == "group" else os.kill)(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    assert wait_until(lambda: not loading_v6(), 10, 0.01), "a tool outlived the nfc that ran it"
    # the danger is real: IPv4 is new, IPv6 is old
    v4 = host.ns.run("iptables-legacy-save").stdout
    assert (
        "web-notrack.yaml:" in v4 and "web-notrack.yaml:" not in host.ns.run("ip6tables-legacy-save").stdout
    )
    assert (host.state_dir / "journal.json").exists()

    if then == "confirm":
        done = host.nfc("confirm")
        assert done.returncode == 2 and "no apply is waiting" in done.stderr, done.stderr
        assert host.rules(LEGACY) == old_rules
    elif then in ("restore", "reboot"):
        if then == "reboot":
            host.reboot()
        done = host.nfc("restore")
        assert done.returncode == 0, done.stderr
        assert f"the last confirmed ruleset (from {old})" in done.stdout
        assert host.rules(LEGACY) == old_rules, "restore left other than the one complete ruleset"
    else:
        done = host.nfc("apply", str(new))
        assert done.returncode == 0, done.stderr
        assert host.rules(LEGACY) == new_rules
    assert f"repaired: the interrupted apply of {new} is undone" in done.stdout
    assert not (host.state_dir / "journal.json").exists()


def _pending(host: Host) -> dict:
    return json.loads((host.state_dir / "pending.json").read_text())


def test_a_killed_timer_is_replaced_by_the_next_command(
    host: Host, artifacts: dict[tuple[str, Path], Path]
) -> None:
    host.apply(artifacts[NFT, OLD])
    old_rules = host.rules(NFT)
    host.apply(artifacts[NFT, NEW], "--confirm", "2")
    new_rules = host.rules(NFT)
    pending = _pending(host)
    timer = Path(f"/proc/{pending['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"_rollback-timer" in timer and pending["token"].encode() in timer
    os.kill(pending["pid"], signal.SIGKILL)
    assert wait_until(lambda: time.time() > pending["deadline"] + 0.5, 10)
    assert host.rules(NFT) == new_rules, "nothing but nfc should have rolled back"

    late = host.nfc("confirm")
    assert late.returncode == 3, late.stderr
    assert "too late: the confirmation deadline passed at " in late.stderr
    assert "table inet nfc was restored as before the apply" in late.stderr
    assert "restored table inet nfc as before the unconfirmed apply" in late.stdout
    assert host.rules(NFT) == old_rules
    again = host.nfc("confirm")
    assert again.returncode == 3 and "too late" in again.stderr


@pytest.mark.parametrize("command", ["apply", "rollback", "restore"])
def test_every_command_rolls_back_an_apply_past_its_deadline_first(
    host: Host, artifacts: dict[tuple[str, Path], Path], command: str
) -> None:
    host.apply(artifacts[NFT, OLD])
    old_rules = host.rules(NFT)
    host.apply(artifacts[NFT, NEW], "--confirm", "60")
    pending = _pending(host)
    os.kill(pending["pid"], signal.SIGKILL)
    # the minute passed (rather than waiting for it)
    pending["deadline"] = time.time() - 1
    (host.state_dir / "pending.json").write_text(json.dumps(pending))
    done = host.nfc(command, *([str(artifacts[NFT, MID])] if command == "apply" else []))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("the confirmation deadline passed at ")
    if command == "apply":
        assert "dns-authoritative.yaml:" in host.rules(NFT)
    else:
        assert host.rules(NFT) == old_rules


STRANGER_SCRIPT = """
sleep 60 & stranger=$!
"$PYTHON" -c 'import json, sys
path, pid = sys.argv[1], sys.argv[2]
pending = json.load(open(path))
pending["pid"] = {"stranger": int(pid), "zero": 0, "all": -1}[sys.argv[3]]
json.dump(pending, open(path, "w"))' "$STATE/pending.json" $stranger "$WHICH"
"$PYTHON" -m nfc confirm --state-dir "$STATE"
echo "confirm: $?"
kill -0 $stranger && echo "stranger alive"
kill $stranger
"""


@pytest.mark.parametrize("which", ["zero", "all", "stranger"])
def test_a_pid_in_pending_json_that_is_not_the_timer_is_never_signalled(
    host: Host, artifacts: dict[tuple[str, Path], Path], which: str
) -> None:
    """In a pid namespace and a session of its own, so that even a broken
    nfc could reach only the processes of the test."""
    host.apply(artifacts[NFT, OLD])
    host.apply(artifacts[NFT, NEW], "--confirm", "30")
    timer = _pending(host)["pid"]
    env = {"STATE": str(host.state_dir), "WHICH": which, "PYTHON": sys.executable}
    inside = Namespace(host.ns.name, {**host.ns.env, **env})
    # setsid: a process group of its own, which is what pid 0 would reach
    done = inside.run(
        "unshare", "--pid", "--fork", "--mount-proc", "setsid", "sh", "-c", STRANGER_SCRIPT, check=False
    )
    if which == "stranger":  # a live pid, not the timer's: confirmed, and the stranger lives
        assert "confirm: 0\nstranger alive\n" in done.stdout, done.stdout + done.stderr
        assert "confirmed: the applied ruleset stays" in done.stdout
    else:  # no process can have pid 0 or -1: pending.json is damaged, and nothing is signalled
        assert "confirm: 2\nstranger alive\n" in done.stdout, done.stdout + done.stderr
        assert "damaged state file" in done.stdout + done.stderr
    # the real timer was not named, so it was left running: harmless, as it
    # finds nothing due at its deadline
    assert Path(f"/proc/{timer}").exists()
    assert "web-notrack.yaml:" in host.rules(NFT)


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=64k,mode=0700 nfc-state "$STATE"
nfc() { "$PYTHON" -m nfc "$@" --state-dir "$STATE"; }
nfc apply "$OLD" >/dev/null || exit 10
nfc apply "$NEW" --confirm 3 >/dev/null || exit 11
head -c 1048576 /dev/zero > "$STATE/filler" 2>/dev/null
nfc apply "$MID" --confirm 1
echo "mid: $?"
"""


def test_a_failing_apply_confirm_on_a_full_disk_leaves_the_pending_rollback_armed(
    host: Host, artifacts: dict[tuple[str, Path], Path]
) -> None:
    """The state directory on a 64 KiB tmpfs, in a mount namespace of its
    own that the timer inherits and keeps."""
    host.state_dir.mkdir()
    host.apply(artifacts[NFT, OLD])
    old_rules = host.rules(NFT)
    host.nfc("rollback")
    env = {"STATE": str(host.state_dir), "PYTHON": sys.executable}
    env |= {name: str(artifacts[NFT, policy]) for name, policy in (("OLD", OLD), ("NEW", NEW), ("MID", MID))}
    inside = Namespace(host.ns.name, {**host.ns.env, **env})
    done = inside.run(
        "unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_DISK_SCRIPT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mid: 2\n" in done.stdout, done.stdout + done.stderr
    # the journal, written before the timer is armed, is what the full disk refuses
    assert f"nfc: error: cannot write {host.state_dir}/journal.json: No space left on device" in done.stderr
    assert "internal error" not in done.stderr
    assert "web-notrack.yaml:" in host.rules(NFT), "MID must not be loaded, NEW stays until its deadline"
    assert wait_until(lambda: host.rules(NFT) == old_rules, timeout=30), "NEW was not rolled back"


@pytest.mark.parametrize("backend", [NFT, LEGACY])
def test_restore_loads_the_last_confirmed_ruleset_never_an_unconfirmed_one(
    host: Host, artifacts: dict[tuple[str, Path], Path], backend: str
) -> None:
    host.apply(artifacts[backend, OLD])
    old_rules = host.rules(backend)
    host.apply(artifacts[backend, NEW], "--confirm", "30")
    new_rules = host.rules(backend)
    host.reboot()
    assert host.rules(backend) != old_rules
    done = host.nfc("restore")
    assert done.returncode == 0, done.stderr
    assert "the last confirmed ruleset; the unconfirmed apply is rolled back" in done.stdout
    assert host.rules(backend) == old_rules
    late = host.nfc("confirm")
    assert late.returncode == 3 and "nfc restore ran before the apply was confirmed" in late.stderr

    host.apply(artifacts[backend, NEW], "--confirm", "30")
    assert host.nfc("confirm").returncode == 0
    host.reboot()
    done = host.nfc("restore")
    assert done.returncode == 0, done.stderr
    assert f"the last confirmed ruleset (from {artifacts[backend, NEW]})" in done.stdout
    assert host.rules(backend) == new_rules
    host.nfc("rollback")
    host.reboot()
    assert host.nfc("restore").returncode == 0
    assert host.rules(backend) == old_rules, "restore loads what a rollback put back"


def test_restore_with_nothing_confirmed_is_an_error(host: Host) -> None:
    done = host.nfc("restore")
    assert done.returncode == 2
    assert done.stderr == f"nfc: error: nothing to restore: no confirmed ruleset in {host.state_dir}\n"


# --------------------------------------------------------------------------
# the kill campaign

KILLS = 30  # of apply, and as many of rollback, per backend


def _duration(host: Host, *args: str) -> float:
    """How long an nfc command takes here: what the kill delays are drawn
    from (measured, never asserted)."""
    start = time.monotonic()
    assert host.spawn(*args).wait(timeout=60) == 0
    return time.monotonic() - start


def _kill_at_random(victim: subprocess.Popen[str], duration: float, rng: random.Random, group: bool) -> bool:
    """SIGKILL `victim` at a random moment of its run (past the start of
    Python, mostly); whether it was still running."""
    time.sleep(rng.uniform(0.4, 0.95) * duration)
    running = victim.poll() is None  # unreaped until then, so its pid is still its own
    if running:
        # the whole process group, or (as in the issue) only nfc: its tools die with it
        (os.killpg if group else os.kill)(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    return running


def _saved(host: Host) -> Path:
    """Which side the saved state is: its rules name their policy file."""
    return NEW if f"{NEW.name}:" in (host.state_dir / "previous.json").read_text() else OLD


def _campaign(host: Host, artifacts: dict[tuple[str, Path], Path], backend: str, seed: int) -> dict[str, int]:
    """SIGKILL apply and rollback, in turn, at random moments until each was
    killed KILLS times; after each kill, `nfc restore` must leave one of the
    two complete rulesets the killed command went between, both families
    alike, and no journal."""
    rng = random.Random(seed)
    journal = host.state_dir / "journal.json"
    sides = {}
    for policy in (NEW, OLD):
        host.apply(artifacts[backend, policy])
        sides[host.rules(backend)] = policy
    durations = {
        "apply": _duration(host, "apply", str(artifacts[backend, NEW])),
        "rollback": _duration(host, "rollback"),
    }
    current, saved = sides[host.rules(backend)], _saved(host)  # in force, what a rollback goes back to
    tally = dict.fromkeys(("apply", "rollback", "half-applied", "repaired", "old", "new"), 0)
    for round_ in range(10 * KILLS):
        command = ("apply", "rollback")[round_ % 2]
        if min(tally["apply"], tally["rollback"]) >= KILLS:
            break
        if command == "rollback" and current == saved:
            other = NEW if current == OLD else OLD
            host.apply(artifacts[backend, other])  # so that the rollback has something to undo
            current, saved = other, current
        other = saved if command == "rollback" else NEW if current == OLD else OLD
        args = ("rollback",) if command == "rollback" else ("apply", str(artifacts[backend, other]))
        group = round_ % 4 < 2
        landed = _kill_at_random(host.spawn(*args), durations[command], rng, group)
        tally[command] += landed
        durations[command] *= 1 if landed else 0.9  # it ran faster than measured
        tally["half-applied"] += host.rules(backend) not in sides
        done = host.nfc("restore")
        assert done.returncode == 0, f"{command} round {round_}, seed {seed}: {done.stderr}"
        tally["repaired"] += "repaired: " in done.stdout
        after = sides.get(host.rules(backend))
        assert after in (current, other), f"{command} round {round_}, seed {seed}: not one complete ruleset"
        assert not journal.exists()
        tally["old" if after == OLD else "new"] += 1
        current, saved = after, _saved(host)
    return tally


def test_a_kill_campaign_never_leaves_a_half_applied_ruleset(
    make_host: Callable[[], Host], artifacts: dict[tuple[str, Path], Path]
) -> None:
    """The backends side by side, each in a namespace of its own (reused
    for all its kills), to keep the suite short."""
    seed = int.from_bytes(os.urandom(4))
    backends = (NFT, LEGACY)
    hosts = [make_host() for _ in backends]
    start = time.monotonic()
    with ThreadPoolExecutor(len(backends)) as pool:
        tallies = list(pool.map(lambda h, b: _campaign(h, artifacts, b, seed), hosts, backends))
    for backend, tally in zip(backends, tallies, strict=True):
        print(f"kill campaign, seed {seed}, {backend}: {tally}, {time.monotonic() - start:.0f}s")
        assert min(tally["apply"], tally["rollback"]) >= KILLS, tally
