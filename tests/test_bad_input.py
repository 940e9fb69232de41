"""Bad input: every malformed policy is a `FILE:LINE:COL: error:` at the
mistake, exit code 2, no traceback, nothing on stdout and no artifact.

Each case is a policy (and sometimes included files) written with markers
where the mistake is: `@^` marks the exact position (line and column) the
error must point at, `@~` marks a line where any column is fine. A case with
several markers accepts any one of them (for mistakes that sit at two places,
such as a clash between two definitions). The markers are removed before the
files are written. The corpus runs in-process through `cli.main(argv)`, with
the working directory, standard streams and exit code of a real run; a few
cases, and the tests after the corpus, also run the real `python -m nfc` in a
subprocess, and must print exactly what the in-process run prints.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nfc import cli
from nfc.artifacts import MANIFEST
from nfc.backends.nft import RULESET

ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): error: ")
EXACT, LINE_ONLY = "@^", "@~"
POLICY = "p.yaml"
TIMEOUT = 60

VALID = """\
nfc: 1
name: valid
define:
  admins: [192.0.2.10, 2001:db8::10]
conntrack:
  notrack:
    - udp dport 53
  max: 262144
input:
  policy: drop
  rules:
    - accept udp dport 53
    - accept tcp dport 22 from $admins
output:
  policy: accept
"""


@dataclass(frozen=True)
class Case:
    files: dict[str, str]  # name -> text with markers; a name ending in "/" is a directory
    fragments: tuple[str, ...] = ()  # must appear in stderr
    main: str = POLICY


@dataclass(frozen=True)
class Spot:
    file: str
    line: int
    col: int | None

    def matches(self, file: str, line: int, col: int) -> bool:
        return self.file == file and self.line == line and (self.col is None or self.col == col)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{'*' if self.col is None else self.col}"


def strip_markers(text: str) -> tuple[str, list[tuple[int, int | None]]]:
    """`text` without markers, and the (line, column) of each marker; columns
    count characters from 1, as the YAML reader does."""
    out: list[str] = []
    spots: list[tuple[int, int | None]] = []
    line, col, i = 1, 1, 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in (EXACT, LINE_ONLY):
            spots.append((line, col if pair == EXACT else None))
            i += 2
            continue
        out.append(text[i])
        if text[i] == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return "".join(out), spots


def write_case(directory: Path, case: Case) -> list[Spot]:
    spots: list[Spot] = []
    for name, text in case.files.items():
        path = directory / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        clean, marks = strip_markers(text)
        # Lone surrogates stand for bytes that are not UTF-8.
        path.write_bytes(clean.encode("utf-8", "surrogateescape"))
        spots.extend(Spot(str(path), line, col) for line, col in marks)
    return spots


def nfc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line, `python -m nfc`, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "nfc", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        cwd=cwd,
    )


def process_state() -> dict[str, object]:
    """What one in-process run could leave behind for the next."""
    return {
        "cwd": os.getcwd(),
        "streams": (sys.stdin, sys.stdout, sys.stderr),
        "environ": dict(os.environ),
        "argv": list(sys.argv),
        "path": list(sys.path),
        "recursion limit": sys.getrecursionlimit(),
        "threads": threading.active_count(),
        "open files": sorted(os.listdir("/proc/self/fd")),
    }


@contextlib.contextmanager
def streams_of_a_process() -> Iterator[tuple[io.BytesIO, io.BytesIO]]:
    """sys.stdout and sys.stderr as a process has them: UTF-8, strict on
    stdout and backslashreplace on stderr, so what cannot be encoded fails
    (or is escaped) as it would in a subprocess."""
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            yield out, err
    finally:
        for stream in (stdout, stderr):
            stream.detach()  # keeps the bytes readable: closing a wrapper closes its buffer


def nfc_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`nfc args` run by `cli.main` in this process, from `cwd`: its exit code,
    and its stdout and stderr decoded as `nfc()` decodes a subprocess's. An
    exception escaping main is a traceback on stderr, as the interpreter would
    print it."""
    before = process_state()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with streams_of_a_process() as (out, err):
            try:
                code: object = cli.main(list(args))
            except SystemExit as exit_:  # argparse exits on usage errors
                code = exit_.code
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(previous)
    assert process_state() == before, "the run changed the state of the process"
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(
        ["nfc", *args],
        returncode,
        out.getvalue().decode("utf-8", "replace"),
        err.getvalue().decode("utf-8", "replace"),
    )


# --------------------------------------------------------------------------
# policy skeletons


def rules(*lines: str, chain: str = "input", head: str = "") -> str:
    """A policy whose `chain` holds `lines` as rules (the first one on line 5
    plus the lines of `head`)."""
    body = "".join(f"    - {line}\n" for line in lines)
    return f"nfc: 1\n{head}{chain}:\n  policy: drop\n  rules:\n{body}"


def notrack(*entries: str, head: str = "") -> str:
    """A policy with conntrack.notrack `entries` (the first one on line 4
    plus the lines of `head`)."""
    body = "".join(f"    - {entry}\n" for entry in entries)
    return f"nfc: 1\n{head}conntrack:\n  notrack:\n{body}input:\n  policy: accept\n"


DEFINES = "define:\n  admins: [192.0.2.10, 198.51.100.7]\n  dns: 53\n  v4only: 10.0.0.0/8\n"


def case(case_id: str, policy: str, *fragments: str, files: dict[str, str] | None = None) -> object:
    return pytest.param(Case({POLICY: policy, **(files or {})}, fragments), id=case_id)


# --------------------------------------------------------------------------
# the cases

YAML_SYNTAX = [
    case("yaml-bad-indentation", "nfc: 1\ninput:\n  policy: drop\n@~   rules: []\n", "YAML syntax"),
    case(
        "yaml-unclosed-flow-sequence",
        "nfc: 1\ndefine:\n@~  a: [1, 2\n@~input:\n  policy: drop\n",
        "YAML syntax",
    ),
    case(
        "yaml-unclosed-quote",
        'nfc: 1\ninput:\n  policy: drop\n  rules:\n@~    - "accept tcp dport 22\n',
        "YAML syntax",
    ),
    case("yaml-bad-escape", rules(r'"accept @^\@^q"'), "YAML syntax", "escape"),
    case("yaml-tab-indentation", "nfc: 1\ninput:\n@^\tpolicy: drop\n", "tabs"),
    case("yaml-tab-before-rule", "nfc: 1\ninput:\n  policy: drop\n  rules:\n@^\t- accept\n", "tabs"),
    case("yaml-two-documents", "nfc: 1\n@^---\nnfc: 1\n", "document"),
    case("yaml-undefined-alias", "nfc: 1\ninput:\n  policy: @^*p\n", "alias"),
    case("yaml-merge-key", "nfc: 1\ninput:\n  @^<<: {policy: drop}\n", "merge"),
    case("yaml-nul-byte", rules("accept@^\x00")),
    case("yaml-control-char-in-comment", "nfc: 1\n# bell@^\x07\ninput:\n  policy: drop\n"),
    case("yaml-non-utf8", rules('accept comment "caf@^\udce9"'), "UTF-8"),
    case("yaml-non-utf8-in-comment", "nfc: 1\n# r@^\udce9\udcf8gle\ninput:\n  policy: drop\n", "UTF-8"),
    case("yaml-deep-nesting", "nfc: 1\ndefine:\n@~  a: " + "[" * 5000 + "]" * 5000 + "\n"),
    case(
        "yaml-alias-bomb",
        "nfc: 1\ndefine:\n@~  a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
        + "".join(f"@~  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)),
        "YAML nodes",
    ),
    case("yaml-crlf-line-endings", rules("accept tcp dport @^0").replace("\n", "\r\n"), "out of range"),
    case("yaml-mapping-key-number", "nfc: 1\n@^1: x\n", "must be a string"),
    case("yaml-rule-with-colon-space", rules("@^accept tcp dport 22 comment 'a: b'")),
]

# Nesting: the error is at the first node more than MAX_DEPTH levels below
# the top-level mapping, whatever the YAML writes the levels with. The
# deepest ones overflowed the C stack of libyaml's composer (SIGSEGV).
MAX_DEPTH = 64
DEEP = 30_000
ALIAS_BOMB = "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))

NESTING = [
    case(
        "nest-flow-sequences",
        "nfc: 1\ninput: " + "[" * MAX_DEPTH + "@^" + "[" * (DEEP - MAX_DEPTH) + "]" * DEEP + "\n",
        "deeper than 64 levels",
    ),
    case(
        "nest-flow-mappings",  # the key of the 64th mapping is the 65th level
        "nfc: 1\ndefine: "
        + "{a: " * (MAX_DEPTH - 1)
        + "{@^a: "
        + "{a: " * DEEP
        + "x"
        + "}" * (DEEP + MAX_DEPTH),
        "deeper than 64 levels",
    ),
    case(
        "nest-block-mappings",
        "nfc: 1\n"
        + "".join("  " * level + ("@^" if level == MAX_DEPTH else "") + "a:\n" for level in range(100))
        + "  " * 100
        + "x\n",
        "deeper than 64 levels",
    ),
    case(
        "nest-compact-sequences",
        "nfc: 1\ninput:\n" + "- " * MAX_DEPTH + "@^" + "- " * (DEEP - MAX_DEPTH) + "x\n",
        "deeper than 64 levels",
    ),
    case(
        "nest-explicit-keys",  # `? ? x`: a mapping whose key is a mapping, ...
        "nfc: 1\n" + "? " * (MAX_DEPTH + 1) + "@^" + "? " * 100 + "x\n",
        "deeper than 64 levels",
    ),
    case(
        "nest-block-flow-mix",  # levels 1-4 in block style, then flow from level 5
        "nfc: 1\na:\n  b:\n    - - - {c: " + "[" * (MAX_DEPTH - 5) + "@^" + "[" * 100 + "]" * 159 + "}\n",
        "deeper than 64 levels",
    ),
    case(
        "nest-alias-to-a-deep-node",  # *d at level 5 names 60 levels: 65
        "nfc: 1\ndefine:\n  deep: &d " + "[" * 60 + "1" + "]" * 60 + "\n  use: [[[@^*d]]]\n",
        "deeper than 64 levels",
    ),
    case("nest-alias-inside-its-node", "nfc: 1\ndefine:\n  a: &x [1, @^*x]\n", "inside the node it names"),
    case(
        "nest-alias-bomb",  # the first *a4 of a5 makes 234578 nodes
        "nfc: 1\ndefine:\n  a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
        + ALIAS_BOMB.replace("&a5 [", "&a5 [@^"),
        "more than 200000 YAML nodes",
    ),
    case(
        "nest-in-an-included-file",
        "nfc: 1\ninclude: [b.yaml]\n",
        "deeper than 64 levels",
        files={"b.yaml": "define:\n  a: " + "[" * (MAX_DEPTH - 1) + "@^[" + "]" * MAX_DEPTH + "\n"},
    ),
]

# Numbers are written with the digits 0-9. Other scripts' digits passed
# str.isdigit(), and then int() refused them (exit 70) or took them (as 53).
HUGE_DIGITS = "9" * 5000  # more than int() reads
ARABIC_53 = "\u0665\u0663"  # Arabic-Indic five, three
FULLWIDTH_53 = "\uff15\uff13"
DIGITS = [
    case("define-port-superscript", rules("accept udp dport $p", head='define: {p: @^"²"}\n'), "not a port"),
    case(
        "define-port-arabic-indic",
        rules("accept udp dport $p", head=f"define:\n  p: @^'{ARABIC_53}'\n"),
        "0-9",
    ),
    case(
        "define-port-fullwidth-plain", rules("accept udp dport $p", head=f"define:\n  p: @^{FULLWIDTH_53}\n")
    ),
    case("define-port-digit-and-superscript", rules("accept udp dport $p", head="define:\n  p: @^5³\n")),
    case(
        "define-port-range-devanagari",
        rules("accept tcp dport $web", head="define:\n  web: [80, @^\u0967\u0966\u0968\u096a-2048]\n"),
        "not a port",
    ),
    case(
        "define-port-more-digits-than-int-reads",
        rules("accept tcp dport $p", head=f"define:\n  p: @^'{HUGE_DIGITS}'\n"),
        "out of range",
    ),
    case(
        "define-port-range-more-digits-than-int-reads",
        rules("accept tcp dport $p", head=f"define:\n  p: @^'1-{HUGE_DIGITS}'\n"),
        "out of range",
    ),
    case(
        "define-port-hex-too-long-to-print",
        rules("accept tcp dport $p", head="define:\n  p: @^0x" + "F" * 4000 + "\n"),
        "out of range",
    ),
    case("conntrack-max-binary-too-long-to-print", "nfc: 1\nconntrack:\n  max: @^0b" + "1" * 5000 + "\n"),
    case("define-address-arabic-indic", rules("accept from $a", head="define:\n  a: @^10.0.0.\u0668\n")),
    case("rule-port-superscript", rules("accept udp dport 5@^³"), "unexpected character"),
    case("rule-proto-arabic-indic", rules("accept proto @^\u0666"), "unexpected character"),
    case("rule-rate-arabic-indic", rules("drop limit @^\u0661\u0660/second"), "unexpected character"),
    case(
        "rule-mask-fullwidth", rules("drop limit 10/second per saddr/@^\uff12\uff14"), "unexpected character"
    ),
]

EMPTY = [
    case("empty-file", "@^", "empty"),
    case("whitespace-only", "@^  \n\n \t \n   \n"),
    case("comments-only", "@^# nothing\n# here\n"),
    case("empty-document", "@^---\n"),
    case("scalar-document", "@^just a string\n", "mapping"),
    case("list-document", "@^- nfc: 1\n", "mapping"),
]

VERSION = [
    case("nfc-missing", "@^name: x\ninput:\n  policy: drop\n", "nfc: 1"),
    case("nfc-string", 'nfc: @^"1"\ninput:\n  policy: drop\n', "version"),
    case("nfc-2", "nfc: @^2\ninput:\n  policy: drop\n", "version"),
    case("nfc-true", "nfc: @^true\ninput:\n  policy: drop\n", "version"),
    case("nfc-null", "@~nfc:\ninput:\n  policy: drop\n", "version"),
]

UNKNOWN_KEYS = [
    case(
        "top-key-misspelt",
        "nfc: 1\n@^inptu:\n  policy: drop\n",
        "unknown key 'inptu'",
        "did you mean 'input'",
    ),
    case("top-key-defines", "nfc: 1\n@^defines:\n  a: 1\n", "did you mean 'define'"),
    case("top-key-policy", "nfc: 1\n@^policy: drop\n", "unknown key 'policy'"),
    case("chain-key-misspelt", "nfc: 1\ninput:\n  @^polciy: drop\n", "did you mean 'policy'"),
    case(
        "chain-key-rule", "nfc: 1\ninput:\n  policy: drop\n  @^rule:\n    - accept\n", "did you mean 'rules'"
    ),
    case(
        "rule-mapping-key-misspelt",
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - rule: accept\n      @^commnet: hi\n",
        "did you mean 'comment'",
    ),
    case("rule-mapping-key-flow", rules("{rule: accept, @^expire: 2027-01-01}"), "did you mean 'expires'"),
    case(
        "conntrack-key-misspelt",
        "nfc: 1\nconntrack:\n  @^notrak:\n    - udp dport 53\n",
        "did you mean 'notrack'",
    ),
    case(
        "timeouts-key-misspelt",
        "nfc: 1\nconntrack:\n  timeouts:\n    udp: 10\n    @^udp_streem: 60\n",
        "did you mean 'udp_stream'",
    ),
    case(
        "timeouts-key-flow",
        "nfc: 1\nconntrack:\n  timeouts: {udp: 10, @^tcp_establised: 60}\n",
        "did you mean 'tcp_established'",
    ),
]

CIDRS = [
    case("cidr-host-bits", rules("accept from @^10.0.0.1/8"), "host bits", "10.0.0.0/8"),
    case("cidr-host-bits-v6", rules("accept from @^2001:db8::1/32"), "host bits", "2001:db8::/32"),
    case("cidr-bad-octet", rules("accept from @^10.0.0.256"), "not a valid"),
    case("cidr-three-octets", rules("accept to @^1.2.3"), "not a valid"),
    case("cidr-bad-v6", rules("accept to @^2001:db8:::1"), "not a valid"),
    case("cidr-prefix-33", rules("accept from @^10.0.0.0/33"), "not a valid"),
    case("cidr-prefix-129", rules("accept from @^2001:db8::/129"), "not a valid"),
    case("cidr-host-bits-in-set", rules("accept from {10.0.0.0/8, @^172.16.0.1/12}"), "host bits"),
    case(
        "cidr-host-bits-in-define",
        rules("accept from $internal", head="define:\n  internal: [10.0.0.0/8, @^192.168.1.1/16]\n"),
        "host bits",
    ),
    case(
        "cidr-bad-quoted-in-define",
        rules("accept from $internal", head='define:\n  internal: ["fd00::/8", @^"@^fd00::1/8"]\n'),
        "host bits",
    ),
    case("cidr-in-notrack", notrack("udp dport 53 from @^10.0.0.1/8"), "host bits"),
    case(
        "cidr-in-included-define",
        rules("accept from $nets", head="include: [b.yaml]\n"),
        "host bits",
        files={"b.yaml": "define:\n  nets: [@^10.0.0.1/8]\n"},
    ),
]

PORTS = [
    case("port-0", rules("accept tcp dport @^0"), "out of range"),
    case("port-65536", rules("accept tcp dport @^65536"), "out of range"),
    case("port-huge", rules("accept udp dport @^99999999999999999999"), "out of range"),
    case("port-range-reversed", rules("accept tcp dport @^2000-1000"), "reversed"),
    case("port-range-upper-65536", rules("accept tcp dport @^1024-@^65536"), "out of range"),
    case("port-range-from-0", rules("accept tcp sport @^0-1023"), "out of range"),
    case("port-0-in-set", rules("accept tcp dport {53, @^0}"), "out of range"),
    case("port-negative", rules("accept tcp dport @^-1")),
    case("port-empty-set", rules("accept tcp dport {@^}")),
    case("define-port-0", rules("accept tcp dport $p", head="define:\n  p: @^0\n"), "out of range"),
    case(
        "define-port-65536-in-list",
        rules("accept tcp dport $web", head="define:\n  web: [80, @^65536]\n"),
        "out of range",
    ),
    case(
        "define-port-huge",
        rules("accept tcp dport $p", head="define:\n  p: @^99999999999999999999\n"),
        "out of range",
    ),
    case(
        "define-range-reversed",
        rules("accept tcp dport $web", head="define:\n  web: [80, @^8080-8000]\n"),
        "reversed",
    ),
    case("notrack-sport-0", notrack("udp sport @^0"), "out of range"),
]

UNKNOWN_NAMES = [
    case(
        "unknown-name-address",
        rules("accept tcp dport 22 from @^$admin", head=DEFINES),
        "did you mean 'admins'",
    ),
    case("unknown-name-port", rules("accept tcp dport @^$dsn", head=DEFINES), "did you mean 'dns'"),
    case("unknown-name-no-defines", rules("accept from @^$nets"), "unknown name '$nets'"),
    case("unknown-name-in-notrack", notrack("udp dport @^$dnss", head=DEFINES), "unknown name '$dnss'"),
    case("unknown-name-in-define", rules("accept tcp dport $b", head="define:\n  b: [80, @^$c]\n"), "'$c'"),
    case("define-self-reference", rules("accept tcp dport $a", head="define:\n  a: @^$a\n"), "cycle"),
    case("define-addresses-as-ports", rules("accept tcp dport @^$admins", head=DEFINES), "holds addresses"),
    case("define-ports-as-addresses", rules("accept from @^$dns", head=DEFINES), "holds ports"),
    case("define-mixes-kinds", rules("accept from $m", head="define:\n@~  m: [10.0.0.0/8, 53]\n"), "mixes"),
    # a chain of 500 defines each naming the next overflowed Python's stack (exit 70)
    case(
        "define-chain-too-deep",
        rules(
            "accept from $d0",
            head="define:\n"
            + "".join(f"  d{i}: {'@^' if i == 63 else ''}$d{i + 1}\n" for i in range(500))
            + "  d500: 10.0.0.1\n",
        ),
        "defines name each other more than 64 deep, from $d0",
    ),
]

INCLUDES = [
    case(
        "include-cycle",
        "nfc: 1\ninclude: [b.yaml]\ninput:\n  policy: drop\n",
        "cycle",
        files={"b.yaml": "include: [@^p.yaml]\n"},
    ),
    case(
        "include-cycle-three-files",
        "nfc: 1\ninclude: [b.yaml]\n",
        "cycle",
        files={"b.yaml": "include: [c.yaml]\n", "c.yaml": "define:\n  x: 1\ninclude: [@^b.yaml]\n"},
    ),
    case("include-self", "nfc: 1\ninclude: @^p.yaml\ninput:\n  policy: drop\n", "cycle"),
    case("include-self-dot-slash", "nfc: 1\ninclude: [@^./p.yaml]\n", "cycle"),
    case("include-missing-file", "nfc: 1\ninclude: [@^missing.yaml]\n", "missing.yaml"),
    case("include-directory", "nfc: 1\ninclude: [@^sub]\n", files={"sub/": ""}),
    case("include-empty-string", "nfc: 1\ninclude: [@^'@^']\n"),
    case("include-number", "nfc: 1\ninclude: [@^5]\n", "string"),
    case("include-mapping", "nfc: 1\ninclude: @^{a: b}\n"),
    case(
        "include-forbidden-input",
        "nfc: 1\ninclude: [b.yaml]\n",
        "unknown key 'input'",
        files={"b.yaml": "define:\n  x: 1\n@^input:\n  policy: drop\n"},
    ),
    case(
        "include-forbidden-conntrack-max",
        "nfc: 1\ninclude: [b.yaml]\n",
        "unknown key 'max'",
        files={"b.yaml": "conntrack:\n  notrack:\n    - udp dport 53\n  @^max: 5\n"},
    ),
    case(
        "include-forbidden-table",
        "nfc: 1\ninclude: [b.yaml]\n",
        "unknown key 'table'",
        files={"b.yaml": "@^table: other\n"},
    ),
    case(
        "include-version-2",
        "nfc: 1\ninclude: [b.yaml]\n",
        "version",
        files={"b.yaml": "nfc: @^2\ndefine:\n  x: 1\n"},
    ),
    case(
        "include-yaml-error",
        "nfc: 1\ninclude: [b.yaml]\n",
        "tabs",
        files={"b.yaml": "define:\n@^\tx: 1\n"},
    ),
    case(
        "include-bad-notrack-entry",
        "nfc: 1\ninclude: [b.yaml]\n",
        "out of range",
        files={"b.yaml": "conntrack:\n  notrack:\n    - udp dport @^0\n"},
    ),
    case(
        "include-duplicate-key",
        "nfc: 1\ninclude: [b.yaml]\n",
        "duplicate key",
        files={"b.yaml": "define:\n  x: 1\n  @^x: 1\n"},
    ),
    case(
        "include-redefines-differently",
        "nfc: 1\ninclude: [b.yaml]\ndefine:\n  @^dns: 53\n",
        "b.yaml:2:",
        "p.yaml:4:",
        files={"b.yaml": "define:\n  @^dns: 54\n"},
    ),
    case(
        "two-includes-redefine-differently",
        "nfc: 1\ninclude: [b.yaml, c.yaml]\n",
        "b.yaml:2:",
        "c.yaml:3:",
        files={
            "b.yaml": "define:\n  @^nets: 10.0.0.0/8\n",
            "c.yaml": "# c\ndefine:\n  @^nets: 10.0.0.0/16\n",
        },
    ),
]

FAMILIES = [
    case("ip6-with-v4-address", rules("accept @^ip6 from @^10.0.0.1"), "can match no packet"),
    case("icmp-from-v6-address", rules("accept @^icmp from @^2001:db8::1"), "can match no packet"),
    case("from-v4-to-v6", rules("accept from @^10.0.0.0/8 to @^2001:db8::/32"), "can match no packet"),
    case("icmpv6-type-with-ip", rules("accept @^ip @^icmpv6 type echo-request"), "can match no packet"),
    case("icmp-type-with-ip6", rules("accept @^ip6 @^icmp type echo-request"), "can match no packet"),
    case("icmpv6-from-v4", rules("accept @^icmpv6 from @^10.0.0.0/8"), "can match no packet"),
    case("ip6-with-v4-define", rules("accept @^ip6 from @^$v4only", head=DEFINES), "can match no packet"),
    case(
        "notrack-from-v4-to-v6",
        notrack("udp dport 53 from @^10.0.0.0/8 to @^2001:db8::1"),
        "can match no packet",
    ),
    case("reject-prot-unreachable-dual", rules("@^reject with icmp prot-unreachable"), "ICMPv6"),
]


def comment_key(value: str) -> str:
    """A rule mapping whose `comment:` (line 6) is `value`."""
    return (
        f"nfc: 1\ninput:\n  policy: drop\n  rules:\n    - rule: accept tcp dport 22\n      comment: {value}\n"
    )


INJECTION = [
    case("comment-quote-injection", rules(r"""@~'accept comment "x\" ; flush ruleset ; \""'""")),
    case("comment-semicolon-after-string", rules('accept comment "x" @^; flush ruleset')),
    case("comment-unterminated", rules('accept comment @^"x')),
    case("comment-backslash", rules(r"""'accept comment @^"@^x\"'"""), "not allowed"),
    case("comment-newline-in-rule", rules(r'@~"accept comment \"x\n; flush ruleset\""')),
    case("comment-escape-in-rule", rules(r'@~"accept comment \"x\e[2J\""')),
    case("comment-key-quote-injection", comment_key("""@^'@^x" ; flush ruleset ; "'"""), "not allowed"),
    case("comment-key-newline", comment_key(r'@^"@^x\n flush ruleset"'), "not allowed"),
    case("comment-key-backslash", comment_key(r"@^'@^x\'"), "not allowed"),
    case("comment-key-dollar-backtick", comment_key("@^'@^$(reboot) `id`'"), "not allowed"),
    case(
        "comment-key-block-scalar",
        'nfc: 1\ninput:\n  policy: drop\n  rules:\n    - rule: accept\n@~      comment: |\n@~        x"\n'
        "        flush ruleset\n",
        "not allowed",
    ),
    case("comment-key-too-long", comment_key("@^" + "x" * 65), "longer than"),
    case("comment-in-rule-too-long", rules('accept comment @^"@^' + "x" * 65 + '"'), "longer than"),
    case("log-prefix-quote-injection", rules(r"""@~'accept log prefix "a\" ; flush ruleset ; \""'""")),
    case("log-prefix-backslash", rules(r"""'accept @^log @^prefix @^"a\" counter'"""), "not allowed"),
    case("log-prefix-escape-char", rules(r'@~"accept log prefix \"a\e[2J\""'), "not allowed"),
    case("log-prefix-newline", rules(r'@~"accept log prefix \"a\nflush ruleset\""')),
    case("log-prefix-too-long", rules('accept @^log @^prefix @^"' + "x" * 70 + '"'), "longer than"),
    case(
        "define-name-injection",
        rules("accept", head="""define:\n  @^'x"; flush ruleset; "': 1\n"""),
        "not a valid name",
    ),
    case("define-name-newline", rules("accept", head='define:\n  @^"a\\nb": 1\n'), "not a valid name"),
    case("define-name-dollar", rules("accept", head="define:\n  @^$x: 1\n"), "not a valid name"),
    case("meter-name-semicolon", rules("drop udp dport 53 limit 10/second per saddr name x@^;flush")),
    case("meter-name-quoted", rules("""'drop udp dport 53 limit 10/second per saddr name @^"x ; y"'""")),
    case(
        "meter-name-too-long",
        rules("drop udp dport 53 @^limit 10/second per saddr @^name @^" + "m" * 40),
        "not a valid name",
    ),
    case("table-name-injection", "nfc: 1\ntable: @^'@^nfc; flush ruleset'\n", "table name"),
    case("table-name-brace", "nfc: 1\ntable: @^'@^nfc { }'\n", "table name"),
    case("table-name-number", "nfc: 1\ntable: @^5\n", "string"),
    case("policy-name-injection", """nfc: 1\nname: @^'@^x" ; flush ruleset ; "'\n""", "policy name"),
    case("policy-name-newline", 'nfc: 1\nname: @^"@^x\\nflush ruleset"\n', "policy name"),
    case("policy-name-number", "nfc: 1\nname: @^5\n", "string"),
    case("iif-injection", rules("""'accept @^iif @^"eth0;flush ruleset"'"""), "interface name"),
    case("iif-too-long", rules("accept @^iif @^abcdefghijklmnopq"), "interface name"),
]

HUGE = [
    case(
        "rate-10e30",
        rules("drop @^limit over @^1000000000000000000000000000000/second"),
        "out of range",
    ),
    case("rate-0", rules("drop @^limit over @^0/second"), "out of range"),
    case("burst-huge", rules("drop @^limit 10/second @^burst @^99999999999999999999"), "out of range"),
    case(
        "burst-bytes-overflow", rules("drop @^limit 10 mbytes/second @^burst @^5000 mbytes"), "out of range"
    ),
    case("size-huge", rules("drop @^limit 10/second per saddr @^size @^99999999999"), "out of range"),
    case("size-without-per", rules("drop @^limit 10/second @^size 100"), "per saddr"),
    case("mask-33", rules("drop @^limit 10/second per saddr/@^33"), "/33"),
    case("mask-129", rules("drop @^limit 10/second per saddr/24,/@^129"), "/129"),
    case("mask-0", rules("drop @^limit 10/second per saddr/@^0"), "/0"),
    case("proto-256", rules("accept proto @^256"), "out of range"),
    case("conntrack-max-huge", "nfc: 1\nconntrack:\n  max: @^99999999999999999999\n", "between"),
    case("conntrack-max-0", "nfc: 1\nconntrack:\n  max: @^0\n", "between"),
    case("conntrack-max-negative", "nfc: 1\nconntrack:\n  max: @^-1\n", "between"),
    case("conntrack-max-word", "nfc: 1\nconntrack:\n  max: @^lots\n", "auto"),
    case("conntrack-max-float", "nfc: 1\nconntrack:\n  max: @^1.5\n", "whole number"),
    case("timeout-huge", "nfc: 1\nconntrack:\n  timeouts: {udp: @^99999999999}\n", "between"),
    case("timeout-0", "nfc: 1\nconntrack:\n  timeouts:\n    udp_stream: @^0\n", "between"),
    case("timeout-string", "nfc: 1\nconntrack:\n  timeouts: {udp: @^'10'}\n", "whole number"),
    case("timeouts-list", "nfc: 1\nconntrack:\n  timeouts: @^[10]\n", "mapping"),
    case("rule-too-long", rules("@^accept comment " + "x" * 5000), "longer than"),
]

WRONG_TYPES = [
    case("policy-number", "nfc: 1\ninput:\n  policy: @^5\n", "policy"),
    case("policy-misspelt", "nfc: 1\ninput:\n  policy: @^dorp\n", "did you mean 'drop'"),
    case("rules-string", 'nfc: 1\ninput:\n  policy: drop\n  rules: @^"accept"\n', "must be a list"),
    case("rules-mapping", "nfc: 1\ninput:\n  policy: drop\n  rules: @^{accept: tcp}\n", "must be a list"),
    case("define-value-mapping", rules("accept from $a", head="define:\n  a: @^{x: 1}\n"), "a mapping"),
    case("define-value-boolean", rules("accept from $a", head="define:\n  a: @^yes\n"), "a boolean"),
    case("define-value-null", rules("accept from $a", head="define:\n@~  a:\n"), "null"),
    case("define-value-empty-list", rules("accept from $a", head="define:\n  a: @^[]\n"), "empty"),
    case("define-value-nested-list", rules("accept from $a", head="define:\n  a: [@^[1, 2]]\n"), "a list"),
    case("define-not-mapping", "nfc: 1\ndefine: @^[a, b]\n", "mapping"),
    case("chain-not-mapping", "nfc: 1\ninput: @^drop\n", "mapping"),
    case("chain-missing-policy", "nfc: 1\n@^input:\n  @^rules: []\n", "needs a 'policy'"),
    case("state-misspelt", "nfc: 1\ninput:\n  policy: drop\n  state: @^automatic\n", "did you mean 'auto'"),
    case("state-boolean", "nfc: 1\ninput:\n  policy: drop\n  state: @^no\n", "state"),
    case("icmp-bad", "nfc: 1\ninput:\n  policy: drop\n  icmp: @^none\n", "icmp"),
    case("conntrack-not-mapping", "nfc: 1\nconntrack: @^[udp dport 53]\n", "mapping"),
    case("notrack-string", "nfc: 1\nconntrack:\n  notrack: @^udp dport 53\n", "'notrack' must be a list"),
    case("rule-number", rules("@^5"), "string"),
    case("rule-null", "nfc: 1\ninput:\n  policy: drop\n  rules:\n@~    -\n"),
    case("rule-empty-string", rules('@^"@^"'), "empty rule"),
    case("rule-yaml-list", rules("@^[accept, tcp, dport, 22]"), "a list"),
    case("rule-yaml-list-block", "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - @^- accept\n", "a list"),
    case("rule-key-list", rules("rule: @^[accept]"), "string"),
    case("rule-key-number", rules("rule: @^5"), "string"),
    case("rule-mapping-without-rule", rules("@^comment: hi"), "'rule'"),
    case("comment-key-number", comment_key("@^5"), "string"),
    case("comment-key-empty", comment_key('@^"@^"'), "empty"),
    case("expires-word", rules("{rule: accept, expires: @^tomorrow}"), "date"),
    case("expires-impossible-date", rules("{rule: accept, expires: @^2027-02-30}")),
    case("expires-number", rules("{rule: accept, expires: @^20270301}"), "date"),
]

DUPLICATES = [
    case(
        "duplicate-top-key", "nfc: 1\ninput:\n  policy: drop\n@^input:\n  policy: accept\n", "duplicate key"
    ),
    case("duplicate-nfc", "nfc: 1\n@^nfc: 1\n", "duplicate key"),
    case("duplicate-chain-key", "nfc: 1\ninput:\n  policy: drop\n  @^policy: accept\n", "duplicate key"),
    case("duplicate-define", rules("accept", head="define:\n  a: 1\n  @^a: 2\n"), "duplicate key"),
    case("duplicate-rule-key", rules("{rule: accept, @^rule: drop}"), "duplicate key"),
    case("duplicate-comment-clause", rules('accept @^comment "a" @^comment @^"b"'), "given twice"),
    case("duplicate-limit-clause", rules("drop limit 10/second @^limit 20/second"), "given twice"),
    case("duplicate-log-clause", rules("accept log @^log"), "given twice"),
    case("duplicate-counter-clause", rules("accept counter @^counter"), "given twice"),
    case("duplicate-dport", rules("accept tcp dport 22 @^dport 23"), "given twice"),
    case("duplicate-from", rules("accept from 10.0.0.0/8 @^from 192.168.0.0/16"), "given twice"),
    case("duplicate-protocol", rules("accept tcp @^tcp"), "given twice"),
    case(
        "comment-in-rule-and-key",
        'nfc: 1\ninput:\n  policy: drop\n  rules:\n    - rule: accept @^comment @^"a"\n@~      comment: b\n',
        "comment",
    ),
]

RULES = [
    case("dport-without-protocol", rules("accept @^dport 22"), "needs a protocol"),
    case("sport-with-icmp", rules("accept icmp @^sport 22"), "needs a protocol"),
    case("dport-with-proto-gre", rules("accept proto gre @^dport 22"), "needs a protocol"),
    case("two-protocols", rules("accept tcp @^udp dport 53"), "protocol"),
    case("tcp-and-icmp-type", rules("accept tcp @^icmp type echo-request"), "one protocol"),
    case(
        "meter-reused-other-rate",
        rules(
            "drop udp dport 53 limit over 10/second per saddr name m",
            "drop tcp dport 53 @^limit over 20/second per saddr name m",
        ),
        "different parameters",
    ),
    case(
        "meter-reused-other-key",
        rules(
            "drop udp dport 53 limit over 10/second per saddr name m",
            "drop tcp dport 53 @^limit over 10/second per daddr name m",
        ),
        "different parameters",
    ),
    case(
        "meter-reused-across-chains",
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - drop limit 10/second name m\n"
        "output:\n  policy: accept\n  rules:\n    - drop @^limit 10/minute name m\n",
        "different parameters",
    ),
    case(
        "meter-name-clashes-with-set",
        rules(
            "accept from $admins",
            "drop @^limit 10/second per saddr @^name @^admins",
            head=DEFINES,
        ),
        "admins_v4",
    ),
    case(
        "meter-name-clashes-with-later-set",
        "nfc: 1\ndefine:\n  @^admins: [192.0.2.10, 198.51.100.7]\ninput:\n  policy: drop\n  rules:\n"
        "    - drop @^limit 10/second per saddr @^name @^admins\n"
        "    - accept from @^$admins\n",
        "admins_v4",
    ),
    case("reject-tcp-reset-without-tcp", rules("@^reject with tcp reset udp dport 53"), "tcp"),
    case("reject-tcp-reset-bare", rules("@^reject with tcp reset"), "tcp"),
    case(
        "reject-icmp-unknown-type",
        rules("@^reject with icmp @^port-unreachabel"),
        "did you mean 'port-unreachable'",
    ),
    case("unknown-service", rules("accept tcp dport @^htps"), "did you mean 'https'"),
    case("unknown-service-in-set", rules("accept tcp dport {ssh, @^smpt}"), "unknown service name 'smpt'"),
    case(
        "unknown-service-in-define",
        rules("accept tcp dport $web", head="define:\n  web: [http, @^htps]\n"),
        "did you mean 'https'",
    ),
    case("unknown-icmp-type", rules("accept icmp type @^echo-requets"), "did you mean 'echo-request'"),
    case("icmpv6-only-type-with-icmp", rules("accept icmp type @^packet-too-big"), "unknown icmp type"),
    case("unknown-icmpv6-type", rules("accept icmpv6 type @^nd-neighbour-solicit"), "icmpv6 type"),
    case("unknown-ct-state", rules("accept ct state established,@^relatd"), "did you mean 'related'"),
    case("unknown-protocol", rules("accept proto @^tcpp"), "unknown protocol"),
    case("oif-in-input", rules("accept @^oif eth0"), "input"),
    case("iif-in-output", rules("accept @^iif eth0", chain="output"), "output"),
    case("oif-in-notrack", notrack("udp dport 53 @^oif eth0"), "iif"),
    case("ct-state-in-notrack", notrack("udp dport 53 @^ct state new"), "ct state"),
    case("icmp-type-in-notrack", notrack("@^icmp type echo-request"), "ICMP"),
    case("verdict-in-notrack", notrack("@^accept udp dport 53")),
    case("limit-in-notrack", notrack("udp dport 53 @^limit 10/second")),
    case(
        "multiline-rule-plain",
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp\n      dport @^0\n",
        "out of range",
    ),
    case(
        "multiline-rule-literal-block",
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - |\n      accept udp\n      dport @^70000\n",
        "out of range",
    ),
    case("rule-without-verdict", rules("@^allow tcp dport 22"), "accept, drop or reject"),
    case("keyword-misspelt", rules("accept tcp @^dprot 22")),
    case("rule-ends-early", rules("accept tcp dport@^"), "ends too early"),
    case("not-not", rules("accept from @^not @^not 10.0.0.0/8"), "not"),
    case("burst-unit-mismatch", rules("drop @^limit 10/second burst 5 @^bytes"), "burst"),
    case("log-level-unknown", rules("accept log level @^loud")),
    case("rate-unit-unknown", rules("drop limit 10/@^fortnight")),
    case("notrack-entry-empty", notrack('@^"@^"'), "empty rule"),
]

# Interface lists, shared rules and NAT (issue 12): errors in the policy and
# in the files it splices, at their place.
IFACES = "interfaces:\n  lan: [eth1, eth2]\n  wan: eth0\n"
SHARED = [
    case(
        "splice-cycle",
        rules("{include: r.yaml}"),
        "include cycle",
        files={"r.yaml": "rules:\n  - {include: @^r.yaml}\n"},
    ),
    case(
        "splice-cycle-through-the-policy",
        rules("{include: r.yaml}"),
        "include cycle",
        files={"r.yaml": "rules:\n  - {include: @^p.yaml}\n"},
    ),
    case("splice-missing-file", rules("{include: @^gone.yaml}"), "gone.yaml"),
    case("splice-directory", rules("{include: @^sub}"), "cannot read", files={"sub/": ""}),
    case(
        "splice-binary",
        rules("{include: r.yaml}"),
        "UTF-8",
        files={"r.yaml": "rules:\n  - accept @^\udcff\n"},
    ),
    case(
        "splice-forbidden-key",
        rules("{include: r.yaml}"),
        "unknown key 'conntrack'",
        files={"r.yaml": "rules: []\n@^conntrack: {max: 5}\n"},
    ),
    case(
        "splice-bad-rule-in-the-file",
        rules("{include: r.yaml}"),
        "out of range",
        files={"r.yaml": "rules:\n  - accept tcp dport @^99999\n"},
    ),
    case("splice-extra-key", rules("{include: r.yaml, @^rule: accept}"), "unknown key 'rule'"),
    case(
        "splice-redefines-differently",
        rules("{include: r.yaml}", head="define:\n  @^dns: 53\n"),
        "p.yaml:3:",
        files={"r.yaml": "define:\n  @^dns: 54\nrules: []\n"},
    ),
]
NAT = [
    case(
        "interfaces-clash-with-define",
        "nfc: 1\ndefine:\n  @^lan: 53\n" + IFACES.replace("  lan", "  @^lan"),
        "a name is defined once",
    ),
    case("interfaces-bad-name", "nfc: 1\ninterfaces:\n  lan: [eth0, @^eth0123456789abc]\n", "interface name"),
    case("iif-address-define", rules("accept iif @^$admins", head=DEFINES), "not interface names"),
    case("from-interface-list", rules("accept from @^$lan", head=IFACES), "names interfaces"),
    case("iif-list-unknown-name", rules("accept iif {eth0, @^$nope}", head=IFACES), "unknown name"),
    case("ct-status-unknown", rules("accept ct status @^expected"), "connection status"),
    case("nat-not-a-list", "nfc: 1\nnat: @^masquerade\n", "must be a list"),
    case("nat-verdict", "nfc: 1\nnat:\n  - @^accept\n", "masquerade, snat, dnat or redirect"),
    case("nat-in-a-chain", rules("@^masquerade oif eth0"), "top-level 'nat' list"),
    case("nat-oif-on-dnat", "nfc: 1\nnat:\n  - dnat to 192.0.2.1 @^oif eth0\n", "prerouting"),
    case("nat-iif-on-masquerade", "nfc: 1\nnat:\n  - masquerade @^iif eth0\n", "postrouting"),
    case("nat-port-without-protocol", "nfc: 1\nnat:\n  - dnat to @^192.0.2.1:80\n", "tcp, udp or sctp"),
    case("nat-port-out-of-range", "nfc: 1\nnat:\n  - dnat to 192.0.2.1:@^99999 tcp\n", "out of range"),
    case("nat-family-mismatch", "nfc: 1\nnat:\n  - snat to @^192.0.2.1 from fd00::/8\n", "IPv4 address"),
    case("nat-ct-state", "nfc: 1\nnat:\n  - masquerade @^ct state new\n", "first packet"),
    case(
        "nat-on-untracked-packets",
        "nfc: 1\nconntrack:\n  notrack:\n    - @~udp dport 53\nnat:\n  - @^redirect to 5353 udp dport 53\n",
        "NAT needs connection tracking",
        "p.yaml:4:7",
    ),
]

LIST_POLICY = (
    "nfc: 1\ndefine:\n  block: {file: @~lists/drop.txt}\n"
    "input:\n  policy: drop\n  rules:\n    - drop from $block\n"
)


def list_case(case_id: str, text: str, *fragments: str, policy: str = LIST_POLICY) -> object:
    """A list file `lists/drop.txt` holding `text`, whose markers say where
    its mistake is (the policy's marks where an unreadable file is reported)."""
    return case(case_id, policy.replace("@~", ""), *fragments, files={"lists/drop.txt": text})


LIST_FILES = [
    list_case("list-bad-address", "10.0.0.1\n# a comment\n\n@^10.0.0.300\n", "not a valid IP address"),
    list_case("list-host-bits", "  @^10.0.0.1/8  # too wide\n", "host bits set"),
    list_case("list-two-addresses", "10.0.0.1@^ 10.0.0.2\n", "more than one address"),
    list_case("list-garbage", "10.0.0.1\n@^<html><body>\n", "not a valid IP address"),
    list_case("list-binary", "10.0.0.1\n\x00\x01@^\udcff\n", "not valid UTF-8"),
    list_case("list-control-character", "10.0.0.1\n10.0@^\x00.0.2\n", "U+0000"),
    list_case("list-line-separator", "10.0.0.1\n10.0.0.2@^\u2028\n", "U+2028"),
    list_case("list-other-digits", "@^\u0661\u0660.0.0.1\n", "not a valid IP address"),
    list_case("list-empty", "@^# nothing yet\n\n", "holds no address"),
    list_case("list-ports-only", "@^ssh\n", "not a valid IP address"),
    case("list-missing", LIST_POLICY, "cannot read list file"),
    case("list-a-directory", LIST_POLICY, "cannot read list file", files={"lists/drop.txt/": ""}),
    case(
        "list-file-unknown-key",
        "nfc: 1\ndefine:\n  block: {file: x.txt, @^format: csv}\n",
        "unknown key",
    ),
]


CASES = [
    *LIST_FILES,
    *YAML_SYNTAX,
    *NESTING,
    *DIGITS,
    *EMPTY,
    *VERSION,
    *UNKNOWN_KEYS,
    *CIDRS,
    *PORTS,
    *UNKNOWN_NAMES,
    *INCLUDES,
    *FAMILIES,
    *INJECTION,
    *HUGE,
    *WRONG_TYPES,
    *DUPLICATES,
    *RULES,
    *SHARED,
    *NAT,
]


Runner = Callable[..., subprocess.CompletedProcess[str]]


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> re.Match[str]:
    """Exit 2 with a GCC-style first line, no traceback, nothing on stdout."""
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr
    assert result.returncode == 2, f"exit code {result.returncode}, stderr:\n{stderr}"
    assert result.stdout == "", f"stdout:\n{result.stdout}"
    first = stderr.splitlines()[0] if stderr else ""
    match = ERROR_LINE.match(first)
    assert match, f"first line of stderr is not FILE:LINE:COL: error: ...\n{stderr}"
    return match


def compile_case(tmp_path: Path, case: Case, run: Runner) -> subprocess.CompletedProcess[str]:
    """Compile `case` with `run` and check the failure is clean and at its mark."""
    spots = write_case(tmp_path, case)
    assert spots, "a case marks where its mistake is"
    out = tmp_path / "out"
    result = run("compile", str(tmp_path / case.main), "-o", str(out), cwd=tmp_path)
    match = assert_clean_failure(result)
    got = (match["file"], int(match["line"]), int(match["col"]))
    assert any(spot.matches(*got) for spot in spots), (
        f"error at {got[0]}:{got[1]}:{got[2]}, expected {' or '.join(map(str, spots))}\n{result.stderr}"
    )
    for fragment in case.fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"
    assert not out.exists(), "bad input wrote an artifact directory"
    assert not list(tmp_path.glob(".out.*")), "bad input left a staging directory"
    return result


@pytest.mark.parametrize("case", CASES)
def test_bad_policy(tmp_path: Path, case: Case) -> None:
    compile_case(tmp_path, case, nfc_in_process)


# One case of each kind of mistake, through the real entry point.
IN_A_SUBPROCESS = {
    "yaml-tab-indentation",
    "yaml-non-utf8",
    "yaml-deep-nesting",
    "nest-flow-sequences",  # a crash (SIGSEGV) kills a process: only a subprocess shows it
    "nest-compact-sequences",
    "nest-explicit-keys",
    "define-port-superscript",
    "nfc-2",
    "top-key-misspelt",
    "cidr-host-bits",
    "include-cycle",
    "ip6-with-v4-address",
    "comment-quote-injection",
    "rule-ends-early",
    "splice-cycle",
    "nat-on-untracked-packets",
    "list-binary",
}


@pytest.mark.parametrize("case", [c for c in CASES if c.id in IN_A_SUBPROCESS])
def test_bad_policy_in_a_subprocess(tmp_path: Path, case: Case) -> None:
    """The real `python -m nfc` fails the same way, and prints exactly what
    the in-process run prints (run after the whole corpus: no state leaks)."""
    result = compile_case(tmp_path, case, nfc)
    again = nfc_in_process(*result.args[3:], cwd=tmp_path)
    assert (again.returncode, again.stdout, again.stderr) == (result.returncode, result.stdout, result.stderr)


def test_enough_cases() -> None:
    ids = [param.id for param in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30
    assert set(ids) >= IN_A_SUBPROCESS


def test_bad_policy_keeps_previous_artifacts(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    out = tmp_path / "out"
    first = nfc("compile", str(good), "-o", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert RULESET in before and MANIFEST in before

    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("accept udp dport 53", "accept udp dport 65536"))
    result = nfc("compile", str(bad), "-o", str(out), cwd=tmp_path)
    match = assert_clean_failure(result)
    assert (match["file"], match["line"]) == (str(bad), "12"), result.stderr

    after = {path.name: path.read_bytes() for path in out.iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "good.yaml", "out"]


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(rules("accept tcp dport 0"), id="semantic-error"),
        pytest.param("nfc: 1\ninput:\n\tpolicy: drop\n", id="yaml-error"),
        pytest.param(rules("accept log prefix 'x\" ; flush ruleset ; \"'"), id="injection"),
    ],
)
def test_bad_policy_with_stdout_prints_nothing(tmp_path: Path, policy: str) -> None:
    path = tmp_path / POLICY
    path.write_text(policy)
    result = nfc("compile", str(path), "--stdout", cwd=tmp_path)
    match = assert_clean_failure(result)
    assert match["file"] == str(path)
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize(
    ("head", "message"),
    [
        pytest.param("include: [pipe.yaml]\n", "pipe.yaml:1:1: error: empty policy file", id="include"),
        pytest.param("define:\n  l: {file: pipe.txt}\n", "pipe.txt:1:1: error: this list file", id="list"),
    ],
)
def test_a_named_pipe_no_one_writes_is_read_as_empty_not_waited_for(
    tmp_path: Path, head: str, message: str
) -> None:
    """A named pipe's open waits for a writer: nfc hung until its timeout."""
    for name in ("pipe.yaml", "pipe.txt"):
        os.mkfifo(tmp_path / name)
    (tmp_path / POLICY).write_text(rules("accept tcp dport 22", head=head))
    result = nfc("compile", POLICY, "--stdout", cwd=tmp_path)
    assert_clean_failure(result)
    assert result.stderr.startswith(message), result.stderr


# --------------------------------------------------------------------------
# the commands that read a policy or a number, as the issue found them

PACKET = "udp 10.1.2.3:5353 > 10.0.0.1:53"
POLICY_COMMANDS = {
    "compile": lambda path: ("compile", path, "-o", "out"),
    "lint": lambda path: ("lint", path),
    "explain": lambda path: ("explain", path, PACKET),
}


@pytest.mark.parametrize("command", sorted(POLICY_COMMANDS))
def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path, command: str) -> None:
    """The issue's reproduction, in a real process: libyaml's composer
    overflowed the C stack (SIGSEGV, exit -11) before nfc's depth check."""
    path = tmp_path / POLICY
    path.write_text("nfc: 1\ninput: " + "[" * DEEP + "]" * DEEP + "\n")
    result = nfc(*POLICY_COMMANDS[command](str(path)), cwd=tmp_path)
    assert result.returncode == 2, f"exit code {result.returncode}, stderr:\n{result.stderr[-2000:]}"
    assert (
        result.stderr
        == f"{path}:2:{len('input: [') + MAX_DEPTH}: error: YAML nesting is deeper than 64 levels\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize("command", sorted(POLICY_COMMANDS))
@pytest.mark.parametrize(
    "digits",
    ["²", ARABIC_53, "5³", FULLWIDTH_53, "1-" + HUGE_DIGITS],
    ids=["superscript", "arabic-indic", "digit-superscript", "fullwidth", "range-huge"],
)
def test_a_define_of_other_digits_is_an_error_in_every_command(
    tmp_path: Path, command: str, digits: str
) -> None:
    """`define: {p: "²"}` used as `dport $p` gave exit 70 in compile, lint and explain."""
    path = tmp_path / POLICY
    path.write_text(
        f'nfc: 1\ndefine: {{p: "{digits}"}}\ninput:\n  policy: drop\n  rules:\n    - accept udp dport $p\n'
    )
    result = nfc_in_process(*POLICY_COMMANDS[command](str(path)), cwd=tmp_path)
    assert_clean_failure(result)
    assert result.stderr.startswith(f"{path}:2:13: error: "), result.stderr
    assert "(1-65535)" in result.stderr


@pytest.mark.parametrize(
    ("packet", "column", "fragment"),
    [
        ("udp 10.1.2.3:5353 > 10.0.0.1:5³", 21, "'5³' is not a port"),  # the packet
        ("udp 10.1.2.3:²² > 10.0.0.1:53", 5, "'²²' is not a port"),
        (f"udp 10.1.2.3:5353 > 10.0.0.1:{ARABIC_53}", 21, f"'{ARABIC_53}' is not a port"),  # int() took it
        (f"udp [2001:db8::7]:{FULLWIDTH_53} > [2001:db8::1]:53", 5, f"'{FULLWIDTH_53}' is not a port"),
        pytest.param("udp 10.1.2.3:5353 > 10.0.0.1:" + HUGE_DIGITS, 21, "is not a port", id="huge-port"),
        ("\u0661\u0667 10.1.2.3 > 10.0.0.1", 1, "unknown protocol '\u0661\u0667'"),
        ("1⁷ 10.1.2.3 > 10.0.0.1", 1, "unknown protocol '1⁷'"),
        ("999 10.1.2.3 > 10.0.0.1", 1, "protocol number 999 is out of range (0-255)"),
        ("udp 10.1.2.3:5\udcff > 10.0.0.1:53", 5, "'5?' is not a port"),  # a byte that is not UTF-8
        ("udp 10.1.2.3 > 10.0.0.1 iif \udcff", 29, "'?' is not an interface name"),  # was exit 70 on stdout
        ("udp 10.1.2.3 > 10.0.0.1 oif a\x1b[2J", 29, "'a?[2J' is not an interface name"),
    ],
)
def test_other_digits_in_a_packet_are_located(
    tmp_path: Path, packet: str, column: int, fragment: str
) -> None:
    path = tmp_path / POLICY
    path.write_text(VALID)
    result = nfc_in_process("explain", str(path), packet, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.startswith(f"<packet>:1:{column}: error: "), result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("compile", POLICY, "--memory", "\u0668G"),
        ("compile", POLICY, "--memory", "8²G"),
        ("compile", POLICY, "--memory", HUGE_DIGITS),
        ("compile", POLICY, "--word-bits", "\u0666\u0664"),  # int() read it as 64
        ("compile", POLICY, "--word-bits", "6⁴"),
        ("lint", POLICY, "--management-port", "\uff12\uff12"),
        ("lint", POLICY, "--management-port", "70000"),
        ("lint", POLICY, "--today", "\uff12\uff10\uff12\uff17-01-01"),
        ("doctor", "--warn-fill", "\u0660.\u0665"),  # float() read it as 0.5
        ("doctor", "--log-window", "³"),
        ("apply", "--confirm", "\uff16\uff10"),
        ("rollback", "--lock-timeout", "1²"),
        ("confirm", "--lock-timeout", "1e3"),
    ],
)
def test_other_digits_in_an_option_are_a_usage_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    if args[0] in (
        "apply",
        "rollback",
        "confirm",
    ):  # only parsed: a run that took the number would load rules
        with streams_of_a_process() as (out, err), pytest.raises(SystemExit) as exit_:
            cli.parser().parse_args(args)
        result = subprocess.CompletedProcess(
            args, exit_.value.code, out.getvalue().decode(), err.getvalue().decode()
        )
    else:
        (tmp_path / POLICY).write_text(VALID)
        result = nfc_in_process(*args, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.startswith("usage: nfc "), result.stderr
    assert f"error: argument {args[-2]}: " in result.stderr
