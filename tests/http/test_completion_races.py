"""Races between finishing an upload and ending it, which the session transition
table settles: a cancel during completion wins (the job ends failed, no file
is recorded), a cancel after the file is recorded is refused; a file deleted
while its plugins run ends its job cleanly; every job ends with a reason."""

from __future__ import annotations

import io
import json
import os

import blake3
import pytest
import trio
from ingestd import cas
from ingestd.cas import TRANSITIONS, JobState, SessionNotOpen, SessionState
from ingestd.cas.records import ChunkRecord
from ingestd.daemon.http.app import create_app, load_plugins
from ingestd.plugins import hookimpl
from werkzeug.datastructures import FileStorage

CHUNK = 1000


def upload(store: cas.Store, data: bytes) -> cas.Session:
    session = store.create_session(filename="f.bin", size=len(data), chunk_size=CHUNK)
    for i in range(session.total_chunks):
        store.put_chunk(session.id, i, data[i * CHUNK : (i + 1) * CHUNK])
    return session


def refs(store: cas.Store, data: bytes) -> int:
    with store.index.reader() as txn:
        chunk = store.index.get(txn, "chunks", blake3.blake3(data).digest(), ChunkRecord)
    return 0 if chunk is None else chunk.refs


# -- the table ------------------------------------------------------------------


@pytest.mark.unit
def test_the_table_names_every_state_and_ends_in_final_ones():
    assert set(TRANSITIONS) == set(SessionState)
    final = {s for s, targets in TRANSITIONS.items() if not targets}
    assert final == {
        SessionState.COMPLETED,
        SessionState.REJECTED,
        SessionState.CANCELLED,
        SessionState.EXPIRED,
    }
    # Nothing that recorded a file goes back to taking bytes.
    assert SessionState.OPEN not in TRANSITIONS[SessionState.PROCESSING]


@pytest.mark.unit
def test_a_refused_transition_changes_nothing(store):
    session = upload(store, os.urandom(1500))
    with store.index.reader() as txn:
        current = store.sessions.get(txn, session.id, cas.DEFAULT_TENANT)
    with pytest.raises(SessionNotOpen):
        store.index.write(
            lambda txn: store.sessions.transition(txn, current, SessionState.COMPLETED)
        )
    with pytest.raises(ValueError):
        store.index.write(lambda txn: store.sessions.update(txn, current, state="completed"))
    assert store.session(session.id).state == SessionState.OPEN


# -- cancel against completion, both orders -------------------------------------


@pytest.mark.unit
def test_cancel_first_then_complete_is_refused(store):
    data = os.urandom(2500)
    session = upload(store, data)
    store.cancel(session.id)
    with pytest.raises(SessionNotOpen):
        store.complete(session.id)
    assert store.session(session.id).state == SessionState.CANCELLED
    assert refs(store, data[:CHUNK]) == 0


@pytest.mark.unit
def test_cancel_after_completion_began_wins_and_records_no_file(store):
    data = os.urandom(2500)
    session = upload(store, data)
    begun = store.begin_completion(session.id)
    assert store.cancel(session.id).state == SessionState.CANCELLED
    job = store.jobs.get(begun.job_id)
    assert job.state == JobState.FAILED and "cancelled" in job.error
    with pytest.raises(SessionNotOpen):
        store.finish_completion(session.id)
    with pytest.raises(cas.UnknownFile):
        store.file(begun.file_id)
    assert refs(store, data[:CHUNK]) == 0
    assert not (store.completed_dir / cas.DEFAULT_TENANT / begun.file_id).exists()


@pytest.mark.unit
def test_cancel_while_completion_reads_the_bytes(store):
    """The cancel lands between hashing and recording: no file, no copy left."""
    data = os.urandom(2500)
    session = upload(store, data)
    begun = store.begin_completion(session.id)
    real_hash = store.completer.hash

    def hash_then_cancel(*args, **kwargs):
        result = real_hash(*args, **kwargs)
        store.cancel(session.id)
        return result

    store.completer.hash = hash_then_cancel
    with pytest.raises(SessionNotOpen):
        store.finish_completion(session.id)
    with pytest.raises(cas.UnknownFile):
        store.file(begun.file_id)
    assert store.list_files() == []
    assert not (store.completed_dir / cas.DEFAULT_TENANT / begun.file_id).exists()
    assert refs(store, data[:CHUNK]) == 0
    assert store.jobs.get(begun.job_id).state == JobState.FAILED


@pytest.mark.unit
def test_cancel_after_the_file_is_recorded_is_refused(tmp_path, clock):
    with cas.Store(tmp_path, durability="none", clock=clock, process_files=True) as store:
        data = os.urandom(2500)
        session = upload(store, data)
        done = store.complete(session.id)
        assert done.session.state == SessionState.PROCESSING
        with pytest.raises(SessionNotOpen):
            store.cancel(session.id)
        assert store.file(done.file.id).state == cas.FileState.PROCESSING
        assert refs(store, data[:CHUNK]) == 1


@pytest.mark.unit
def test_a_failure_to_record_reopens_the_upload_and_fails_its_job(store):
    data = os.urandom(2500)
    session = upload(store, data)
    begun = store.begin_completion(session.id)
    real_record = store.files.record

    def broken(*args, **kwargs):
        raise cas.StorageError("index commit failed: disk full")

    store.files.record = broken
    with pytest.raises(cas.StorageError):
        store.finish_completion(session.id)
    assert store.session(session.id).state == SessionState.OPEN
    failed = store.jobs.get(begun.job_id)
    assert failed.state == JobState.FAILED and "disk full" in failed.error
    assert not (store.completed_dir / cas.DEFAULT_TENANT / begun.file_id).exists()
    # Completed again: a new job, which succeeds; the failed one keeps its reason.
    store.files.record = real_record
    done = store.complete(session.id)
    assert done.job.id != begun.job_id and done.file.blake3 == blake3.blake3(data).hexdigest()
    assert store.jobs.get(begun.job_id).state == JobState.FAILED


# -- through the daemon -----------------------------------------------------------


class Gate:
    """Holds every job in its scan stage until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.open = trio.Event()
        self.scanned: list[str] = []

    @hookimpl
    async def ingestd_scan(self, ctx):
        self.scanned.append(ctx.facts.file_id)
        self.entered.set()
        await self.open.wait()
        return None


async def v1_upload(client, data: bytes, metadata_json: str = "{}") -> dict:
    # Raw JSON: the test client's own encoder would refuse deep nesting.
    body = f'{{"filename": "f.jsonl", "size": {len(data)}, "metadata": {metadata_json}}}'
    r = await client.post("/v1/uploads", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, await r.get_data()
    created = await r.get_json()
    for i in created["missing"]:
        r = await client.put(
            f"/v1/uploads/{created['id']}/chunks/{i}", data=data[i * 1024 : (i + 1) * 1024]
        )
        assert r.status_code == 200, await r.get_data()
    return created


async def job_after(client, job_id: str) -> dict:
    return await (await client.get(f"/v1/jobs/{job_id}?wait=20")).get_json()


def jsonl(n: int) -> bytes:
    return b"".join(b'{"i": %d, "text": "row %d"}\n' % (i, i) for i in range(n))


@pytest.mark.api
async def test_http_cancel_then_complete_and_complete_then_cancel(client):
    data = jsonl(200)
    created = await v1_upload(client, data)
    assert (await client.delete(f"/v1/uploads/{created['id']}")).status_code == 204
    r = await client.post(f"/v1/uploads/{created['id']}/complete")
    assert r.status_code == 409 and (await r.get_json())["code"] == "upload_not_open"

    created = await v1_upload(client, data)
    r = await client.post(f"/v1/uploads/{created['id']}/complete")
    assert r.status_code == 202
    job_id = (await r.get_json())["job_id"]
    cancel = await client.delete(f"/v1/uploads/{created['id']}")
    job = await job_after(client, job_id)
    listed = (await (await client.get("/v1/files")).get_json())["files"]
    if cancel.status_code == 204:  # the cancel came first: no file at all
        assert job["state"] == "failed" and "cancelled" in job["error"]
        assert listed == []
    else:  # the file was recorded first: the cancel is refused, the file is whole
        assert cancel.status_code == 409
        assert job["state"] == "succeeded"
        body = await (await client.get(f"/v1/files/{job['file_id']}/content")).get_data()
        assert blake3.blake3(body).hexdigest() == blake3.blake3(data).hexdigest()


@pytest.fixture
async def gated(make_config):
    gate = Gate()
    config = make_config()
    app = create_app(config, plugins=load_plugins(config, extra={"gate": gate}))
    async with app.test_app() as test_app:
        yield test_app.test_client(), gate


@pytest.mark.api
async def test_file_deleted_while_its_plugins_run_ends_the_job(gated):
    client, gate = gated
    created = await v1_upload(client, jsonl(100))
    job_id = (await (await client.post(f"/v1/uploads/{created['id']}/complete")).get_json())[
        "job_id"
    ]
    with trio.fail_after(20):
        await gate.entered.wait()
    job = await job_after(client, job_id)
    assert (await client.delete(f"/v1/files/{job['file_id']}")).status_code == 204
    gate.open.set()
    job = await job_after(client, job_id)
    assert job["state"] == "failed" and "deleted" in job["error"], job
    status = await (await client.get(f"/v1/uploads/{created['id']}")).get_json()
    assert status["state"] == "cancelled"
    assert (await client.get(f"/v1/files/{job['file_id']}")).status_code == 404


@pytest.mark.api
async def test_tus_terminate_and_get_while_processing(gated):
    client, gate = gated
    tus = {"Tus-Resumable": "1.0.0"}
    data = jsonl(150)
    r = await client.post("/files/", headers={**tus, "Upload-Length": str(len(data))})
    url = r.headers["Location"]
    r = await client.patch(
        url,
        data=data,
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert r.status_code == 204
    with trio.fail_after(20):
        await gate.entered.wait()
    # Its bytes are all there: a GET serves them while the plugins decide.
    r = await client.get(url)
    assert r.status_code == 200 and await r.get_data() == data
    # Termination of an existing upload answers 204, even now.
    assert (await client.delete(url, headers=tus)).status_code == 204
    gate.open.set()
    r = await client.head(url, headers=tus)
    assert r.status_code == 410


@pytest.mark.api
async def test_deep_metadata_is_refused_up_front_and_deep_enough_still_processes(make_config):
    """Metadata nested 900 deep once made processing raise outside any plugin;
    it is refused when the upload is created now (400), and the deepest that
    is accepted (32 levels) goes through processing in a child process."""
    config = make_config(INGESTD_PLUGINS_ISOLATION="process")
    app = create_app(config)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        deep = '{"deep": ' + "[" * 900 + '"leaf"' + "]" * 900 + "}"
        body = f'{{"filename": "f.jsonl", "size": 10, "metadata": {deep}}}'
        r = await client.post(
            "/v1/uploads", data=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and (await r.get_json())["code"] == "invalid_json"
        # The body is {"metadata": {"deep": [[…]]}}: 3 levels above the lists.
        nested = '{"deep": ' + "[" * 29 + '"leaf"' + "]" * 29 + "}"
        created = await v1_upload(client, jsonl(10), nested)
        r = await client.post(f"/v1/uploads/{created['id']}/complete")
        job = await job_after(client, (await r.get_json())["job_id"])
        assert job["state"] == "succeeded", job
        file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
        assert file["state"] == "accepted" and file["metadata"] == json.loads(nested)


@pytest.mark.api
async def test_completion_requested_again_runs_the_plugins_once(gated):
    client, gate = gated
    data = jsonl(50)
    created = await v1_upload(client, data)
    first = await client.post(f"/v1/uploads/{created['id']}/complete")
    again = await client.post(f"/v1/uploads/{created['id']}/complete")
    job_id = (await first.get_json())["job_id"]
    assert (await again.get_json())["job_id"] == job_id
    with trio.fail_after(20):
        await gate.entered.wait()
    # The original API's complete, retried while the plugins run.
    payload = jsonl(2)
    r = await client.post(
        "/api/upload/init", json={"filename": "s.jsonl", "totalSize": len(payload)}
    )
    seed_id = (await r.get_json())["uploadId"]
    form = {"uploadId": seed_id, "chunkIndex": "0", "totalChunks": "1"}
    part = FileStorage(io.BytesIO(payload), filename="blob")
    r = await client.post("/api/upload/chunk", form=form, files={"chunk": part})
    assert r.status_code == 200, await r.get_data()
    for _ in range(2):
        assert (await client.post(f"/api/upload/complete/{seed_id}")).status_code == 200
    gate.open.set()
    job = await job_after(client, job_id)
    assert job["state"] == "succeeded", job
    await trio.sleep(0.2)
    assert sorted(gate.scanned) == sorted({*gate.scanned}), gate.scanned  # none twice
    assert len(gate.scanned) == 2
