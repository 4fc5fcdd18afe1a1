"""The tenant ledger (holdings and usage) stays equal to what the manifests say,
whatever happens to uploads and files; quotas and tenant-scoped dedup."""

from __future__ import annotations

import os
import random

import blake3
import pytest
from ingestd.cas import (
    Quota,
    QuotaExceeded,
    StreamStore,
    TenantUsage,
    TooManyOpenUploads,
)

pytestmark = pytest.mark.unit

CHUNK = 1000


def snapshot(store) -> tuple[dict, dict]:
    """(usage per tenant, holdings) as the ledger has them now."""
    with store.index.reader() as txn:
        usage = {t: u for t, u in store.tenants.all(txn) if u != TenantUsage()}
        holdings = dict(store.index.scan(txn, "tenant_chunks"))
    return usage, holdings


def rebuilt(store) -> tuple[dict, dict]:
    before = snapshot(store)
    store.index.write(store.tenants.rebuild)
    after = snapshot(store)
    return before, after


def upload(store, tenant, data, *, declared=False, complete=True, send=True):
    chunks = None
    if declared:
        chunks = [
            (blake3.blake3(data[i : i + CHUNK]).hexdigest(), len(data[i : i + CHUNK]))
            for i in range(0, len(data), CHUNK)
        ]
    s = store.create_session(
        filename="f",
        size=len(data),
        chunk_size=CHUNK,
        tenant=tenant,
        chunks=chunks,
        min_chunk_size=1,
    )
    for i in store.missing(s.id, tenant) if send else ():
        store.put_chunk(s.id, i, data[i * CHUNK : (i + 1) * CHUNK], tenant)
    if complete:
        return store.complete(s.id, tenant)
    return s


def test_ledger_matches_a_rebuild_after_random_operations(store, clock):
    rng = random.Random(7)
    pool = [os.urandom(CHUNK) for _ in range(6)]
    streams = StreamStore(store, max_size=1 << 30)
    files: list[tuple[str, str]] = []
    for step in range(80):
        tenant = rng.choice(["alice", "bob", "carol"])
        data = b"".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))[: rng.randint(1, 4000)]
        action = rng.choice(["file", "file", "open", "cancel", "delete", "reject", "tus"])
        if action == "file":
            done = upload(store, tenant, data, declared=rng.random() < 0.5)
            files.append((done.file.id, tenant))
        elif action == "open":
            upload(store, tenant, data, declared=True, complete=False)
        elif action == "cancel":
            s = upload(store, tenant, data, complete=False)
            store.cancel(s.id, tenant)
        elif action == "delete" and files:
            file_id, owner = files.pop(rng.randrange(len(files)))
            store.delete_file(file_id, owner)
        elif action == "reject":
            done = upload(store, tenant, data)
            store.conclude(done.file.id, accepted=False, reason="no")
        elif action == "tus":
            created = streams.create(
                tenant=tenant,
                kind="single",
                length=len(data),
                chunk_size=CHUNK,
                filename="t",
                metadata={},
            )
            # Two PATCHes: the second replaces the tail the first left.
            sid, half = created.session.id, len(data) // 2
            for start, end in ((0, half), (half, len(data))):
                if start == end:
                    continue
                session = store.session(sid, tenant)
                tail = streams.read_tail(sid, tenant, start)
                appender = streams.appender(session, start, tail)
                pieces = [s.commit() for s in appender.write(data[start:end])]
                last = appender.finish()
                if last is not None:
                    pieces.append(last.commit())
                if pieces:
                    streams.attach(sid, tenant, start, pieces)
        if step % 10 == 0:
            before, after = rebuilt(store)
            assert before == after, step
    store.expire_sessions()
    clock.now += 1000
    store.expire_sessions()
    before, after = rebuilt(store)
    assert before == after
    usage, _ = snapshot(store)
    for tenant, u in usage.items():
        assert u.open_uploads == 0, tenant  # all expired
        assert u.logical_bytes >= 0 and u.physical_bytes >= 0


def test_usage_counts_logical_and_physical_bytes(store):
    data = os.urandom(3 * CHUNK)
    upload(store, "alice", data)
    upload(store, "alice", data)  # the same content again
    u = store.usage("alice")
    assert (u.files, u.logical_bytes, u.physical_bytes, u.chunks) == (2, 6000, 3000, 3)
    open_upload = upload(store, "alice", os.urandom(500), complete=False)
    assert store.usage("alice").open_uploads == 1 and store.usage("alice").open_bytes == 500
    store.cancel(open_upload.id, "alice")
    assert store.usage("alice").open_uploads == 0 and store.usage("alice").open_bytes == 0
    # Another tenant with the same content counts it too (the disk is shared).
    upload(store, "bob", data)
    assert store.usage("bob").physical_bytes == 3000
    assert store.usage("alice").physical_bytes == 3000


def test_dedup_is_scoped_to_the_tenant(store):
    data = os.urandom(2 * CHUNK + 10)
    upload(store, "alice", data, declared=True)
    s = upload(store, "bob", data, declared=True, complete=False, send=False)
    assert store.missing(s.id, "bob") == [0, 1, 2]
    assert store.session(s.id, "bob").received_chunks == 0
    again = upload(store, "alice", data, declared=True, complete=False, send=False)
    assert store.missing(again.id, "alice") == []


def test_quotas_are_checked_in_the_transaction_that_opens(tmp_path, clock):
    from ingestd.cas import Store

    limits = {"alice": Quota(max_bytes=2500, max_open_uploads=2)}
    with Store(
        tmp_path / "q", durability="none", clock=clock, quota_for=lambda t: limits.get(t, Quota())
    ) as store:
        upload(store, "alice", os.urandom(2000))
        with pytest.raises(QuotaExceeded) as refused:
            store.create_session(filename="x", size=501, chunk_size=CHUNK, tenant="alice")
        assert refused.value.extra == {"limit": 2500, "current": 2000, "requested": 501}
        store.create_session(filename="x", size=250, chunk_size=CHUNK, tenant="alice")
        store.create_session(filename="x", size=250, chunk_size=CHUNK, tenant="alice")
        with pytest.raises(TooManyOpenUploads):
            store.create_session(filename="x", size=0, chunk_size=CHUNK, tenant="alice")
        assert store.usage("alice").open_uploads == 2
        # Other tenants are not limited by alice's quota.
        store.create_session(filename="x", size=10_000, chunk_size=CHUNK, tenant="bob")
