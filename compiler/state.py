"""The state directory of apply, confirm and rollback: its lock and its
JSON files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from nfc.backends.kernel import ApplyError, Json

DEFAULT_STATE_DIR = "/var/lib/nfc"
LOCK_TIMEOUT = 60.0


class State:
    """The state directory: lock, saved state, pending confirmation."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.saved = self.dir / "previous.json"
        self.pending = self.dir / "pending.json"
        self.rolled_back = self.dir / "rolled-back.json"

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(self.dir / "lock", "a")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise ApplyError(f"cannot use state directory {self.dir}: {exc.strerror}") from None
        with handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise ApplyError(
                            f"another nfc holds {self.dir / 'lock'} for more than {timeout:.0f}s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, path: Path, data: Json) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        with open(temporary, "w") as handle:
            handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def read(self, path: Path) -> Json | None:
        try:
            data: Json = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ApplyError(f"cannot read {path}: {exc}") from None
        return data
