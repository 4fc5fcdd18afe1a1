"""ingestd's content-addressed store: chunk objects, manifests and the LMDB index.

Knows nothing of HTTP or plugins; usable as a library::

    from ingestd.cas import Store
    with Store("data") as store:
        s = store.create_session(filename="a.jsonl", size=3, chunk_size=1 << 20)
        store.put_chunk(s.id, 0, b"abc")
        done = store.complete(s.id)
"""

from .errors import (
    ChecksumMismatch,
    ChunkConflict,
    ChunkHashMismatch,
    ChunkOutOfRange,
    ClientError,
    CorruptObject,
    IncompleteUpload,
    InvalidLayout,
    SessionNotOpen,
    StorageError,
    StoreError,
    TooLarge,
    UnknownFile,
    UnknownJob,
    UnknownSession,
    WrongChunkSize,
)
from .index import Index
from .materialize import safe_filename
from .objects import ObjectStore, ObjectWriter, PutResult
from .reader import ManifestReader
from .records import (
    DEFAULT_TENANT,
    FileRecord,
    Job,
    JobState,
    OutboxEntry,
    Session,
    SessionState,
)
from .store import ChunkAck, Completion, Store

__all__ = [
    "DEFAULT_TENANT",
    "ChecksumMismatch",
    "ChunkAck",
    "ChunkConflict",
    "ChunkHashMismatch",
    "ChunkOutOfRange",
    "ClientError",
    "Completion",
    "CorruptObject",
    "FileRecord",
    "IncompleteUpload",
    "InvalidLayout",
    "Index",
    "Job",
    "JobState",
    "ManifestReader",
    "ObjectStore",
    "OutboxEntry",
    "ObjectWriter",
    "PutResult",
    "Session",
    "SessionNotOpen",
    "SessionState",
    "StorageError",
    "Store",
    "StoreError",
    "TooLarge",
    "UnknownFile",
    "UnknownJob",
    "UnknownSession",
    "WrongChunkSize",
    "safe_filename",
]
