"""The man pages: groff formats them without a warning, and they name every
subcommand, option, backend, artifact, state file and policy key that the
code knows; the tables and numbers they give are the code's.

groff is a prerequisite like nft: a missing groff skips these tests locally
and fails them under CI (the CI variable set)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from nfc import artifacts, cli, doctor, explain, lint, load, stats_format, vocab
from nfc.backends import BACKENDS, iptables
from nfc.errors import PolicyError
from nfc.lower import lower
from nfc.parse import parse_policy
from nfc.state import LOCK, State
from nfc.state_shapes import ORIGINS, SCHEMAS
from nfc.stats import Fill, LineCount, Stats
from nfc.target import Target

from helpers import TARGET, input_policy, ruleset_of, write_policy

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
NFC_1 = MAN / "nfc.1"
NFC_POLICY_5 = MAN / "nfc-policy.5"
PAGES = (NFC_1, NFC_POLICY_5)

# The default device, and a terminal the way man(1) formats for one.
GROFF_DEVICES = ((), ("-Tutf8", "-rLL=78n"))


def require_groff() -> str:
    groff = shutil.which("groff")
    if groff is None:
        reason = "'groff' is not installed (make install sets it up: groff-base)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return groff


def plain(page: Path) -> str:
    """The page source with the escapes that matter here undone."""
    text = page.read_text(encoding="utf-8")
    for escape, char in ((r"\-", "-"), (r"\&", ""), (r"\(aq", "'"), (r"\(dq", '"'), (r"\e", "\\")):
        text = text.replace(escape, char)
    return re.sub(r"\\f[BIRP]", "", text)


def section(text: str, name: str) -> str:
    """The text of one .SH section."""
    match = re.search(rf'^\.SH "?{re.escape(name)}"?\n(.*?)(?=^\.SH |\Z)', text, re.M | re.S)
    assert match, f"no .SH {name} section"
    return match.group(1)


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def top_parser() -> argparse.ArgumentParser:
    maker = cli.parser
    return maker if isinstance(maker, argparse.ArgumentParser) else maker()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The subcommands that `nfc --help` lists (those added with a help text;
    internal ones such as the rollback timer are left out of it)."""
    actions = [a for a in top_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, "nfc's parser has no subcommands"
    return {
        listed.dest: action.choices[listed.dest] for action in actions for listed in action._choices_actions
    }


@pytest.mark.parametrize("device", GROFF_DEVICES, ids=["default", "utf8"])
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_groff_formats_the_page_without_warnings(page: Path, device: tuple[str, ...]) -> None:
    groff = require_groff()
    # Run tbl only when the page asks for it, as man(1) does.
    tbl = ["-t"] if page.read_text(encoding="utf-8").startswith("'\\\" t") else []
    result = subprocess.run(
        [groff, "-man", "-ww", "-z", *tbl, *device, str(page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"groff warns about {page.name}:\n{result.stderr}"


def test_nfc_1_documents_every_subcommand() -> None:
    text = plain(NFC_1)
    synopsis = section(text, "SYNOPSIS")
    for name in subcommands():
        assert mentions(synopsis, name), f"subcommand '{name}' is missing from the SYNOPSIS of nfc(1)"
        assert re.search(rf"^\.[A-Z]+ .*nfc {re.escape(name)}\b", text, re.M), (
            f"subcommand '{name}' has no entry of its own in nfc(1)"
        )


def test_nfc_1_documents_every_option() -> None:
    text = plain(NFC_1)
    parsers = [top_parser(), *subcommands().values()]
    for parser in parsers:
        for action in parser._actions:
            for option in action.option_strings:
                assert mentions(text, option), f"option '{option}' ({parser.prog}) is missing from nfc(1)"


def test_nfc_1_documents_the_exit_codes() -> None:
    exit_status = section(plain(NFC_1), "EXIT STATUS")
    for code in (cli.EXIT_OK, cli.EXIT_FINDINGS, cli.EXIT_USAGE, cli.EXIT_KERNEL, cli.EXIT_INTERNAL):
        assert re.search(rf"^\.B {code}$", exit_status, re.M), f"exit code {code} is missing from nfc(1)"


@pytest.mark.parametrize(
    ("what", "keys"),
    [
        ("top-level key", load.TOP_KEYS),
        ("chain key", load.CHAIN_KEYS),
        ("conntrack key", load.CONNTRACK_KEYS),
        ("rule key", load.RULE_KEYS),
    ],
)
def test_nfc_policy_5_documents_every_key(what: str, keys: tuple[str, ...]) -> None:
    text = plain(NFC_POLICY_5)
    # A key is documented by a tagged paragraph (.TP) whose tag names it.
    tags = re.findall(r"^\.TP\n\.(?:B|BR|BI) (.*)$", text, re.M)
    tagged = {word for tag in tags for word in re.findall(r"[\w-]+", tag)}
    for key in keys:
        assert key in tagged, f"{what} '{key}' has no entry of its own in nfc-policy(5)"


def test_nfc_policy_5_documents_every_timeout() -> None:
    text = section(plain(NFC_POLICY_5), "CONNTRACK")
    for key, sysctl in load.TIMEOUT_SYSCTLS.items():
        leaf = sysctl.removeprefix("net.netfilter.")
        assert re.search(rf"^{re.escape(key)} +{re.escape(leaf)}$", text, re.M), (
            f"timeout '{key}' -> {sysctl} is missing from nfc-policy(5)"
        )


def test_nfc_policy_5_lists_every_service_name() -> None:
    table = re.search(r"^\.EX\n(.*?)^\.EE$", section(plain(NFC_POLICY_5), "SERVICE NAMES"), re.M | re.S)
    assert table, "no service table in nfc-policy(5)"
    listed = {}
    for line in table.group(1).splitlines():
        cells = line.split()
        assert len(cells) % 2 == 0, f"odd service table row: {line!r}"
        for name, port in zip(cells[::2], cells[1::2], strict=True):
            listed[name] = int(port)
    assert listed == vocab.SERVICES


def example_blocks(text: str) -> list[str]:
    """The bodies of the .EX/.EE blocks in `text`."""
    return re.findall(r"^\.EX\n(.*?)^\.EE$", text, re.M | re.S)


def columns(block: str, headings: tuple[str, ...]) -> list[list[str]]:
    """The rows of a monospace table, cut at the columns of its heading line."""
    head, *rows = block.splitlines()
    starts = [head.index(heading) for heading in headings]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [[row[low:high].strip() for low, high in bounds] for row in rows]


def test_nfc_1_documents_every_backend() -> None:
    text = plain(NFC_1)
    synopsis = section(text, "SYNOPSIS")
    backends = section(text, "BACKENDS")
    for name in BACKENDS:
        assert mentions(synopsis, name), f"backend '{name}' is missing from the SYNOPSIS of nfc(1)"
        assert re.search(rf"^\.TP\n\.B {re.escape(name)}$", backends, re.M), (
            f"backend '{name}' has no entry of its own under BACKENDS in nfc(1)"
        )
        assert mentions(plain(NFC_POLICY_5), name), f"backend '{name}' is missing from nfc-policy(5)"


def test_nfc_1_documents_every_artifact_file(tmp_path: Path) -> None:
    """Each file that some backend writes has an entry under ARTIFACTS."""
    policy = write_policy(
        tmp_path,
        "nfc: 1\nconntrack: {notrack: [udp dport 53], timeouts: {udp: 10}}\ninput: {policy: drop}\n",
    )
    ruleset = lower(parse_policy(load.load_policy(policy)), TARGET)
    tags = re.findall(r"^\.TP\n\.BR? (.*)$", section(plain(NFC_1), "ARTIFACTS"), re.M)
    documented = {word for tag in tags for word in re.findall(r"[\w.-]+", tag)}
    for backend in BACKENDS:
        for name in artifacts.build(ruleset, backend, (str(policy),)):
            assert name in documented, f"{backend} writes {name}, which ARTIFACTS in nfc(1) does not list"


def test_nfc_1_documents_every_state_file(tmp_path: Path) -> None:
    state = State(tmp_path)
    files = {LOCK, *SCHEMAS} | {path.name for path in (state.saved, state.pending, state.rolled_back)}
    listed = section(plain(NFC_1), "FILES")
    for name in files:
        assert re.search(rf"^\.TP\n\.B {re.escape(name)}$", listed, re.M), (
            f"state file {name} has no entry under FILES in nfc(1)"
        )
    stale = set(re.findall(r"[\w-]+\.(?:json|nft)\b", listed)) - files
    assert not stale, f"FILES in nfc(1) names state files that apply does not write: {stale}"


def test_nfc_1_has_a_deploy_script_that_confirms_after_a_health_check() -> None:
    examples = section(plain(NFC_1), "EXAMPLES")
    scripts = [block for block in example_blocks(examples) if block.startswith("#!/bin/sh")]
    assert len(scripts) == 1, "nfc(1) should show one deploy script under EXAMPLES"
    script = scripts[0]
    steps = [r"\bnfc compile ", r"\bnfc check ", r"\bnfc apply .*--confirm 60\b", r"\bnfc confirm\b"]
    lines = script.splitlines()
    found = [next((n for n, line in enumerate(lines) if re.search(step, line)), None) for step in steps]
    assert None not in found and found == sorted(found), f"the deploy script misses a step: {found}"
    between = [line for line in lines[found[2] + 1 : found[3]] if line.strip() and "#" not in line[:1]]
    checks = [line for line in between if not line.lstrip().startswith("#") and "nfc " not in line]
    assert checks, "the deploy script confirms without a health check between apply and confirm"
    assert re.search(r"connection is lost", examples), "EXAMPLES should say what a lost connection does"
    shell = shutil.which("sh")
    if shell is not None:
        result = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"the deploy script is not valid sh: {result.stderr}"


def test_planned_commands_are_not_yet_commands() -> None:
    """A command that NOTES calls planned must not exist yet: once it does,
    it is documented as a command instead."""
    notes = section(plain(NFC_1), "NOTES")
    paragraphs = [text for text in re.split(r"^\.PP$", notes, flags=re.M) if "planned" in text]
    words = r"(?<![\w-])(lint|diff|explain|doctor)(?![\w-])"
    planned = {word for text in paragraphs for word in re.findall(words, text)}
    assert not planned & set(subcommands()), (
        f"nfc(1) calls {sorted(planned & set(subcommands()))} planned, but nfc has them"
    )


def test_nfc_1_documents_every_lint_check() -> None:
    checks = section(plain(NFC_1), "LINT CHECKS")
    tags = re.findall(r'^\.TP\n\.BR (NFC\d+) " ([\w-]+) \((\w+)\)"$', checks, re.M)
    assert tags == sorted(tags), "LINT CHECKS in nfc(1) should be in code order"
    assert set(tags) == {(c.code, c.name, c.severity) for c in lint.CHECKS}
    entry = checks.split("NFC060", 1)[1].split(".TP", 1)[0]
    for port, name in lint.SENSITIVE_PORTS.items():
        assert f"{name} ({port})" in entry, f"NFC060 in nfc(1) does not name {name} ({port})"
    assert f"within {lint.SOON.days} days" in checks


def test_nfc_1_states_the_memory_minimum() -> None:
    assert cli.MIN_MEMORY % 1024**2 == 0
    megabytes = cli.MIN_MEMORY // 1024**2
    assert re.search(rf"^\.B {megabytes}M$", section(plain(NFC_1), "OPTIONS"), re.M), (
        f"nfc(1) should say that --memory is at least {megabytes}M"
    )
    with pytest.raises(argparse.ArgumentTypeError):
        cli.memory_size(f"{megabytes - 1}M")


def test_nfc_1_documents_every_key_of_explain_json(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, input_policy("accept udp dport 53 limit 5/second per saddr"))
    result = explain.explain(ruleset, explain.parse_packet("udp 192.0.2.7:4000 > 192.0.2.1:53"))
    data = result.to_json()
    keys = set(data) | set(data["decided_by"]) | {"chain_policy"} | {k for m in data["meters"] for k in m}
    options = section(plain(NFC_1), "OPTIONS")
    for key in keys:
        assert mentions(options, key), f"explain --json key '{key}' is missing from nfc(1)"


def test_nfc_1_documents_doctor_as_it_judges() -> None:
    text = plain(NFC_1)
    data = doctor.diagnose(doctor.Readings(), TARGET).to_json()
    keys = set(data) | set(data["counters"]) | {"service", "source", "entries", "notrack", "covered"}
    options = section(text, "OPTIONS")
    for key in keys:
        assert mentions(options, key), f"doctor --json key '{key}' is missing from nfc(1)"
    entry = prose(doctor_entry(text))
    assert f"at least {doctor.CRITICAL_FILL:.0%} full" in entry
    assert f"(default {doctor.DEFAULT_WARN_FILL:.0%})" in entry
    assert f"the {('five' if doctor.TOP == 5 else doctor.TOP)} services" in entry
    assert f"dport {doctor.EPHEMERAL}" in entry
    assert f"default {doctor.DEFAULT_LOG_WINDOW:g}" in prose(options)


def doctor_entry(text: str) -> str:
    """The entry of `nfc doctor` under COMMANDS."""
    return text.split(".B nfc doctor\nSay", 1)[1].split('.TP\n.BI "nfc check ', 1)[0]


@pytest.mark.parametrize(
    "word",
    [
        "drop",
        "early_drop",
        "insert_failed",
        "search_restart",
        "buckets",
        "UDP timeout",
        "--log-window",
        "netns",
        "(queried)",
        "skipped:",
        "OK",
        "WARNING",
        "CRITICAL",
    ],
)
def test_nfc_1_explains_every_figure_of_doctor(word: str) -> None:
    assert mentions(doctor_entry(plain(NFC_1)), word), f"the doctor entry of nfc(1) does not explain {word}"


def test_nfc_1_says_what_to_do_at_each_doctor_verdict() -> None:
    entry = doctor_entry(plain(NFC_1))
    advice = re.search(r"^What to do:\n\.RS\n(.*?)^\.RE$", entry, re.M | re.S)
    assert advice, "the doctor entry of nfc(1) has no 'What to do:' list"
    assert re.findall(r"^\.TP\n\.B (\w+)$", advice.group(1), re.M) == ["OK", "WARNING", "CRITICAL"]
    ok, findings, usage = cli.EXIT_OK, cli.EXIT_FINDINGS, cli.EXIT_USAGE
    exits = f"Exits {ok} for OK, {findings} for WARNING or CRITICAL, and {usage} for a usage error"
    assert exits in prose(entry), "the doctor entry of nfc(1) should give its exit codes"


def doctor_example_readings() -> dict[str, doctor.Readings]:
    """The readings behind the sample outputs of nfc(1), by verdict."""
    idle = doctor.Readings(
        count=0,
        max=262144,
        buckets=262144,
        stats=dict.fromkeys(("drop", "early_drop", "insert_failed", "search_restart"), 0),
        table_full=0,
        udp_timeout=30,
        udp_stream_timeout=120,
    )
    host, flow = "192.0.2.1", doctor.Flow
    heavy = {"203.0.113.7": 41210, "203.0.113.9": 12873, "198.51.100.23": 9644, "198.51.100.40": 7002}
    flows = [
        flow("udp", source, host, 40000, 53)
        for source, n in {**heavy, "203.0.113.77": 4806}.items()
        for _ in range(n)
    ]
    flows += [
        flow("udp", f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", host, 40000, 53)
        for i in range(253912 - len(flows))
    ]
    flows += [flow("udp", host, "198.51.100.53", 33000 + i % 30000, 53) for i in range(5120)]
    flows += [flow("tcp", f"100.64.{i >> 8}.{i & 255}", host, 50000, 443) for i in range(2311)]
    flows += [flow("tcp", f"100.65.{i >> 8}.{i & 255}", host, 50000, 53) for i in range(601)]
    flows += [flow("icmp", f"100.66.{i >> 8}.{i & 255}", host, None, None) for i in range(200)]
    log = [
        f"[{t}] nf_conntrack: nf_conntrack: table full, dropping packet"
        for t in ("86101.225410", "86106.231977", "86111.240353")
    ]
    full = doctor.Readings(
        count=len(flows),
        max=262144,
        buckets=65536,
        stats={"drop": 18342, "early_drop": 1203, "insert_failed": 0, "search_restart": 57},
        table_full=24,
        table_full_lines=log,
        udp_timeout=30,
        udp_stream_timeout=120,
        flows=flows,
        local_addresses={host, "127.0.0.1", "::1"},
    )
    return {"OK": idle, "CRITICAL": full}


def test_the_doctor_samples_of_nfc_1_are_what_doctor_prints() -> None:
    samples = [b for b in example_blocks(doctor_entry(plain(NFC_1))) if b.startswith("verdict: ")]
    shown = {block.split()[1]: block for block in samples}
    target = Target(memory_bytes=16 << 30, word_bits=64)  # the 16 GiB host of the CRITICAL sample
    for verdict, readings in doctor_example_readings().items():
        assert verdict in shown, f"nfc(1) shows no sample {verdict} diagnosis of doctor"
        assert shown[verdict] == doctor.diagnose(readings, target).text(), verdict


def lint_check_entries() -> dict[str, str]:
    """The entries of LINT CHECKS in nfc(1), by code."""
    checks = section(plain(NFC_1), "LINT CHECKS")
    parts = re.split(r"^\.TP\n\.BR (NFC\d+) ", checks, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("check", lint.CHECKS, ids=lambda c: c.code)
def test_every_lint_check_has_an_example_that_lint_prints(
    check: lint.Check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each LINT CHECKS entry shows a policy, the finding nfc lint prints
    for it (the same, line and column included) and the fix."""
    checks = section(plain(NFC_1), "LINT CHECKS")
    elided = re.search(r'^\.B \.\.\.\nstands for the rule\n\.BR "(.*)" ,$', checks, re.M)
    assert elided, "LINT CHECKS in nfc(1) should say what '...' in its examples stands for"
    entry = lint_check_entries()[check.code]
    examples = [b for b in example_blocks(entry) if b.startswith("$ cat p.yaml\n")]
    assert len(examples) == 1, f"{check.code} in nfc(1) should show one example"
    lines = examples[0].splitlines()[1:]
    command = next(n for n, line in enumerate(lines) if line.startswith("$ nfc lint p.yaml"))
    policy = [re.sub(r"^( *)\.\.\.$", rf"\g<1>{elided.group(1)}", line) for line in lines[:command]]
    shown = lines[command + 1 :]
    assert any(
        line.startswith("p.yaml:") and f": {check.severity}: {check.code} " in line for line in shown
    ), f"{check.code} in nfc(1) does not show its finding"
    (tmp_path / "p.yaml").write_text("\n".join(policy) + "\n")
    monkeypatch.chdir(tmp_path)
    status = cli.main(lines[command].split()[2:])
    assert status == (cli.EXIT_FINDINGS if check.severity == "error" else cli.EXIT_OK), check.code
    printed = capsys.readouterr().out.splitlines()
    for line in shown:
        assert line in printed, f"{check.code}: nfc lint does not print this line of nfc(1):\n{line}"
    assert re.search(r"^\.EE\n\.IP\nFix: ", entry, re.M), f"{check.code} in nfc(1) does not show the fix"


def test_the_expired_rule_warning_is_the_documented_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(
        tmp_path, "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - {rule: accept tcp, expires: 2000-01-01}\n"
    )
    assert cli.main(["compile", str(policy), "--stdout"]) == cli.EXIT_OK
    warning = capsys.readouterr().err.strip()
    assert re.fullmatch(r".+:5:\d+: warning: this rule expired on 2000-01-01", warning), warning
    for page in PAGES:
        assert ": warning: this rule expired on " in plain(page), f"{page.name} lacks the expiry warning"
    assert dt.date(2000, 1, 1) < dt.date.today()


def test_nfc_policy_5_lists_the_essential_icmp_types_of_every_chain() -> None:
    chains = section(plain(NFC_POLICY_5), "CHAINS")
    table = next(b for b in example_blocks(chains) if b.startswith("chain "))
    listed: dict[str, tuple[list[str], list[str]]] = {}
    chain = ""
    for name, v4, v6 in columns(table, ("chain", "ICMP (IPv4)", "ICMPv6 (IPv6)")):
        chain = name or chain
        types = listed.setdefault(chain, ([], []))
        types[0].extend([v4] if v4 else [])
        types[1].extend([v6] if v6 else [])
    assert set(listed) == set(load.CHAIN_NAMES)
    for name, (v4, v6) in listed.items():
        assert v4 == list(vocab.ESSENTIAL_ICMP_ERRORS), name
        mld = [f"{t} *" for t in vocab.ESSENTIAL_MLD] if name in vocab.ESSENTIAL_MLD_CHAINS else []
        assert v6 == [*vocab.ESSENTIAL_ICMPV6_ERRORS, *vocab.ESSENTIAL_ICMPV6_DISCOVERY[name], *mld], name


def test_nfc_policy_5_gives_the_icmp_essential_default_of_the_code(tmp_path: Path) -> None:
    for chain in load.CHAIN_NAMES:
        for policy, default in (("drop", "essential"), ("accept", "manual")):
            text = f"nfc: 1\n{chain}: {{policy: {policy}}}\n"
            assert load.load_policy(write_policy(tmp_path, text)).chains[chain].icmp == default
    chains = section(plain(NFC_POLICY_5), "CHAINS")
    assert re.search(r"for every chain\s+whose policy is drop", chains), "CHAINS: the icmp default"


def test_nfc_policy_5_lists_every_icmp_type_with_its_number() -> None:
    blocks = example_blocks(section(plain(NFC_POLICY_5), "ICMP TYPES"))
    assert len(blocks) == 2, "ICMP TYPES should hold an icmp and an icmpv6 table"
    for block, types in zip(blocks, (vocab.ICMP_TYPES, vocab.ICMPV6_TYPES), strict=True):
        cells = block.split()
        listed = {name: int(number) for name, number in zip(cells[::2], cells[1::2], strict=True)}
        assert listed == types


def test_nfc_policy_5_maps_every_reject_type_for_iptables() -> None:
    generated = section(plain(NFC_POLICY_5), "THE GENERATED RULESET")
    table = next(b for b in example_blocks(generated) if b.startswith("reject with"))
    rows = {kind: (v4, v6) for kind, v4, v6 in columns(table, ("reject with", "rules.v4", "rules.v6"))}
    expected = {"tcp reset": ("tcp-reset", "tcp-reset")}
    for kind, v4 in iptables.REJECT_V4.items():
        v6_kind = vocab.REJECT_ICMP_TYPES[kind]
        expected[f"icmp {kind}"] = (v4, iptables.REJECT_V6[v6_kind] if v6_kind else "(IPv4 only)")
    assert rows == expected


def test_nfc_policy_5_states_the_limits_of_iptables() -> None:
    text = plain(NFC_POLICY_5)
    assert f"at most {iptables.LOG_PREFIX_MAX} bytes" in text
    assert re.search(rf"at most {iptables.MULTIPORT_MAX} ports in one match,\s+a range counting as two", text)
    assert re.search(rf"names of at most {iptables.HASHLIMIT_NAME_MAX} bytes", text)
    assert f"longer than {iptables.LOG_PREFIX_MAX} bytes" in plain(NFC_1)


def prose(text: str) -> str:
    """Roff source as running text: macros and their quotes dropped, lines joined."""
    words = []
    for line in text.splitlines():
        if line.startswith(".") and not re.match(r"\.[A-Z]{1,2}( |$)", line):
            continue
        words.append(re.sub(r"^\.[A-Z]{1,2} ?", "", line).replace('"', ""))
    return re.sub(r"\s+", " ", " ".join(words))


@pytest.mark.parametrize(
    ("rate", "largest", "unit"),
    [("1/day", 213503, ""), ("1 kbytes/hour", 5123071, " bytes")],
)
def test_nfc_policy_5_gives_the_token_bucket_bounds_of_the_code(
    tmp_path: Path, rate: str, largest: int, unit: str
) -> None:
    documented = prose(section(plain(NFC_POLICY_5), "RATE LIMITS AND METERS"))
    assert re.search(rf"{re.escape(rate)} (takes )?a burst of at most {largest}\b", documented), rate
    ruleset_of(tmp_path, input_policy(f"accept limit {rate} burst {largest}{unit}"))
    with pytest.raises(PolicyError, match="token bucket"):
        ruleset_of(tmp_path, input_policy(f"accept limit {rate} burst {largest + 1}{unit}"))


@pytest.mark.parametrize("rate", ["10 mbytes/hour", "1 mbytes/day"])
def test_nfc_policy_5_names_byte_rates_that_overflow(tmp_path: Path, rate: str) -> None:
    documented = prose(section(plain(NFC_POLICY_5), "RATE LIMITS AND METERS"))
    assert rate in documented and "are refused even with their default burst" in documented
    with pytest.raises(PolicyError, match="token bucket"):
        ruleset_of(tmp_path, input_policy(f"accept limit {rate}"))


@pytest.mark.parametrize(("limit", "seconds"), [("10/second burst 20", 2), ("1/minute", 300)])
def test_nfc_policy_5_gives_the_meter_timeouts_of_the_code(tmp_path: Path, limit: str, seconds: int) -> None:
    documented = prose(section(plain(NFC_POLICY_5), "RATE LIMITS AND METERS"))
    assert f"{seconds} seconds for {limit}" in documented, limit
    ruleset = ruleset_of(tmp_path, input_policy(f"accept udp limit {limit} per saddr"))
    assert {meter.timeout for meter in ruleset.meters} == {seconds}


def test_the_package_installs_every_man_page() -> None:
    """pyproject's data-files put each page where man(1) looks, under the
    install prefix: share/man/manN for a page of section N."""
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {Path(page).name: directory for directory, pages in data_files.items() for page in pages}
    assert installed == {page.name: f"share/man/man{page.suffix[1:]}" for page in MAN.iterdir()}


# The counters behind the samples of STATS in nfc(1).
STATS_SAMPLE = Stats(
    backend="nft",
    target="/etc/nfc/web.yaml",
    since=1796030000.0,
    lines=(
        LineCount("web.yaml", 5, "input", 912345, 612345678, None),
        LineCount("web.yaml", 9, "input", 18234, 1094040, None),
        LineCount("web.yaml", 10, "input", 523, 31380, 523),
        LineCount("web.yaml", 11, "input", 0, 0, None),
        LineCount("web.yaml", 12, "input", None, None, None),
    ),
    meters=(Fill("ssh_flood_v4", "ipv4", 17, 65535), Fill("ssh_flood_v6", "ipv6", 0, 65535)),
    sets=(Fill("admins", "ipv4", 2, None),),
    conntrack_count=1523,
    conntrack_max=262144,
)


def test_the_stats_samples_of_nfc_1_are_what_stats_prints() -> None:
    blocks = example_blocks(section(plain(NFC_1), "STATS"))
    table = [block for block in blocks if block.startswith("rules of ")]
    assert table == [stats_format.render(STATS_SAMPLE, "text")], "the table of STATS in nfc(1) is not nfc's"
    excerpt = next(block for block in blocks if block.startswith("# TYPE "))
    printed = iter(stats_format.render(STATS_SAMPLE, "prometheus").splitlines())
    in_order = all(line in printed for line in excerpt.splitlines())
    assert in_order, "the Prometheus excerpt of STATS in nfc(1) is not what nfc prints, in its order"


def test_nfc_1_documents_every_figure_of_stats() -> None:
    text = plain(NFC_1)
    data = stats_format.to_json(STATS_SAMPLE)
    rows = [data["rules"][0], data["meters"][0], data["conntrack"]]  # type: ignore[index]
    keys = set(data) | {key for row in rows for key in row}
    documented = section(text, "STATS") + section(text, "OPTIONS")
    for key in keys:
        assert mentions(documented, key), f"stats --format json key '{key}' is missing from nfc(1)"
    metrics = re.findall(r"^# TYPE (\w+) ", stats_format.render(STATS_SAMPLE, "prometheus"), re.M)
    for metric in metrics:
        assert mentions(section(text, "STATS"), metric), f"metric {metric} is missing from STATS in nfc(1)"
    assert mentions(section(text, "FILES"), ORIGINS)


def test_the_nat_samples_of_explain_and_diff_are_what_nfc_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The router of nfc(1)'s explain examples, each of its explanations,
    and the diff example made from it."""
    blocks = example_blocks(section(plain(NFC_1), "COMMANDS"))
    (router,) = [b for b in blocks if b.startswith("$ cat router.yaml\n")]
    lines = router.splitlines()[1:]
    commands = [n for n, line in enumerate(lines) if line.startswith("$ nfc explain router.yaml ")]
    policy = lines[: commands[0]]
    (tmp_path / "router.yaml").write_text("\n".join(policy) + "\n")
    monkeypatch.chdir(tmp_path)
    for start, end in zip(commands, [*commands[1:], len(lines)], strict=True):
        packet = lines[start].split("'")[1]
        assert cli.main(["explain", "router.yaml", packet]) == cli.EXIT_OK
        assert capsys.readouterr().out.splitlines() == lines[start + 1 : end], packet
    (shown,) = [b for b in blocks if "nat: newly FORWARDS" in b]
    dnat, masquerade = (next(line for line in policy if word in line) for word in ("- dnat", "- masquerade"))
    (tmp_path / "old.yaml").write_text("".join(f"{line}\n" for line in policy if line != dnat))
    (tmp_path / "new.yaml").write_text("".join(f"{line}\n" for line in policy if line != masquerade))
    assert cli.main(["diff", "old.yaml", "new.yaml"]) == cli.EXIT_OK
    assert capsys.readouterr().out.splitlines() == shown.splitlines()


def test_the_example_of_nfc_policy_5_is_the_flagship_policy_and_its_golden_output() -> None:
    """EXAMPLE shows policies/dns-recursive.yaml and what nfc writes for it,
    as the golden files hold it (the nft ruleset indented with spaces)."""
    blocks = example_blocks(section(plain(NFC_POLICY_5), "EXAMPLE"))
    golden = ROOT / "tests" / "golden"
    shown = {
        "the policy": ROOT / "policies" / "dns-recursive.yaml",
        "ruleset.nft": golden / "dns-recursive.nft",
        "rules.v4": golden / "dns-recursive.rules.v4",
        "sysctl.conf": golden / "dns-recursive.sysctl.conf",
    }
    assert len(blocks) == len(shown), f"EXAMPLE of nfc-policy(5) should show {', '.join(shown)}"
    for block, (name, path) in zip(blocks, shown.items(), strict=True):
        assert block == path.read_text(encoding="utf-8").expandtabs(4), (
            f"{name} in the EXAMPLE of nfc-policy(5) is not {path.relative_to(ROOT)}"
        )
