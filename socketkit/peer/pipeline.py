"""The disk and the hash beside the network: one worker thread per transfer reads (sender) or writes
(receiver) the file and feeds the sha256, in order, while the event loop encrypts, decrypts and moves
records. hashlib and file I/O release the GIL, so on a machine with a spare core the two overlap; the
bytes in flight between the loop and the thread are bounded (a few MiB), whatever the file size.

Why not in the loop: a 512 MiB transfer spends about as long hashing and writing as it does on the
network and the cipher together; done in line, one core does all of it while the other waits.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import IO

BATCH = 1 << 20          # hand the thread at least this much at a time (wormhole sends 16 KiB records)
IN_FLIGHT = 8 << 20      # bytes queued for the thread before the loop waits for it


class Sink:
    """Write records to `f` and hash them, in a worker thread, in order."""

    def __init__(self, f: IO[bytes], hasher: hashlib._Hash) -> None:
        self.f = f
        self.hasher = hasher
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="socketkit-peer-sink")
        self._loop = asyncio.get_running_loop()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pending: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._pending_bytes = 0

    def _work(self, records: list[bytes]) -> None:
        write, update = self.f.write, self.hasher.update
        for r in records:
            write(r)
            update(r)

    async def put(self, record: bytes) -> None:
        self._batch.append(record)
        self._batch_bytes += len(record)
        if self._batch_bytes >= BATCH:
            await self._submit()

    async def _submit(self) -> None:
        if self._batch:
            fut = self._loop.run_in_executor(self._pool, self._work, self._batch)
            self._pending.append((fut, self._batch_bytes))
            self._pending_bytes += self._batch_bytes
            self._batch, self._batch_bytes = [], 0
        while self._pending and (self._pending_bytes > IN_FLIGHT or self._pending[0][0].done()):
            fut, n = self._pending.popleft()
            self._pending_bytes -= n
            await fut  # raises the thread's OSError (disk full...) here

    async def finish(self) -> None:
        """Everything put so far is written and hashed (also after an error upstream: what arrived is
        kept whole, so a resume starts from a consistent prefix)."""
        try:
            await self._submit()
            while self._pending:
                fut, n = self._pending.popleft()
                self._pending_bytes -= n
                await fut
        finally:
            self._pool.shutdown(wait=True)


class Source:
    """Read the file ahead in chunks and hash them, in a worker thread, in order."""

    def __init__(self, f: IO[bytes], hasher: hashlib._Hash, total: int, chunk: int, depth: int = 4) -> None:
        self.f = f
        self.hasher = hasher
        self.left = total         # bytes not yet asked of the thread
        self.chunk = chunk
        self.depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="socketkit-peer-source")
        self._loop = asyncio.get_running_loop()
        self._ahead: collections.deque[asyncio.Future[bytes]] = collections.deque()

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.hasher.update(data)
        return data

    def _fill(self) -> None:
        while self.left > 0 and len(self._ahead) < self.depth:
            n = min(self.chunk, self.left)
            self.left -= n
            self._ahead.append(self._loop.run_in_executor(self._pool, self._read, n))

    async def next(self) -> bytes:
        """The next chunk (b"" once everything was read; a short read shows as a shorter chunk)."""
        self._fill()
        if not self._ahead:
            return b""
        data = await self._ahead.popleft()
        self._fill()
        return data

    def close(self) -> None:
        for fut in self._ahead:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["Sink", "Source"]
