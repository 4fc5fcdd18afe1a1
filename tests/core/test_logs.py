"""daemon/logs.py: formats, request ids, stdlib records through structlog."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
import trio
from ingestd.daemon.core import logs
from ingestd.daemon.http import request_log


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    structlog.configure(**config)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_defaults_to_console_on_a_terminal_and_json_elsewhere():
    assert logs.resolve_format(None, Terminal()) == "console"
    assert logs.resolve_format("auto", Terminal()) == "console"
    assert logs.resolve_format(None, io.StringIO()) == "json"
    assert logs.resolve_format("json", Terminal()) == "json"
    assert logs.resolve_format("console", io.StringIO()) == "console"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a" * 64, True),
        ("~!#$%&'*+-./:;<=>?@[]^_`{|}", True),
        ("a" * 65, False),
        ("", False),
        (None, False),
        ("a b", False),
        ("tab\there", False),
        ("new\nline", False),
        ("é", False),
        ("\x7f", False),
    ],
)
def test_request_ids_are_kept_only_when_sane(given, kept):
    assert request_log.sane_request_id(given) == (given if kept else None)


def test_stdlib_and_structlog_lines_come_out_as_one_json_format(restore_logging):
    out = io.StringIO()
    assert logs.setup("json", stream=out) == "json"
    logging.getLogger("ingestd.jobs").warning(
        "plugin %s failed", "clamav", extra={"plugin": "clamav", "stage": "scan"}
    )
    logs.get_logger("ingestd.access").info("request", method="PUT", status=201)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("ingestd").exception("it broke")
    logging.getLogger("ingestd").debug("not at info level")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert {k: first[k] for k in ("event", "level", "logger", "plugin", "stage")} == {
        "event": "plugin clamav failed",
        "level": "warning",
        "logger": "ingestd.jobs",
        "plugin": "clamav",
        "stage": "scan",
    }
    assert (second["event"], second["method"], second["status"]) == ("request", "PUT", 201)
    assert second["logger"] == "ingestd.access"
    assert third["level"] == "error"
    assert third["exception"].splitlines()[-1] == "ValueError: bad"


def test_console_lines_have_no_local_variables(restore_logging):
    out = io.StringIO()
    assert logs.setup("console", stream=out) == "console"
    secret = "igd_do_not_log_me"  # noqa: F841 - a local a rich traceback would show
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("ingestd").exception("it broke")
    text = out.getvalue()
    assert "it broke" in text and "ValueError: bad" in text
    assert "igd_do_not_log_me" not in text


async def test_notes_from_child_tasks_reach_the_request():
    info = logs.RequestInfo(request_id="r1")
    token = logs._current.set(info)
    try:

        async def handler() -> None:
            logs.note(route="/v1/x/<y>", upload_id="u1", tenant=None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler)
    finally:
        logs._current.reset(token)
    assert (info.route, info.upload_id, info.tenant) == ("/v1/x/<y>", "u1", None)
    logs.note(route="ignored")  # outside a request: nothing to note into
    assert logs.current() is None


def test_the_format_is_a_config_key():
    from ingestd.daemon.core.config import ConfigError, load_config

    assert load_config(environ={}).logging.format == "auto"
    assert load_config(environ={"INGESTD_LOGGING_FORMAT": "json"}).logging.format == "json"
    with pytest.raises(ConfigError, match="logging.format"):
        load_config(environ={"INGESTD_LOGGING_FORMAT": "xml"})


def test_the_plugin_workers_records_are_relayed_with_their_fields(restore_logging):
    from ingestd.daemon.core.jobs import relay_child_log
    from ingestd.plugins.worker import JSONLines

    record = logging.makeLogRecord(
        {"name": "ingestd.plugins.pii", "levelno": 30, "levelname": "WARNING", "msg": "%d hits"}
    )
    record.args = (3,)
    record.plugin = "pii"
    child_line = JSONLines().format(record)
    assert json.loads(child_line) == {
        "level": "warning",
        "logger": "ingestd.plugins.pii",
        "event": "3 hits",
        "plugin": "pii",
    }
    out = io.StringIO()
    logs.setup("json", stream=out)
    left = relay_child_log(f"{child_line}\nTraceback (most recent call last):\nBoom: x\n")
    assert left == "Traceback (most recent call last):\nBoom: x"
    relayed, printed = (json.loads(line) for line in out.getvalue().splitlines())
    assert {k: relayed[k] for k in ("event", "level", "logger", "plugin")} == {
        "event": "3 hits",
        "level": "warning",
        "logger": "ingestd.plugins.pii",
        "plugin": "pii",
    }
    assert printed["event"] == "plugin worker printed: " + left
    assert (printed["level"], printed["plugin"]) == ("warning", "worker")


async def test_request_log_wraps_any_asgi_app(restore_logging):
    from ingestd.daemon.core.metrics import Metrics

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        logs.note(route="/things/<thing_id>", tenant="t1", upload_id="u9")
        # An app's own X-Request-Id is replaced by the request's.
        headers = [(b"x-request-id", b"app-made"), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": b"no", "more_body": True})
        await send({"type": "http.response.body", "body": body[:5]})

    metrics = Metrics()
    wrapped = request_log.RequestLog(
        app, metrics, lambda path: "v1" if path.startswith("/v1/") else None
    )
    incoming = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"defgh"},
    ]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    out = io.StringIO()
    logs.setup("json", stream=out)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/things/42",
        "headers": [(b"X-Request-Id", b"client-1")],
    }
    await wrapped(scope, receive, send)
    assert sent[0]["headers"] == [(b"content-type", b"text/plain"), (b"x-request-id", b"client-1")]
    (line,) = (json.loads(x) for x in out.getvalue().splitlines())
    assert {k: line[k] for k in line if k not in ("timestamp", "duration")} == {
        "event": "request",
        "level": "error",
        "logger": "ingestd.access",
        "method": "POST",
        "route": "/things/<thing_id>",
        "status": 503,
        "bytes_in": 8,
        "bytes_out": 7,
        "request_id": "client-1",
        "api": "v1",
        "tenant": "t1",
        "upload_id": "u9",
        "file_id": None,
    }
    assert 0 <= line["duration"] < 5
    count = metrics.registry.get_sample_value(
        "ingestd_request_duration_seconds_count",
        {"method": "POST", "route": "/things/<thing_id>", "status": "503"},
    )
    assert count == 1
    assert logs.current() is None  # the request's info does not outlive it
