"""Event loop choice: uvloop where it installs (the default), plain asyncio on request or as fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOPS = ("auto", "uvloop", "asyncio")


def new_event_loop(kind: str | None = "auto") -> asyncio.AbstractEventLoop:
    kind = kind or "auto"
    if kind not in LOOPS:
        raise ValueError(f"unknown event loop {kind!r}; choose one of {', '.join(LOOPS)}")
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("--loop uvloop asked for, but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, loop: str | None = "auto") -> T:
    """asyncio.run with the loop of our choice."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        return runner.run(main)
