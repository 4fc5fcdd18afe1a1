"""One chunk of a session on its way in: the whole chunk operation in one place.

`Store.receive_chunk` opens a `ChunkIntake` for chunk `index` of a session:
the caller feeds it the body's bytes as they arrive (`write`, from one
thread at a time) and then `finish`es it. The length is counted as the
bytes go by and the hash is checked once, by the chunk writer at commit
(against the declared hash, or the caller's claim); `finish` makes the
object durable and attaches it in one index write, which checks only what
may have changed meanwhile (the session's state). Anything else — a body
too long or too short, a hash that differs — is refused with nothing kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .chunkstore import ChunkStore, ChunkWriter, PutResult
from .errors import ChunkHashMismatch, WrongChunkSize

__all__ = ["ChunkIntake", "ChunkRun"]


class ChunkIntake:
    def __init__(
        self,
        chunks: ChunkStore,
        index: int,
        declared: str | None,
        length: int,
        attach: Callable[[PutResult], object] | None = None,
        *,
        claimed_hash: str | None = None,
        lane: object | None = None,
    ) -> None:
        """`declared`: the upload's BLAKE3 for the chunk, if it has a layout;
        `claimed_hash`: what the client says it sends (checked like a declared
        hash, and against it); `attach`: records the committed object (a
        `ChunkRun`'s intakes have none: the run attaches them together);
        `lane`: the chunk store's writer lane (a run's chunks share one)."""
        if claimed_hash and declared and claimed_hash != declared:
            raise ChunkHashMismatch(
                f"the client says chunk {index} hashes to {claimed_hash}; "
                f"the upload declared {declared}",
                expected=declared,
                actual=claimed_hash,
            )
        self.index = index
        self.length = length
        self._chunks = chunks
        self._expected = declared or claimed_hash
        self._attach = attach
        self._lane = lane
        self._writer: ChunkWriter | None = None
        self.received = 0
        # The object written, once committed (`written` says if it is new bytes).
        self.put: PutResult | None = None

    def check_length(self, announced: int) -> None:
        """Refuse a body whose announced length (Content-Length) is not the chunk's."""
        if announced != self.length:
            raise self._wrong_size(announced)

    def write(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        """The next bytes of the chunk; more than its length is refused."""
        if self._writer is None:
            self._writer = self._chunks.writer(self._expected, self._lane)
        for piece in pieces:
            self.received += len(piece)
            if self.received > self.length:
                raise WrongChunkSize(
                    f"chunk {self.index} must be {self.length} bytes, got more",
                    expected=self.length,
                )
            self._writer.write(piece)

    def finish(self, pieces: Iterable[bytes | bytearray | memoryview] = ()) -> object:
        """Write the last `pieces`, check the length, commit (the hash checked)
        and attach: durable when this returns (what `attach` returns)."""
        assert self._attach is not None, "a run's chunks are attached by the run"
        return self._attach(self.commit(pieces))

    def commit(self, pieces: Iterable[bytes | bytearray | memoryview] = ()) -> PutResult:
        """Write the last `pieces`, check the length and commit (the hash
        checked): the object is named but not attached, nor durable yet."""
        self.write(pieces)
        if self.received != self.length:
            raise self._wrong_size(self.received)
        if self._writer is None:  # a chunk of no bytes
            self._writer = self._chunks.writer(self._expected, self._lane)
        self.put = self._writer.commit()
        return self.put

    def abort(self) -> None:
        """Forget what was written (harmless after `finish`)."""
        if self._writer is not None:
            self._writer.abort()

    @property
    def written(self) -> int:
        """Bytes this chunk added to the chunk store (0 when it held them already)."""
        return self.put.size if self.put is not None and not self.put.existed else 0

    def _wrong_size(self, actual: int) -> WrongChunkSize:
        return WrongChunkSize(
            f"chunk {self.index} must be {self.length} bytes, got {actual}",
            expected=self.length,
            actual=actual,
        )


class ChunkRun:
    """Chunks `first`, `first + 1`, … of a session from one body, back to back
    in the order declared: each chunk's bytes go to its own `ChunkIntake`,
    committed (the hash checked) as soon as they are whole, and attached,
    durably, a batch of `KEEP_BYTES` at a time (one index write each, so a
    crash mid-body keeps most of it) and the rest at `finish`.

    A run that fails part-way (a chunk that fails its hash, a body cut short
    or too long) still `keep`s every whole chunk before the failure: the
    error's ``kept_chunks`` extra lists them."""

    KEEP_BYTES = 8 << 20

    def __init__(
        self,
        intakes: list[ChunkIntake],
        attach: Callable[[list[tuple[int, PutResult]]], tuple[list[object], Exception | None]],
    ) -> None:
        """`attach` records committed chunks, in order, durably, up to the
        first it refuses: (their acks, that refusal or None)."""
        self._intakes = intakes
        self._attach = attach
        self._current = 0
        self._committed: list[tuple[int, PutResult]] = []
        self._committed_bytes = 0
        # The acks of the chunks attached so far, in order.
        self.acks: list[object] = []
        self.length = sum(intake.length for intake in intakes)
        self.received = 0

    @property
    def first(self) -> int:
        return self._intakes[0].index

    def check_length(self, announced: int) -> None:
        """Refuse a body whose announced length is not the run's."""
        if announced != self.length:
            raise WrongChunkSize(
                f"chunks {self.first}..{self._intakes[-1].index} are {self.length} bytes "
                f"together; the body announces {announced}",
                expected=self.length,
                actual=announced,
            )

    def write(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        """The next bytes of the body, split at chunk boundaries; each chunk
        made whole is committed (a mismatching hash raises here)."""
        for piece in pieces:
            view = memoryview(piece)
            while view:
                if self._current == len(self._intakes):
                    self.received += len(view)
                    raise WrongChunkSize(
                        f"the body goes past the {self.length} bytes of chunks "
                        f"{self.first}..{self._intakes[-1].index}",
                        expected=self.length,
                    )
                intake = self._intakes[self._current]
                take = min(len(view), intake.length - intake.received)
                intake.write([view[:take]])
                self.received += take
                view = view[take:]
                if intake.received == intake.length:
                    self._commit_current()
        # Chunks of no bytes complete without any byte arriving.
        while self._current < len(self._intakes) and self._intakes[self._current].length == 0:
            self._commit_current()

    def _commit_current(self) -> None:
        intake = self._intakes[self._current]
        self._committed.append((intake.index, intake.commit()))
        self._committed_bytes += intake.length
        self._current += 1
        if self._committed_bytes >= self.KEEP_BYTES:
            self.keep()

    def finish(self, pieces: Iterable[bytes | bytearray | memoryview] = ()) -> list[object]:
        """Write the last `pieces` and attach every chunk, durably: the acks,
        in order. A body short of the run's length is refused (`keep` the
        whole chunks)."""
        self.write(pieces)
        if self._current < len(self._intakes):
            raise WrongChunkSize(
                f"the body ended after {self.received} of the {self.length} bytes of chunks "
                f"{self.first}..{self._intakes[-1].index}",
                expected=self.length,
                actual=self.received,
            )
        return self.keep()

    def keep(self) -> list[object]:
        """Attach, durably, the chunks committed so far (after a failure: the
        whole ones); all the acks so far. A chunk the session refuses (its
        index holds other bytes) raises, those before it kept."""
        committed, self._committed = self._committed, []
        self._committed_bytes = 0
        if committed:
            acks, refusal = self._attach(committed)
            self.acks.extend(acks)
            if refusal is not None:
                raise refusal
        return self.acks

    def abort(self) -> None:
        """Forget the chunk being written (harmless after `finish`)."""
        for intake in self._intakes[self._current :]:
            intake.abort()

    @property
    def written(self) -> int:
        """Bytes the run added to the chunk store."""
        return sum(intake.written for intake in self._intakes)
