"""iptables-persistent's files: `apply --persist` and `confirm --persist`
write the iptables-legacy ruleset in force to `rules.v4` and `rules.v6`
(Debian's /etc/iptables), so that a host whose boot loads those files
(netfilter-persistent) comes back with it.

Only a confirmed ruleset is written: one still waiting for `nfc confirm`
would otherwise be what the host loads after a reboot, the very case the
confirmation guards against. Each file is written whole or not at all
(a temporary file in the same directory, renamed over the old one); the
two are renamed one after the other, once both are written."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from nfc.backends import iptables
from nfc.backends.iptables_kernel import with_owned_tables
from nfc.backends.kernel import ApplyError

DEFAULT_PERSIST_DIR = "/etc/iptables"
PERSIST_DIR_ENV = "NFC_PERSIST_DIR"
MODE = 0o640  # as netfilter-persistent saves them: the rules are no one else's business


def directory(given: str | os.PathLike[str] | None) -> Path:
    """Where the files go: `given`, else $NFC_PERSIST_DIR, else /etc/iptables."""
    return Path(given or os.environ.get(PERSIST_DIR_ENV) or DEFAULT_PERSIST_DIR)


def require_legacy(backend: str) -> None:
    """Refuse --persist for a ruleset iptables-persistent cannot load."""
    if backend != iptables.BACKEND:
        raise ApplyError(
            f"--persist writes iptables-persistent's {' and '.join(iptables.TOOLS)}, which only "
            f"the {iptables.BACKEND} backend loads; a {backend} ruleset comes back at boot "
            "through 'nfc restore' (nfc.service)"
        )


def write(target: Path, rules: Mapping[str, str]) -> list[Path]:
    """Write each iptables-legacy rules file of `rules` into `target`
    (made 0755 if missing); the paths written."""
    try:
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ApplyError(f"cannot create {target}: {exc.strerror}") from None
    temporaries: list[tuple[Path, Path]] = []
    try:
        for name in iptables.TOOLS:
            final = target / name
            temporary = target / f".{name}.nfc-{os.getpid()}"
            temporaries.append((temporary, final))
            # what nfc loads, so that a boot also empties a nat table nfc does not use
            _write_durably(temporary, with_owned_tables(rules[name]))
        for temporary, final in temporaries:
            os.replace(temporary, final)
        _sync_directory(target)
    except OSError as exc:
        for temporary, _ in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise ApplyError(f"cannot write {exc.filename or target}: {exc.strerror}") from None
    return [final for _, final in temporaries]


def _write_durably(path: Path, text: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a leftover of a killed nfc with this pid
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
