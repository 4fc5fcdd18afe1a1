"""Where a pack store records its chunks' locations and its packs' live figures.

Two tables, `locations` (chunk hash -> pack, offset, length, written) and
`packs` (pack id -> live chunks, live bytes), in one of two engines:
`LmdbPackIndex`, an LMDB of its own under `packs/index/` (the default, on
the data directory's disk), or `PgPackIndex`, tables of the PostgreSQL
index's schema (`pack_locations`, `pack_uses`), so that with the index in
PostgreSQL no record of where a chunk lives is only on one host's disk.
Both hand out transactions with the same calls (`get`, `put`, `delete`)
and a full scan (`items`); a write transaction is one writer at a time
across processes (LMDB's writer lock, PostgreSQL's advisory lock).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from .errors import StorageError
from .index import scan_prefix
from .lmdbenv import close_env, open_env


class LmdbPackIndex:
    def __init__(self, index_dir: Path, *, durable: bool, readonly: bool) -> None:
        if not readonly:
            index_dir.mkdir(parents=True, exist_ok=True)
        self._env = open_env(index_dir, durable=durable, readonly=readonly)
        self.locations = self._env.open_db(b"locations", create=not readonly)
        self.packs = self._env.open_db(b"packs", create=not readonly)

    @contextmanager
    def read(self) -> Iterator[Any]:
        try:
            with self._env.begin() as txn:
                yield txn
        except lmdb.Error as exc:
            raise StorageError(f"could not read the pack index: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[Any]:
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except lmdb.Error as exc:
            raise StorageError(f"could not record chunk locations: {exc}") from exc

    def items(self, txn: Any, db: Any, *, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        return scan_prefix(txn, db, b"", values=values)

    def close(self) -> None:
        close_env(self._env)


class PgPackIndex:
    def __init__(self, settings: Mapping[str, Any], *, durable: bool, readonly: bool) -> None:
        from .pgindex import PgDatabase  # psycopg only when it is used

        settings = dict(settings)
        self._db = PgDatabase(
            str(settings.pop("dsn", "")),
            **settings,
            tables=("pack_locations", "pack_uses"),
            writer_lock="ingestd-packs",
            durable=durable,
            readonly=readonly,
        )
        self.locations = self._db.db["pack_locations"]
        self.packs = self._db.db["pack_uses"]

    @contextmanager
    def read(self) -> Iterator[Any]:
        with self._db.reader() as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self._db.begin_write() as txn:
            yield txn

    def items(self, txn: Any, db: Any, *, values: bool = True) -> Iterator[tuple[bytes, bytes]]:
        return txn.scan(db, b"", values=values)

    def close(self) -> None:
        self._db.close()
