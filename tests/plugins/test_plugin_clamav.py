"""The built-in "clamav" plugin against a real clamd started for these tests."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import pytest
from ingestd.plugins import PluginConfigError
from ingestd.plugins.builtin import clamav
from ingestd.plugins.testing import run_plugins
from support.clamd import EICAR, SIGNATURE

pytestmark = pytest.mark.e2e

BUILTINS = {"detect": "ingestd.plugins.builtin.detect", "clamav": "ingestd.plugins.builtin.clamav"}
# clamd names signatures from unsigned databases "<name>.UNOFFICIAL".
REPORTED_SIGNATURE = f"{SIGNATURE}.UNOFFICIAL"


async def scan(data: bytes, filename: str = "data.txt", *, on_error="reject", **config):
    return await run_plugins(
        data, filename, builtins=BUILTINS, config={"clamav": config}, on_error=on_error
    )


def jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


async def test_eicar_text_file_is_rejected_naming_the_signature(clamd):
    outcome = await scan(EICAR, "eicar.txt", socket=clamd.socket)

    assert not outcome.accepted
    assert outcome.reason == f"clamav: virus found: {REPORTED_SIGNATURE}"
    assert outcome.results["clamav"]["scan"] == {
        "ok": False,
        "reason": f"virus found: {REPORTED_SIGNATURE}",
        "signature": REPORTED_SIGNATURE,
    }


async def test_eicar_inside_a_jsonl_line_is_rejected(clamd):
    data = jsonl(
        {"prompt": "hello", "completion": "world"},
        {"prompt": "payload", "completion": EICAR.decode()},
        {"prompt": "bye", "completion": "now"},
    )

    outcome = await scan(data, "train.jsonl", socket=clamd.socket)

    assert not outcome.accepted
    assert outcome.results["clamav"]["scan"]["signature"] == REPORTED_SIGNATURE


async def test_eicar_after_the_first_chunk_is_found(clamd):
    # Several INSTREAM chunks: the signature is in the last one.
    data = b"clean line of text\n" * (3 * clamav.CHUNK_SIZE // 19) + EICAR

    outcome = await scan(data, "big.txt", socket=clamd.socket)

    assert len(data) > 2 * clamav.CHUNK_SIZE
    assert outcome.results["clamav"]["scan"]["signature"] == REPORTED_SIGNATURE


async def test_clean_file_is_accepted(clamd):
    data = jsonl({"prompt": "hello", "completion": "world"})

    outcome = await scan(data, "train.jsonl", socket=clamd.socket)

    assert outcome.accepted, outcome.reason
    assert outcome.results["clamav"]["scan"] == {
        "ok": True,
        "reason": "",
        "scanned": True,
        "clean": True,
    }


async def test_empty_file_is_accepted(clamd):
    outcome = await scan(b"", "empty.txt", socket=clamd.socket)

    assert outcome.accepted, outcome.reason
    assert outcome.results["clamav"]["scan"]["clean"] is True


async def test_not_configured_accepts_with_a_disabled_note():
    outcome = await scan(EICAR, "eicar.txt")

    assert outcome.accepted
    assert outcome.results["clamav"]["scan"] == {
        "ok": True,
        "reason": "",
        "disabled": "clamd not configured: set [plugins.clamav] socket",
    }


async def test_missing_socket_is_an_error_and_rejects_by_default(tmp_path):
    missing = str(tmp_path / "no-clamd.sock")

    outcome = await scan(b"hello\n", socket=missing)

    assert not outcome.accepted
    error = outcome.results["clamav"]["scan"]["error"]
    assert error.startswith(f"clamd unreachable at {missing}")
    assert outcome.reason == f"clamav failed in scan: {error}"


async def test_missing_socket_is_only_recorded_when_errors_are_accepted(tmp_path):
    outcome = await scan(b"hello\n", socket=str(tmp_path / "no.sock"), on_error="accept")

    assert outcome.accepted
    assert "clamd unreachable" in outcome.results["clamav"]["scan"]["error"]


async def test_refused_tcp_address_is_an_error():
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    outcome = await scan(b"hello\n", address=f"127.0.0.1:{port}")

    assert not outcome.accepted
    assert "clamd unreachable at 127.0.0.1" in outcome.results["clamav"]["scan"]["error"]


async def test_clamd_that_never_answers_times_out(tmp_path):
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as silent:  # listens, never accepts or answers
        silent.bind(path)
        silent.listen()

        outcome = await scan(b"hello\n", socket=path, timeout=0.5)

    assert not outcome.accepted
    assert outcome.results["clamav"]["scan"]["error"] == (
        f"clamd at {path} did not answer within 0.5 s"
    )


async def test_stream_over_stream_max_length_is_rejected_by_default(clamd_limited):
    data = b"x" * (64 * 1024)

    outcome = await scan(data, socket=clamd_limited.socket)

    assert not outcome.accepted
    assert outcome.results["clamav"]["scan"] == {
        "ok": False,
        "reason": "not scanned for viruses: larger than clamd's StreamMaxLength",
        "limit_exceeded": True,
    }


async def test_stream_over_stream_max_length_accepted_with_a_note(clamd_limited):
    data = b"x" * (clamav.CHUNK_SIZE * 3)

    outcome = await scan(data, socket=clamd_limited.socket, on_limit="accept")

    assert outcome.accepted, outcome.reason
    assert outcome.results["clamav"]["scan"] == {
        "ok": True,
        "reason": "",
        "scanned": False,
        "limit_exceeded": True,
        "note": "not scanned for viruses: larger than clamd's StreamMaxLength",
    }


async def test_file_over_clamd_max_file_size_follows_the_limit_policy(clamd_limited):
    # Within StreamMaxLength but over MaxFileSize: clamd does not scan it all.
    data = b"y" * 4096 + EICAR

    rejected = await scan(data, socket=clamd_limited.socket)
    accepted = await scan(data, socket=clamd_limited.socket, on_limit="accept")

    note = "not scanned for viruses: over a clamd scan limit (Heuristics.Limits.Exceeded."
    assert not rejected.accepted
    assert rejected.results["clamav"]["scan"]["reason"].startswith(note)
    assert accepted.accepted
    assert accepted.results["clamav"]["scan"]["note"].startswith(note)


async def test_small_file_on_limited_clamd_is_still_scanned(clamd_limited):
    outcome = await scan(EICAR, socket=clamd_limited.socket)

    assert outcome.results["clamav"]["scan"]["signature"] == REPORTED_SIGNATURE


def test_file_larger_than_clamd_can_scan_is_not_sent(tmp_path):
    # Never connects or reads: the socket does not exist, and would be an error if used.
    ctx = SimpleNamespace(
        config=clamav.ClamAVConfig(socket=str(tmp_path / "unused.sock")),
        facts=SimpleNamespace(size=3 * 1024**3),
    )

    verdict = clamav.ingestd_scan(ctx)

    assert not verdict.ok
    assert verdict.reason == "not scanned for viruses: larger than the 2 GiB clamd can scan"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"socket": "/run/clamd.sock", "address": "127.0.0.1:3310"}, "not both"),
        ({"address": "10.0.0.5:3310"}, "must be a loopback host:port"),
        ({"address": "localhost"}, "must be host:port"),
        ({"on_limit": "ignore"}, "on_limit"),
        ({"sockt": "/run/clamd.sock"}, "sockt"),
    ],
)
async def test_invalid_config_stops_start_up(table, message):
    with pytest.raises(PluginConfigError, match=message):
        await scan(b"", **table)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:3310", ("127.0.0.1", 3310)),
        ("localhost:3310", ("localhost", 3310)),
        ("[::1]:3310", ("::1", 3310)),
    ],
)
def test_loopback_addresses_are_accepted(address, expected):
    assert clamav.parse_address(address) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("stream: OK", clamav.ScanResult()),
        ("stream: Win.Test.EICAR_HDB-1 FOUND", clamav.ScanResult(signature="Win.Test.EICAR_HDB-1")),
        (
            "INSTREAM size limit exceeded. ERROR",
            clamav.ScanResult(limit="larger than clamd's StreamMaxLength"),
        ),
    ],
)
def test_parse_reply(reply, expected):
    assert clamav.parse_reply(reply) == expected


@pytest.mark.parametrize("reply", ["", "stream: Can't allocate memory ERROR", "UNKNOWN COMMAND"])
def test_unexpected_replies_are_errors(reply):
    with pytest.raises(clamav.ClamdError):
        clamav.parse_reply(reply)
