"""The Python client's retries (through tenacity): what is retried, how often,
how long it waits (Retry-After honoured), and what is never retried. Against
httpx's MockTransport: no network, no daemon."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from ingestd.daemon.client import Client, ConnectionFailed, ProblemError

pytestmark = pytest.mark.unit

INFO = {"chunking": {}, "max_file_size": 1}


@pytest.fixture(autouse=True)
def no_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("INGESTD_URL", raising=False)
    monkeypatch.delenv("INGESTD_TOKEN", raising=False)


def client_with(tmp_path: Path, answers: list, backoff=(0.01, 0.01, 0.01)) -> tuple[Client, list]:
    """A client whose requests get `answers` in turn (a Response, or an
    exception to raise); the list of requests it made."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client("http://127.0.0.1:9/v1/", backoff=backoff, state_dir=tmp_path / "state")
    assert client.url == "http://127.0.0.1:9"  # the trailing /v1/ is understood
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client, seen


def problem(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"code": code, "detail": code.replace("_", " ")}
    return httpx.Response(status, json=body, headers=headers)


def test_5xx_is_retried_once_per_backoff_delay(tmp_path: Path):
    client, seen = client_with(
        tmp_path, [problem(503, "busy"), problem(502, "x"), httpx.Response(200, json=INFO)]
    )
    assert client.info() == INFO and len(seen) == 3
    client, seen = client_with(tmp_path, [problem(503, "busy")])
    with pytest.raises(ProblemError) as caught:
        client.info()
    assert caught.value.status == 503 and len(seen) == 4  # the first try and three retries


def test_retry_after_is_honoured_and_not_counted_against_the_backoff(tmp_path: Path):
    limited = problem(429, "rate_limited", {"Retry-After": "1"})
    answers = [limited, limited, problem(503, "busy"), httpx.Response(200, json=INFO)]
    client, seen = client_with(tmp_path, answers, backoff=(0.01,))
    started = time.monotonic()
    assert client.info() == INFO
    assert len(seen) == 4
    assert time.monotonic() - started >= 1.9  # twice the second the server asked for


def test_refusals_that_waiting_does_not_change_are_not_retried(tmp_path: Path):
    for answer in (problem(400, "invalid_request"), problem(507, "quota_exceeded")):
        client, seen = client_with(tmp_path, [answer])
        with pytest.raises(ProblemError):
            client.info()
        assert len(seen) == 1
    client, seen = client_with(tmp_path, [problem(401, "missing_token")])
    with pytest.raises(ProblemError) as caught:
        client.info()
    assert caught.value.code == "missing_token" and len(seen) == 1


def test_connection_errors(tmp_path: Path):
    client, seen = client_with(tmp_path, [httpx.ConnectError("refused")])
    with pytest.raises(ConnectionFailed) as caught:
        client.info()
    assert "refused" in str(caught.value) and len(seen) == 4
    client, seen = client_with(
        tmp_path, [httpx.ConnectError("refused"), httpx.Response(200, json=INFO)]
    )
    assert client.info() == INFO and len(seen) == 2
    # A request that may have reached the server is not sent again when it is
    # not idempotent (retry="connect").
    client, seen = client_with(tmp_path, [httpx.ReadTimeout("slow")])
    with pytest.raises(ConnectionFailed):
        client._request("POST", "/v1/uploads", retry="connect")
    assert len(seen) == 1


def test_server_info_is_asked_once_per_client(tmp_path: Path):
    # Every upload and dry run needs the chunking parameters; a directory of
    # files must not ask for them once per file.
    client, seen = client_with(tmp_path, [httpx.Response(200, json=INFO)])
    assert client._server_info() == client._server_info() == INFO
    assert [r.url.path for r in seen] == ["/v1/info"]
    # A failure is not remembered: the next call asks again.
    client, seen = client_with(tmp_path, [problem(400, "bad"), httpx.Response(200, json=INFO)])
    with pytest.raises(ProblemError):
        client._server_info()
    assert client._server_info() == INFO and len(seen) == 2
