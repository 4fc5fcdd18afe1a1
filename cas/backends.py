"""The chunk store and the index a configuration names, opened the same way
by the daemon, its plugin worker processes and the commands."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from . import migrate
from .chunkstore import ChunkStore
from .errors import StorageError
from .index import DEFAULT_MAP_SIZE, Index, SyncObjects
from .packstore import LocalPackStore

BACKENDS = ("local", "s3")
INDEX_BACKENDS = ("lmdb", "postgres")


def open_chunk_store(
    root: str | os.PathLike[str],
    *,
    backend: str = "local",
    s3: Mapping[str, Any] | None = None,
    durable: bool = True,
    readonly: bool = False,
    worker: str | None = None,
    pack_index: Mapping[str, Any] | None = None,
) -> ChunkStore:
    """`backend` "local": packs under `root`; "s3": packs in the bucket that
    `s3` describes (`s3_client`'s arguments plus `prefix`), with `root` for
    the spool. `pack_index`: the PostgreSQL schema that records where each
    chunk is (`dsn`, `schema`, `pool_size`; the index's), else an LMDB in `root`."""
    if backend == "local":
        return LocalPackStore(
            root, durable=durable, readonly=readonly, worker=worker, pack_index=pack_index
        )
    if backend == "s3":
        from .s3store import S3PackStore, s3_client  # obstore only when it is used

        settings = dict(s3 or {})
        prefix = str(settings.pop("prefix", ""))
        return S3PackStore(
            root,
            s3_client(**settings),
            prefix=prefix,
            readonly=readonly,
            worker=worker,
            pack_index=pack_index,
        )
    raise ValueError(f"unknown chunk store backend {backend!r} (known: {', '.join(BACKENDS)})")


def open_index(
    root: str | os.PathLike[str],
    *,
    backend: str = "lmdb",
    postgres: Mapping[str, Any] | None = None,
    durable: bool = True,
    readonly: bool = False,
    group_commit: bool = True,
    sync_objects: SyncObjects | None = None,
    map_size: int = DEFAULT_MAP_SIZE,
    moving_into: bool = False,
) -> Any:
    """`backend` "lmdb": `root/index.lmdb`; "postgres": the schema that
    `postgres` names (`dsn`, `schema`, `pool_size`), migrated to this
    version on opening unless `readonly`. Both have `cas.Index`'s interface.
    An index that an unfinished `ingestd migrate` is moving into is refused,
    unless `moving_into` (the move itself)."""
    if backend == "lmdb":
        index: Any = Index(
            os.path.join(root, "index.lmdb"),
            durable=durable,
            readonly=readonly,
            group_commit=group_commit,
            sync_objects=sync_objects,
            map_size=map_size,
        )
    elif backend == "postgres":
        from .pgindex import PostgresIndex  # psycopg only when it is used

        settings = dict(postgres or {})
        index = PostgresIndex(
            str(settings.pop("dsn", "")),
            **settings,
            durable=durable,
            readonly=readonly,
            group_commit=group_commit,
            sync_objects=sync_objects,
        )
    else:
        raise ValueError(f"unknown index backend {backend!r} (known: {', '.join(INDEX_BACKENDS)})")
    unfinished = None if moving_into else migrate.incomplete(index)
    if unfinished is not None:
        index.close()
        raise StorageError(
            f"this index is the target of an unfinished move from {unfinished}: "
            "run `ingestd migrate --to` again to finish it"
        )
    return index


def migrate_index_schema(dsn: str, schema: str) -> list[int]:
    """Apply the PostgreSQL index schema's missing migrations; the versions applied."""
    from .pgindex import migrate_schema

    return migrate_schema(dsn, schema)


def index_schema_status(dsn: str, schema: str) -> tuple[int, int]:
    """(the schema's version in the database, the version this ingestd writes)."""
    from .pgindex import schema_status
    from .pgschema import LATEST

    return schema_status(dsn, schema), LATEST
