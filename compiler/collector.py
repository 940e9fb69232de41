"""Pausing Python's cyclic garbage collector around the big passes.

The compile (load, parse, lower, and a backend's rendering) builds large
trees of small objects that live until it ends, and lint and diff build
millions of short-lived cubes;
none of them is in a reference cycle. Every allocation counts towards the
collector's next pass, which walks every object alive (the whole compiled
policy) again and again for nothing: it doubled the compile of a
10,000-rule policy and was a third of lint's time on it. Reference counting
still frees everything as usual; only the search for cycles waits."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off, as it was after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
