"""The upload core (daemon/core/ingest.py) on its own: both kinds of body target.

A chunk (seed, /v1) and a stream (tus), each: an idempotent resend, a body
cut off midway, a checksum or hash mismatch, a body longer than declared;
and the single writer of a stream. Bodies are plain async iterables; the
store underneath is the test app's.
"""

from __future__ import annotations

import base64
import hashlib
import os

import blake3
import pytest
import trio
from ingestd import cas
from ingestd.daemon.core.errors import LengthExceeded, StreamChecksumMismatch, UploadLocked
from ingestd.daemon.core.ingest import NewUpload, StreamSpec
from ingestd.daemon.http import tus_protocol as tus

pytestmark = pytest.mark.api

TENANT = cas.DEFAULT_TENANT
CHUNK = 1024  # the test config's chunk size
API = "v1"  # the API that chunks come by, for the metrics


@pytest.fixture
def rt(app):
    return app.app.extensions["ingestd"]


async def body(*pieces: bytes):
    for piece in pieces:
        await trio.sleep(0)
        yield piece


async def cut_off(*pieces: bytes, then: trio.Event):
    """Sends its pieces, then hangs like a client that went away mid-body."""
    for piece in pieces:
        yield piece
    then.set()
    await trio.sleep_forever()
    yield b""  # never reached


def objects(rt) -> set[str]:
    return set(rt.store.chunks.iter_hashes())


def leftovers(rt) -> list[str]:
    return os.listdir(rt.store.root / "tmp")


async def new_chunked(rt, data: bytes) -> cas.Session:
    opened = await rt.ingest.open_upload(
        NewUpload(api="v1", tenant=TENANT, filename="c.bin", size=len(data))
    )
    return opened.session


async def new_stream(rt, length: int | None) -> cas.Session:
    opened = await rt.ingest.open_upload(
        NewUpload(
            api="tus", tenant=TENANT, filename="s.bin", size=length, stream=StreamSpec(cas.SINGLE)
        )
    )
    return opened.session


# -- chunks ---------------------------------------------------------------------


async def test_chunk_resend_is_idempotent(rt):
    data = os.urandom(2 * CHUNK)
    session = await new_chunked(rt, data)
    first = await rt.ingest.receive_chunk(API, TENANT, session.id, 0, body(data[:CHUNK]))
    again = await rt.ingest.receive_chunk(
        API, TENANT, session.id, 0, body(data[:700], data[700:CHUNK])
    )
    assert (first.stored, again.stored) == (True, False)
    assert first.hash == again.hash == blake3.blake3(data[:CHUNK]).hexdigest()
    assert again.received_chunks == 1
    assert rt.store.missing(session.id) == [1]


async def test_chunk_cut_off_midway_keeps_nothing(rt):
    data = os.urandom(2 * CHUNK)
    session = await new_chunked(rt, data)
    before = objects(rt)
    sent = trio.Event()
    with trio.move_on_after(5) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                rt.ingest.receive_chunk, API, TENANT, session.id, 0, cut_off(data[:600], then=sent)
            )
            await sent.wait()
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert objects(rt) == before and leftovers(rt) == []
    assert rt.store.missing(session.id) == [0, 1]


async def test_chunk_with_wrong_hash_keeps_nothing(rt):
    data = os.urandom(CHUNK)
    session = await new_chunked(rt, data)
    before = objects(rt)
    with pytest.raises(cas.ChunkHashMismatch):
        await rt.ingest.receive_chunk(
            API, TENANT, session.id, 0, body(data), claimed_hash=blake3.blake3(b"other").hexdigest()
        )
    assert objects(rt) == before and leftovers(rt) == []
    assert rt.store.missing(session.id) == [0]


@pytest.mark.parametrize("extra", [1, CHUNK])
async def test_chunk_longer_than_declared_is_refused(rt, extra):
    data = os.urandom(CHUNK + extra)
    session = await new_chunked(rt, os.urandom(2 * CHUNK))
    before = objects(rt)
    with pytest.raises(cas.WrongChunkSize):
        await rt.ingest.receive_chunk(API, TENANT, session.id, 0, body(data[:CHUNK], data[CHUNK:]))
    with pytest.raises(cas.WrongChunkSize):  # refused on its Content-Length, before reading
        await rt.ingest.receive_chunk(
            API, TENANT, session.id, 0, body(data), content_length=len(data)
        )
    assert objects(rt) == before and leftovers(rt) == []
    assert rt.store.missing(session.id) == [0, 1]


# -- streams --------------------------------------------------------------------


async def receive(rt, session, offset, *pieces, limit=10 * CHUNK, checksum=None, state=None):
    """Send `pieces` at `offset`, as read now (or as `state`, read earlier, says)."""
    with rt.ingest.writing(session.id):
        state = state or rt.ingest.stream_state(TENANT, session.id)
        assert state.offset == offset
        return await rt.ingest.receive_stream(
            TENANT, session.id, state, body(*pieces), limit=limit, checksum=checksum
        )


def stream_bytes(rt, session) -> bytes:
    with rt.store.open_parts(session.id) as reader:
        return reader.read()


async def test_stream_resend_at_an_old_offset_is_refused_and_changes_nothing(rt):
    data = os.urandom(3 * CHUNK)
    session = await new_stream(rt, len(data))
    before = rt.ingest.stream_state(TENANT, session.id)
    assert (await receive(rt, session, 0, data[:1500])).offset == 1500
    with pytest.raises(cas.OffsetMismatch):
        await receive(rt, session, 0, data[:1500], state=before)
    assert rt.ingest.stream_state(TENANT, session.id).offset == 1500
    assert stream_bytes(rt, session) == data[:1500]
    assert (await receive(rt, session, 1500, data[1500:])).offset == len(data)


async def test_stream_cut_off_midway_keeps_its_durable_prefix(rt):
    data = os.urandom(4 * CHUNK)
    session = await new_stream(rt, len(data))
    sent = trio.Event()
    pieces = (data[:1000], data[1000:2600])
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            with rt.ingest.writing(session.id):
                state = rt.ingest.stream_state(TENANT, session.id)
                await rt.ingest.receive_stream(
                    TENANT, session.id, state, cut_off(*pieces, then=sent), limit=len(data)
                )

        nursery.start_soon(run)
        await sent.wait()
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    # Every byte that arrived is kept: two full chunks and a 552-byte tail.
    state = rt.ingest.stream_state(TENANT, session.id)
    assert state.offset == 2600
    assert stream_bytes(rt, session) == data[:2600]
    assert leftovers(rt) == []
    assert (await receive(rt, session, 2600, data[2600:])).offset == len(data)


def sha1_checksum(data: bytes) -> tus.Checksum:
    return tus.parse_checksum("sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode())


async def test_stream_checksum_mismatch_keeps_nothing(rt):
    data = os.urandom(3 * CHUNK)
    session = await new_stream(rt, len(data))
    await receive(rt, session, 0, data[:500])
    before = rt.store.received(session.id)
    with pytest.raises(StreamChecksumMismatch) as refused:
        await receive(rt, session, 500, data[500:], checksum=sha1_checksum(b"not it"))
    assert refused.value.extra["offset"] == 500
    assert rt.store.received(session.id) == before
    assert stream_bytes(rt, session) == data[:500]
    good = await receive(rt, session, 500, data[500:], checksum=sha1_checksum(data[500:]))
    assert good.offset == len(data)


async def test_stream_longer_than_its_limit_keeps_up_to_the_limit(rt):
    data = os.urandom(2 * CHUNK)
    session = await new_stream(rt, 1500)
    with pytest.raises(LengthExceeded) as refused:
        await receive(rt, session, 0, data[:1000], data[1000:], limit=1500)
    assert refused.value.extra["offset"] == 1500
    assert rt.ingest.stream_state(TENANT, session.id).offset == 1500
    # With a checksum, a body going past the limit keeps nothing.
    other = await new_stream(rt, 1500)
    with pytest.raises(LengthExceeded) as refused:
        await receive(rt, other, 0, data, limit=1500, checksum=sha1_checksum(data))
    assert refused.value.extra["offset"] == 0
    assert rt.ingest.stream_state(TENANT, other.id).offset == 0


async def test_two_writers_of_one_stream(rt):
    session = await new_stream(rt, 10)
    with rt.ingest.writing(session.id):
        with pytest.raises(UploadLocked):
            with rt.ingest.writing(session.id):
                pass
    with rt.ingest.writing(session.id):  # released once the first is done
        pass


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_received_bytes_are_counted_on_every_api(client):
    data = os.urandom(2500)
    r = await client.post("/v1/uploads", json={"filename": "m.bin", "size": len(data)})
    upload = await r.get_json()
    for i in upload["missing"]:
        await client.put(f"/v1/uploads/{upload['id']}/chunks/{i}", data=data[i * CHUNK :][:CHUNK])
    await client.put(f"/v1/uploads/{upload['id']}/chunks/0", data=data[:CHUNK])  # a repeat
    tus_headers = {"Tus-Resumable": "1.0.0"}
    r = await client.post("/files/", headers={**tus_headers, "Upload-Length": "1500"})
    await client.patch(
        r.headers["Location"],
        data=data[:1500],
        headers={
            **tus_headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert metric(text, 'ingestd_received_bytes_total{api="v1"}') == 2500 + CHUNK
    assert metric(text, 'ingestd_received_bytes_total{api="tus"}') == 1500
    # The repeat and tus's first chunk (v1's chunk 0 again) wrote no object.
    assert metric(text, 'ingestd_stored_bytes_total{api="v1"}') == 2500
    assert metric(text, 'ingestd_stored_bytes_total{api="tus"}') == 1500 - CHUNK
    assert metric(text, 'ingestd_chunks_total{result="stored"}') == 3 + 2
    assert metric(text, 'ingestd_chunks_total{result="repeated"}') == 1
