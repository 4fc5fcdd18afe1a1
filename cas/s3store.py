"""The chunk store on S3-compatible object storage: packs as immutable objects.

The layout is the local store's (`LocalPackStore`, docs/storage-layout.md):
chunks go into packs, and an index maps each chunk to (pack, offset, length).
What differs is where a pack's bytes end up. A writer appends to a local
spool pack under ``<root>/packs/`` as before; `sync` then writes the chunks
it makes durable as one new object, ``<prefix>packs/<id[0:2]>/<id>``, with a
conditional create (``If-None-Match: *``, so an id is never written twice),
and only once S3 has answered is its location recorded. An object is never
appended to or rewritten; a spool pack is deleted once its chunks are all
recorded. A request's chunks (its lane) are synced together, so a /v1 run
becomes one object instead of one per chunk.

Objects are deleted when the index says that no chunk in them is live: at
once when the last one is deleted, or by `sweep` for objects that no record
names (a crash between the PUT and the record), older than the grace period.
A listing only proposes what to delete; the index decides.

Reads are ranged GETs. The client is obstore (Rust's `object_store`), which
also has stores for GCS and Azure; only S3 is tested here (SeaweedFS, Ceph
radosgw).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.store import S3Store

from .chunkstore import ChunkHandle
from .errors import CorruptObject, StorageError
from .packstore import _NO_PACK, _PACK_ID_BYTES, _PACK_USE, LocalPackStore, _Chunk, _Pack

__all__ = ["S3PackStore", "s3_client"]

# Pack PUTs of one sync in flight at once.
PARALLEL_PUTS = 8


def s3_client(
    *,
    bucket: str,
    endpoint: str = "",
    region: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    allow_http: bool = False,
) -> S3Store:
    """An obstore S3 client. Empty settings are left to the standard AWS
    environment variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)."""
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint"] = endpoint
    if region:
        options["region"] = region
    if access_key_id:
        options["access_key_id"] = access_key_id
    if secret_access_key:
        options["secret_access_key"] = secret_access_key
    try:
        return S3Store(
            bucket,
            client_options={"allow_http": allow_http, "timeout": "120s"},
            retry_config={"max_retries": 5, "retry_timeout": timedelta(seconds=120)},
            **options,
        )
    except Exception as exc:  # obstore's configuration errors are of its own types
        raise StorageError(f"could not configure the S3 client: {exc}") from exc


class S3PackStore(LocalPackStore):
    def __init__(
        self,
        root: str | Path,
        client: S3Store,
        *,
        prefix: str = "",
        readonly: bool = False,
        worker: str | None = None,
        pack_bytes: int | None = None,
        pack_index: Mapping[str, Any] | None = None,
    ) -> None:
        """`root`: a local directory for the spool packs (and the pack index,
        unless `pack_index` puts it in PostgreSQL); `client`: the bucket
        (`s3_client`); `prefix`: where in it, e.g. "ingestd/"."""
        extra = {} if pack_bytes is None else {"pack_bytes": pack_bytes}
        # The local fsyncs are S3's answers here; the index is still made durable.
        super().__init__(
            root, durable=True, readonly=readonly, worker=worker, pack_index=pack_index, **extra
        )
        self.client = client
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._puts = ThreadPoolExecutor(PARALLEL_PUTS, thread_name_prefix="s3-put")

    def _key(self, object_id: bytes) -> str:
        name = object_id.hex()
        return f"{self.prefix}packs/{name[:2]}/{name}"

    # -- writing ------------------------------------------------------------------

    def _persist(self, chunks: list[_Chunk]) -> None:
        """One new object per spool pack, holding the chunks of this sync; the
        packs' PUTs run at once (a sync holds every chunk acknowledgement)."""
        by_pack: dict[_Pack, list[_Chunk]] = {}
        for chunk in chunks:
            if chunk.pack is not None:
                by_pack.setdefault(chunk.pack, []).append(chunk)
        if len(by_pack) == 1:
            self._put_pack(*next(iter(by_pack.items())))
            return
        futures = [self._puts.submit(self._put_pack, p, g) for p, g in by_pack.items()]
        for future in futures:
            future.result()  # the first failure fails the sync (after all ended)

    def _put_pack(self, pack: _Pack, group: list[_Chunk]) -> None:
        group.sort(key=lambda c: c.offset)
        body = bytearray(sum(c.length for c in group))
        view = memoryview(body)
        at = 0
        for chunk in group:
            _read_exactly(pack, chunk, view[at : at + chunk.length])
            at += chunk.length
        del view
        object_id = secrets.token_bytes(_PACK_ID_BYTES)
        try:
            obstore.put(self.client, self._key(object_id), body, mode="create", use_multipart=False)
        except Exception as exc:  # noqa: BLE001 - obstore raises its own and OSError kinds
            raise StorageError(f"could not store a pack in S3: {exc}") from exc
        at = 0
        for chunk in group:
            chunk.stored_in = (object_id, at)
            at += chunk.length
        # Its bytes are in S3 now: the spool takes no more chunks, and goes
        # once they are all recorded (the sync closes it then).
        with self._lock:
            pack.full = True
            if pack in self._free:
                self._free.remove(pack)

    def close(self) -> None:
        super().close()
        self._puts.shutdown(wait=True)

    def _close_pack(self, pack: _Pack) -> None:
        super()._close_pack(pack)
        # A closed spool pack's chunks are all in objects (or were given up).
        pack.path.unlink(missing_ok=True)

    def _holds(self, pack_id: bytes, end: int) -> bool:
        return True  # the index is the record; an object is never shortened

    # -- reading ------------------------------------------------------------------

    def extent(self, digest: str) -> tuple[Path, int, int] | None:
        return None  # not in a local file: copies are written, not cloned

    def open(self, digest: str) -> ChunkHandle:
        with self._lock:
            unrecorded = digest in self._unrecorded
        if unrecorded:
            try:
                return super().open(digest)  # still in its spool pack
            except CorruptObject:
                pass  # recorded (and its spool gone) meanwhile
        found = self._location(digest)
        if found is None:
            raise CorruptObject(f"object {digest} is missing from the store")
        object_id, offset, length, _ = found
        return _ObjectHandle(self, digest, object_id, offset, length)

    # -- deleting -----------------------------------------------------------------

    def _emptied(self, pack_id: bytes) -> None:
        self._remove_dead_object(pack_id)

    def _remove_dead_object(self, pack_id: bytes) -> bool:
        """Delete an object no live chunk is in (the index says so)."""
        assert self._index is not None
        with self._index.write() as txn:
            raw = txn.get(pack_id, db=self._uses)
            if raw is not None and _PACK_USE.unpack(raw)[0] > 0:
                return False
            txn.delete(pack_id, db=self._uses)
        try:
            obstore.delete(self.client, self._key(pack_id))
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not delete a pack from S3: {exc}") from exc
        return True

    def sweep(self, grace: float, now: float) -> tuple[int, int]:
        """Spool packs left by a process that died, and objects that no
        location names, older than `grace`: (removed, bytes)."""
        # The local packs here are spools: the base sweep takes those no
        # process holds (a writer that died before its sync).
        count, freed = super().sweep(grace, now)
        if self._index is None:
            return count, freed
        try:
            listed = [
                meta
                for batch in obstore.list(self.client, prefix=f"{self.prefix}packs/")
                for meta in batch
            ]
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not list the bucket: {exc}") from exc
        with self._index.read() as txn:
            uses = self._index.items(txn, self._uses)
            live = {k for k, v in uses if _PACK_USE.unpack(v)[0] > 0}
        for meta in listed:
            try:
                object_id = bytes.fromhex(meta["path"].rsplit("/", 1)[-1])
            except ValueError:
                continue  # not one of ours
            age = now - meta["last_modified"].timestamp()
            if object_id in live or age <= grace or len(object_id) != _PACK_ID_BYTES:
                continue
            if self._remove_dead_object(object_id):
                count += 1
                freed += meta["size"]
        return count, freed


def _read_exactly(pack: _Pack, chunk: _Chunk, into: memoryview) -> None:
    done = 0
    while done < len(into):
        n = os.preadv(pack.fd, [into[done:]], chunk.offset + done)
        if n == 0:
            raise StorageError(f"spool pack {pack.path} is shorter than its chunks")
        done += n


class _ObjectHandle(ChunkHandle):
    """A chunk in an object: one ranged GET of the whole chunk at the first
    read (readers ask in pieces of 64 KiB or so; a GET each would be a round
    trip per piece), served from memory after."""

    __slots__ = ("_store", "_digest", "_key", "_base", "_length", "_bytes")

    def __init__(
        self, store: S3PackStore, digest: str, object_id: bytes, base: int, length: int
    ) -> None:
        self._store = store
        self._digest = digest
        self._key = store._key(object_id) if object_id != _NO_PACK else ""
        self._base = base
        self._length = length
        self._bytes: memoryview | None = None

    def readinto(self, buffer: memoryview, offset: int) -> int:
        n = min(len(buffer), self._length - offset)
        if n <= 0:
            return 0
        if self._bytes is None:
            try:
                data = obstore.get_range(
                    self._store.client, self._key, start=self._base, length=self._length
                )
            except FileNotFoundError:
                raise CorruptObject(f"object {self._digest} is missing from the store") from None
            except Exception as exc:  # noqa: BLE001
                raise StorageError(f"could not read a chunk from S3: {exc}") from exc
            self._bytes = memoryview(data)
        got = self._bytes[offset : offset + n]
        buffer[: len(got)] = got
        return len(got)

    def close(self) -> None:
        self._bytes = None
