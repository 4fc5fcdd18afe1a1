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

__all__ = ["ChunkIntake"]


class ChunkIntake:
    def __init__(
        self,
        chunks: ChunkStore,
        index: int,
        declared: str | None,
        length: int,
        attach: Callable[[PutResult], object],
        *,
        claimed_hash: str | None = None,
    ) -> None:
        """`declared`: the upload's BLAKE3 for the chunk, if it has a layout;
        `claimed_hash`: what the client says it sends (checked like a declared
        hash, and against it); `attach`: records the committed object."""
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
            self._writer = self._chunks.writer(self._expected)
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
        self.write(pieces)
        if self.received != self.length:
            raise self._wrong_size(self.received)
        if self._writer is None:  # a chunk of no bytes
            self._writer = self._chunks.writer(self._expected)
        self.put = self._writer.commit()
        return self._attach(self.put)

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
