"""Day-2 operations at scale: apply, rollback, stats, refresh and `nfc set`
with big list files and big policies, in a network namespace of its own.

    sudo .venv/bin/python bench/apply_scale.py                       # the default cases
    sudo .venv/bin/python bench/apply_scale.py --entries 10000,100000 --rules 10000
    sudo .venv/bin/python bench/apply_scale.py --entries 1000000 --rules 0 --backends nft
    sudo .venv/bin/python bench/apply_scale.py --entries 0 --rules 10000 --backends nft --profile

Cases:
- nft, a policy whose first rule drops a list file of N entries (9 in 10
  addresses, 1 in 10 a /24; bench/compile.py's generate_list), with a
  runtime set, a meter and a counted rule beside it: first apply, `set
  add`, `set list`, re-apply, stats, refresh, apply --confirm, confirm,
  rollback, restore;
- nft and iptables-legacy, bench/compile.py's generate_policy of N rules:
  first apply, re-apply, stats, rollback, restore; on nft, `nft -f` of the
  ruleset alone first, into an empty namespace and over itself (what a
  re-apply and a rollback load), the kernel's part of those commands.
  (iptables-legacy keeps a
  list as a rule per network and refuses lists over 10,000 networks, so it
  has no list case.)

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
import importlib
import io
import json
import os
import pstats
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
    ("nfc.backends.nft_sets", "run_script"),
    ("nfc.refresh", "refresh"),
)
NAMESPACE_PREFIX = "nfc-bench-"
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

    def nfc(self, label: str, *args: str) -> float:
        """Run `nfc ARGS` in the namespace; print its time, RSS and steps."""
        steps_file = self.scratch / "steps.json"
        command = ["ip", "netns", "exec", self.namespace, "nice", "-n", "10", sys.executable]
        command += [os.path.abspath(__file__), "--worker", str(steps_file)]
        command += ["--profile"] if self.profile else []
        command += ["--", *args]
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = child.communicate()
        wall = time.perf_counter() - started
        if child.returncode != 0:
            print(f"  {label}: exit {child.returncode}: {err.strip()[-800:]}")
            return wall
        found = json.loads(steps_file.read_text())
        steps_file.unlink()
        rss = f"RSS nfc {found['self_kib'] >> 10} MiB, tools {found['tools_kib'] >> 10} MiB"
        print(f"  {label:<16} {wall:8.2f} s  CPU {found['cpu']:6.2f} s   {rss}, {len(out):,} bytes out")
        if self.profile:
            print(err)
        ranked = sorted(found["steps"].items(), key=lambda item: -sum(item[1]))
        for name, times in ranked:
            if sum(times) >= 0.01:
                calls = f" x{len(times)}" if len(times) > 1 else ""
                print(f"      {name:<34} {sum(times):8.2f} s{calls}")
        return wall

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
        return cpu

    def compile(self, policy: Path, backend: str, out: Path) -> float:
        started = time.perf_counter()
        command = ["nice", "-n", "10", sys.executable, "-m", "nfc", "compile", "-b", backend]
        done = subprocess.run([*command, str(policy), "-o", str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"nfc compile {policy} failed: {done.stderr.strip()[-2000:]}")
        return time.perf_counter() - started


def list_case(bench: Bench, entries: int) -> None:
    directory = bench.scratch / f"list-{entries}"
    directory.mkdir()
    (directory / "drop.txt").write_text(generate_list(entries))
    policy = directory / "p.yaml"
    policy.write_text(LIST_POLICY)
    out = directory / "out"
    compiled = bench.compile(policy, "nft", out)
    size = (out / "ruleset.nft").stat().st_size
    print(f"\nnft, list file of {entries:,} entries (compile {compiled:.2f} s, ruleset.nft {size >> 20} MiB)")
    state = ("--state-dir", str(directory / "state"))
    bench.nfc("apply (first)", "apply", str(out), *state)
    bench.nfc("set add", "set", "add", "banned", "192.0.2.1", "192.0.2.2", "--timeout", "10m")
    bench.nfc("set list", "set", "list", "banned")
    bench.nfc("apply (again)", "apply", str(out), *state)
    bench.nfc("stats", "stats", *state)
    bench.nfc("refresh", "refresh", str(out), *state)
    bench.nfc("apply --confirm", "apply", str(out), "--confirm", "600", *state)
    bench.nfc("confirm", "confirm", *state)
    bench.nfc("rollback", "rollback", *state)
    bench.nfc("restore", "restore", *state)


def rules_case(bench: Bench, rules: int, backend: str) -> None:
    directory = bench.scratch / f"rules-{rules}-{backend}"
    directory.mkdir()
    policy = directory / "p.yaml"
    text = generate_policy(rules)
    if backend == "iptables-legacy":
        # What iptables cannot say exactly: byte rates (that meter becomes a
        # packet rate) and one limit shared by both families (left out).
        text = re.sub(r" limit [0-9]+/second burst [0-9]+ packets", "", text)
        text = text.replace("1 mbytes/second", "1000/second")
    policy.write_text(text)
    out = directory / "out"
    compiled = bench.compile(policy, backend, out)
    print(f"\n{backend}, generate_policy({rules:,}) (compile {compiled:.2f} s)")
    if backend == "nft":
        # the kernel's part alone, for the overhead of each command beside it
        bench.nft_load("nft -f (first)", out / "ruleset.nft")
        bench.nft_load("nft -f (again)", out / "ruleset.nft")
        bench.reset()
    state = ("--state-dir", str(directory / "state"))
    bench.nfc("apply (first)", "apply", str(out), *state)
    bench.nfc("apply (again)", "apply", str(out), *state)
    bench.nfc("stats", "stats", *state)
    bench.nfc("rollback", "rollback", *state)
    bench.nfc("restore", "restore", *state)


def _numbers(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip() and part.strip() != "0"]


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    options.add_argument("--entries", type=_numbers, default=[10_000, 100_000, 1_000_000])
    options.add_argument("--rules", type=_numbers, default=[10_000, 100_000])
    options.add_argument("--backends", default="nft,iptables-legacy")
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
        if "nft" in backends:
            for entries in args.entries:
                list_case(bench, entries)
                bench.reset()
        for rules in args.rules:
            for backend in backends:
                rules_case(bench, rules, backend)
                bench.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
