"""Source locations and the one error type every stage raises for bad input."""

from __future__ import annotations

from typing import NamedTuple


class Loc(NamedTuple):
    """A 1-based position in a policy file (a tuple: cheap to make by the
    hundred thousand, ordered by file, line, column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{shown_path(self.file)}:{self.line}:{self.col}"


class PolicyError(Exception):
    """Bad input: reported as FILE:LINE:COL: error: MESSAGE and exit code 2."""

    def __init__(self, loc: Loc, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"{self.loc}: error: {self.message}"
        if self.hint:
            text += f"\n{self.loc}: note: {self.hint}"
        return text


class PolicyErrors(PolicyError):
    """Several mistakes that one stage found, reported together in the
    order of the policy; `loc` and `message` are the first one's."""

    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__(errors[0].loc, errors[0].message, errors[0].hint)
        self.errors = errors

    def render(self) -> str:
        return "\n".join(error.render() for error in self.errors)


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A 'did you mean' hint for a misspelt key or keyword, or None."""
    import difflib

    shuffled = [c for c in choices if sorted(c) == sorted(word)]  # a transposition, say
    close = shuffled or difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid: " + ", ".join(sorted(choices))


def shown_path(path: str) -> str:
    """`path` as a message shows it: as it is, but for characters a terminal
    would act on or hide (a newline, an escape sequence, a bidi override, a
    byte that is not UTF-8), written as Python escapes, so that a hostile
    file name can neither forge a message line nor hide what it is."""
    if path.isprintable():
        return path
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in path)


def printable(text: str, limit: int = 80) -> str:
    """`text` made safe to echo in a message or a generated comment."""
    cleaned = "".join(ch if ch.isprintable() and ch not in '"\\' else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
