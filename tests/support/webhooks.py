"""A real loopback webhook receiver for tests: verifies Standard Webhooks signatures.

    with WebhookReceiver(secret) as receiver:
        receiver.fail_next(2)               # first two signed requests get 500
        ...deliver to receiver.url...
        events = receiver.wait_for(1)       # bounded wait for verified deliveries

Every request is recorded in ``attempts``. A request whose signature does not
verify is answered 401 and never counts as a delivery; a verified one is
answered with a queued failure status if any remain, else 204 and recorded
in ``deliveries``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

# Larger bodies are refused: a test receiver has no business buffering more.
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Attempt:
    """One request as received, whatever the answer."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int
    error: str = ""


@dataclass(frozen=True)
class Delivery:
    """A verified request answered 2xx: the event as the receiver accepted it."""

    webhook_id: str
    path: str
    event: Any
    headers: dict[str, str] = field(repr=False)


class WebhookReceiver:
    """A threaded HTTP server on 127.0.0.1 and a free port that checks signatures."""

    def __init__(self, secret: str, *, path: str = "/hooks") -> None:
        self.secret = secret
        self.path = path
        self.attempts: list[Attempt] = []
        self.deliveries: list[Delivery] = []
        self._failures: list[tuple[int, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"webhook-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"webhook receiver did not stop within {timeout} s")
        self._server = self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    # -- behaviour and observations -----------------------------------------

    def fail_next(
        self, count: int, status: int = 500, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next `count` verified requests with `status` (and `headers`)."""
        with self._changed:
            self._failures += [(status, dict(headers or {}))] * count

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until at least `count` deliveries arrived; fail after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise TimeoutError(
                    f"{len(self.deliveries)} of {count} webhook deliveries within {timeout} s "
                    f"({len(self.attempts)} requests received)"
                )
            return list(self.deliveries)

    def unique_events(self) -> dict[str, Any]:
        """Deliveries by webhook id: what a deduplicating receiver would keep."""
        with self._changed:
            return {d.webhook_id: d.event for d in self.deliveries}

    # -- request handling (server threads) ------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._answer(request, 413)
            return
        body = request.rfile.read(length)
        try:
            event = Webhook(self.secret).verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            self._record(Attempt(request.path, headers, body, False, 401, str(exc)))
            self._answer(request, 401)
            return
        with self._changed:
            status, extra = self._failures.pop(0) if self._failures else (204, {})
            self.attempts.append(Attempt(request.path, headers, body, True, status))
            if 200 <= status < 300:
                self.deliveries.append(
                    Delivery(headers["webhook-id"], request.path, event, headers)
                )
            self._changed.notify_all()
        self._answer(request, status, extra)

    def _record(self, attempt: Attempt) -> None:
        with self._changed:
            self.attempts.append(attempt)
            self._changed.notify_all()

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None
    ) -> None:
        body = b"" if status == 204 else f"receiver answered {status}\n".encode()
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
