"""The index conformance suite: every index engine (LMDB, PostgreSQL) passes it.

It pins down the contract the store relies on — the transaction calls, key
order, prefix scans, snapshots, one writer at a time, an operation failing
alone inside its group commit, actions after commit, read-only opening —
and then runs a whole upload through a `Store` on each engine.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading

import lmdb
import psycopg
import pytest
from ingestd.cas import (
    IndexUnavailable,
    Session,
    StorageError,
    Store,
    fsck,
    open_index,
    pgschema,
)
from ingestd.cas.index import DATABASES
from ingestd.cas.pgindex import migrate_schema, schema_version
from support.records import sample_session

ENGINES = ["lmdb", "postgres"]


@pytest.fixture(params=ENGINES)
def settings(request, tmp_path) -> dict[str, object]:
    if request.param == "lmdb":
        return {"backend": "lmdb"}
    return request.getfixturevalue("pg_index")


@pytest.fixture
def index(settings, tmp_path):
    idx = open_index(tmp_path, **settings, durable=False)
    yield idx
    idx.close()


def test_records_round_trip_and_survive_reopening(settings, tmp_path):
    index = open_index(tmp_path, **settings)
    s = sample_session(1)
    index.write(lambda txn: index.put(txn, "sessions", b"s1", s))
    index.close()
    index = open_index(tmp_path, **settings)
    try:
        with index.reader() as txn:
            assert index.get(txn, "sessions", b"s1", Session) == s
            assert index.get(txn, "sessions", b"nope", Session) is None
    finally:
        index.close()


def test_get_put_delete_pop_and_put_without_overwrite(index):
    db = index.db["chunks"]

    def op(txn):
        assert txn.put(b"k1", b"one", db=db) is True
        assert txn.put(b"k1", b"uno", db=db, overwrite=False) is False
        assert txn.get(b"k1", db=db) == b"uno"[:0] + b"one"
        assert txn.put(b"k1", b"uno", db=db) is True
        assert txn.pop(b"k1", db=db) == b"uno"
        assert txn.pop(b"k1", db=db) is None
        assert txn.delete(b"k1", db=db) is False
        txn.put(b"k2", b"two", db=db)
        assert txn.delete(b"k2", db=db) is True
        return txn.get(b"k2", db=db)

    assert index.write(op) is None


def test_binary_keys_and_values_keep_every_byte(index):
    db = index.db["parts"]
    key = b"sess/" + bytes([0, 255, 0, 1])
    value = os.urandom(40)
    index.write(lambda txn: txn.put(key, value, db=db))
    with index.reader() as txn:
        assert txn.get(key, db=db) == value


def test_scan_is_in_key_order_within_a_prefix_and_after_a_key(index):
    db = "declared"
    keys = [b"a", b"a\x00", b"a\x01", b"ab", b"a\xff", b"a\xff\xff", b"b", b"\xff\xff"]
    shuffled = sorted(keys, key=lambda k: hashlib.sha256(k).digest())

    def op(txn):
        for k in shuffled:
            txn.put(k, b"v" + k, db=index.db[db])

    index.write(op)
    with index.reader() as txn:
        assert [k for k, _ in index.scan(txn, db)] == keys
        assert [(k, v) for k, v in index.scan(txn, db, b"a")][:2] == [
            (b"", b"va"),
            (b"\x00", b"va\x00"),
        ]
        assert [k for k, _ in index.scan(txn, db, b"a\xff")] == [b"", b"\xff"]
        assert [k for k, _ in index.scan(txn, db, b"\xff")] == [b"\xff"]
        assert [v for _, v in index.scan(txn, db, b"a", values=False)] == [b""] * 6
        assert [k for k, _ in index.scan(txn, db, after=b"a\x01")] == keys[3:]
        assert [k for k, _ in index.scan(txn, db, b"a", after=b"a\xff")] == [b"\xff\xff"]
        assert list(index.scan(txn, db, b"c")) == []


def test_a_scan_longer_than_a_batch_sees_every_key_and_allows_other_calls(index):
    db = index.db["open_jobs"]
    keys = [f"job{i:05d}".encode() for i in range(2500)]

    def op(txn):
        for k in keys:
            txn.put(k, b"", db=db)

    index.write(op)
    seen = []
    with index.reader() as txn:
        for key, _ in index.scan(txn, "open_jobs", b"job"):
            seen.append(b"job" + key)
            assert txn.get(b"job" + key, db=db) == b""  # another call in between
    assert seen == keys


def test_drop_empties_a_table(index):
    db = index.db["file_hashes"]
    index.write(lambda txn: [txn.put(bytes([i]) * 33, b"", db=db) for i in range(5)])
    index.write(lambda txn: txn.drop(db, delete=False))
    with index.reader() as txn:
        assert list(index.scan(txn, "file_hashes")) == []


def test_a_reader_sees_a_snapshot(index):
    db = index.db["meta"]
    index.write(lambda txn: txn.put(b"x", b"1", db=db))
    with index.reader() as txn:
        assert txn.get(b"x", db=db) == b"1"
        index.write(lambda w: w.put(b"x", b"2", db=db))
        assert txn.get(b"x", db=db) == b"1"
    with index.reader() as txn:
        assert txn.get(b"x", db=db) == b"2"


def test_a_reader_cannot_write(index):
    with index.reader() as txn, pytest.raises((lmdb.Error, StorageError)):
        txn.put(b"x", b"1", db=index.db["meta"])


def test_a_failing_operation_does_not_undo_the_others_in_its_group(index):
    db = index.db["meta"]
    gate, running = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def blocker(txn):
        running.set()
        gate.wait(10)
        txn.put(b"first", b"1", db=db)

    def failing(txn):
        txn.put(b"bad", b"x", db=db)
        raise ValueError("refused")

    def good(txn):
        txn.put(b"good", b"1", db=db)

    def run(name, op):
        try:
            results[name] = index.write(op)
        except Exception as exc:  # noqa: BLE001 - recorded for the asserts
            results[name] = exc

    first = threading.Thread(target=run, args=("first", blocker))
    first.start()
    assert running.wait(10)
    others = [
        threading.Thread(target=run, args=(n, op)) for n, op in (("bad", failing), ("good", good))
    ]
    for t in others:
        t.start()
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert isinstance(results["bad"], ValueError)
    with index.reader() as txn:
        assert txn.get(b"first", db=db) == b"1"
        assert txn.get(b"good", db=db) == b"1"
        assert txn.get(b"bad", db=db) is None


def test_actions_after_commit_run_only_for_committed_operations(index):
    db = index.db["meta"]
    ran: list[str] = []

    def ok(txn):
        txn.put(b"ok", b"1", db=db)
        index.after_commit(lambda t: ran.append("ok:" + t.get(b"ok", db=db).decode()))

    def failing(txn):
        index.after_commit(lambda t: ran.append("failing"))
        raise ValueError("no")

    index.write(ok)
    with pytest.raises(ValueError):
        index.write(failing)
    assert ran == ["ok:1"]
    with pytest.raises(RuntimeError):
        index.after_commit(lambda t: None)  # outside a write operation


def _add_one_each_round(root: str, settings: dict[str, object], rounds: int) -> None:
    index = open_index(root, **settings, durable=False)
    db = index.db["meta"]

    def op(txn):
        n = int(txn.get(b"n", db=db) or b"0")
        txn.put(b"n", str(n + 1).encode(), db=db)

    try:
        for _ in range(rounds):
            index.write(op)
    finally:
        index.close()


def test_one_writer_at_a_time_across_processes(settings, tmp_path):
    """A read-then-write operation is never interleaved with another process's
    writer (LMDB's writer lock; on PostgreSQL, the advisory lock, which holds
    across hosts too)."""
    rounds = 150
    child = multiprocessing.get_context("spawn").Process(
        target=_add_one_each_round, args=(str(tmp_path), settings, rounds)
    )
    child.start()
    _add_one_each_round(str(tmp_path), settings, rounds)
    child.join(120)
    assert child.exitcode == 0
    index = open_index(tmp_path, **settings, readonly=True)
    try:
        with index.reader() as txn:
            assert int(txn.get(b"n", db=index.db["meta"])) == 2 * rounds
    finally:
        index.close()


def test_readonly_opening_reads_and_refuses_writes(settings, tmp_path):
    writer = open_index(tmp_path, **settings)
    writer.write(lambda txn: writer.put(txn, "sessions", b"s1", sample_session(1)))
    writer.close()
    reader = open_index(tmp_path, **settings, readonly=True)
    try:
        with reader.reader() as txn:
            assert reader.get(txn, "sessions", b"s1", Session).filename == "f1.jsonl"
        with pytest.raises(StorageError, match="read-only"):
            reader.write(lambda txn: None)
    finally:
        reader.close()


def test_write_after_close_is_a_storage_error(index):
    index.close()
    with pytest.raises(StorageError):
        index.write(lambda txn: None)
    index.close = lambda: None  # the fixture's close


def test_a_whole_upload_on_each_engine_is_consistent(settings, tmp_path):
    data = os.urandom(5 * 1000 + 17)
    with Store(tmp_path / "data", durability="fsync", index=settings) as store:
        session = store.create_session(filename="x.bin", size=len(data), chunk_size=1000)
        for i in range(6):
            store.put_chunk(session.id, i, data[i * 1000 : (i + 1) * 1000])
        done = store.complete(session.id)
        with store.open_file(done.file.id) as reader:
            assert hashlib.sha256(reader.read()).digest() == hashlib.sha256(data).digest()
        assert [f.id for f in store.list_files()] == [done.file.id]
        assert fsck.check(store.index, store.chunks, root=store.root).problems == []
        store.delete_file(done.file.id)
        assert store.collect_garbage(0) == (6, len(data))


def test_a_long_incompressible_filename_is_recorded(settings, tmp_path):
    """A name as long as the APIs allow fits every engine (no index refuses it)."""
    name = os.urandom(2000).hex()[:4000]
    with Store(tmp_path / "data", durability="none", index=settings) as store:
        s = store.create_session(filename=name, size=3, chunk_size=1000)
        store.put_chunk(s.id, 0, b"abc")
        file = store.complete(s.id).file
        assert store.file(file.id).filename == name


# -- PostgreSQL only: its schema, migrations and failures -------------------------------


def test_every_index_database_is_a_table_of_the_schema():
    assert set(pgschema.COLUMNS) == set(DATABASES)


def test_the_schema_is_readable_with_sql(pg_index, postgres, tmp_path):
    data = b"line one\nline two\n" * 100
    with Store(tmp_path / "data", durability="none", index=pg_index) as store:
        session = store.create_session(
            filename="notes.jsonl", size=len(data), chunk_size=1024
        )
        store.put_chunk(session.id, 0, data[:1024])
        store.put_chunk(session.id, 1, data[1024:])
        file = store.complete(session.id).file
        open_one = store.create_session(filename="open.bin", size=2048, chunk_size=1024)
        store.put_chunk(open_one.id, 1, data[:1024])
    schema = pg_index["postgres"]["schema"]
    with psycopg.connect(postgres.dsn) as conn:
        files = conn.execute(
            f"SELECT id, tenant, filename, size, blake3, state FROM {schema}.files"
        ).fetchall()
        assert files == [(file.id, "default", "notes.jsonl", len(data), file.blake3, "accepted")]
        uploads = conn.execute(
            f"SELECT id, filename, state, file_id FROM {schema}.sessions ORDER BY created"
        ).fetchall()
        assert uploads == [
            (session.id, "notes.jsonl", "completed", file.id),
            (open_one.id, "open.bin", "open", None),
        ]
        parts = conn.execute(
            f"SELECT upload_id, chunk_index, length FROM {schema}.parts"
        ).fetchall()
        assert parts == [(open_one.id, 1, 1024)]
        usage = conn.execute(
            f"SELECT tenant, files, logical_bytes FROM {schema}.tenants"
        ).fetchall()
        assert usage == [("default", 1, len(data))]
        jobs = conn.execute(f"SELECT file_id, state FROM {schema}.jobs").fetchall()
        assert jobs == [(file.id, "queued")]


def test_migrations_apply_once_and_a_newer_schema_is_refused(postgres, tmp_path):
    schema = pg_index_schema = f"mig_{os.getpid()}"
    assert migrate_schema(postgres.dsn, schema) == list(range(1, pgschema.LATEST + 1))
    assert migrate_schema(postgres.dsn, schema) == []
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        assert schema_version(conn, schema) == pgschema.LATEST
        conn.execute(
            f"INSERT INTO {schema}.schema_version (version, description) VALUES (99, 'future')"
        )
    settings = {"dsn": postgres.dsn, "schema": pg_index_schema}
    with pytest.raises(StorageError, match="version 99, newer"):
        open_index(tmp_path, backend="postgres", postgres=settings)
    with pytest.raises(StorageError, match="version 99, newer"):
        open_index(tmp_path, backend="postgres", postgres=settings, readonly=True)


def test_a_schema_name_that_is_not_an_identifier_is_refused(postgres, tmp_path):
    with pytest.raises(StorageError, match="SQL identifier"):
        open_index(tmp_path, backend="postgres", postgres={"dsn": postgres.dsn, "schema": "a;b"})


def test_an_unreachable_database_is_index_unavailable(tmp_path):
    dsn = f"host={tmp_path} port=1 user=postgres dbname=postgres connect_timeout=2"
    with pytest.raises(IndexUnavailable, match="unreachable"):
        open_index(tmp_path, backend="postgres", postgres={"dsn": dsn, "schema": "x"})


def test_a_lost_connection_fails_the_write_and_the_next_one_succeeds(pg_index, postgres, tmp_path):
    index = open_index(tmp_path, **pg_index)
    db = index.db["meta"]
    try:
        index.write(lambda txn: txn.put(b"before", b"1", db=db))

        def killed(txn):
            pid = txn._conn.info.backend_pid
            with psycopg.connect(postgres.dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
            txn.put(b"during", b"1", db=db)

        with pytest.raises(IndexUnavailable):
            index.write(killed)
        index.write(lambda txn: txn.put(b"after", b"1", db=db))
        with index.reader() as txn:
            assert txn.get(b"before", db=db) == b"1"
            assert txn.get(b"during", db=db) is None
            assert txn.get(b"after", db=db) == b"1"
    finally:
        index.close()


def test_an_older_schema_is_migrated_when_the_index_opens(postgres, tmp_path):
    """A schema left at version 1 (as a release before the pack tables made it)
    gets the later migrations, in order, and keeps its rows."""
    schema = f"old_{os.getpid()}"
    settings = {"dsn": postgres.dsn, "schema": schema}
    index = open_index(tmp_path, backend="postgres", postgres=settings)
    index.write(lambda txn: index.put(txn, "sessions", b"s1", sample_session(1)))
    index.close()
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {schema}.pack_locations, {schema}.pack_uses")
        conn.execute(f"DELETE FROM {schema}.schema_version WHERE version > 1")
        assert schema_version(conn, schema) == 1
    index = open_index(tmp_path, backend="postgres", postgres=settings)
    try:
        with index.reader() as txn:
            assert index.get(txn, "sessions", b"s1", Session) == sample_session(1)
    finally:
        index.close()
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        assert schema_version(conn, schema) == pgschema.LATEST
        assert conn.execute(f"SELECT count(*) FROM {schema}.pack_uses").fetchone() == (0,)
