"""Standard output, whose failures (a full disk, a reader gone, a closed
descriptor, an encoding without a character nfc prints) are the
environment's, never a bug: they end the command with `nfc: error: ...`,
exit 2. A command that changes the kernel reports as it goes, and a report
that cannot be written must not stop it half-way (with the persisted files
or the map of `nfc stats` not yet written): `report` keeps going, and
`finish` says at the end what standard output refused."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import TextIO

_refused: list[str] = []  # what standard output refused to `report`, said by `finish`


class OutputError(Exception):
    """Standard output cannot be written."""


def write(text: str, flush: bool = False) -> None:
    """`text` on standard output, all of it, or OutputError. A process's
    stdout is written with os.write until every byte is taken: Python's
    buffered writer loses the rest of a large write that a nearly full
    disk takes only part of, and reports nothing (exit 0, a file cut short)."""
    stream = sys.stdout
    if stream is None:  # started with descriptor 1 closed: only output is refused
        if text:
            raise OutputError("cannot write standard output: it is closed")
        return
    try:
        try:
            descriptor: int | None = stream.fileno()
        except (io.UnsupportedOperation, AttributeError):
            descriptor = None  # a stream in memory (a test's): it cannot fill up
        if descriptor is None:
            stream.write(text)
            if flush:
                stream.flush()
            return
        stream.flush()
        data = memoryview(text.encode(stream.encoding, stream.errors or "strict"))
        while data:
            data = data[os.write(descriptor, data) :]
    except UnicodeEncodeError as exc:
        raise OutputError(
            f"cannot write standard output: its encoding {stream.encoding} has no character "
            f"U+{ord(exc.object[exc.start]):04X} (use a UTF-8 locale)"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: the stream was closed
        _discard(stream)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is closed"
        raise OutputError(f"cannot write standard output: {reason}") from None


def _discard(stream: TextIO) -> None:
    """Point descriptor 1 at /dev/null, so that what the stream still holds
    goes nowhere at exit instead of failing there again (exit 120)."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        descriptor = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, descriptor)
        os.close(null)


def report(line: str) -> None:
    """`line` on standard output at once; a failure is kept for `finish`."""
    try:
        write(line + "\n", flush=True)
    except OutputError as exc:
        if not _refused:
            _refused.append(str(exc))


def finish() -> None:
    """Everything written out; OutputError if standard output refused any of it."""
    refused = list(_refused)
    _refused.clear()
    write("", flush=True)
    if refused:
        raise OutputError(refused[0])


def forget() -> None:
    """Nothing refused yet: a command starts."""
    _refused.clear()
