"""The man pages: groff formats them without a warning, and they name every
subcommand, option and policy key that the code knows.

groff is a prerequisite like nft: a missing groff skips these tests locally
and fails them under CI (the CI variable set)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nfc import cli, load, vocab

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
