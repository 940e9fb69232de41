"""Compile-time benchmark: load + parse + lower + nft render of large generated policies,
and the analysis tools on them: lint, diff and explain.

    .venv/bin/python bench/compile.py                    # 1,000, 10,000 and 50,000 rules
    .venv/bin/python bench/compile.py --sizes 1000,10000 --repeat 3
    .venv/bin/python bench/compile.py --profile 10000    # cProfile one size, print hot spots
    .venv/bin/python bench/compile.py --profile-tools 10000  # the same, of lint and diff
    .venv/bin/python bench/compile.py --list-entries 1000000 --sizes 1000  # and a list file

Per size, a third child times the tools on the compiled policy: `lint`; `diff`
against a modified copy (a few rules added, removed and changed, forward's
policy drop -> accept, and the define $internal, used by many rules, widened);
`explain` of the packets the first and the last input rules match and of one
no rule matches (the slowest of them is shown). --no-tools skips it.

--list-entries N (default 1,000,000; 0 skips it) also times `nfc compile` of a
policy whose one rule drops a list file of N entries (9 in 10 addresses, 1 in
10 a /24), as a user runs it: wall time and the peak RSS of that process; and
`nfc explain` of a packet against it, which compiles the policy too.

Each size runs in a fresh interpreter, twice: once to time the stages (best
of --repeat) and read the peak RSS (ru_maxrss), once under tracemalloc for the
peak Python heap of each stage. Neither run pollutes the other or the next size.
The policies are generated with a fixed seed, so figures compare across runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import cProfile

    from nfc.ir import Addresses, Rule

DEFAULT_SIZES = (1000, 10_000, 50_000)
TARGET_MEMORY = 8 << 30
TARGET_WORD_BITS = 64
CHAINS = ("input", "forward", "output")
METERS = (
    # name, limit clause; rules sharing a name must give identical limits
    ("dns_flood", "limit over 10/second burst 20 per saddr/24,/64 name dns_flood"),
    ("ssh_brute", "limit over 6/minute burst 3 per saddr name ssh_brute"),
    ("http_flood", "limit over 100/second burst 200 per saddr/32,/64 name http_flood"),
    ("ntp_amp", "limit over 1 mbytes/second per saddr/24,/48 name ntp_amp"),
)


# --------------------------------------------------------------------------
# policy generator


def _v4(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _v4_prefix(rng: random.Random) -> str:
    length = rng.choice((16, 20, 24, 28))
    value = (172 << 24 | rng.getrandbits(24)) >> (32 - length) << (32 - length)
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{length}"


def _v6(rng: random.Random) -> str:
    return f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::{rng.randrange(1, 1 << 16):x}"


def _v6_prefix(rng: random.Random) -> str:
    length = rng.choice((48, 56, 64))
    third = rng.randrange(1 << 16)
    fourth = rng.randrange(1 << 16) >> (64 - length) << (64 - length) if length > 48 else 0
    return f"2001:db8:{third:x}:{fourth:x}::/{length}" if fourth else f"2001:db8:{third:x}::/{length}"


def _addr(rng: random.Random, family: str) -> str:
    if family == "dual":
        family = rng.choice(("v4", "v6"))
    if family == "v4":
        return _v4(rng) if rng.random() < 0.55 else _v4_prefix(rng)
    return _v6(rng) if rng.random() < 0.5 else _v6_prefix(rng)


def _addrs(rng: random.Random, family: str) -> str:
    """An address list that holds addresses of `family` (v4, v6 or dual)."""
    roll = rng.random()
    if roll < 0.15:
        dual = ("$internal", "$admins", "$partners")
        return rng.choice((*dual, "$monitoring") if family == "v4" else dual)
    if roll < 0.3:
        items = [_addr(rng, family) for _ in range(rng.randint(2, 5))]
        if family == "dual":
            items[:2] = [_addr(rng, "v4"), _addr(rng, "v6")]
        return "{ " + ", ".join(items) + " }"
    if roll < 0.35 and family != "dual":
        return "not " + _addr(rng, family)
    if family == "dual":
        return rng.choice(("$internal", "$admins", "$partners"))
    return _addr(rng, family)


def _ports(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return str(rng.randint(1, 65535))
    if roll < 0.65:
        low = rng.randint(1024, 60000)
        return f"{low}-{low + rng.randint(1, 5000)}"
    if roll < 0.75:
        return rng.choice(("ssh", "domain", "https", "http", "ntp", "smtp", "imaps"))
    if roll < 0.85:
        return rng.choice(("$web", "$mail", "$ephemeral"))
    items = sorted(rng.sample(range(1, 65536), rng.randint(2, 6)))
    return "{ " + ", ".join(map(str, items)) + " }"


def _rule(rng: random.Random, index: int, chain: str) -> str:
    roll = rng.random()
    verdict = "accept" if roll < 0.6 else "drop" if roll < 0.9 else "reject"
    proto = rng.choice(("tcp", "tcp", "udp", "udp", "sctp"))
    if verdict == "reject" and proto == "tcp" and rng.random() < 0.5:
        verdict = "reject with tcp reset"
    words = [verdict, proto]
    if rng.random() < 0.85:
        words += ["dport", _ports(rng)]
    if rng.random() < 0.1:
        words += ["sport", _ports(rng)]
    family = rng.choice(("v4", "v4", "v4", "v6", "v6", "dual"))
    if rng.random() < 0.7:
        words += ["from", _addrs(rng, family)]
    if rng.random() < 0.25:
        words += ["to", _addrs(rng, family)]
    if chain != "output" and rng.random() < 0.1:
        words += ["iif", rng.choice(("eth0", "eth1", "bond0", "wg0", "veth*"))]
    if verdict == "drop" and rng.random() < 0.15:
        words.append(rng.choice(METERS)[1])
    elif rng.random() < 0.03:
        words.append(f"limit {rng.randint(1, 1000)}/second burst {rng.randint(1, 50)} packets")
    if rng.random() < 0.1:
        words.append(f'log prefix "r{index}: " level {rng.choice(("info", "notice", "warn"))}')
    if rng.random() < 0.3:
        words.append("counter")
    if rng.random() < 0.2:
        words.append(f'comment "generated rule {index}"')
    return " ".join(words)


def generate_policy(rules: int, seed: int = 1) -> str:
    """A policy of `rules` filter rules plus a few defines and notrack entries."""
    rng = random.Random(seed)
    lines = [
        "nfc: 1",
        f"name: bench-{rules}",
        "define:",
        '  internal: [10.0.0.0/8, 192.168.0.0/16, "fd00::/8"]',
        '  admins: [192.0.2.10, 192.0.2.11, "2001:db8::10"]',
        '  partners: [198.51.100.0/24, 203.0.113.0/24, "2001:db8:1000::/36"]',
        "  monitoring: 192.0.2.50",
        "  web: [80, 443, 8000-8080]",
        "  mail: [smtp, submission, imaps]",
        "  ephemeral: 1024-65535",
        "conntrack:",
        "  notrack:",
        "    - udp dport domain",
        "    - udp sport domain dport $ephemeral",
        "    - udp dport ntp from $internal",
        "    - tcp dport 179 iif eth1",
        "  max: auto",
        "  timeouts: {udp: 10, udp_stream: 60}",
    ]
    # Most rules go to input, as on a real host; forward and output get some.
    shares = {"input": 0.7, "forward": 0.2, "output": 0.1}
    counts = {chain: int(rules * share) for chain, share in shares.items()}
    counts["input"] += rules - sum(counts.values())
    index = 0
    for chain in CHAINS:
        lines += [f"{chain}:", f"  policy: {'accept' if chain == 'output' else 'drop'}", "  rules:"]
        for _ in range(counts[chain]):
            index += 1
            text = _rule(rng, index, chain)
            if rng.random() < 0.02 and "comment" not in text:
                lines.append(f"    - {{rule: '{text}', comment: \"mapping rule {index}\"}}")
            else:
                lines.append(f"    - '{text}'")  # single-quoted: rules may hold ': '
    return "\n".join(lines) + "\n"


def modify_policy(text: str, seed: int = 2) -> str:
    """`text` as a reviewer's change might leave it: three rules removed, three
    changed, three added, forward's policy drop -> accept and $internal widened."""
    rng = random.Random(seed)
    lines = text.splitlines()
    lines = [
        line.replace("internal: [10.0.0.0/8, ", "internal: [10.0.0.0/8, 172.16.0.0/12, ")
        if line.startswith("  internal:")
        else line
        for line in lines
    ]
    forward = lines.index("forward:")
    assert lines[forward + 1] == "  policy: drop"
    lines[forward + 1] = "  policy: accept"
    rules = [number for number, line in enumerate(lines) if line.startswith("    - ")]
    removed = set(rng.sample(rules, 3))
    changed = set(rng.sample([n for n in rules if n not in removed], 3))
    added = set(rng.sample([n for n in rules if n < forward], 3))
    out = []
    for number, line in enumerate(lines):
        if number in added:
            out.append(f"    - '{_rule(rng, 1_000_000 + number, 'input')}'")
        if number in changed:
            verdict = "drop" if "'accept" in line else "accept"
            line = re.sub(r"'(accept|drop|reject with tcp reset|reject)", f"'{verdict}", line, count=1)
        if number not in removed:
            out.append(line)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# the measured compile (runs in a child interpreter)


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _worker(path: str, mode: str, repeat: int) -> dict:
    started = time.perf_counter()
    from nfc import parse
    from nfc.artifacts import build
    from nfc.backends.nft import RULESET
    from nfc.load import load_policy
    from nfc.lower import lower
    from nfc.target import Target

    parse._parser()  # build the lark parser once, outside the measured stages
    gc.disable()  # as nfc.api.compile_policy runs the front end (its docstring says why)
    result: dict = {"init_s": time.perf_counter() - started, "rss_init_kib": _rss_kib()}
    target = Target(memory_bytes=TARGET_MEMORY, word_bits=TARGET_WORD_BITS)

    if mode == "tools":
        result.update(_time_tools(path))
    elif mode == "time":
        best: dict[str, float] = {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            source = load_policy(path)
            t1 = time.perf_counter()
            tree = parse.parse_policy(source)
            t2 = time.perf_counter()
            ruleset = lower(tree, target)
            t3 = time.perf_counter()
            files = build(ruleset, "nft", source.files)
            t4 = time.perf_counter()
            run = {"load": t1 - t0, "parse": t2 - t1, "lower": t3 - t2, "render": t4 - t3, "total": t4 - t0}
            best = {k: min(v, best.get(k, v)) for k, v in run.items()}
            nft_rules = sum(len(chain.rules) for chain in ruleset.chains) + len(ruleset.notrack)
            result["output_bytes"] = len(files[RULESET].encode())
            result["nft_rules"] = nft_rules
            del source, tree, ruleset, files
        result.update({f"{k}_s": v for k, v in best.items()})
        result["rss_peak_kib"] = _rss_kib()
    elif mode == "trace":
        import tracemalloc

        tracemalloc.start()
        peaks = {}
        source = load_policy(path)
        peaks["load"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        tree = parse.parse_policy(source)
        peaks["parse"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        ruleset = lower(tree, target)
        peaks["lower"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        build(ruleset, "nft", source.files)
        peaks["render"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        result.update({f"heap_{k}_bytes": v for k, v in peaks.items()})
        result["heap_peak_bytes"] = max(peaks.values())
    elif mode in ("profile", "profile-tools"):
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        if mode == "profile":
            profiler.enable()
            source = load_policy(path)
            ruleset = lower(parse.parse_policy(source), target)
            build(ruleset, "nft", source.files)
        else:
            _profile_tools(path, profiler)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    return result


def _profile_tools(path: str, profiler: cProfile.Profile) -> None:
    """lint of the compiled policy and diff against its modified copy, under `profiler`."""
    from nfc import api, diff, lint

    ruleset = api.compile_policy(path).ruleset
    modified = Path(path).with_name(Path(path).stem + "-modified.yaml")
    modified.write_text(modify_policy(Path(path).read_text(encoding="utf-8")), encoding="utf-8")
    changed = api.compile_policy(str(modified)).ruleset
    gc.enable()  # as _time_tools runs them
    profiler.enable()
    lint.lint(ruleset)
    diff.diff(ruleset, changed)


def _packet_for(rule: Rule) -> str | None:
    """A packet `rule` matches, in explain's words; None where the rule is
    too intricate for this (a negated address, a meter)."""
    from nfc.ir import Family

    match = rule.match
    ends = (match.saddr, match.daddr)
    if rule.meter is not None or any(a is not None and a.negated for a in ends):
        return None
    family = match.family or next((a.family for a in ends if a is not None), Family.V4)
    v4 = family is Family.V4

    def endpoint(addresses: Addresses | None, default: str, port: int) -> str:
        if addresses is None:
            text = default
        else:
            network = addresses.networks[0]
            text = str(network.network_address + (1 if network.num_addresses > 1 else 0))
        return f"{text}:{port}" if v4 else f"[{text}]:{port}"

    sport = match.sport.ranges[0][0] if match.sport else 40000
    dport = match.dport.ranges[0][0] if match.dport else 40001
    words = [
        match.protocol or "tcp",
        endpoint(match.saddr, "198.18.0.1" if v4 else "2001:db8:ffff::1", sport),
        ">",
        endpoint(match.daddr, "198.18.0.2" if v4 else "2001:db8:ffff::2", dport),
    ]
    if match.iifname is not None:
        words += ["iif", match.iifname.names[0].replace("*", "0")]
    return " ".join(words)


def _time_tools(path: str) -> dict:
    """lint, diff against the modified copy and explain of a few packets, on the compiled policy."""
    from nfc import api, diff, explain, lint
    from nfc.ir import RuleRole

    ruleset = api.compile_policy(path).ruleset
    gc.enable()  # the tools run with the collector on, as `nfc lint` does after compiling
    modified = Path(path).with_name(Path(path).stem + "-modified.yaml")
    modified.write_text(modify_policy(Path(path).read_text(encoding="utf-8")), encoding="utf-8")
    changed = api.compile_policy(str(modified)).ruleset
    result: dict = {}
    # CPU time of this process: the figure of the tool itself, whatever else the machine runs
    t0 = time.process_time()
    result["lint_findings"] = len(lint.lint(ruleset))
    t1 = time.process_time()
    result["diff_lines"] = len(diff.diff(ruleset, changed))
    t2 = time.process_time()
    result.update(lint_s=t1 - t0, diff_s=t2 - t1)
    users = [r for c in ruleset.chains if c.name == "input" for r in c.rules if r.role is RuleRole.USER]
    simple = [p for p in map(_packet_for, users) if p]
    packets = [simple[0], simple[-1], "esp 198.18.0.1 > 198.18.0.2 iif eth9"]
    slowest = 0.0
    for text in packets:
        started = time.process_time()
        explain.explain(ruleset, explain.parse_packet(text))
        slowest = max(slowest, time.process_time() - started)
    result["explain_s"] = slowest
    return result


def _run_child(path: str, mode: str, repeat: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", path, "--mode", mode]
    command += ["--repeat", str(repeat)]
    profiled = mode.startswith("profile")
    done = subprocess.run(command, capture_output=not profiled, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"benchmark child failed ({mode}, {path}):\n{done.stderr}")
    return {} if profiled else json.loads(done.stdout)


def generate_list(entries: int, seed: int = 1) -> str:
    """A blocklist of `entries` lines: random IPv4 addresses, every tenth a /24."""
    rng = random.Random(seed)
    lines = ["# generated blocklist"]
    for index in range(entries):
        value = rng.getrandbits(32)
        if index % 10 == 0:
            lines.append(f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.0/24")
        else:
            lines.append(f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}")
    return "\n".join(lines) + "\n"


def time_list_file(directory: Path, entries: int) -> None:
    """`nfc compile` of a policy that drops a list file of `entries` lines, in a child of its own."""
    (directory / "blocklist.txt").write_text(generate_list(entries), encoding="utf-8")
    policy = directory / "bench-list.yaml"
    policy.write_text(
        "nfc: 1\ndefine:\n  blocklist: {file: blocklist.txt}\n"
        "input:\n  policy: drop\n  rules:\n    - drop from $blocklist\n    - accept tcp dport 22\n"
    )
    command = [sys.executable, "-m", "nfc", "compile", str(policy), "-o", str(directory / "out-list")]
    started = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        sys.exit(f"nfc compile of the list file failed:\n{child.stderr.read() if child.stderr else ''}")
    size = (directory / "out-list" / "ruleset.nft").stat().st_size
    print(
        f"\nlist file of {entries:,} entries: nfc compile {elapsed:.2f} s wall, {usage.ru_utime:.2f} s user,"
        f" peak RSS {usage.ru_maxrss / 1024:.0f} MiB, ruleset.nft {size / (1 << 20):.1f} MiB"
    )
    # explain walks the policy: the packet is checked against the whole list (it is in none of it)
    packet = "tcp 198.18.0.1:4000 > 192.0.2.1:22"
    command = [sys.executable, "-m", "nfc", "explain", str(policy), packet]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"nfc explain against the list file failed:\n{done.stderr}")
    elapsed = time.perf_counter() - started
    print(f"nfc explain '{packet}' against it: {elapsed:.2f} s wall, its compile included")


# --------------------------------------------------------------------------
# driver


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of numbers such as 1000,10000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive numbers")
    return sizes


def _mib(value: float) -> str:
    return f"{value / (1 << 20):7.1f}"


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    options.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, help="rule counts, e.g. 1000,10000")
    options.add_argument("--repeat", type=int, default=1, help="timing runs per size (best is shown)")
    options.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run")
    options.add_argument("--no-tools", action="store_true", help="skip timing lint, diff and explain")
    options.add_argument("--profile", type=int, metavar="SIZE", help="cProfile one size and print hot spots")
    options.add_argument(
        "--profile-tools", type=int, metavar="SIZE", help="cProfile lint and diff of one size instead"
    )
    options.add_argument("--keep", metavar="DIR", help="write the generated policies here and keep them")
    options.add_argument(
        "--list-entries", type=int, default=1_000_000, help="entries of the list file case (0: skip it)"
    )
    options.add_argument("--worker", help=argparse.SUPPRESS)
    options.add_argument("--mode", default="time", help=argparse.SUPPRESS)
    args = options.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.mode, max(1, args.repeat))))
        return 0

    with tempfile.TemporaryDirectory(prefix="nfc-bench-") as scratch:
        directory = Path(args.keep or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        for size, mode in ((args.profile, "profile"), (args.profile_tools, "profile-tools")):
            if size:
                path = directory / f"bench-{size}.yaml"
                path.write_text(generate_policy(size), encoding="utf-8")
                _run_child(str(path), mode, 1)
                return 0
        header = (
            f"{'rules':>7} {'nft rules':>9} {'load s':>7} {'parse s':>7} {'lower s':>7} {'render s':>8}"
            f" {'total s':>7} {'µs/rule':>7} {'RSS MiB':>7} {'heap MiB':>8} {'lint s':>7} {'diff s':>7}"
            f" {'explain s':>9}  heap MiB load/parse/lower/render"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {max(1, args.repeat)}")
        print(header)
        print("-" * len(header))
        for size in args.sizes:
            path = directory / f"bench-{size}.yaml"
            path.write_text(generate_policy(size), encoding="utf-8")
            timing = _run_child(str(path), "time", max(1, args.repeat))
            trace = {} if args.no_trace else _run_child(str(path), "trace", 1)
            tools = {} if args.no_tools else _run_child(str(path), "tools", 1)
            lint_s, diff_s, explain_s = (
                (f"{tools[k]:>{w}.3f}" for k, w in (("lint_s", 7), ("diff_s", 7), ("explain_s", 9)))
                if tools
                else (f"{'-':>7}", f"{'-':>7}", f"{'-':>9}")
            )
            heap = _mib(trace["heap_peak_bytes"]) if trace else f"{'-':>7}"
            stages = (
                "/".join(_mib(trace[f"heap_{s}_bytes"]).strip() for s in ("load", "parse", "lower", "render"))
                if trace
                else "-"
            )
            print(
                f"{size:>7} {timing['nft_rules']:>9} {timing['load_s']:>7.3f} {timing['parse_s']:>7.3f}"
                f" {timing['lower_s']:>7.3f} {timing['render_s']:>8.3f} {timing['total_s']:>7.3f}"
                f" {timing['total_s'] / size * 1e6:>7.1f} {_mib(timing['rss_peak_kib'] * 1024)}"
                f" {heap:>8} {lint_s} {diff_s} {explain_s}  {stages}",
                flush=True,
            )
        print(
            "\nRSS: ru_maxrss of the timing child (interpreter, lark and the policy)."
            "\nheap: tracemalloc peak in a separate child; per stage, it includes what the"
            " earlier stages still hold.\ninit (imports + lark grammar) is not in the stage times."
            "\nlint, diff, explain: CPU seconds of the analysis of the compiled policy (its compile is the"
            " total above);\ndiff against the modified copy, explain the slowest of three packets."
        )
        if args.list_entries > 0:
            time_list_file(directory, args.list_entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
