"""Reading a file the user named (a policy, an included file, a list file):
bounded in size, so a stray device or a huge file cannot exhaust memory,
and decoded as UTF-8, with every failure a PolicyError at the file's
place or at the first byte that is not UTF-8."""

from __future__ import annotations

import os

from nfc.errors import Loc, PolicyError, printable


def read_text(path: str, where: Loc, *, limit: int, kind: str, hint: str | None = None) -> str:
    """The text of `path`, at most `limit` bytes. `where` is the place that
    named the file; `kind` says what the file is ("file", "list file")."""
    try:
        # Opened without waiting for a writer: a named pipe that none opens
        # reads as empty rather than hanging; one with a writer (`<(...)`)
        # is read, blocking again, to its end.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.set_blocking(descriptor, True)
            with open(descriptor, "rb", closefd=False) as handle:  # a directory fails here
                data = handle.read(limit + 1)  # one byte more tells a file at the limit from a larger one
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise PolicyError(where, f"cannot read {kind} {printable(path)}: {exc.strerror}") from None
    if len(data) > limit:
        raise PolicyError(where, f"{kind} {printable(path)} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(Loc(path, line, col), f"{kind} is not valid UTF-8 text", hint) from None
