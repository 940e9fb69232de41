"""Properties of hostile input, as the issue found it: random mixes of YAML
nesting (flow and block, compact sequences, anchors and aliases, runs deep
enough to overflow a C stack) are refused exactly where a node first lies
more than MAX_DEPTH levels down, and numbers written with anything but the
digits 0-9, in a policy, a packet, an option or the kernel's text, are a
clean error or no number: never a traceback or exit 70."""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_bad_input import VALID, assert_clean_failure, nfc_in_process

from nfc import cli, doctor, yaml_source
from nfc.errors import PolicyError
from nfc.yaml_source import MAX_DEPTH, MAX_NODES, load_yaml

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # leave no .hypothesis/ directory behind in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PARSERS = {"libyaml": yaml_source.LOADER, "python": yaml.SafeLoader}


@contextlib.contextmanager
def parser(loader: type) -> Iterator[None]:
    saved = yaml_source.LOADER
    yaml_source.LOADER = loader
    try:
        yield
    finally:
        yaml_source.LOADER = saved


# --------------------------------------------------------------------------
# nesting: a generator that knows where the loader must stop


@dataclass
class Writer:
    """YAML written left to right, with the position of the next character
    and the first node the loader must refuse: (what, line, column)."""

    parts: list[str] = field(default_factory=list)
    line: int = 1
    col: int = 1
    nodes: int = 0
    refusal: tuple[str, int, int] | None = None
    anchors: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (levels below, nodes)
    anchored: int = 0  # anchors written, their nodes ended or not

    def write(self, text: str) -> None:
        self.parts.append(text)
        if "\n" in text:
            self.line += text.count("\n")
            self.col = len(text) - text.rfind("\n")
        else:
            self.col += len(text)

    def node(self, depth: int, size: int = 1, height: int = 0) -> None:
        """A node starts here, `depth` levels down, holding `height` levels
        and `size` nodes (an alias: those of the node it names)."""
        if self.refusal is not None:
            return
        self.nodes += size
        if self.nodes > MAX_NODES:
            self.refusal = (f"more than {MAX_NODES} YAML nodes", self.line, self.col)
        elif depth + height > MAX_DEPTH:
            self.refusal = (f"deeper than {MAX_DEPTH} levels", self.line, self.col)


FLOW_KINDS = ("flow-sequence", "flow-mapping")
BLOCK_KINDS = ("block-sequence", "block-mapping")


def write_node(draw: st.DrawFn, w: Writer, depth: int, levels: int, flow: bool) -> tuple[int, int]:
    """One node at `depth` with at most `levels` levels below it, written
    where `w` stands (in a flow collection when `flow`); its (height, size)."""
    if levels == 0:
        return write_leaf(draw, w, depth, flow)
    kind = draw(st.sampled_from(FLOW_KINDS if flow else FLOW_KINDS + BLOCK_KINDS))
    w.node(depth)
    anchor = None
    if kind in FLOW_KINDS and draw(st.integers(0, 4)) == 0:  # a block collection's anchor needs a line
        anchor, w.anchored = f"a{w.anchored}", w.anchored + 1
        w.write(f"&{anchor} ")
    count = draw(st.integers(1, 3))
    spine = draw(st.integers(0, count - 1))
    below = [levels - 1 if i == spine else draw(st.integers(0, min(2, levels - 1))) for i in range(count)]
    height = size = 0
    column = w.col
    for i, child_levels in enumerate(below):
        if kind == "flow-sequence":
            w.write("[" if i == 0 else ", ")
            h, s = write_node(draw, w, depth + 1, child_levels, True)
        elif kind == "flow-mapping":
            w.write("{" if i == 0 else ", ")
            w.node(depth + 1)
            w.write(f"k{i}: ")
            size += 1
            h, s = write_node(draw, w, depth + 1, child_levels, True)
        else:
            if i:
                w.write("\n" + " " * (column - 1))
            if kind == "block-sequence":
                w.write("- ")
                h, s = write_node(draw, w, depth + 1, child_levels, False)
            else:
                w.node(depth + 1)
                w.write(f"k{i}:")
                size += 1
                if child_levels and draw(st.booleans()):  # a block collection below, indented
                    w.write("\n" + " " * (column + 1))
                    h, s = write_node(draw, w, depth + 1, child_levels, False)
                else:
                    w.write(" ")
                    h, s = write_node(draw, w, depth + 1, child_levels, True)
        height, size = max(height, h + 1), size + s
    w.write({"flow-sequence": "]", "flow-mapping": "}"}.get(kind, ""))
    if anchor is not None:
        w.anchors[anchor] = (height, size + 1)
    return height, size + 1


def write_leaf(draw: st.DrawFn, w: Writer, depth: int, flow: bool) -> tuple[int, int]:
    """A scalar, an alias, or a run of flow sequences deep enough to
    overflow the C stack of a recursive composer."""
    choice = draw(st.sampled_from(("scalar", "scalar", "alias", "deep-run")))
    if choice == "alias" and w.anchors:
        name = draw(st.sampled_from(sorted(w.anchors)))
        height, size = w.anchors[name]
        w.node(depth, size, height)
        w.write(f"*{name}")
        return height, size
    if choice == "deep-run":
        run = draw(st.sampled_from((70, 1000, 20_000)))
        for level in range(min(run, MAX_DEPTH + 2)):  # past the limit, the loader has stopped
            w.node(depth + level)
            w.col += 1
        w.col -= min(run, MAX_DEPTH + 2)
        w.write("[" * run + "]" * run)
        return run - 1, run
    w.node(depth)
    w.write("x")
    return 0, 1


@st.composite
def nesting_mixes(draw: st.DrawFn) -> Writer:
    """`nfc: 1` and `top:` holding a random mix of nesting."""
    w = Writer()
    for depth in (0, 1, 1):  # the top-level mapping, `nfc` and its 1
        w.node(depth)
    w.write("nfc: 1\n")
    w.node(1)
    w.write("top:")
    levels = draw(
        st.one_of(st.integers(0, 8), st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4), st.integers(70, 160))
    )
    if levels and draw(st.booleans()):
        w.write("\n  ")
        write_node(draw, w, 1, levels, False)
    else:
        w.write(" ")
        write_node(draw, w, 1, levels, True)
    w.write("\n")
    return w


@settings(SETTINGS, max_examples=100)
@given(mix=nesting_mixes())
@example(mix=Writer(["nfc: 1\ntop: " + "[" * 30_000 + "]" * 30_000 + "\n"], refusal=("deeper than", 2, 70)))
def test_nesting_is_refused_where_it_first_goes_too_deep(tmp_path: Path, mix: Writer) -> None:
    path = tmp_path / "p.yaml"
    text = "".join(mix.parts)
    path.write_text(text)
    # PyYAML's own scanner looks ahead up to 1024 characters at a cost per
    # token that grows with the open flow levels: slow on deep runs, so it
    # checks the shorter mixes only (test_load has every form for both).
    parsers = PARSERS if len(text) < 4000 else {"libyaml": PARSERS["libyaml"]}
    for name, loader in parsers.items():
        with parser(loader):
            try:
                load_yaml(str(path))
            except PolicyError as exc:
                assert mix.refusal is not None, f"{name}: {exc.render()}"
                what, line, col = mix.refusal
                assert (exc.loc.line, exc.loc.col) == (line, col), f"{name}: {exc.render()}"
                assert what in exc.message, f"{name}: {exc.render()}"
            else:
                assert mix.refusal is None, f"{name} loaded what it must refuse at {mix.refusal}"
    result = nfc_in_process("compile", str(path), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result)  # too deep, or the unknown key 'top'
    what, line, col = mix.refusal or ("unknown key 'top'", 2, 1)
    assert result.stderr.startswith(f"{path}:{line}:{col}: error: "), result.stderr[:300]
    assert what in result.stderr


# --------------------------------------------------------------------------
# numbers written with other digits, or odd characters in them

ODD = list(" .-+_eExX/:,\t\u00a0\u200b\ufeff\u2212\u066b")  # NBSP, zero width, BOM, minus, Arabic decimal
NUMBERISH = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.digits),
        st.characters(categories=["Nd", "No", "Nl"]),  # every script's digits, ², ½, Ⅻ ...
        st.sampled_from(ODD),
    ),
    min_size=1,
    max_size=8,
)


def is_ascii_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


@SETTINGS
@given(
    text=NUMBERISH.filter(lambda text: ":" not in text),  # '::' is an address
    form=st.sampled_from(("{}", "{}-65535", "1-{}")),
    command=st.sampled_from(("compile", "lint", "explain")),
)
@example(text="²", form="{}", command="compile")
@example(text="\u0665\u0663", form="{}", command="explain")
@example(text="1-1", form="{}-65535", command="compile")
def test_a_define_holds_a_port_only_in_the_digits_0_to_9(
    tmp_path: Path, text: str, form: str, command: str
) -> None:
    value = form.format(text)
    path = tmp_path / "p.yaml"
    scalar = json.dumps(value, ensure_ascii=False)  # a YAML double-quoted scalar
    path.write_text(
        f"nfc: 1\ndefine:\n  p: {scalar}\ninput:\n  policy: drop\n  rules:\n    - accept udp dport $p\n"
    )
    args = {"compile": ("-o", "out"), "lint": (), "explain": ("udp 10.1.2.3:5353 > 10.0.0.1:53",)}[command]
    result = nfc_in_process(command, str(path), *args, cwd=tmp_path)
    parts = value.strip(" \t").split("-")  # a port or one range: '1-1-65535' is neither
    if len(parts) <= 2 and all(is_ascii_number(part) and 1 <= int(part) <= 65535 for part in parts):
        assert result.returncode in (0, 1), result.stderr  # lint: 1 for its findings
        return
    assert_clean_failure(result)
    assert result.stderr.startswith(f"{path}:3:6: error: "), result.stderr


@SETTINGS
@given(text=NUMBERISH, place=st.sampled_from(("sport", "dport", "protocol")))
@example(text="5³", place="dport")
def test_a_packet_holds_numbers_only_in_the_digits_0_to_9(tmp_path: Path, text: str, place: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID)
    packet = {
        "sport": "udp 10.1.2.3:{} > 10.0.0.1:53",
        "dport": "udp 10.1.2.3:5353 > 10.0.0.1:{}",
        "protocol": "{} 10.1.2.3 > 10.0.0.1",
    }[place].format(text)
    result = nfc_in_process("explain", str(path), packet, cwd=tmp_path)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if result.returncode == 0:  # whitespace, of any script, separates words
        words = text.split()
        assert len(words) == 1 and is_ascii_number(words[0]), f"{packet!r} was read as a packet"
    else:
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr.startswith("<packet>:1:"), result.stderr


# Options of commands that only read: a run that takes the number does no harm.
READING_OPTIONS = [
    ("compile", "p.yaml", "--stdout", "--memory"),
    ("compile", "p.yaml", "--stdout", "--word-bits"),
    ("lint", "p.yaml", "--management-port"),
]
# Options of commands that change the kernel: only parsed, never run.
KERNEL_OPTIONS = [("apply", "--confirm"), ("apply", "--lock-timeout"), ("rollback", "--lock-timeout")]
ANY_OPTIONS = [*READING_OPTIONS, *KERNEL_OPTIONS, ("doctor", "--warn-fill"), ("doctor", "--log-window")]


def parsed(args: list[str]) -> int:
    """The exit code of parsing `args` alone: 0, or argparse's 2."""
    try:
        cli.parser().parse_args(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@SETTINGS
@given(text=NUMBERISH, option=st.sampled_from(ANY_OPTIONS), unit=st.sampled_from(("", "G", ".5")))
def test_an_option_holds_numbers_only_in_the_digits_0_to_9(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, option: tuple[str, ...], unit: str
) -> None:
    value = text + unit
    code = parsed([*option, value])
    error = capsys.readouterr().err
    if not value.isascii():
        assert code == 2, f"{option} took {value!r}"
        assert f"error: argument {option[-1]}: " in error
    if option in READING_OPTIONS:
        (tmp_path / "p.yaml").write_text(VALID)
        result = nfc_in_process(*option, value, cwd=tmp_path)
        assert result.returncode in ((2,) if code else (0, 1)), result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr


# --------------------------------------------------------------------------
# the kernel's text, as doctor reads it


# A field of the kernel's text: words split at whitespace.
FIELD = NUMBERISH.map(lambda text: "".join(ch for ch in text if not ch.isspace()) or "0")


@SETTINGS
@given(sport=FIELD, dport=FIELD, count=FIELD, stamp=FIELD)
def test_doctor_reads_only_ascii_numbers_from_the_kernel(
    sport: str, dport: str, count: str, stamp: str
) -> None:
    flows = doctor.parse_flows(
        f"udp 17 29 src=10.0.0.2 dst=10.0.0.1 sport={sport} dport={dport} [UNREPLIED]\n"
    )
    if flows:  # an odd character may end the field early: then it is what the regex took
        expected = {s for s in (sport, dport) if is_ascii_number(s)}
        assert {p for p in (flows[0].sport, flows[0].dport) if p is not None} <= {int(s) for s in expected}
    stats = doctor.parse_conntrack_stats(f"cpu=0 found={count} drop=3\n")
    assert stats["drop"] == 3
    assert stats.get("found") == (int(count) if is_ascii_number(count) else None)
    hexadecimal = count.isascii() and all(ch in string.hexdigits for ch in count)
    assert doctor.parse_proc_stats(f"entries drop\n0000000a {count}\n").get("drop") == (
        int(count, 16) if hexadecimal else None
    )
    lines, _ = doctor.count_table_full(f"[{stamp}] nf_conntrack: table full, dropping packet\n", since=5.0)
    assert lines in (0, 1)


# --------------------------------------------------------------------------
# file names a terminal would act on


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\nb.yaml", "a\\nb.yaml"),  # would forge a second message line
        ("\x1b[2Jp.yaml", "\\x1b[2Jp.yaml"),  # an escape sequence: clears the screen
        ("p\u202eylo.yaml", "p\\u202eylo.yaml"),  # a bidi override hides the name's true order
        ("pä \"q\\.yaml", "pä \"q\\.yaml"),  # printable: shown as it is
    ],
)
def test_a_file_name_is_shown_without_what_a_terminal_acts_on(tmp_path: Path, name: str, shown: str) -> None:
    (tmp_path / name).write_text("nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 70000\n")
    result = nfc_in_process("compile", name, "--stdout", cwd=tmp_path)
    assert_clean_failure(result)
    assert result.stderr.startswith(f"{shown}:5:24: error: "), result.stderr
    assert not any(ch in result.stderr for ch in "\x1b\u202e"), result.stderr
    assert len(result.stderr.splitlines()) == 1 + result.stderr.count(": note: "), result.stderr
