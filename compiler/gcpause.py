"""Pausing Python's cyclic garbage collector while a stage builds its output."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run a block with the cyclic garbage collector off.

    The parse and lower stages build large trees of small objects, without
    reference cycles, that live until the compile ends. Every such object
    counts towards the collector's next full collection, which then walks
    the whole growing tree again and again for nothing: keeping the syntax
    tree whole from parse to lower doubled the compile time of a 10,000-rule
    policy. Reference counting still frees everything as usual; only the
    search for cycles waits until the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
