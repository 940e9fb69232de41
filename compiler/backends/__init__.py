"""One record per backend: its name, its output files, its pure generator
(IR in, files out), the same with its optimizer on where it has one, and
its kernel side (loading, saving, testing), which live in sibling modules.
`BACKENDS` is the one registry of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nfc.backends import iptables, iptables_kernel, nft, nft_kernel, nft_optimize
from nfc.backends.kernel import Kernel
from nfc.ir import Ruleset

Generator = Callable[[Ruleset], dict[str, str]]


@dataclass(frozen=True)
class Backend:
    """A target of nfc, as `nfc -b NAME` names it."""

    name: str
    files: tuple[str, ...]  # what `generate` returns, in its order
    generate: Generator  # pure: no subprocess, no filesystem
    kernel: Callable[[], Kernel]  # the kernel side, made only when one is needed
    optimized: Generator | None = None  # `generate` with the optimizer on (nfc compile -O1)


BACKENDS: dict[str, Backend] = {
    record.name: record
    for record in (
        Backend(nft.BACKEND, (nft.RULESET,), nft.generate, nft_kernel.NftKernel, nft_optimize.generate),
        Backend(iptables.BACKEND, tuple(iptables.TOOLS), iptables.generate, iptables_kernel.LegacyKernel),
    )
}
DEFAULT_BACKEND = nft.BACKEND
