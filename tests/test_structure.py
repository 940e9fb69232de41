"""The shape of the code: no import cycle among nfc's modules and no module
over 500 lines (both read from the source files, not from an import), and
the IR's closed vocabularies agree with the grammar and nfc.vocab."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from nfc import ir, parse, vocab

from conftest import ROOT

COMPILER = ROOT / "compiler"
MAX_LINES = 500


def module_files() -> dict[str, Path]:
    """nfc's module names and their files: compiler/ is the package nfc
    (pyproject's package-dir), grammar/ is nfc.grammar."""
    modules = {"nfc.grammar": ROOT / "grammar" / "__init__.py"}
    for path in sorted(COMPILER.rglob("*.py")):
        parts = path.relative_to(COMPILER).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("nfc", *parts))] = path
    return modules


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The nfc modules that the module `name` in `path` imports, wherever the
    import stands (under `if TYPE_CHECKING:` too: a cycle is a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from nfc import lint` imports the module nfc.lint; `from nfc.ir import Rule` imports nfc.ir
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # `import nfc.backends.nft` also runs nfc and nfc.backends; count the named module
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(path, name, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "nfc.ir" in graph["nfc.lint"]
    assert "nfc.backends" in graph["nfc.cli"]
    assert "nfc.lint" in graph["nfc.cli"]  # `from nfc import ... lint`
    assert "nfc.errors" in graph["nfc.ir"]


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_is_over_500_lines() -> None:
    lengths = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in module_files().values()}
    over = sorted(f"{path.relative_to(ROOT)} ({n} lines)" for path, n in lengths.items() if n > MAX_LINES)
    assert not over, f"over {MAX_LINES} lines: {', '.join(over)}"


def grammar_terminal(name: str) -> set[str]:
    """The words of a terminal as lark reads it (grammar/ defines them once)."""
    terminal = next(t for t in parse._parser().terminals if t.name == name)
    return set(terminal.pattern.value.strip("(?:)").split("|"))


def test_the_ir_literals_name_what_the_policy_can_say() -> None:
    assert set(typing.get_args(ir.TimeUnit)) == grammar_terminal("TIME_UNIT") == set(ir.TIME_UNIT_SECONDS)
    assert set(typing.get_args(ir.ByteUnit)) == grammar_terminal("BYTE_UNIT") == set(ir.BYTE_UNIT_FACTOR)
    assert set(typing.get_args(ir.MeterKey)) == grammar_terminal("PER_KEY")
    assert set(typing.get_args(ir.LogLevel)) == grammar_terminal("LOG_LEVEL")
    assert set(typing.get_args(ir.CtState)) == set(vocab.CT_STATES)
    assert set(typing.get_args(ir.CtStatus)) == set(vocab.CT_STATUSES)
    nat_words = {t.pattern.value for t in parse._parser().terminals if t.pattern.type == "str"}
    assert set(typing.get_args(ir.NatKind)) <= nat_words
    assert set(typing.get_args(ir.NatKind)) == set(parse.NAT_ACTIONS)
    assert set(typing.get_args(ir.RejectIcmpType)) == set(vocab.REJECT_ICMP_TYPES)
