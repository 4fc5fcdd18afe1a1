"""A private PostgreSQL for tests: Debian's server on a Unix socket.

`initdb` makes a cluster in a fresh directory, `pg_ctl` starts it listening
on a socket directory only (no TCP port). PostgreSQL refuses to run as root,
so as root both run as the `postgres` user, in a directory outside pytest's
(root-only) temp tree. Tests keep apart by schema (`unique_schema`). Every
wait is bounded; the server is stopped through `pg_ctl`, which signals the
postmaster by its PID file.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60
_schemas = itertools.count(1)


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL's binaries, else those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@dataclass
class Postgres:
    bindir: Path
    workdir: Path
    socket_dir: Path
    port: int = 5432
    # Server settings on top (`-c name=value`), e.g. shared_preload_libraries.
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    def environ(self, schema: str) -> dict[str, str]:
        """The daemon's config for this server and `schema`, as INGESTD_* variables."""
        return {
            "INGESTD_INDEX_BACKEND": "postgres",
            "INGESTD_INDEX_DSN": self.dsn,
            "INGESTD_INDEX_SCHEMA": schema,
        }

    def log_tail(self, size: int = 3000) -> str:
        path = self.workdir / "postgres.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def pg_ctl(self, action: str, *, check: bool = True) -> None:
        """`pg_ctl start` (listening on the socket directory only) or `stop`."""
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.workdir / "data")]
        if action == "start":
            options = f"-k {self.socket_dir} -p {self.port} -c listen_addresses=''"
            options += "".join(f" -c {k}={v}" for k, v in self.settings.items())
            argv += ["-l", str(self.workdir / "postgres.log"), "-o", options]
            argv += ["-w", "-t", str(START_TIMEOUT), "start"]
        else:
            argv += ["-m", "immediate" if action == "kill" else "fast", "stop"]
        _run_as_owner(argv, check=check)

    def stop(self) -> None:
        self.pg_ctl("stop", check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def unique_schema() -> str:
    """A schema name of its own for a test (its tables apart from the others')."""
    return f"t{os.getpid()}_{next(_schemas)}"


def start_postgres(bindir: Path, settings: dict[str, str] | None = None) -> Postgres:
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-pg-"))
    socket_dir = workdir / "sock"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (workdir, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = Postgres(bindir, workdir, socket_dir, settings=dict(settings or {}))
    _run_as_owner(
        [
            str(bindir / "initdb"),
            "-D",
            str(workdir / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]
    )
    server.pg_ctl("start")
    return server


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A started server, stopped afterwards; the test skips where none is installed."""
    import pytest

    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql; .ci/run does)")
    server = start_postgres(bindir)
    try:
        yield server
    finally:
        server.stop()


def _run_as_owner(argv: list[str], *, check: bool = True) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(
        argv, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, cwd="/"
    )
