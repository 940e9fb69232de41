"""Kernel load time of the bench policy: how many sets nfc's output
creates, and how long the kernel takes to check it.

    sudo nice -n 10 .venv/bin/python bench/load_time.py                        # N = 10k, 20k; -O0 and -O1
    sudo nice -n 10 .venv/bin/python bench/load_time.py --sizes 50000,100000 --levels 1

The kernel binds each anonymous set (an inline list `{ a, b }`, an inline
verdict map) to its rule by a walk of everything the load added before it,
and checks each new set's name against every set of the table, so a load
costs time that grows with the number of sets times the ruleset's size
(kernel 6.18). For each N and optimization level this
compiles bench/compile.py's generate_policy(N) (the CPU seconds of
`nfc compile`, in a child process), counts the sets and maps the file
declares and the anonymous ones its rules hold, and times `nft -c -f` (the
kernel's full check, nothing committed) in a network namespace created for
the purpose and deleted on exit, also on an error, Ctrl-C or SIGTERM. It
prints a table and asserts nothing. Needs root.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compile import generate_policy

NFC = [sys.executable, "-m", "nfc"]
DECLARED = re.compile(r"\t(?:set|map) \S+ \{\Z")
ANONYMOUS = re.compile(r"\{ ")  # an inline set or map in a rule
METER_UPDATE = re.compile(r"@\S+ \{ ")  # `update @meter { key limit ... }`: a statement, not a set


def set_counts(text: str) -> tuple[int, int]:
    """The sets and maps `text` declares, and the anonymous ones of its rules."""
    declared = anonymous = 0
    for line in text.splitlines():
        if DECLARED.match(line):
            declared += 1
        elif line.startswith("\t\t") and "elements = {" not in line:
            anonymous += len(ANONYMOUS.findall(line)) - len(METER_UPDATE.findall(line))
    return declared, anonymous


def child_seconds(command: list[str], **options: object) -> tuple[float, float, float]:
    """Run `command`; its wall, user and system seconds (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, **options)  # type: ignore[call-overload]
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,20000", help="comma-separated N")
    parser.add_argument("--levels", default="0,1", help="comma-separated optimization levels")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    levels = [int(level) for level in arguments.levels.split(",")]
    if os.geteuid() != 0:
        sys.exit("load_time.py: needs root (it creates a network namespace)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` deletes the namespace
    namespace = f"nfc-load-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="nfc-load-") as scratch:
            print(
                f"{'N':>7} {'level':>5} {'compile CPU s':>13} {'named sets':>10} {'anonymous':>9} "
                f"{'rules':>7} {'nft -c s':>9} {'user s':>7} {'sys s':>7}"
            )
            for size in sizes:
                policy = Path(scratch, f"bench-{size}.yaml")
                policy.write_text(generate_policy(size))
                for level in levels:
                    output = Path(scratch, f"bench-{size}-O{level}.nft")
                    with output.open("w") as sink:
                        _, user, system = child_seconds(
                            [*NFC, "compile", f"-O{level}", "--stdout", str(policy)], stdout=sink
                        )
                    text = output.read_text()
                    declared, anonymous = set_counts(text)
                    rules = sum(
                        1
                        for line in text.splitlines()
                        if line.startswith("\t\t") and not line.startswith("\t\t\t") and " comment " in line
                    )
                    wall, load_user, load_system = child_seconds(
                        ["ip", "netns", "exec", namespace, "nft", "-c", "-f", str(output)]
                    )
                    print(
                        f"{size:>7} {'-O' + str(level):>5} {user + system:>13.2f} {declared:>10} "
                        f"{anonymous:>9} {rules:>7} {wall:>9.2f} {load_user:>7.2f} {load_system:>7.2f}",
                        flush=True,
                    )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    main()
