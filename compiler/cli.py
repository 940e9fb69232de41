"""The `nfc` command line. Exit codes: 0 success, 1 findings, 2 bad input or
usage, 3 the kernel refused the ruleset."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Callable, Sequence

from nfc import __version__, api, diff, doctor, explain, lint, neighbours, output, stats_format, timer
from nfc.artifacts import ArtifactError
from nfc.backends import BACKENDS, DEFAULT_BACKEND, nft_sets
from nfc.backends.kernel import ApplyError, KernelRefused
from nfc.errors import PolicyError, printable
from nfc.persist import DEFAULT_PERSIST_DIR, PERSIST_DIR_ENV
from nfc.runtime_sets import MAX_TIMEOUT_MS, duration_ms
from nfc.state import DEFAULT_STATE_DIR, LOCK_TIMEOUT
from nfc.values import ascii_int

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_KERNEL = 3
EXIT_INTERNAL = 70

# Numbers are read in the digits 0-9 only: \d, int() and float() take every script's.
SIZE = re.compile(r"([0-9]+)\s*([KMGT]i?B?|B)?\Z", re.IGNORECASE | re.ASCII)
DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
MIN_MEMORY = 16 * 1024**2
SIZE_FACTORS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def memory_size(text: str) -> int:
    match = SIZE.match(text.strip())
    number = ascii_int(match[1]) if match else None
    if match is None or number is None:
        raise argparse.ArgumentTypeError(f"'{printable(text)}' is not a size such as 8G or 8589934592")
    unit = (match[2] or "").lower()[:1]
    size = number * SIZE_FACTORS[unit]
    if size < MIN_MEMORY:
        raise argparse.ArgumentTypeError(f"'{printable(text)}' is less than 16M, not the RAM of a host")
    return size


def _compile(args: argparse.Namespace) -> int:
    ruleset, sources = api.compile_policy(args.policy, args.memory, args.word_bits, args.allow_empty)
    files = api.build(ruleset, args.backend, sources, args.level == "1")
    for rule in api.expired(ruleset):
        print(f"{rule.origin}: warning: this rule expired on {rule.expires}", file=sys.stderr)
    if args.stdout:
        rulesets = {name: files[name] for name in BACKENDS[args.backend].files}
        for name, text in rulesets.items():
            if len(rulesets) > 1:
                output.write(f"# ==> {name} <==\n")
            output.write(text)
        return EXIT_OK
    api.write(args.output, files)
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    imported = api.import_ruleset(args.file, args.source_format, args.output)
    if not args.output:
        output.write(imported.policy)
    for problem in imported.problems:
        print(problem.render(), file=sys.stderr)
    for note in imported.notes:
        print(f"nfc import: {note}", file=sys.stderr)
    for finding in imported.fixed:
        print(f"nfc import: fixed, lint's finding on the input as it was: {finding}", file=sys.stderr)
    print(
        f"nfc import: lint on the imported policy (the input's own mistakes, kept): "
        f"{len(imported.findings) or 'no'} finding(s)",
        file=sys.stderr,
    )
    sys.stderr.write(lint.render(imported.findings, "text"))
    return EXIT_FINDINGS if imported.problems else EXIT_OK


def _report(line: str) -> None:
    if line.startswith(neighbours.WARNING):
        print(line, file=sys.stderr, flush=True)
    else:
        output.report(line)


def _lint(args: argparse.Namespace) -> int:
    findings = api.lint(args.policies, today=args.today, management_port=args.management_port)
    output.write(lint.render(findings, args.format))
    return EXIT_FINDINGS if any(f.severity == "error" for f in findings) else EXIT_OK


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{printable(text)}' is not a date written YYYY-MM-DD") from None


def _diff(args: argparse.Namespace) -> int:
    if args.base is not None:
        if len(args.policies) != 1:
            print("nfc: error: with --base, name one POLICY", file=sys.stderr)
            return EXIT_USAGE
        try:
            changes = api.diff_base(args.base, args.policies[0])
        except diff.BaseError as exc:
            print(f"nfc: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        if len(args.policies) != 2:
            print("nfc: error: diff takes OLD NEW, or --base GITREV POLICY", file=sys.stderr)
            return EXIT_USAGE
        changes = api.diff(args.policies[0], args.policies[1])
    output.write(diff.render(changes, args.format))
    return EXIT_FINDINGS if changes and args.exit_code else EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    diagnosis = api.doctor(args.policy, args.memory, args.warn_fill, args.log_window)
    output.write(doctor.render(diagnosis, args.json))
    if diagnosis.forward_warning is not None:
        print(diagnosis.forward_warning, file=sys.stderr)
    return diagnosis.exit_code


def _number_in(text: str, high: float, what: str) -> float:
    value = float(text) if DECIMAL.match(text) else -1.0
    if not 0 < value <= high:
        raise argparse.ArgumentTypeError(f"'{printable(text)}' is not {what}")
    return value


def whole_number(text: str) -> int:
    number = ascii_int(text)
    if number is None:
        raise argparse.ArgumentTypeError(
            f"'{printable(text)}' is not a whole number written with the digits 0-9"
        )
    return number


def port_number(text: str) -> int:
    number = ascii_int(text)
    if number is None or not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"'{printable(text)}' is not a port (1-65535)")
    return number


def fraction(text: str) -> float:
    return _number_in(text, 1, "a fraction between 0 and 1")


def _explain(args: argparse.Namespace) -> int:
    try:
        result = api.explain(args.policy, args.packet, over_limit=args.over_limit)
    except explain.PacketError as exc:
        print(f"<packet>:1:{exc.column}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    output.write((json.dumps(result.to_json(), indent=2) if args.json else "\n".join(result.lines())) + "\n")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    api.check(args.target, args.backend, args.level == "1")
    _report(f"the kernel accepts the ruleset of {args.target}")
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    api.apply(
        args.target,
        report=_report,
        backend=args.backend,
        state_dir=args.state_dir,
        confirm_seconds=args.confirm,
        lock_timeout=args.lock_timeout,
        persist=args.persist,
        persist_dir=args.persist_dir,
        optimize=args.level == "1",
    )
    return EXIT_OK


def _confirm(args: argparse.Namespace) -> int:
    api.confirm(
        report=_report,
        state_dir=args.state_dir,
        lock_timeout=args.lock_timeout,
        persist=args.persist,
        persist_dir=args.persist_dir,
    )
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    api.rollback(report=_report, state_dir=args.state_dir, lock_timeout=args.lock_timeout)
    return EXIT_OK


def _restore(args: argparse.Namespace) -> int:
    api.restore(report=_report, state_dir=args.state_dir, lock_timeout=args.lock_timeout)
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    output.write(stats_format.render(api.stats(args.target, state_dir=args.state_dir), args.format))
    return EXIT_OK


def _refresh(args: argparse.Namespace) -> int:
    api.refresh(args.target, report=_report, state_dir=args.state_dir, lock_timeout=args.lock_timeout)
    return EXIT_OK


def _set(args: argparse.Namespace) -> int:
    if args.action == "list":
        if len(args.words) > 1:
            print("nfc: error: 'nfc set list' takes at most one NAME", file=sys.stderr)
            return EXIT_USAGE
        for line in nft_sets.listing(args.table, args.words[0] if args.words else None):
            output.write(line + "\n")
        return EXIT_OK
    if len(args.words) < 2:
        print(f"nfc: error: 'nfc set {args.action}' takes NAME ELEMENT...", file=sys.stderr)
        return EXIT_USAGE
    timeout = None
    if args.timeout is not None:
        timeout = duration_ms(args.timeout)
        if timeout is None or not 1 <= timeout <= MAX_TIMEOUT_MS:  # the kernel's limit, as in a policy
            print(
                f"nfc: error: '{printable(args.timeout)}' is not a timeout such as 90s or 10m "
                f"(at most {MAX_TIMEOUT_MS // 1000}s)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    count = nft_sets.change(args.table, args.action, args.words[0], args.words[1:], timeout)
    output.write(
        f"{'added to' if args.action == 'add' else 'deleted from'} {args.words[0]}: {count} element(s)\n"
    )
    return EXIT_OK


def _rollback_timer(args: argparse.Namespace) -> int:
    api.rollback_timer(args.token, args.deadline, args.state_dir)
    return EXIT_OK


def positive_seconds(text: str) -> float:
    return _number_in(text, 86400, "a number of seconds between 0 and 86400")


def _backend_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-b",
        "--backend",
        choices=sorted(BACKENDS),
        default=DEFAULT_BACKEND,
        help="backend to compile a POLICY for (an OUTDIR says its own); default nft",
    )
    command.add_argument(
        "-O",
        dest="level",
        choices=("0", "1"),  # as text: int() would take every script's digits
        default="1",
        metavar="LEVEL",
        help="-O0 writes a rule per policy rule; -O1 (default) folds long runs into sets and maps (nft)",
    )


def _state_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"where apply keeps the saved ruleset and its lock (default $NFC_STATE_DIR or "
        f"{DEFAULT_STATE_DIR})",
    )
    command.add_argument(
        "--lock-timeout",
        type=positive_seconds,
        default=LOCK_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for another nfc holding the lock",
    )


def _persist_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--persist",
        action="store_true",
        help="iptables-legacy: also write the confirmed ruleset to iptables-persistent's rules.v4, rules.v6",
    )
    command.add_argument(
        "--persist-dir",
        metavar="DIR",
        help=f"where --persist writes (default ${PERSIST_DIR_ENV} or {DEFAULT_PERSIST_DIR})",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nfc", description="nftables-native firewall compiler")
    top.add_argument("--version", action="version", version=f"nfc {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = commands.add_parser("compile", help="compile a policy into an artifact directory")
    compile_.add_argument("policy", metavar="POLICY")
    _backend_option(compile_)
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
        type=whole_number,
        choices=(32, 64),
        help="word size of the target host for 'conntrack.max: auto' (default: this host's)",
    )
    compile_.add_argument(
        "--allow-empty",
        action="store_true",
        help="compile a policy with no chain and no notrack entry (an empty firewall) without refusing it",
    )
    compile_.set_defaults(run=_compile)

    lint_ = commands.add_parser("lint", help="static checks with stable codes; exit 1 on any error")
    lint_.add_argument("policies", metavar="POLICY", nargs="+")
    lint_.add_argument("--format", choices=("text", "json", "github", "sarif"), default="text")
    lint_.add_argument("--today", type=iso_date, help="the date expiry is judged against (default: today)")
    lint_.add_argument(
        "--management-port",
        type=port_number,
        default=22,
        metavar="PORT",
        help="port whose absence is a lockout risk",
    )
    lint_.set_defaults(run=_lint)

    diff_ = commands.add_parser("diff", help="what a policy change newly allows, blocks or untracks")
    diff_.add_argument("policies", metavar="OLD NEW | POLICY", nargs="+")
    diff_.add_argument("--base", metavar="GITREV", help="compare POLICY with itself at GITREV")
    diff_.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    diff_.add_argument("--exit-code", action="store_true", help="exit 1 when the behaviour changed")
    diff_.set_defaults(run=_diff)

    doctor_ = commands.add_parser("doctor", help="is connection tracking the problem here?")
    doctor_.add_argument("--json", action="store_true", help="machine-readable output")
    doctor_.add_argument("--policy", metavar="POLICY", help="say which suggestions POLICY already covers")
    doctor_.add_argument(
        "--warn-fill",
        type=fraction,
        default=doctor.DEFAULT_WARN_FILL,
        metavar="FRACTION",
        help=f"table fill that is a WARNING (default {doctor.DEFAULT_WARN_FILL})",
    )
    doctor_.add_argument("--memory", type=memory_size, metavar="SIZE", help="RAM for the suggested max")
    doctor_.add_argument(
        "--log-window",
        type=positive_seconds,
        default=doctor.DEFAULT_LOG_WINDOW,
        metavar="SECONDS",
        help="how far back kernel log messages count (default 3600)",
    )
    doctor_.set_defaults(run=_doctor)

    explain_ = commands.add_parser("explain", help="show which rule decides a packet")
    explain_.add_argument("policy", metavar="POLICY")
    explain_.add_argument(
        "packet", metavar="PACKET", help="e.g. 'udp 198.51.100.7:5353 > 192.0.2.1:53 iif eth0'"
    )
    explain_.add_argument("--json", action="store_true", help="machine-readable output")
    explain_.add_argument(
        "--over-limit", action="store_true", help="assume the sender is over every limit (default: within)"
    )
    explain_.set_defaults(run=_explain)

    import_ = commands.add_parser("import", help="turn an iptables-save or nft ruleset into a policy")
    import_.add_argument("file", metavar="FILE")
    import_.add_argument(
        "--from",
        dest="source_format",
        choices=("iptables-save", "nft"),
        help="the input's format (default: detected)",
    )
    import_.add_argument(
        "-o", "--output", metavar="POLICY", help="write the policy here (default: standard output)"
    )
    import_.set_defaults(run=_import)

    check = commands.add_parser("check", help="have the kernel validate a ruleset without loading it")
    check.add_argument("target", metavar="POLICY|OUTDIR")
    _backend_option(check)
    check.set_defaults(run=_check)

    apply = commands.add_parser("apply", help="load a ruleset in one transaction, saving the old one")
    apply.add_argument("target", metavar="OUTDIR|POLICY", nargs="?", default="build")
    _backend_option(apply)
    apply.add_argument(
        "--confirm",
        type=positive_seconds,
        metavar="SECONDS",
        help="roll back after SECONDS unless 'nfc confirm' runs first",
    )
    _state_options(apply)
    _persist_options(apply)
    apply.set_defaults(run=_apply)

    confirm = commands.add_parser("confirm", help="keep the ruleset of 'apply --confirm'")
    _state_options(confirm)
    _persist_options(confirm)
    confirm.set_defaults(run=_confirm)

    rollback = commands.add_parser("rollback", help="restore the state saved by the last apply")
    _state_options(rollback)
    rollback.set_defaults(run=_rollback)

    restore = commands.add_parser("restore", help="load the last confirmed ruleset, as at boot")
    _state_options(restore)
    restore.set_defaults(run=_restore)

    stats = commands.add_parser("stats", help="packets and bytes per policy line, dead rules, meter fill")
    stats.add_argument(
        "target",
        metavar="POLICY|OUTDIR",
        nargs="?",
        help="report only if the rules in force are this policy's (compiled for the backend in force)",
    )
    stats.add_argument("--format", choices=stats_format.FORMATS, default="text")
    stats.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"where apply saved the origin of each rule (default $NFC_STATE_DIR or {DEFAULT_STATE_DIR})",
    )
    stats.set_defaults(run=_stats)

    refresh = commands.add_parser("refresh", help="reload the sets of list files, rules unchanged")
    refresh.add_argument("target", metavar="POLICY|OUTDIR", nargs="?", help="default: what was last applied")
    _state_options(refresh)
    refresh.set_defaults(run=_refresh)

    set_ = commands.add_parser("set", help="add, delete or list the elements of a runtime set")
    set_.add_argument("action", choices=("add", "del", "list"))
    set_.add_argument("words", nargs="*", metavar="NAME [ELEMENT...]")
    set_.add_argument("--timeout", metavar="DURATION", help="add: how long the elements stay (10m, 1h)")
    set_.add_argument("--table", default="nfc", help="the table of nfc's ruleset (the policy's 'table'; nfc)")
    set_.set_defaults(run=_set)

    timer_ = commands.add_parser(timer.COMMAND)  # started by apply --confirm
    _state_options(timer_)
    timer_.add_argument("token")
    timer_.add_argument("deadline", type=float)
    timer_.set_defaults(run=_rollback_timer)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    output.forget()
    try:
        code = run(args)
        output.finish()  # a full disk or a reader gone fails here, not in the interpreter's exit
        return code
    except output.OutputError as exc:
        print(f"nfc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PolicyError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except (ArtifactError, ApplyError) as exc:
        print(f"nfc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KernelRefused as exc:
        print(exc, file=sys.stderr)
        return EXIT_KERNEL
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in nfc, never the policy's fault
        print(f"nfc: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
