"""Process-level settings for the long-running processes (`rsa worker`, `rsa serve`)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable


def settle_heap() -> None:
    """Take everything alive after start-up (modules, sympy, pydantic schemas, templates) out of the cyclic GC.

    Those objects live as long as the process, yet every full collection walks them all, pausing the event loop
    (and with it every request in flight) far longer than the collection of what is actually garbage. Objects
    created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's default.

    A worker spends a fair share of its CPU in the event loop itself, and uvloop's is cheaper per generation
    (`benchmarks/README.md`).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
