"""Shell completion (dist/nfc.bash, dist/_nfc): each script is loaded by
its shell and its completion function called as the shell calls it, for
the words of a command line; what it offers is compared with nfc's parser.

`nfc` is a stand-in on PATH that runs the real one, except that it answers
`nfc set list` from a file: nothing here reaches the kernel."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nfc import cli
from nfc.backends import BACKENDS

from conftest import ROOT, missing_prerequisite

BASH = ROOT / "dist" / "nfc.bash"
ZSH = ROOT / "dist" / "_nfc"
SETS_POLICY = """nfc: 1
sets:
  banned: {type: address, timeout: 1h}
  # a comment between entries
  trusted:
    type: address
input: {policy: drop}
"""


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """The commands `nfc --help` lists, and their parsers."""
    action = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {listed.dest: action.choices[listed.dest] for listed in action._choices_actions}


def long_options(command: str) -> set[str]:
    return {o for a in subparsers()[command]._actions for o in a.option_strings if o.startswith("--")}


def choices(command: str, option: str) -> set[str]:
    action = next(a for a in subparsers()[command]._actions if option in a.option_strings)
    return set(action.choices or ())


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """A directory with policies, other files and a subdirectory, and a stand-in nfc."""
    work = tmp_path / "work"
    (work / "build").mkdir(parents=True)
    (work / "a.yaml").write_text(SETS_POLICY)
    (work / "b.yml").write_text("nfc: 1\n")
    (work / "notes.txt").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "nfc"
    stand_in.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "set list" ]; then cat "$SET_LIST" 2>/dev/null || exit 2; exit 0; fi\n'
        f'exec {shlex.quote(sys.executable)} -m nfc "$@"\n'
    )
    stand_in.chmod(0o755)
    return work


def environment(here: Path, set_list: str | None) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{here.parent / 'bin'}:{os.environ['PATH']}"}
    if set_list is not None:
        (here.parent / "set-list.txt").write_text(set_list)
        env["SET_LIST"] = str(here.parent / "set-list.txt")
    return env


MARK = "--- next ---"


def words_of(line: str) -> list[str]:
    return shlex.split(line) + ([""] if line.endswith(" ") else [])


def offered(stdout: str, count: int) -> list[set[str]]:
    """The words each completion offered, in the order asked."""
    parts = stdout.split(MARK + "\n")
    assert len(parts) == count + 1, stdout
    return [{word for word in part.splitlines() if word} for part in parts[1:]]


def bash_complete(here: Path, *lines: str, set_list: str | None = None) -> list[set[str]]:
    """What the bash completion offers for the last word of each line, as
    readline would call it (COMP_WORDS, COMP_CWORD), in one shell."""
    bash = shutil.which("bash")
    if bash is None:
        missing_prerequisite("'bash' is not installed")
    script = f"source {shlex.quote(str(BASH))}\n"
    for line in lines:
        words = words_of(line)
        script += (
            f"echo {shlex.quote(MARK)}\n"
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
            f"COMP_CWORD={len(words) - 1}\n"
            f"COMP_LINE={shlex.quote(line)}\nCOMP_POINT=${{#COMP_LINE}}\n"
            "_nfc\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=here,
        env=environment(here, set_list),
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return offered(done.stdout, len(lines))


def test_bash_completes_the_commands(here: Path) -> None:
    commands, co, options = bash_complete(here, "nfc ", "nfc co", "nfc --")
    assert commands == set(subparsers())
    assert co == {c for c in subparsers() if c.startswith("co")}
    assert options == {"--help", "--version"}


def test_bash_completes_the_options_of_apply(here: Path) -> None:
    options, persist = bash_complete(here, "nfc apply --", "nfc apply --pers")
    assert options == long_options("apply")
    assert {"--confirm", "--state-dir", "--persist", "--persist-dir", "--backend"} <= options
    assert persist == {"--persist", "--persist-dir"}


def test_bash_completes_choices_files_and_directories(here: Path) -> None:
    lines = {
        "nfc apply -b ": set(BACKENDS),
        "nfc compile --backend=": set(BACKENDS),
        "nfc lint --format ": choices("lint", "--format"),
        "nfc compile ": {"a.yaml", "b.yml", "build"},
        "nfc apply --confirm 60 ": {"a.yaml", "b.yml", "build"},
        "nfc compile a.yaml -o ": {"build"},
        "nfc apply --confirm ": set(),  # a number: nothing to complete
    }
    assert dict(zip(lines, bash_complete(here, *lines), strict=True)) == lines


def test_bash_completes_set_names(here: Path) -> None:
    listed = "banned: 2 elements\n  203.0.113.9\n  203.0.113.10\nallowed: 0 elements\n"
    assert bash_complete(here, "nfc set ", "nfc set add ", set_list=listed) == [
        {"add", "del", "list"},
        {"banned", "allowed"},
    ]
    # without 'nfc set list' (an older nfc, no permission): the policies' sets
    assert bash_complete(here, "nfc set del ", "nfc set list t") == [{"banned", "trusted"}, {"trusted"}]


def test_bash_registers_the_completion() -> None:
    done = subprocess.run(
        ["bash", "--norc", "-c", f"source {shlex.quote(str(BASH))}; complete -p nfc"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == "complete -F _nfc nfc", done.stderr


# zsh: the completion system loads _nfc from $fpath; the completion
# builtins (compadd, _describe, _files, ...) are stood in for by functions
# that print what they are given, since they only work under the line editor.
ZSH_STANDINS = r"""
compadd() {
  while [[ $1 == -* ]]; do
    case $1 in -a) print -l -- ${(P)2}; return ;; --) shift; break ;; *) shift ;; esac
  done
  print -l -- "$@"
}
_describe() { print -l -- ${${(P)4}%%:*} }
_files() { print -l -- *.(yaml|yml)(N) }
_directories() { print -l -- *(N/) }
compset() { : }
"""


def zsh_complete(here: Path, *lines: str, set_list: str | None = None) -> list[set[str]]:
    zsh = shutil.which("zsh")
    if zsh is None:
        missing_prerequisite("'zsh' is not installed (make install sets it up)")
    script = (
        f"fpath=({shlex.quote(str(ZSH.parent))} $fpath)\n"
        "autoload -U compinit && compinit -u -D\n"
        '[[ $_comps[nfc] == _nfc ]] || { print -u2 "nfc is not registered"; exit 1 }\n'
        f"{ZSH_STANDINS}\n"
    )
    for line in lines:
        words = words_of(line)
        script += (
            f"print -r -- {shlex.quote(MARK)}\n"
            f"words=({' '.join(shlex.quote(w) for w in words)})\n"
            "CURRENT=$#words\n"
            "_nfc\n"
        )
    done = subprocess.run(
        [zsh, "-f", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=here,
        env=environment(here, set_list),
    )
    assert done.stderr == "", done.stderr
    # zsh filters by the word typed; the stand-ins print everything
    return [
        {word for word in found if word.startswith(words_of(line)[-1].split("=", 1)[-1])}
        for line, found in zip(lines, offered(done.stdout, len(lines)), strict=True)
    ]


def test_zsh_completes_commands_options_choices_and_sets(here: Path) -> None:
    lines = {
        "nfc ": set(subparsers()),
        "nfc apply --": long_options("apply"),
        "nfc apply -b ": set(BACKENDS),
        "nfc lint --format=": choices("lint", "--format"),
        "nfc apply ": {"a.yaml", "b.yml", "build"},
        "nfc set add ": {"banned", "trusted"},
    }
    assert dict(zip(lines, zsh_complete(here, *lines), strict=True)) == lines
    listed = "banned: 1 element\n  192.0.2.1\n"
    assert zsh_complete(here, "nfc set add ", set_list=listed) == [{"banned"}]
