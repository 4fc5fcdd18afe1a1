"""A tus body on its way into a stream upload: read, cut into chunks, made
durable and attached, with the three steps overlapping (see `StreamRun`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

import trio
from ingestd import cas

from .metrics import Metrics
from .threads import Threads

# Seconds a stream body may go without a byte before the request ends (its
# bytes so far kept), so that a vanished client does not hold the upload.
BODY_IDLE_TIMEOUT = 60.0
# Body pieces that may wait for the stream writer (which takes all waiting
# ones at once), and sealed chunks (open files, no bytes in memory) waiting
# to be committed.
QUEUED_PIECES = 2
QUEUED_CHUNKS = 8
# Chunks of one stream request fsynced side by side, in worker threads.
COMMIT_THREADS = 4
# Committed chunks attached in one index write at most (when they pile up).
ATTACH_BATCH = 16


class StreamChecksum(Protocol):
    """What a stream body must match, all of it (tus's Upload-Checksum)."""

    algorithm: str

    def hasher(self) -> Any:
        """A fresh hashlib-style hasher (`update`, `digest`)."""

    def matches(self, hasher: Any) -> bool:
        """Whether the body fed to `hasher` is the one expected."""


class StreamRun:
    """One stream body on its way in: reader -> writer -> committer.

    Three tasks so that receiving, hashing/writing and fsyncing overlap.
    Without a checksum the committer attaches full chunks as they are durable
    (batched into one index write when several are ready) and, when the body
    ends — completely, cut off by a disconnect, or at the limit — the last
    partial chunk as the upload's tail. With a checksum nothing is attached
    until the whole body has arrived and matches; then all of it in one
    index write, or none of it (the unattached objects are left to the
    orphan sweep). The writer and committer are shielded from the request's
    cancellation, so a client that disconnects mid-body keeps every byte
    that was read.
    """

    def __init__(
        self,
        store: cas.Store,
        threads: Threads,
        metrics: Metrics,
        on_jobs: Callable[[tuple[str, ...]], None],
        tenant: str,
        upload_id: str,
        state: cas.StreamState,
        appender: cas.Appender,
        checksum: StreamChecksum | None,
    ) -> None:
        """`on_jobs`: called with the jobs of uploads that the attached bytes completed."""
        self.streams = store.streams
        self.threads = threads
        self.metrics = metrics
        self.on_jobs = on_jobs
        self.received_bytes = metrics.received_bytes.labels("tus")
        self.tenant = tenant
        self.upload_id = upload_id
        # The upload as far as this request has attached, and its offset.
        self.state = state
        self.offset = state.offset
        self.appender = appender
        self.checksum = checksum
        self.data_send, self.data_recv = trio.open_memory_channel[bytes](QUEUED_PIECES)
        self.sealed_send, self.sealed_recv = trio.open_memory_channel[cas.Sealed](QUEUED_CHUNKS)
        self.read_scope = trio.CancelScope()
        # Body bytes read but not handed to the writer when reading stopped.
        self.leftover: bytes = b""
        self.ended = False  # the whole body arrived
        self.overflow = False  # it went past the limit
        self.stalled = False  # no byte arrived for BODY_IDLE_TIMEOUT seconds
        self.keep = False  # the writer's verdict: attach what it wrote
        self.broken = False  # committing or attaching failed: stop
        self.error: BaseException | None = None

    async def go(self, body: AsyncIterable[bytes], limit: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            nursery.start_soon(self._commit)
            try:
                with self.read_scope:
                    await self._read(body, limit)
            finally:
                self.data_send.close()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.read_scope.cancel()

    async def _read(self, body: AsyncIterable[bytes], limit: int) -> None:
        received = 0
        chunks: AsyncIterator[bytes] = body.__aiter__()
        try:
            while True:
                # A client that stops sending must not hold the upload forever.
                with trio.move_on_after(BODY_IDLE_TIMEOUT) as idle:
                    try:
                        data = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                if idle.cancelled_caught:
                    self.stalled = True
                    return
                if received + len(data) > limit:
                    data = data[: limit - received]
                    self.overflow = True
                received += len(data)
                self.received_bytes.inc(len(data))
                # Until the writer has it, a disconnect must not lose it.
                self.leftover = data
                await self.data_send.send(data)
                self.leftover = b""
                if self.overflow:
                    return
            self.ended = True
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a body timeout; reported by the caller
            self._fail(exc)

    async def _write(self) -> None:
        # Shielded: bytes that arrived before a disconnect are still stored.
        with trio.CancelScope(shield=True):
            try:
                async with self.sealed_send:
                    async for piece in self.data_recv:
                        if self.error is None:
                            # Pieces that queued up meanwhile go in the same thread hop.
                            await self._seal([piece, *_drain(self.data_recv)])
                    if self.error is not None:
                        return
                    await self._seal([self.leftover])
                    self.keep = self.checksum is None or (
                        self.ended and self.checksum.matches(self.appender.checksum)
                    )
                    if self.keep:
                        last = await self.threads.run(self.appender.finish)
                        if last is not None:
                            await self.sealed_send.send(last)
            except Exception as exc:  # noqa: BLE001 - reported by go()'s caller
                self._fail(exc)
            finally:
                await self.threads.run(self.appender.abort)

    async def _seal(self, pieces: list[bytes]) -> None:
        def write() -> list[cas.Sealed]:
            sealed: list[cas.Sealed] = []
            try:
                for piece in pieces:
                    sealed.extend(self.appender.write(piece))
            except BaseException:
                for chunk in sealed:
                    chunk.abort()  # no temp file is left behind
                raise
            return sealed

        for sealed in await self.threads.run(write):
            await self.sealed_send.send(sealed)

    async def _commit(self) -> None:
        with trio.CancelScope(shield=True):
            committed: list[cas.Piece] = []
            async with self.sealed_recv:
                async for sealed in self.sealed_recv:
                    batch = [sealed, *_drain(self.sealed_recv, COMMIT_THREADS - 1)]
                    if self.broken:
                        await self.threads.run(lambda b=batch: [s.abort() for s in b])
                        continue
                    try:
                        await self._commit_batch(batch, committed)
                        more = self.sealed_recv.statistics().current_buffer_used
                        if self.checksum is None and (not more or len(committed) >= ATTACH_BATCH):
                            await self._attach(committed)
                            committed = []
                    except Exception as exc:  # noqa: BLE001 - reported by go()'s caller
                        self.broken = True
                        self._fail(exc)
            # Without a checksum, what is committed is kept even if writing
            # failed later; with one, only a whole, matching body is.
            if committed and not self.broken and (self.checksum is None or self.keep):
                try:
                    await self._attach(committed)
                except Exception as exc:  # noqa: BLE001 - reported by go()'s caller
                    self._fail(exc)

    async def _commit_batch(self, batch: list[cas.Sealed], committed: list[cas.Piece]) -> None:
        """Commit chunks side by side (each fsync waits on the disk, not the CPU);
        append them to `committed` in order, up to the first that failed."""
        results: list[cas.Piece | BaseException | None] = [None] * len(batch)

        async def commit(i: int) -> None:
            try:
                results[i] = await self.threads.run(batch[i].commit)
            except Exception as exc:  # noqa: BLE001 - raised below, in order
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(batch)):
                nursery.start_soon(commit, i)
        stored = sum(r.put.size for r in results if isinstance(r, cas.Piece) and not r.put.existed)
        self.metrics.stored_bytes.labels("tus").inc(stored)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            committed.append(result)

    async def _attach(self, pieces: list[cas.Piece]) -> None:
        appended = await self.threads.run(
            self.streams.attach, self.upload_id, self.tenant, self.offset, pieces
        )
        self.metrics.chunks.labels("stored").inc(len(pieces))
        self.offset = appended.offset
        self.state = appended.state
        self.on_jobs(appended.jobs)


def _drain(channel: trio.MemoryReceiveChannel, limit: int | None = None) -> list:
    """What waits in `channel` now (at most `limit` items), without blocking."""
    out = []
    while limit is None or len(out) < limit:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return out
