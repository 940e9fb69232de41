"""The `nfc` command line. Exit codes: 0 success, 1 findings, 2 bad input or
usage, 3 the kernel refused the ruleset."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from nfc import __version__
from nfc.artifacts import ArtifactError, build, write
from nfc.backends import BACKENDS
from nfc.errors import PolicyError
from nfc.ir import Ruleset
from nfc.load import load_policy
from nfc.lower import Target, lower

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_KERNEL = 3
EXIT_INTERNAL = 70

SIZE = re.compile(r"(\d+)\s*([KMGT]i?B?|B)?\Z", re.IGNORECASE)
SIZE_FACTORS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def memory_size(text: str) -> int:
    match = SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size such as 8G or 8589934592")
    unit = (match[2] or "").lower()[:1]
    return int(match[1]) * SIZE_FACTORS[unit]


def compile_policy(
    path: str, memory: int | None = None, word_bits: int | None = None
) -> tuple[Ruleset, tuple[str, ...]]:
    """Load and lower a policy; PolicyError on bad input."""
    source = load_policy(path)
    host = Target.this_host()
    target = Target(memory or host.memory_bytes, word_bits or host.word_bits)
    return lower(source, target), source.files


def _compile(args: argparse.Namespace) -> int:
    ruleset, sources = compile_policy(args.policy, args.memory, args.word_bits)
    files = build(ruleset, args.backend, sources)
    if args.stdout:
        for name, text in files.items():
            if name not in ("manifest.json", "sysctl.conf"):
                sys.stdout.write(text)
        return EXIT_OK
    write(args.output, files)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nfc", description="nftables-native firewall compiler")
    top.add_argument("--version", action="version", version=f"nfc {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = commands.add_parser("compile", help="compile a policy into an artifact directory")
    compile_.add_argument("policy", metavar="POLICY")
    compile_.add_argument("-b", "--backend", choices=sorted(BACKENDS), default="nft")
    compile_.add_argument("-o", "--output", metavar="OUTDIR", default="build")
    compile_.add_argument("--stdout", action="store_true", help="print the ruleset instead of writing OUTDIR")
    compile_.add_argument(
        "--memory",
        type=memory_size,
        metavar="SIZE",
        help="RAM of the target host for 'conntrack.max: auto' (default: this host's)",
    )
    compile_.add_argument(
        "--word-bits",
        type=int,
        choices=(32, 64),
        help="word size of the target host for 'conntrack.max: auto' (default: this host's)",
    )
    compile_.set_defaults(run=_compile)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except PolicyError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except ArtifactError as exc:
        print(f"nfc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in nfc, never the policy's fault
        print(f"nfc: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
