"""One generator per backend: IR in, artifact files out."""

from __future__ import annotations

from collections.abc import Callable

from nfc.backends import iptables, nft
from nfc.ir import Ruleset

Generator = Callable[[Ruleset], dict[str, str]]

BACKENDS: dict[str, Generator] = {
    "nft": nft.generate,
    iptables.BACKEND: iptables.generate,
}
