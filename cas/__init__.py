"""ingestd's content-addressed store: chunk objects, manifests and the LMDB index.

Knows nothing of HTTP or plugins; usable as a library::

    from ingestd.cas import Store
    with Store("data") as store:
        s = store.create_session(filename="a.jsonl", size=3, chunk_size=1 << 20)
        store.put_chunk(s.id, 0, b"abc")
        done = store.complete(s.id)

The modules, one concept each: `chunkstore` (the interface objects are kept
behind) with `packstore` (the default), `localstore` (the older layout) and
`memstore`; `index` (LMDB, group commit) and `pgindex` (PostgreSQL, its
schema in `pgschema`), opened by `backends`;
`records`; `sessions` (and their transition table); `parts` (the ledger of
a session's chunks); `refs` (chunk reference counts); `tenants` (each
tenant's chunk holdings and usage); `tokens`; `files`; `completion`; `gc`;
`queues` (jobs, outbox); `streams` (tus byte streams); `reader`;
`materialize`; `store` (wires them together). Callers outside the package
import from here only.
"""

from . import fsck, migrate
from .backends import index_schema_status, migrate_index_schema, open_chunk_store, open_index
from .chunkstore import ChunkHandle, ChunkStore, ChunkWriter, PutResult, is_hash
from .completion import Completion
from .errors import (
    ChecksumMismatch,
    ChunkConflict,
    ChunkHashMismatch,
    ChunkOutOfRange,
    ClientError,
    CorruptObject,
    DamagedFile,
    IncompleteUpload,
    IndexUnavailable,
    InvalidConcat,
    InvalidLayout,
    InvalidLength,
    NotAStream,
    ObjectVanished,
    OffsetMismatch,
    QuotaExceeded,
    SessionNotOpen,
    StorageError,
    StoreError,
    TooLarge,
    TooManyOpenUploads,
    UnknownFile,
    UnknownJob,
    UnknownSession,
    WrongChunkSize,
)
from .files import Files
from .index import Index
from .intake import ChunkIntake, ChunkRun
from .localstore import LocalChunkStore, clear_temp
from .locks import HeldLock, LockDir
from .materialize import UNREADABLE_CHARS, safe_filename
from .memstore import MemoryChunkStore
from .packstore import LocalPackStore
from .queues import FINISHED_JOB
from .reader import ManifestReader
from .records import (
    DEFAULT_TENANT,
    FORMAT_VERSION,
    FileRecord,
    FileState,
    Job,
    JobState,
    OutboxEntry,
    OutboxState,
    Session,
    SessionState,
    Stream,
    TenantUsage,
    TokenRecord,
)
from .refs import DEDUP_SCOPES
from .sessions import TRANSITIONS
from .store import ChunkAck, Store
from .streams import (
    FINAL,
    PARTIAL,
    SINGLE,
    Appended,
    Appender,
    Piece,
    Sealed,
    StreamState,
    StreamStore,
)
from .tenants import Quota, TenantLedger
from .tokens import Tokens, UnknownToken

__all__ = [
    "UNREADABLE_CHARS",
    "open_chunk_store",
    "open_index",
    "index_schema_status",
    "migrate_index_schema",
    "DEDUP_SCOPES",
    "Quota",
    "TenantLedger",
    "QuotaExceeded",
    "TooManyOpenUploads",
    "TenantUsage",
    "TokenRecord",
    "Tokens",
    "UnknownToken",
    "DEFAULT_TENANT",
    "FINAL",
    "FINISHED_JOB",
    "FORMAT_VERSION",
    "PARTIAL",
    "SINGLE",
    "TRANSITIONS",
    "Appended",
    "Appender",
    "ChecksumMismatch",
    "ChunkAck",
    "ChunkConflict",
    "ChunkHandle",
    "ChunkHashMismatch",
    "ChunkIntake",
    "ChunkRun",
    "ChunkOutOfRange",
    "ChunkStore",
    "ChunkWriter",
    "ClientError",
    "Completion",
    "CorruptObject",
    "DamagedFile",
    "FileRecord",
    "FileState",
    "Files",
    "HeldLock",
    "IncompleteUpload",
    "Index",
    "IndexUnavailable",
    "InvalidConcat",
    "InvalidLayout",
    "InvalidLength",
    "Job",
    "JobState",
    "LocalChunkStore",
    "LocalPackStore",
    "LockDir",
    "ManifestReader",
    "MemoryChunkStore",
    "NotAStream",
    "ObjectVanished",
    "OffsetMismatch",
    "OutboxEntry",
    "OutboxState",
    "Piece",
    "PutResult",
    "Sealed",
    "Session",
    "SessionNotOpen",
    "SessionState",
    "StorageError",
    "Store",
    "StoreError",
    "Stream",
    "StreamState",
    "StreamStore",
    "TooLarge",
    "UnknownFile",
    "UnknownJob",
    "UnknownSession",
    "WrongChunkSize",
    "clear_temp",
    "is_hash",
    "fsck",
    "migrate",
    "safe_filename",
]
