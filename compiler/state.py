"""The state directory of apply, confirm and rollback: its lock and its JSON
files, trusted only as the running user's own and read only in the shape
nfc writes them.

Root acts on what these files say (rollback loads the saved ruleset, the
timer's pid is signalled), so the directory and every file in it must
belong to the user who runs nfc and be writable by no one else, and no file
in it is reached through a symbolic link. Files are opened relative to one
descriptor of the directory; a file is written under a random temporary
name that nfc itself creates (never one that already exists) and renamed
into place. A file that is not JSON of its file's exact shape is a
`StateError` naming it, raised before anything acts on its content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from nfc.backends.kernel import ApplyError, Json
from nfc.state_shapes import PENDING, ROLLED_BACK, SAVED, SCHEMAS, parse

DEFAULT_STATE_DIR = "/var/lib/nfc"
LOCK_TIMEOUT = 60.0
LOCK = "lock"
TEMPORARY_DRAWS = 8  # of 64 random bits each: a collision means someone plants names


class StateError(ApplyError):
    """The state directory or a file in it cannot be trusted, read or written
    (exit code 2)."""


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _trust(status: os.stat_result, what: str) -> None:
    """Refuse what another user owns or can write: root would act on it."""
    if status.st_uid != os.geteuid():
        raise StateError(
            f"{what} belongs to {_user(status.st_uid)}, not to {_user(os.geteuid())} who runs nfc: "
            "nfc trusts only a state directory and files of its own user"
        )
    writers = [
        who for bit, who in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others")) if status.st_mode & bit
    ]
    if writers:
        raise StateError(
            f"{what} is writable by {' and '.join(writers)} (mode {stat.S_IMODE(status.st_mode):04o}): "
            "nfc trusts only state that no one else can write"
        )


class State:
    """The state directory: lock, saved state, pending confirmation.

    Under `locked` the directory stays open, and every read, write and
    removal in the block goes to that one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.saved = self.dir / SAVED
        self.pending = self.dir / PENDING
        self.rolled_back = self.dir / ROLLED_BACK
        self._held: int | None = None  # the directory's descriptor while locked

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        directory = self._open_directory(create=True)
        if directory is None:
            raise StateError(f"cannot use state directory {self.dir}: it vanished as it was made")
        try:
            lock = self._open_file(directory, LOCK, os.O_RDWR | os.O_CREAT)
            try:
                self._wait_for(lock, timeout)
                self._held = directory
                try:
                    self._remove_leftovers(directory)
                    yield
                finally:
                    self._held = None
            finally:
                os.close(lock)  # releases the lock
        finally:
            os.close(directory)

    def _wait_for(self, lock: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise StateError(f"cannot lock {self.dir / LOCK}: {exc.strerror}") from None
                if time.monotonic() > deadline:
                    raise ApplyError(
                        f"another nfc holds {self.dir / LOCK} for more than {timeout:.0f}s"
                    ) from None
                time.sleep(0.05)

    def read(self, path: Path) -> Json | None:
        """The content of state file `path`, in its shape; None if it does not exist."""
        name = self._name(path)
        with self._directory(create=False) as directory:
            if directory is None:
                return None
            try:
                handle = os.fdopen(self._open_file(directory, name, os.O_RDONLY), "rb")
            except FileNotFoundError:
                return None
            try:
                with handle:
                    # nfc writes an object: a file that starts otherwise (zeros, sparse
                    # and gigabytes long) is damaged, and refused without reading it whole
                    raw = handle.read(1)
                    if raw == b"{":
                        raw += handle.read()
            except OSError as exc:
                raise StateError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return parse(raw, SCHEMAS[name])
        except ValueError as exc:
            raise StateError(f"damaged state file {path}: {exc}") from None

    def write(self, path: Path, data: Json) -> None:
        """Make `data` the content of state file `path`, all at once and durably,
        or raise StateError leaving the file and the directory as they were."""
        name = self._name(path)
        problem = SCHEMAS[name](data)
        if problem is not None:
            raise StateError(f"refusing to write {path}: {problem}")
        encoded = (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
        with self._directory(create=True) as directory:
            if directory is None:
                raise StateError(f"cannot write {path}: {self.dir} vanished as it was made")
            temporary, descriptor = self._create_temporary(directory, name)
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(encoded)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
                os.fsync(directory)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=directory)
                raise StateError(f"cannot write {path}: {exc.strerror}") from None

    def remove(self, path: Path) -> None:
        """Remove state file `path` if it exists."""
        name = self._name(path)
        with self._directory(create=False) as directory:
            if directory is None:
                return
            try:
                os.unlink(name, dir_fd=directory)
                os.fsync(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StateError(f"cannot remove {path}: {exc.strerror}") from None

    def move(self, source: Path, target: Path) -> None:
        """Rename state file `source` to `target`, replacing it, at once."""
        names = self._name(source), self._name(target)
        with self._directory(create=False) as directory:
            if directory is None:
                raise StateError(f"cannot move {source}: {self.dir} is gone")
            try:
                os.lstat(
                    names[0], dir_fd=directory
                )  # ours to move: a file of this directory, no link followed
                os.replace(*names, src_dir_fd=directory, dst_dir_fd=directory)
                os.fsync(directory)
            except OSError as exc:
                raise StateError(f"cannot move {source} to {target}: {exc.strerror}") from None

    def _name(self, path: Path) -> str:
        if path.parent != self.dir or path.name not in SCHEMAS:
            raise ValueError(f"{path} is not a state file of {self.dir} (see nfc.state.register_schema)")
        return path.name

    @contextlib.contextmanager
    def _directory(self, create: bool) -> Iterator[int | None]:
        """The directory held by `locked`, or else opened for the block (None if
        it does not exist and `create` is false)."""
        if self._held is not None:
            yield self._held
            return
        directory = self._open_directory(create)
        try:
            yield directory
        finally:
            if directory is not None:
                os.close(directory)

    def _open_directory(self, create: bool) -> int | None:
        if create:
            self._create()
        try:
            directory = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot use state directory {self.dir}: {exc.strerror}") from None
        try:
            _trust(os.fstat(directory), f"state directory {self.dir}")
        except StateError:
            os.close(directory)
            raise
        return directory

    def _create(self) -> None:
        """Make the directory 0700 and, as `install -d` would, its missing
        parents 0755: writable by their owner only, so no one else can move
        the state directory away."""
        missing = []
        path = self.dir.absolute()
        while not os.path.lexists(path):
            missing.append(path)
            path = path.parent
        try:
            for each in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(each, 0o700 if each == missing[0] else 0o755)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.dir}: {exc.strerror}") from None

    def _open_file(self, directory: int, name: str, flags: int) -> int:
        """Open a state file that is a regular file of ours, never through a
        symbolic link; FileNotFoundError if it does not exist (and `flags` do
        not create it)."""
        path = self.dir / name
        try:
            kind = stat.S_IFMT(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            kind = stat.S_IFREG  # made now if flags say so
        except OSError as exc:
            raise StateError(f"cannot use {path}: {exc.strerror}") from None
        if kind == stat.S_IFLNK:
            raise StateError(f"{path} is a symbolic link: nfc follows none in its state directory")
        if kind != stat.S_IFREG:
            raise StateError(f"{path} is not a regular file")
        try:
            descriptor = os.open(
                name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=directory
            )
        except FileNotFoundError:
            if flags & os.O_CREAT:  # a directory no file can be made in (/proc/self), not a missing file
                raise StateError(f"cannot create {path}: no file can be made in {self.dir}") from None
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(
                    f"{path} is a symbolic link: nfc follows none in its state directory"
                ) from None
            raise StateError(f"cannot use {path}: {exc.strerror}") from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise StateError(f"{path} is not a regular file")
            _trust(status, f"state file {path}")
        except StateError:
            os.close(descriptor)
            raise
        return descriptor

    def _create_temporary(self, directory: int, name: str) -> tuple[str, int]:
        """A new file under a random name: O_EXCL and O_NOFOLLOW, so a file or
        link already there is never written through."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(TEMPORARY_DRAWS):
            temporary = f".{name}.{secrets.token_hex(8)}"
            try:
                return temporary, os.open(temporary, flags, 0o600, dir_fd=directory)
            except FileExistsError:
                continue  # planted, or a leftover: draw again
            except OSError as exc:
                raise StateError(f"cannot write {self.dir / name}: {exc.strerror}") from None
        raise StateError(f"cannot write {self.dir / name}: every temporary name drawn was taken")

    def _remove_leftovers(self, directory: int) -> None:
        """Temporary files of a writer that was killed: under the lock none is
        being written, and unlink removes a link, never its target."""
        names = "|".join(map(re.escape, SCHEMAS))
        leftover = re.compile(rf"\.(?:{names})\.[0-9a-f]+\Z")
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):
                if leftover.match(entry):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry, dir_fd=directory)
