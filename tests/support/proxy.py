"""A throttling, counting loopback TCP proxy between a client and the daemon."""

from __future__ import annotations

import socket
import threading
import time

from support.e2e import HOST

KiB = 1 << 10


class ThrottledProxy:
    """A loopback TCP forwarder that slows the client-to-server direction to
    `rate` bytes/s (None: full speed), and the other to `down_rate`, and counts
    the bytes it forwards each way, so that a test can stop an upload (or a
    download) midway and measure what was sent."""

    BLOCK = 64 * KiB

    def __init__(
        self, target_port: int, rate: float | None, down_rate: float | None = None
    ) -> None:
        self.target_port = target_port
        self.rate = rate
        self.down_rate = down_rate
        self.upstream_bytes = 0
        self.downstream_bytes = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self._start(self._accept)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection((HOST, self.target_port), timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream, True)
            self._start(self._pump, upstream, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(self.BLOCK):
                with self._lock:
                    if upstream:
                        self.upstream_bytes += len(data)
                    else:
                        self.downstream_bytes += len(data)
                rate = self.rate if upstream else self.down_rate
                if rate:
                    time.sleep(len(data) / rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Pass the end (or the reset) on, as the real peer would see it.
            for s in (dst, src):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for thread in self._threads:
            thread.join(timeout=5)
