"""Day-2 operations at scale: apply, rollback, stats, refresh and `nfc set`
with big list files and big policies, in a network namespace of its own.

    sudo .venv/bin/python bench/apply_scale.py                       # the default cases
    sudo .venv/bin/python bench/apply_scale.py --entries 10000,100000 --rules 10000
    sudo .venv/bin/python bench/apply_scale.py --entries 1000000 --rules 0 --backends nft
    sudo .venv/bin/python bench/apply_scale.py --entries 0 --rules 50000 --kills 3
    sudo .venv/bin/python bench/apply_scale.py --entries 0 --rules 10000 --backends nft --profile

Cases:
- nft, a policy whose first rule drops a list file of N entries (9 in 10
  addresses, 1 in 10 a /24; bench/compile.py's generate_list), with a
  runtime set, a meter and a counted rule beside it: check, first apply,
  `set add` of 2 elements and of 10,000 at once, `set list`, re-apply,
  apply of a one-line edit, stats (text, JSON, Prometheus), refresh, diff
  of the two policies, apply --confirm and confirm, apply --confirm and the
  timer's rollback at its deadline, rollback, restore, restore into an
  empty namespace (a boot), `set del` of the 10,000, and the compile for
  iptables-legacy, which must refuse the list cleanly (it keeps a list as
  a rule per network and refuses lists over 10,000 networks); then
  `--kills` SIGKILLs of a refresh to another list at a random moment, each
  followed by a refresh, an apply or a restore: the list set must hold the
  old list or the new one, never a mix, and the next command must work;
- nft and iptables-legacy, bench/compile.py's generate_policy of N rules:
  check, first apply, re-apply, apply of a one-line edit, stats (three
  formats), diff, apply --confirm and confirm, the timer's rollback,
  rollback, restore, restore at boot; on nft, `nft -f` of the ruleset alone
  first, into an empty namespace and over itself (what a re-apply and a
  rollback load), the kernel's part of those commands; then `--kills`
  SIGKILLs of an apply of the edit at a random moment, each followed by a
  rollback, a restore or an apply: the rules in force must be the old or
  the new ones, and after the command the ones it puts in force.

The end is a table of every command's CPU, wall time and peak RSS, with
exits other than expected, tracebacks, states found inconsistent, commands
over 60 s and memory over 1.5 GiB flagged.

Each command runs as `nfc` does, in a fresh interpreter inside the
namespace, with the steps of apply (snapshot, load, the origin map, ...)
wrapped in timers: the figures after each command are where its time went,
inclusive (a step inside another counts in both). CPU is the command's
user and system time with the tools it ran (libnftables runs inside nfc,
so the kernel's work of a load is nfc's system time): on a shared machine,
compare CPU rather than wall time. `--profile` prints each command's
cProfile too. RSS is the peak of the
nfc process (VmHWM) and of the tools it ran (nft, iptables-restore;
ru_maxrss, which counts nfc's own memory when it started them). Nothing is
asserted. The state directory is a temporary one; the namespace and the
files are deleted on exit, also on Ctrl-C or SIGTERM. Needs root.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import functools
import hashlib
import importlib
import io
import json
import os
import pstats
import random
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile import generate_list, generate_policy

# (module, attribute or Class.method): the steps whose time is shown. Missing
# ones are skipped, so that the bench runs across refactorings.
STEPS = (
    ("nfc.apply", "_settle"),
    ("nfc.backends.nft_kernel", "NftKernel.snapshot"),
    ("nfc.backends.nft_kernel", "NftKernel.load"),
    ("nfc.backends.nft_kernel", "NftKernel.restore"),
    ("nfc.backends.nft_kernel", "carried_elements"),
    ("nfc.backends.nft_kernel", "NftKernel.foreign_rules"),
    ("nfc.backends.iptables_kernel", "LegacyKernel.snapshot"),
    ("nfc.backends.iptables_kernel", "LegacyKernel.load"),
    ("nfc.backends.iptables_kernel", "LegacyKernel.restore"),
    ("nfc.backends.iptables_kernel", "LegacyKernel.foreign_rules"),
    ("nfc.stats", "read"),
    ("nfc.stats_origins", "remember"),
    ("nfc.stats_origins", "_counts_by_content"),
    ("nfc.stats_origins", "nft_table"),
    ("nfc.stats_origins", "_iptables_origins"),
    ("nfc.stats_origins", "iptables_rules"),
    ("nfc.stats_origins", "in_force"),
    ("nfc.backends.nft_kernel", "NftKernel._listing_as_loaded"),
    ("nfc.backends.nft_kernel", "NftKernel._live_elements"),
    ("nfc.neighbours", "warning_here"),
    ("nfc.apply", "apply_sysctls"),
    ("nfc.state", "State.read"),
    ("nfc.state", "State.write"),
    ("nfc.artifacts", "read"),
    ("nfc.backends.nft_sets", "runtime_sets"),
    ("nfc.refresh", "run_script"),
    ("nfc.refresh", "refresh"),
)
NAMESPACE_PREFIX = "nfc-bench-"
RUNTIME_ELEMENTS = 10_000  # `nfc set add` of this many at once
LIST_POLICY = """nfc: 1
define:
  blocklist: {file: drop.txt}
sets:
  banned: {type: address, timeout: 1h, size: 65536}
input:
  policy: drop
  rules:
    - drop from $blocklist
    - drop from $banned
    - accept tcp dport 22 counter
    - accept tcp dport 80 limit 100/minute per saddr name web
"""


# --------------------------------------------------------------------------
# the worker: one nfc command, in the namespace, with its steps timed


def _timed(name: str, function: Callable[..., Any], spent: dict[str, list[float]]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent.setdefault(name, []).append(time.perf_counter() - started)

    return wrapper


def worker(argv: list[str], steps_file: str, profile: bool) -> int:
    spent: dict[str, list[float]] = {}
    for module_name, attribute in STEPS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner: Any = module
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        function = getattr(owner, name, None) if owner is not None else None
        if function is None:
            continue
        setattr(owner, name, _timed(attribute, function, spent))
    from nfc import cli

    started = time.perf_counter()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    code = cli.main(argv)
    if profiler is not None:
        profiler.disable()
        report = io.StringIO()
        pstats.Stats(profiler, stream=report).sort_stats("cumulative").print_stats(25)
        print(report.getvalue(), file=sys.stderr)
    total = time.perf_counter() - started
    cpu = os.times()
    # VmHWM is this process image's own peak; ru_maxrss would count the
    # bench driver's memory at the fork as well
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(line for line in status if line.startswith("VmHWM:"))
    rss = {
        "self_kib": int(peak.split()[1]),
        "tools_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    # libnftables runs in this process: its time in the kernel is this process's system time
    used = cpu.user + cpu.system + cpu.children_user + cpu.children_system
    Path(steps_file).write_text(json.dumps({"steps": spent, "total": total, "cpu": used, **rss}))
    return code


# --------------------------------------------------------------------------
# the driver


class Bench:
    def __init__(self, scratch: Path, profile: bool = False) -> None:
        self.scratch = scratch
        self.profile = profile
        self.namespace = NAMESPACE_PREFIX + secrets.token_hex(4)
        self.made = False
        self.case = ""  # the label of the case running, for the summary
        self.results: list[dict[str, Any]] = []

    def __enter__(self) -> Bench:
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        self.made = True
        subprocess.run(["ip", "netns", "exec", self.namespace, "ip", "link", "set", "lo", "up"], check=True)
        return self

    def delete(self) -> None:
        if self.made:
            subprocess.run(["ip", "netns", "delete", self.namespace], check=False)
            self.made = False

    def __exit__(self, *_: object) -> None:
        self.delete()

    def reset(self) -> None:
        """A fresh namespace for the next case."""
        self.delete()
        self.__enter__()

    def nfc(self, label: str, *args: str, expect: int = 0) -> dict[str, Any]:
        """Run `nfc ARGS` in the namespace; print its time, RSS and steps, and
        keep them for the summary. A traceback, or an exit other than
        `expect`, is flagged."""
        steps_file = self.scratch / "steps.json"
        steps_file.unlink(missing_ok=True)
        command = ["ip", "netns", "exec", self.namespace, "nice", "-n", "10", sys.executable]
        command += [os.path.abspath(__file__), "--worker", str(steps_file)]
        command += ["--profile"] if self.profile else []
        command += ["--", *args]
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = child.communicate()
        wall = time.perf_counter() - started
        found = json.loads(steps_file.read_text()) if steps_file.exists() else {}
        result = {
            "case": f"{self.case}: {label}",
            "wall": wall,
            "cpu": found.get("cpu"),
            "rss_mib": max(found.get("self_kib", 0), found.get("tools_kib", 0)) >> 10 or None,
            "exit": child.returncode,
            "flag": "",
        }
        if child.returncode != expect or "Traceback" in err:
            result["flag"] = f"exit {child.returncode}" + (", traceback" if "Traceback" in err else "")
            print(f"  {label}: exit {child.returncode} (expected {expect}): {err.strip()[-800:]}")
        self.results.append(result)
        if not found:
            return result
        rss = f"RSS nfc {found['self_kib'] >> 10} MiB, tools {found['tools_kib'] >> 10} MiB"
        print(f"  {label:<16} {wall:8.2f} s  CPU {found['cpu']:6.2f} s   {rss}, {len(out):,} bytes out")
        if expect != 0 and err.strip():
            print(f"      stderr: {err.strip()[-400:]}")
        if self.profile:
            print(err)
        ranked = sorted(found["steps"].items(), key=lambda item: -sum(item[1]))
        for name, times in ranked:
            if sum(times) >= 0.01:
                calls = f" x{len(times)}" if len(times) > 1 else ""
                print(f"      {name:<34} {sum(times):8.2f} s{calls}")
        return result

    def nft_load(self, label: str, ruleset: Path) -> float:
        """`nft -f RULESET` in the namespace, alone: the kernel's part of an apply."""
        command = ["ip", "netns", "exec", self.namespace, "nice", "-n", "10", "nft", "-f", str(ruleset)]
        started = time.perf_counter()
        child = subprocess.Popen(command, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if child.returncode != 0 and child.stderr is not None:
            print(f"  {label}: exit {child.returncode}: {child.stderr.read().decode()[-800:]}")
        cpu = usage.ru_utime + usage.ru_stime
        print(f"  {label:<16} {wall:8.2f} s  CPU {cpu:6.2f} s")
        rss = usage.ru_maxrss >> 10
        self.results.append({"case": f"{self.case}: {label}", "wall": wall, "cpu": cpu, "rss_mib": rss})
        return cpu

    def compile(self, policy: Path, backend: str, out: Path) -> float:
        command = ["nice", "-n", "10", sys.executable, "-m", "nfc", "compile", "-b", backend]
        started = time.perf_counter()
        child = subprocess.Popen([*command, str(policy), "-o", str(out)], stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        assert child.stderr is not None
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"nfc compile {policy} failed: {child.stderr.read().decode()[-2000:]}")
        cpu = usage.ru_utime + usage.ru_stime
        label = f"{self.case}: compile {policy.name}"
        self.results.append({"case": label, "wall": wall, "cpu": cpu, "rss_mib": usage.ru_maxrss >> 10})
        return wall

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command in the namespace, its output kept."""
        inside = ["ip", "netns", "exec", self.namespace, *command]
        return subprocess.run(inside, capture_output=True, text=True, check=False)

    def table_digest(self, table: str = "nfc") -> str:
        """What identifies the rules in force: nft's stateless listing of nfc's
        table (iptables-legacy: both families' rules), hashed."""
        listing = self.run("nft", "-s", "list", "table", "inet", table).stdout
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            saved = self.run(tool).stdout
            listing += "".join(line + "\n" for line in saved.splitlines() if not line.startswith("#"))
        return hashlib.sha256(re.sub(r"\[\d+:\d+\]", "", listing).encode()).hexdigest()[:12]

    def timeout_rollback(self, label: str, out: Path, state_dir: Path, seconds: float) -> None:
        """`apply --confirm SECONDS` (longer than the apply takes) and the
        timer's rollback at the deadline, timed from the deadline to the
        timer's exit (its CPU read from /proc while it runs)."""
        confirm = str(round(seconds) + 5)
        self.nfc(f"{label} (apply)", "apply", str(out), "--confirm", confirm, "--state-dir", str(state_dir))
        pending = state_dir / "pending.json"
        if not pending.exists():
            print(f"  {label}: no pending confirmation")
            return
        armed = json.loads(pending.read_text())
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = 0.0
        while True:
            try:
                fields = Path(f"/proc/{armed['pid']}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                break
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            if time.time() > armed["deadline"] + 600:
                break
            time.sleep(0.05)
        wall = time.time() - armed["deadline"]
        flag = "" if not pending.exists() and (state_dir / "rolled-back.json").exists() else "not rolled back"
        print(f"  {label:<16} {wall:8.2f} s  CPU {cpu:6.2f} s (the timer, from its deadline) {flag}")
        self.results.append({"case": f"{self.case}: {label}", "wall": wall, "cpu": cpu, "flag": flag})

    def kill_during(self, label: str, argv: list[str], seconds: float) -> float:
        """Start `nfc ARGV` in the namespace and SIGKILL it after a random
        moment of its usual `seconds`; the moment chosen."""
        moment = random.uniform(0.05, 1.0) * seconds
        command = ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "nfc", *argv]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            child.wait(timeout=moment)
            print(f"  {label}: finished before the kill at {moment:.2f} s")
        except subprocess.TimeoutExpired:
            # ip netns exec execs nfc: the pid is nfc's own
            child.send_signal(signal.SIGKILL)
            child.wait()
        return moment

    def flag(self, what: str) -> None:
        print(f"  ** {what}")
        self.results.append({"case": f"{self.case}: {what}", "flag": "inconsistent"})


def _edited(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def list_case(bench: Bench, entries: int, kills: int) -> None:
    directory = bench.scratch / f"list-{entries}"
    directory.mkdir()
    bench.case = f"nft list {entries:,}"
    (directory / "drop.txt").write_text(generate_list(entries))
    policy, edited = directory / "p.yaml", directory / "p2.yaml"
    policy.write_text(LIST_POLICY)
    edited.write_text(_edited(LIST_POLICY, "dport 22 counter", "dport 2222 counter"))
    out, out2 = directory / "out", directory / "out2"
    compiled = bench.compile(policy, "nft", out)
    bench.compile(edited, "nft", out2)
    size = (out / "ruleset.nft").stat().st_size
    print(f"\nnft, list file of {entries:,} entries (compile {compiled:.2f} s, ruleset.nft {size >> 20} MiB)")
    state_dir = directory / "state"
    state = ("--state-dir", str(state_dir))
    many = [f"198.18.{i >> 8}.{i & 255}" for i in range(RUNTIME_ELEMENTS)]
    bench.nfc("check", "check", str(out))
    bench.nfc("apply (first)", "apply", str(out), *state)
    bench.nfc("set add", "set", "add", "banned", "192.0.2.1", "192.0.2.2", "--timeout", "10m")
    bench.nfc(f"set add {len(many):,}", "set", "add", "banned", *many, "--timeout", "1h")
    bench.nfc("set list", "set", "list", "banned")
    bench.nfc("apply (again)", "apply", str(out), *state)
    bench.nfc("apply (1 line)", "apply", str(out2), *state)
    for form in ("text", "json", "prometheus"):
        bench.nfc(f"stats {form}", "stats", "--format", form, *state)
    bench.nfc("refresh", "refresh", str(out2), *state)
    bench.nfc("diff", "diff", str(policy), str(edited))
    seconds = bench.nfc("apply --confirm", "apply", str(out), "--confirm", "600", *state)["wall"]
    bench.nfc("confirm", "confirm", *state)
    bench.timeout_rollback("timer rollback", out2, state_dir, 3 * seconds)
    bench.nfc("rollback", "rollback", *state)
    bench.nfc("restore", "restore", *state)
    bench.reset()  # a reboot: an empty kernel, the state directory kept
    bench.nfc("restore (boot)", "restore", *state)
    bench.nfc(f"set del {len(many):,}", "set", "del", "banned", *many)
    if bench.run("nft", "get", "element", "inet", "nfc", "banned_v4", "{ 192.0.2.1 }").returncode != 0:
        bench.flag("the runtime set lost 192.0.2.1 along the way")
    legacy = directory / "legacy"
    bench.nfc(
        "iptables compile", "compile", "-b", "iptables-legacy", str(policy), "-o", str(legacy), expect=2
    )
    if kills:
        kill_refresh(bench, directory, out, kills)


def _list_set(out: Path) -> str:
    found = re.search(
        r"^\tset (\S+) \{\n(?:\t\t.*\n)*?\t\telements = ", (out / "ruleset.nft").read_text(), re.M
    )
    assert found is not None
    return found[1]


def kill_refresh(bench: Bench, directory: Path, out: Path, kills: int) -> None:
    """SIGKILL `nfc refresh` at random moments: the list set holds the old
    list or the new one, never a mix, and the next refresh, apply and
    restore work."""
    other = directory / "other"
    other.mkdir()
    old_lines = (directory / "drop.txt").read_text().splitlines()
    new_lines = generate_list(len(old_lines) - 1, seed=7).splitlines()
    (other / "drop.txt").write_text("\n".join(new_lines) + "\n")
    (other / "p.yaml").write_text(LIST_POLICY)
    out_other = other / "out"
    bench.compile(other / "p.yaml", "nft", out_other)
    name = _list_set(out)
    only_old = next(x for x in old_lines[1:] if "/" not in x and x not in set(new_lines))
    only_new = next(x for x in new_lines[1:] if "/" not in x and x not in set(old_lines))
    state_dir = directory / "state"
    state = ("--state-dir", str(state_dir))
    print(f"  SIGKILL during refresh (set {name}; {only_old} only in the old list, {only_new} in the new)")

    def holds() -> tuple[bool, bool]:
        def member(address: str) -> bool:
            command = ("nft", "get", "element", "inet", "nfc", name, f"{{ {address} }}")
            return bench.run(*command).returncode == 0

        return member(only_old), member(only_new)

    bench.nfc("apply (old list)", "apply", str(out), *state)
    seconds = bench.nfc("refresh (timed)", "refresh", str(out_other), *state)["wall"]
    bench.nfc("refresh (back)", "refresh", str(out), *state)
    nexts = [("refresh", str(out)), ("apply", str(out_other)), ("restore",)]
    for round_ in range(kills):
        moment = bench.kill_during("kill refresh", ["refresh", str(out_other), *state], seconds)
        found = holds()
        if found not in ((True, False), (False, True)):
            bench.flag(
                f"after a SIGKILL at {moment:.2f} s of refresh the set holds old {found[0]}, new {found[1]}"
            )
        then = nexts[round_ % len(nexts)]
        result = bench.nfc(f"{then[0]} after kill", *then, *state)
        after = holds()
        print(f"      killed at {moment:.2f} s: old/new in set {found} -> after {then[0]} {after}")
        if (
            result["exit"] == 0
            and then[0] in ("refresh", "apply")
            and after != (then[1] == str(out), then[1] != str(out))
        ):
            bench.flag(f"{then[0]} after a killed refresh left old {after[0]}, new {after[1]}")
        if after not in ((True, False), (False, True)):
            bench.flag(f"{then[0]} after a killed refresh left old {after[0]}, new {after[1]}")
        bench.nfc("refresh (back)", "refresh", str(out), *state)


def rules_case(bench: Bench, rules: int, backend: str, kills: int) -> None:
    directory = bench.scratch / f"rules-{rules}-{backend}"
    directory.mkdir()
    bench.case = f"{backend} {rules:,} rules"
    policy, edited = directory / "p.yaml", directory / "p2.yaml"
    text = generate_policy(rules)
    if backend == "iptables-legacy":
        # What iptables cannot say exactly: byte rates (that meter becomes a
        # packet rate) and one limit shared by both families (left out).
        text = re.sub(r" limit [0-9]+/second burst [0-9]+ packets", "", text)
        text = text.replace("1 mbytes/second", "1000/second")
    policy.write_text(text)
    first_rule = next(line for line in text.splitlines() if line.startswith("    - '"))
    edited.write_text(_edited(text, first_rule, "    - 'accept tcp dport 4242 from 192.0.2.99'"))
    out, out2 = directory / "out", directory / "out2"
    compiled = bench.compile(policy, backend, out)
    bench.compile(edited, backend, out2)
    print(f"\n{backend}, generate_policy({rules:,}) (compile {compiled:.2f} s)")
    if backend == "nft":
        # the kernel's part alone, for the overhead of each command beside it
        bench.nft_load("nft -f (first)", out / "ruleset.nft")
        bench.nft_load("nft -f (again)", out / "ruleset.nft")
        bench.reset()
    state_dir = directory / "state"
    state = ("--state-dir", str(state_dir))
    bench.nfc("check", "check", str(out))
    bench.nfc("apply (first)", "apply", str(out), *state)
    bench.nfc("apply (again)", "apply", str(out), *state)
    bench.nfc("apply (1 line)", "apply", str(out2), *state)
    for form in ("text", "json", "prometheus"):
        bench.nfc(f"stats {form}", "stats", "--format", form, *state)
    bench.nfc("diff", "diff", str(policy), str(edited))
    seconds = bench.nfc("apply --confirm", "apply", str(out), "--confirm", "600", *state)["wall"]
    bench.nfc("confirm", "confirm", *state)
    bench.timeout_rollback("timer rollback", out2, state_dir, 3 * seconds)
    bench.nfc("rollback", "rollback", *state)
    bench.nfc("restore", "restore", *state)
    bench.reset()  # a reboot: an empty kernel, the state directory kept
    bench.nfc("restore (boot)", "restore", *state)
    if kills:
        kill_apply(bench, out, out2, state_dir, kills)


def kill_apply(bench: Bench, out: Path, out2: Path, state_dir: Path, kills: int) -> None:
    """SIGKILL `nfc apply` of `out2` over `out` at random moments: the rules
    in force are the old ones or the new ones, and the next rollback,
    restore or apply works and puts the ones it should in force."""
    state = ("--state-dir", str(state_dir))
    bench.nfc("apply (old)", "apply", str(out), *state)
    old = bench.table_digest()
    seconds = bench.nfc("apply (new)", "apply", str(out2), *state)["wall"]
    new = bench.table_digest()
    names = {old: "old", new: "new"}
    nexts = ["rollback", "restore", "apply"]
    print(f"  SIGKILL during apply (rules in force: old {old}, new {new})")
    for round_ in range(kills):
        # old in force and saved, so that a rollback has one answer: old
        bench.nfc("apply (old)", "apply", str(out), *state)
        bench.nfc("apply (old)", "apply", str(out), *state)
        moment = bench.kill_during("kill apply", ["apply", str(out2), *state], seconds)
        found = names.get(bench.table_digest(), "a mix")
        then = nexts[round_ % len(nexts)]
        argv = [then, str(out2)] if then == "apply" else [then]
        result = bench.nfc(f"{then} after kill", *argv, *state)
        after = names.get(bench.table_digest(), "a mix")
        print(f"      killed at {moment:.2f} s: {found} in force -> after {then}: {after}")
        expected = {"rollback": ("old",), "restore": ("old", "new"), "apply": ("new",)}[then]
        if found == "a mix" or (result["exit"] == 0 and after not in expected):
            bench.flag(f"SIGKILL at {moment:.2f} s of apply: {found} in force, after {then}: {after}")


def summary(results: list[dict[str, Any]]) -> None:
    """Every figure, one line each, the suspicious ones flagged."""
    print(f"\n{'case':<58} {'CPU s':>8} {'wall s':>8} {'RSS MiB':>8}  flags")
    for result in results:
        flags = [result["flag"]] if result.get("flag") else []
        if (result.get("wall") or 0) > 60:
            flags.append("> 60 s")
        if (result.get("rss_mib") or 0) > 1536:
            flags.append("> 1.5 GiB")

        cpu, wall, rss = (
            format(result[key], form) if result.get(key) is not None else "-"
            for key, form in (("cpu", "8.2f"), ("wall", "8.2f"), ("rss_mib", "8d"))
        )
        print(f"{result['case']:<58} {cpu:>8} {wall:>8} {rss:>8}  {', '.join(flags)}")


def _numbers(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip() and part.strip() != "0"]


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    options.add_argument("--entries", type=_numbers, default=[100_000, 1_000_000])
    options.add_argument("--rules", type=_numbers, default=[10_000, 50_000])
    options.add_argument("--backends", default="nft,iptables-legacy")
    options.add_argument("--kills", type=int, default=3, help="SIGKILLs of apply and refresh per case")
    options.add_argument("--profile", action="store_true", help="print each command's cProfile (top 25)")
    options.add_argument("--worker", help=argparse.SUPPRESS)
    options.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = options.parse_args(argv)
    if args.worker:
        return worker([a for a in args.rest if a != "--"], args.worker, args.profile)
    if os.geteuid() != 0:
        print("apply_scale.py: needs root (it makes a network namespace)", file=sys.stderr)
        return 2
    backends = [b for b in args.backends.split(",") if b]
    with (
        tempfile.TemporaryDirectory(prefix="nfc-apply-scale-") as scratch,
        Bench(Path(scratch), args.profile) as bench,
    ):
        atexit.register(bench.delete)
        for number in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, lambda *_: sys.exit(128 + 15))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; namespace {bench.namespace}")
        try:
            if "nft" in backends:
                for entries in args.entries:
                    list_case(bench, entries, args.kills)
                    bench.reset()
            for rules in args.rules:
                for backend in backends:
                    rules_case(bench, rules, backend, args.kills)
                    bench.reset()
        finally:
            summary(bench.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
