"""The LMDB index and its group-commit writer.

LMDB allows one write transaction at a time. Instead of one synced commit per
chunk, every write goes through `GroupCommitter`: a single writer thread
takes all operations queued while the previous commit was syncing, applies
each in its own nested transaction (so one failing operation does not undo
the others), makes the chunk objects those operations refer to durable (one
`sync` call for the batch, the chunk store's business), and commits once.
Callers block until their operation is durable.

Deleting a chunk object is not part of any transaction: done inside an
operation, it would stay done when the operation (or the whole commit) is
rolled back or the process dies before the commit, leaving a record that
names a missing object. An operation asks for it with `Index.after_commit`
instead; the writer runs those actions once the commit is durable, inside a
write transaction of their own that changes nothing: LMDB's writer lock,
which other processes (workers, `ingestd gc`) take too, keeps any attach
from coming between an action's re-check and its deletion.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from . import records
from .errors import StorageError, StoreError

# "declared" holds the chunk list a client announced for a session
# (session/index -> hash, length); "parts" the chunks actually attached.
# "file_hashes" indexes files by content (BLAKE3 + file id), "manifest_files"
# by the BLAKE3 of their packed manifest (identical manifests, identical
# bytes: a re-upload is recognised without re-reading it); "outbox" holds
# plugin messages awaiting delivery; "streams" the tus state of sessions that
# receive one ordered byte stream (session id -> records.Stream).
DATABASES = (
    "meta",
    "chunks",
    "sessions",
    "parts",
    "declared",
    "files",
    "file_hashes",
    "manifests",
    "manifest_files",
    "jobs",
    # Ids of jobs not finished yet, so that finding them reads only those.
    "open_jobs",
    # Decision key -> the job that accepted a file with it (reusable verdicts).
    "decisions",
    # Accepted or processing files whose materialised copy is still to be written.
    "copies_due",
    "outbox",
    "streams",
    # Tenant + chunk -> uses by the tenant's sessions and files; tenant ->
    # usage figures (`tenants`).
    "tenant_chunks",
    "tenants",
    # Token id -> records.TokenRecord (the secret only hashed).
    "tokens",
)
log = logging.getLogger("ingestd.cas")

DEFAULT_MAP_SIZE = 1 << 38  # 256 GiB of address space; the file grows as needed

WriteOp = Callable[[lmdb.Transaction], Any]
# Makes the given pending chunk commits durable (`ChunkStore.sync`).
SyncObjects = Callable[[list[object]], None]


def scan_prefix(
    txn: lmdb.Transaction,
    db: Any,
    prefix: bytes,
    *,
    values: bool = True,
    after: bytes | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """(key suffix after `prefix`, value) of every key starting with `prefix`,
    in order; `after`: only keys past it.

    With `values=False` the values are b"" (LMDB does not read them)."""
    cursor = txn.cursor(db=db)
    start = prefix if after is None else max(prefix, after + b"\0")
    if not cursor.set_range(start):
        return
    n = len(prefix)
    if values:
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield key[n:], value
    else:
        for key in cursor.iternext(keys=True, values=False):
            if not key.startswith(prefix):
                return
            yield key[n:], b""


class IndexOps:
    """What both engines' indexes do the same way over their `db` handles
    and `writer` (a `GroupCommitter`, None when opened read-only)."""

    db: dict[str, Any]
    writer: GroupCommitter | None

    def write(self, op: WriteOp, objects: Iterable[object] = ()) -> Any:
        """Apply `op(txn)` in the next group commit and wait until it is durable.

        `objects`: the chunk commits (`PutResult`s) `op` refers to; they are
        made durable first, in the same batch."""
        if self.writer is None:
            raise StorageError("the index is open read-only")
        return self.writer.submit(op, tuple(objects))

    def after_commit(self, action: Callable[[Any], None]) -> None:
        """From inside a write operation: run `action(txn)` once this
        operation's changes are committed (never, if the operation fails or
        the commit does), on the writer thread, with a write transaction (not
        committed: for re-checking, under the writer lock, what it acts on)."""
        if self.writer is None:
            raise StorageError("the index is open read-only")
        self.writer.defer(action)

    def get(self, txn: Any, db: str, key: bytes, kind: type) -> Any:
        raw = txn.get(key, db=self.db[db])
        return None if raw is None else records.decode(kind, raw)

    def put(self, txn: Any, db: str, key: bytes, record: Any) -> None:
        txn.put(key, records.encode(record), db=self.db[db])


class Index(IndexOps):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        group_commit: bool = True,
        sync_objects: SyncObjects | None = None,
        readonly: bool = False,
    ) -> None:
        """`sync_objects` makes chunk objects durable before a commit refers to
        them; `readonly`: another process only reads (no writer, no set-up)."""
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            max_dbs=32,  # room for databases later features add
            map_size=map_size,
            sync=durable,
            metasync=durable,
            max_readers=1024,
            readonly=readonly,
        )
        if readonly:
            self.db = {}
            for name in DATABASES:
                try:
                    self.db[name] = self.env.open_db(name.encode(), create=False)
                except lmdb.NotFoundError:
                    pass  # written by an older version; nothing to read there
            self.writer = None
            return
        self.db = {name: self.env.open_db(name.encode()) for name in DATABASES}
        self._check_format()
        self.writer = GroupCommitter(
            lambda: self.env.begin(write=True),
            lambda parent: self.env.begin(write=True, parent=parent),
            grouped=group_commit,
            sync_objects=sync_objects,
        )

    def _check_format(self) -> None:
        with self.env.begin(write=True, db=self.db["meta"]) as txn:
            raw = txn.get(b"format_version")
            if raw is None:
                txn.put(b"format_version", str(records.FORMAT_VERSION).encode())
            elif int(raw) > records.FORMAT_VERSION:
                raise StorageError(
                    f"index at {self.path} has format {int(raw)}, newer than this "
                    f"ingestd understands ({records.FORMAT_VERSION})"
                )

    def format_version(self) -> int:
        with self.env.begin(db=self.db["meta"]) as txn:
            return int(txn.get(b"format_version"))

    def reader(self) -> lmdb.Transaction:
        """A read-only snapshot; use it as a context manager, on one thread."""
        return self.env.begin()

    def scan(
        self,
        txn: lmdb.Transaction,
        db: str,
        prefix: bytes = b"",
        *,
        values: bool = True,
        after: bytes | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """`scan_prefix` over the named database."""
        return scan_prefix(txn, self.db[db], prefix, values=values, after=after)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.env.close()


class _Pending:
    __slots__ = ("op", "objects", "done", "result", "error", "after")

    def __init__(self, op: WriteOp, objects: tuple[object, ...]) -> None:
        self.op = op
        self.objects = objects
        self.after: list[Callable[[lmdb.Transaction], None]] = []
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """The one writer thread of an index, over its engine's transactions:
    `begin()` opens a write transaction (holding the engine's writer lock),
    `nest(parent)` a nested one; each has `commit()` and `abort()`."""

    def __init__(
        self,
        begin: Callable[[], Any],
        nest: Callable[[Any], Any],
        *,
        grouped: bool = True,
        sync_objects: SyncObjects | None = None,
    ) -> None:
        self._begin = begin
        self._nest = nest
        self._sync_objects = sync_objects
        self._grouped = grouped
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.commits = 0
        self.ops = 0
        self._running: _Pending | None = None
        self._thread = threading.Thread(target=self._run, name="ingestd-index-writer", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp, objects: tuple[object, ...] = ()) -> Any:
        pending = _Pending(op, objects)
        with self._cond:
            if self._closed:
                raise StorageError("the index is closed")
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def defer(self, action: Callable[[lmdb.Transaction], None]) -> None:
        if threading.current_thread() is not self._thread or self._running is None:
            raise RuntimeError("after_commit is for write operations, on the writer thread")
        self._running.after.append(action)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._grouped:
                    batch = list(self._queue)
                    self._queue.clear()
                else:
                    batch = [self._queue.popleft()]
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._sync_objects is not None:
                objects = [o for p in batch for o in p.objects]
                if objects:
                    self._sync_objects(objects)
            txn = self._begin()
            try:
                for p in batch:
                    child = self._nest(txn)
                    self._running = p
                    try:
                        p.result = p.op(child)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        child.abort()
                        p.error = exc
                        p.after.clear()
                    else:
                        child.commit()
                    finally:
                        self._running = None
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            self.commits += 1
            self.ops += len(batch)
        except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any failure
            for p in batch:
                p.after.clear()
                if isinstance(exc, StorageError):
                    p.error = exc  # already says what failed (e.g. the database is unreachable)
                elif p.error is None or not isinstance(p.error, StoreError):
                    p.error = StorageError(f"index commit failed: {exc}")
                    p.error.__cause__ = exc  # e.g. a full disk or map: the HTTP layer says 507
        else:
            self._run_after(batch)
        finally:
            for p in batch:
                p.done.set()

    def _run_after(self, batch: list[_Pending]) -> None:
        actions = [a for p in batch for a in p.after]
        if not actions:
            return
        # A failure leaves objects no record names: the orphan sweep finds them.
        try:
            txn = self._begin()
        except Exception:  # noqa: BLE001 - the writer thread must go on
            log.exception("no write transaction for the actions after an index commit")
            return
        try:
            for action in actions:
                # Each in a nested transaction: on PostgreSQL a failed statement
                # would otherwise fail every later action of the batch.
                child = self._nest(txn)
                try:
                    action(child)
                except Exception:  # noqa: BLE001 - the writer thread must go on
                    log.exception("an action after an index commit failed")
                finally:
                    child.abort()
        finally:
            txn.abort()  # it only held the lock: nothing to write
