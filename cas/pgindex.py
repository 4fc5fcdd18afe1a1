"""The index in PostgreSQL (`index.backend = "postgres"`).

The same ordered key/value model as the LMDB index (`cas.index`), table by
table (`cas.pgschema`), so every part of the store runs unchanged on either:
`PgTxn` answers the few transaction calls the store makes (`get`, `put`,
`delete`, `pop`, `drop`, prefix scans). Writes keep LMDB's rules too: one
group-commit writer thread per process, and one writer at a time across
every process and host sharing the schema — each write transaction first
takes a transaction-scoped advisory lock, as LMDB's writer lock did — so an
operation that reads then writes sees no other writer in between. A commit
is durable when PostgreSQL answers it (`synchronous_commit`; with
`durable=False` it is turned off for the index's transactions). Readers get
a REPEATABLE READ snapshot, as LMDB's readers do.

psycopg 3 with a connection pool; the calls block, so an async server makes
them from worker threads, as with LMDB. A database that cannot be reached
raises `IndexUnavailable` (the HTTP layer answers 503 with Retry-After).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import blake3
import msgspec
import psycopg
import psycopg_pool

from . import pgschema, records
from .errors import IndexUnavailable, StorageError
from .index import DATABASES, GroupCommitter, IndexOps, SyncObjects

log = logging.getLogger("ingestd.cas")

SCAN_BATCH = 1000
CONNECT_TIMEOUT = 10.0
# How long a transaction waits for a pooled connection (the database down: a 503 then).
ACQUIRE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Table:
    """A database handle (`Index.db[name]`): a table of the schema."""

    name: str
    qualified: str
    mirrored: bool  # its values are records, mirrored as jsonb for reading


def _database_error(exc: psycopg.Error, doing: str) -> StorageError:
    if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout):
        error: StorageError = IndexUnavailable(
            f"the index database is unreachable ({doing}): {exc}"
        )
    else:
        error = StorageError(f"the index database refused {doing}: {exc}")
    error.__cause__ = exc
    return error


def _mirror(value: bytes) -> str | None:
    """The record as JSON for the readable `record` column (lossy where JSON
    or jsonb cannot hold a value: NUL characters, binary fields)."""
    try:
        text = msgspec.json.encode(msgspec.msgpack.decode(value)).decode()
    except (msgspec.DecodeError, TypeError, ValueError):
        return None
    return text.replace("\\u0000", "\\ufffd")  # jsonb refuses NUL


def _upper_bound(prefix: bytes) -> bytes | None:
    """The least key greater than every key starting with `prefix` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class PgTxn:
    """A transaction on one pooled connection, or (with `parent`) a savepoint in one."""

    _savepoints = itertools.count(1)

    def __init__(
        self,
        index: PgDatabase,
        conn: psycopg.Connection[Any],
        *,
        write: bool,
        parent: PgTxn | None = None,
    ) -> None:
        self._index = index
        self._conn = conn
        self._cur = conn.cursor()
        self.write = write
        self._parent = parent
        self._savepoint = f"op{next(self._savepoints)}" if parent is not None else None
        self._done = False

    # -- the calls the store makes -------------------------------------------------

    def get(
        self, key: bytes, default: bytes | None = None, db: Table | None = None
    ) -> bytes | None:
        row = self._one(f"SELECT value FROM {_table(db).qualified} WHERE key = %s", (key,))
        return default if row is None else row[0]

    def put(
        self, key: bytes, value: bytes, db: Table | None = None, overwrite: bool = True
    ) -> bool:
        table = _table(db)
        self._check_write()
        columns, marks, params = "key, value", "%s, %s", [key, bytes(value)]
        if table.mirrored:
            columns, marks = columns + ", record", marks + ", %s::jsonb"
            params.append(_mirror(value))
        conflict = (
            "DO UPDATE SET value = EXCLUDED.value"
            + (", record = EXCLUDED.record" if table.mirrored else "")
            if overwrite
            else "DO NOTHING"
        )
        sql = (
            f"INSERT INTO {table.qualified} ({columns}) VALUES ({marks})"
            f" ON CONFLICT (key) {conflict}"
        )
        return self._execute(sql, params).rowcount == 1

    def delete(self, key: bytes, value: bytes = b"", db: Table | None = None) -> bool:
        self._check_write()
        sql = f"DELETE FROM {_table(db).qualified} WHERE key = %s"
        return self._execute(sql, (key,)).rowcount == 1

    def pop(self, key: bytes, db: Table | None = None) -> bytes | None:
        self._check_write()
        row = self._one(
            f"DELETE FROM {_table(db).qualified} WHERE key = %s RETURNING value", (key,)
        )
        return None if row is None else row[0]

    def drop(self, db: Table, delete: bool = True) -> None:
        """Empty the table (the schema's tables are never deleted by the store)."""
        self._check_write()
        self._execute(f"DELETE FROM {_table(db).qualified}", ())

    def scan(
        self, db: Table, prefix: bytes, *, values: bool = True, after: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key suffix, value) of the keys starting with `prefix`, past `after`,
        in key order, read in batches (each fetched whole, so the caller may
        make other calls on this transaction between items)."""
        column = "value" if values else "''::bytea"
        upper = _upper_bound(prefix)
        bound = "" if upper is None else " AND key < %s"
        n = len(prefix)
        low, inclusive = (prefix, True) if after is None or after < prefix else (after, False)
        while True:
            above = ">=" if inclusive else ">"
            sql = (
                f"SELECT key, {column} FROM {db.qualified} WHERE key {above} %s"
                f"{bound} ORDER BY key LIMIT {SCAN_BATCH}"
            )
            params = (low,) if upper is None else (low, upper)
            rows = self._execute(sql, params).fetchall()
            for key, value in rows:
                yield key[n:], value
            if len(rows) < SCAN_BATCH:
                return
            low, inclusive = rows[-1][0], False

    # -- transaction control -------------------------------------------------------

    def nested(self) -> PgTxn:
        """A savepoint: an operation of a group commit that can fail alone."""
        child = PgTxn(self._index, self._conn, write=self.write, parent=self)
        child._execute(f"SAVEPOINT {child._savepoint}", ())
        return child

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        if self._parent is not None:
            self._execute(f"RELEASE SAVEPOINT {self._savepoint}", ())
            return
        try:
            self._execute("COMMIT", ())
        finally:
            self._index._release(self._conn)

    def abort(self) -> None:
        """Roll back; never raises (a dead connection has nothing to roll back)."""
        if self._done:
            return
        self._done = True
        try:
            if self._parent is not None:
                self._cur.execute(f"ROLLBACK TO SAVEPOINT {self._savepoint}")
                self._cur.execute(f"RELEASE SAVEPOINT {self._savepoint}")
            else:
                self._cur.execute("ROLLBACK")
        except psycopg.Error:
            log.debug("rollback on a failed index connection", exc_info=True)
        finally:
            if self._parent is None:
                self._index._release(self._conn)

    def __enter__(self) -> PgTxn:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None and self.write:
            self.commit()
        else:
            self.abort()

    # -- helpers ------------------------------------------------------------------

    def _check_write(self) -> None:
        if not self.write:
            raise StorageError("a read-only index transaction cannot write")

    def _one(self, sql: str, params: Iterable[object]) -> tuple[Any, ...] | None:
        return self._execute(sql, params).fetchone()

    def _execute(self, sql: str, params: Iterable[object]) -> psycopg.Cursor[Any]:
        try:
            return self._cur.execute(sql, tuple(params))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise _database_error(exc, sql.split(" ", 1)[0].lower()) from exc


def _table(db: Table | None) -> Table:
    if db is None:
        raise StorageError("the PostgreSQL index has no default table")
    return db


class PgDatabase:
    """A pool on one schema of a PostgreSQL database, migrated on opening
    (unless `readonly`), and its transactions: snapshots to read, and write
    transactions that hold the advisory lock named `writer_lock` (one writer
    at a time on the schema, across processes and hosts)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "ingestd",
        tables: Iterable[str],
        writer_lock: str,
        durable: bool = True,
        readonly: bool = False,
        pool_size: int = 8,
    ) -> None:
        if not pgschema.SCHEMA_NAME.fullmatch(schema):
            raise StorageError(
                f"index schema {schema!r} must be a lower-case SQL identifier (a-z, 0-9, _)"
            )
        self.schema = schema
        self.readonly = readonly
        self.durable = durable
        self._lock_key = _lock_key(f"{writer_lock}:{schema}")
        self.db = {
            name: Table(name, f'"{schema}".{name}', name in pgschema.RECORD_TABLES)
            for name in tables
        }
        try:
            self._pool = psycopg_pool.ConnectionPool(
                dsn,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True},
                timeout=CONNECT_TIMEOUT,
                open=False,
                name="ingestd-index",
            )
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _database_error(exc, "connect") from exc
        try:
            if readonly:
                self._check_version()
            else:
                migrate_schema(self._pool, schema)
        except BaseException:
            self._pool.close()
            raise

    def reader(self) -> PgTxn:
        """A read-only snapshot; use it as a context manager, on one thread."""
        return self._begin(False, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def begin_write(self) -> PgTxn:
        """A write transaction, once no other writer holds the schema's lock;
        commits on leaving its `with` block (rolls back on an error)."""
        if self.readonly:
            raise StorageError("the index is open read-only")
        txn = self._begin(True, "BEGIN")
        try:
            if not self.durable:
                txn._execute("SET LOCAL synchronous_commit = off", ())
            txn._execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
        except BaseException:
            txn.abort()
            raise
        return txn

    def _begin(self, write: bool, begin: str) -> PgTxn:
        # A pooled connection may have died while idle (the server restarted):
        # its BEGIN fails before anything is done, so another one is tried,
        # up to one more than the pool holds.
        for attempt in range(self._pool.max_size + 1):
            txn = PgTxn(self, self._acquire(), write=write)
            try:
                txn._execute(begin, ())
                return txn
            except IndexUnavailable:
                txn.abort()
                if attempt == self._pool.max_size:
                    raise
            except BaseException:
                txn.abort()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.close()

    def _acquire(self) -> psycopg.Connection[Any]:
        try:
            return self._pool.getconn(timeout=ACQUIRE_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _database_error(exc, "connect") from exc

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        try:
            self._pool.putconn(conn)
        except Exception:  # noqa: BLE001 - a broken connection is only dropped
            log.debug("returning an index connection", exc_info=True)

    def _check_version(self) -> None:
        try:
            with self._pool.connection() as conn:
                version = schema_version(conn, self.schema)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _database_error(exc, "reading the schema version") from exc
        if version > pgschema.LATEST:
            raise StorageError(_too_new(self.schema, version))


def _lock_key(name: str) -> int:
    return int.from_bytes(blake3.blake3(name.encode()).digest()[:8], "big", signed=True)


class PostgresIndex(PgDatabase, IndexOps):
    """`cas.Index`'s interface over a PostgreSQL schema."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "ingestd",
        durable: bool = True,
        group_commit: bool = True,
        sync_objects: SyncObjects | None = None,
        readonly: bool = False,
        pool_size: int = 8,
    ) -> None:
        super().__init__(
            dsn,
            schema=schema,
            tables=DATABASES,
            writer_lock="ingestd-index",
            durable=durable,
            readonly=readonly,
            pool_size=pool_size,
        )
        self.writer = None
        if not readonly:
            self.writer = GroupCommitter(
                self.begin_write,
                lambda parent: parent.nested(),
                grouped=group_commit,
                sync_objects=sync_objects,
            )

    # -- the Index interface -----------------------------------------------------

    def format_version(self) -> int:
        with self.reader() as txn:
            raw = txn.get(b"format_version", db=self.db["meta"])
        return int(raw) if raw is not None else records.FORMAT_VERSION

    def write(self, op: Callable[[PgTxn], Any], objects: Iterable[object] = ()) -> Any:
        if self.writer is None:
            raise StorageError("the index is open read-only")
        return self.writer.submit(op, tuple(objects))

    def after_commit(self, action: Callable[[PgTxn], None]) -> None:
        if self.writer is None:
            raise StorageError("the index is open read-only")
        self.writer.defer(action)

    def scan(
        self,
        txn: PgTxn,
        db: str,
        prefix: bytes = b"",
        *,
        values: bool = True,
        after: bytes | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        return txn.scan(self.db[db], prefix, values=values, after=after)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        super().close()


def schema_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The newest migration applied to `schema` (0: none)."""
    found = conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
        " AND table_name = 'schema_version'",
        (schema,),
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute(f'SELECT max(version) FROM "{schema}".schema_version').fetchone()
    return (row[0] or 0) if row else 0


def _too_new(schema: str, version: int) -> str:
    return (
        f"the index schema {schema!r} is at version {version}, newer than this "
        f"ingestd knows ({pgschema.LATEST}); upgrade ingestd"
    )


def schema_status(dsn: str, schema: str) -> int:
    """The version of `schema` in the database `dsn` names."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)) as conn:
            return schema_version(conn, schema)
    except psycopg.Error as exc:
        raise _database_error(exc, "reading the schema version") from exc


def migrate_schema(pool_or_dsn: psycopg_pool.ConnectionPool | str, schema: str) -> list[int]:
    """Apply the migrations `schema` lacks, in order, each in its own
    transaction, under an advisory lock; the versions applied."""
    try:
        if isinstance(pool_or_dsn, str):
            with psycopg.connect(
                pool_or_dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
            ) as conn:
                return _migrate(conn, schema)
        with pool_or_dsn.connection() as conn:
            return _migrate(conn, schema)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise _database_error(exc, "migrating the schema") from exc


def _migrate(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    lock = _lock_key(f"ingestd-migrate:{schema}")
    applied: list[int] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
    try:
        current = schema_version(conn, schema)
        if current > pgschema.LATEST:
            raise StorageError(_too_new(schema, current))
        for migration in pgschema.migrations(schema):
            if migration.version <= current:
                continue
            with conn.transaction():
                for statement in migration.statements:
                    conn.execute(statement)  # type: ignore[arg-type]
                conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{schema}".schema_version ('
                    "version integer PRIMARY KEY, description text NOT NULL,"
                    " applied timestamptz NOT NULL DEFAULT now())"
                )
                conn.execute(
                    f'INSERT INTO "{schema}".schema_version (version, description) VALUES (%s, %s)',
                    (migration.version, migration.description),
                )
            applied.append(migration.version)
            log.info(
                "index schema %s: applied migration %d (%s)",
                schema,
                migration.version,
                migration.description,
            )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))
    return applied
