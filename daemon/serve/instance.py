"""One daemon per data directory, and the socket it listens on.

Two daemons on one data directory would each clear the other's temp files
and run their own background services over the same index. `claim` takes
the ``daemon`` lock under ``<data>/locks/`` for the life of the process (the
master's, with several workers) and writes the PID into it, so that a
second `ingestd serve` can say who holds it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ingestd import cas

from ..core.config import Config

LOCK_NAME = "daemon"


class DataDirBusy(Exception):
    """Another daemon serves this data directory."""


class PortBusy(Exception):
    """The address cannot be bound (in use, or not this host's)."""


def claim(data_dir: Path) -> cas.HeldLock:
    """Hold the data directory for this process; DataDirBusy naming the holder."""
    locks = cas.LockDir(data_dir / "locks")
    held = locks.try_hold(LOCK_NAME, remove=False)
    if held is None:
        try:
            pid = (locks.path / LOCK_NAME).read_text().strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise DataDirBusy(
            f"another ingestd (pid {pid}) is serving {data_dir}; stop it first, "
            "or give this one its own --data-dir"
        )
    held.note(f"{os.getpid()}\n")
    return held


def bind(config: Config) -> socket.socket:
    """The listening socket (inheritable, for worker processes); PortBusy if not."""
    host, port = config.server.host, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, backlog=1024)
    except OSError as exc:
        raise PortBusy(f"cannot listen on {host}:{port}: {os.strerror(exc.errno)}") from None
    sock.set_inheritable(True)
    return sock
