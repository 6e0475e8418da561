"""Inline driving of a connection handler: the reason a socketkit Stream echo runs near raw-Protocol speed.

A plain asyncio handler that waits for bytes costs, per message, one Future, one `call_soon` and one
Task step after `data_received` returns. Here the handler still runs in a real Task (so cancellation,
`asyncio.timeout`, TaskGroups and `current_task()` behave as usual), but while it waits for bytes on its
own stream the Task is parked, and `data_received` resumes the handler's coroutine directly, as the
current task, inside the protocol callback. A handler that awaits anything else (a lock, a sleep, a
full send buffer) hands that awaitable back to its Task and continues the usual way.

Rules that keep it correct:
- only the handler coroutine itself parks, and only on its own stream (`stepping` says it is running);
  any other task that receives on the stream uses an ordinary future;
- the handler always runs in one `contextvars.Context` of its own, whether stepped by the Task or
  inline, so context variables never leak between connections;
- if entering the Task is refused (a task is already current) the data wakes the Task instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import types
from collections.abc import Coroutine
from typing import Any

try:  # private but stable since 3.7 (C-accelerated); without them we never step inline
    from asyncio.tasks import _enter_task, _leave_task
except ImportError:  # pragma: no cover
    _enter_task = _leave_task = None


class _Park:
    """What a handler yields when it waits for bytes on its own stream."""

    __slots__ = ()


PARK = _Park()
_PARKED = (PARK,)
# `await PARK` yields PARK once. __await__ is a static partial, not a method, so awaiting runs no Python
# frame at all, and the tuple iterator it returns is cheaper to make than a generator (`send(None)` into
# it is `next()`). (staticmethod: from 3.14 on, a bare partial would bind like a function.)
_Park.__await__ = staticmethod(functools.partial(iter, _PARKED))  # type: ignore[attr-defined]
_RESUME, _YIELDED, _DONE, _ERROR = range(4)


class _ParkFuture(asyncio.Future):
    """What the Task waits on while its handler is parked. A cancellation of the Task lands here first
    (Task.cancel cancels the future it waits for): the driver stops stepping the handler inline at that
    very moment, as a plain Task would stop being fed, instead of at the Task's next step."""

    __slots__ = ("driver",)

    def cancel(self, msg: Any = None) -> bool:
        self.driver.waiting = False
        return super().cancel(msg=msg)


class Driver:
    __slots__ = ("coro", "ctx", "loop", "task", "stepping", "park", "waiting", "outcome", "_run", "_send")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.ctx = contextvars.copy_context()
        self._run = self.ctx.run  # bound once: step_inline runs once per message
        self._send = coro.send
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.stepping = False
        self.park: asyncio.Future[None] | None = None
        self.waiting = False  # == park is not None and not park.done(), kept as a flag for the hot path
        # What happened while parked, for the Task to act on: (kind, payload) or None.
        self.outcome: tuple[int, Any] | None = None

    @property
    def parked(self) -> bool:
        """The handler waits for bytes and nothing has woken it yet."""
        return self.waiting

    # -- called from the protocol ---------------------------------------------------------------
    def wake(self) -> None:
        """EOF, loss or close: let the Task resume the handler the ordinary way."""
        if self.stepping:
            return  # the handler is running right now and sees the new state by itself
        if self.parked and self.outcome is None:
            self._finish(_RESUME, None)

    def _finish(self, kind: int, payload: Any) -> None:
        self.outcome = (kind, payload)
        self.waiting = False
        park = self.park
        if park is not None and not park.done():
            park.set_result(None)

    def step_inline(self) -> None:
        """New bytes while parked: resume the handler right here, as its Task."""
        loop, task = self.loop, self.task
        try:
            _enter_task(loop, task)
        except (RuntimeError, TypeError):
            self._finish(_RESUME, None)
            return
        self.stepping = True
        try:
            yielded = self._run(self._send, None)
        except StopIteration as stop:
            outcome: tuple[int, Any] | None = (_DONE, stop.value)
        except BaseException as exc:  # noqa: BLE001 - handed to the Task, which re-raises it
            outcome = (_ERROR, exc)
        else:
            outcome = None if yielded is PARK else (_YIELDED, yielded)
        finally:
            self.stepping = False
            _leave_task(loop, task)
        if outcome is not None:
            self._finish(*outcome)

    # -- the Task's side ------------------------------------------------------------------------
    @types.coroutine
    def run(self):
        """Step the handler from its Task; park while it waits on its stream."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        coro, run = self.coro, self.ctx.run
        value: Any = None
        error: BaseException | None = None
        while True:
            self.stepping = True
            try:
                if error is None:
                    yielded = run(coro.send, value)
                else:
                    yielded = run(coro.throw, error)
            except StopIteration as stop:
                return stop.value
            finally:
                self.stepping = False
            value = error = None
            while yielded is PARK:
                park = _ParkFuture(loop=self.loop)
                park.driver = self
                self.park = park
                self.outcome = None
                self.waiting = True
                try:
                    yield from park
                except BaseException as exc:  # noqa: BLE001 - cancellation, forwarded into the handler
                    error = exc
                finally:
                    self.park = None
                    self.waiting = False
                outcome, self.outcome = self.outcome, None
                if outcome is None:
                    break  # cancelled while parked: `error` goes into the handler
                kind, payload = outcome
                if kind == _DONE:
                    return payload  # it finished inline; a cancellation that came after is moot
                if kind == _ERROR:
                    raise payload
                if kind == _YIELDED and isinstance(error, asyncio.CancelledError) and asyncio.isfuture(payload):
                    # Cancelled after the handler, stepped inline, began awaiting `payload`: cancel that
                    # instead, as Task.cancel() does, so what it waits for (a gather's children...) is
                    # cancelled too; the Task then delivers CancelledError when `payload` wakes it.
                    if payload.cancel(msg=error.args[0] if error.args else None):
                        error = None
                if kind == _RESUME or error is not None:
                    break
                yielded = payload  # _YIELDED: a real awaitable, passed to the Task below
            else:
                try:
                    value = yield yielded
                except BaseException as exc:  # noqa: BLE001 - forwarded into the handler
                    error = exc


def inline_supported() -> bool:
    return _enter_task is not None
