"""Serving the app with hypercorn's trio worker until SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio import tcp_server
from ingestd.plugins import Plugins

from ..core.config import Config
from ..http.app import create_app

log = logging.getLogger("ingestd")


# hypercorn's trio worker reads sockets 64 KiB at a time, and every read goes
# through h11, hypercorn and Quart in Python. Chunk bodies are megabytes, so
# reading up to 1 MiB per call cuts that per-read work by up to 16x. The module
# reads this global on every call.
tcp_server.MAX_RECV = 1 << 20


def hypercorn_config(config: Config, listen_fd: int | None = None) -> HypercornConfig:
    hc = HypercornConfig()
    host = config.server.host
    if listen_fd is not None:
        hc.bind = [f"fd://{listen_fd}"]  # the master's socket, shared by the workers
    else:
        hc.bind = [
            f"[{host}]:{config.server.port}" if ":" in host else f"{host}:{config.server.port}"
        ]
    if config.tls:
        hc.certfile = config.server.certfile
        hc.keyfile = config.server.keyfile
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    # In-flight requests get this long to finish on SIGINT/SIGTERM. It is also
    # how long an idle keep-alive connection can hold up a stop: with
    # quart-trio on hypercorn's trio worker such a connection is not closed at
    # shutdown, so the default is short.
    hc.graceful_timeout = config.server.shutdown_grace
    # Bounds the request line and headers h11 buffers; bodies are streamed.
    hc.h11_max_incomplete_size = 64 * 1024
    return hc


async def serve(
    config: Config,
    plugins: Plugins | None = None,
    *,
    listen_fd: int | None = None,
    worker: str | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; `listen_fd` and `worker`: as one of the
    master's workers (see `master.py`)."""
    app = create_app(config, plugins=plugins, worker=worker)
    stop = trio.Event()
    # Our own handle on the listening socket (hypercorn closes the one it is
    # given); a worker shares the socket with others and leaves it alone.
    listening = None
    if listen_fd is not None and worker is None:
        listening = socket.socket(fileno=os.dup(listen_fd))
    # The receiver stays installed for the whole shutdown, so a second signal
    # (a supervisor repeating itself) does not interrupt a clean stop.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def watch() -> None:
            async for signum in signals:
                if not stop.is_set():
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                stop.set()

        async def orphaned() -> None:
            # A worker whose master died (even by SIGKILL) stops too.
            master = os.getppid()
            while os.getppid() == master:
                await trio.sleep(1.0)
            log.warning("the master process %d is gone, shutting down", master)
            stop.set()

        async def refuse_new_connections() -> None:
            # hypercorn stops accepting at shutdown but keeps the listening
            # socket open until it exits, so new clients wait in the backlog
            # for the whole grace period. Once its accept loop is cancelled
            # (at the next checkpoint after the trigger), stop listening:
            # they are refused at once.
            with listening:
                await stop.wait()
                await trio.sleep(0.05)
                with contextlib.suppress(OSError):
                    listening.shutdown(socket.SHUT_RD)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            if worker is not None:
                nursery.start_soon(orphaned)
            if listening is not None:
                nursery.start_soon(refuse_new_connections)
            await hypercorn_serve(
                app, hypercorn_config(config, listen_fd), shutdown_trigger=stop.wait
            )
            nursery.cancel_scope.cancel()


def run(
    config: Config,
    plugins: Plugins | None = None,
    *,
    listen_fd: int | None = None,
    worker: str | None = None,
) -> None:
    trio.run(functools.partial(serve, config, plugins, listen_fd=listen_fd, worker=worker))
