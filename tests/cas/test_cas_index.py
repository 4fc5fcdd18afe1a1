import threading
import time

import lmdb
import pytest
from ingestd.cas import Index, Session, StorageError, records
from support.records import sample_session

pytestmark = pytest.mark.unit


def test_manifest_packing_round_trip():
    entries = [("ab" * 32, 1 << 20), ("cd" * 32, 7)]
    assert records.unpack_manifest(records.pack_manifest(entries)) == entries


def test_newer_format_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path / "idx"), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format_version", b"99")
    env.close()
    with pytest.raises(StorageError, match="format 99"):
        Index(tmp_path / "idx")


def test_failing_op_does_not_undo_others_in_its_group(tmp_path):
    index = Index(tmp_path / "idx")
    gate = threading.Event()
    results = {}

    running = threading.Event()

    def blocker(txn):
        running.set()
        gate.wait(5)

    def good(i):
        return lambda txn: index.put(txn, "sessions", f"s{i}".encode(), sample_session(i))

    def bad(txn):
        index.put(txn, "sessions", b"half-written", sample_session(99))
        raise ValueError("refused")

    def call(name, op):
        try:
            results[name] = index.write(op)
        except ValueError as exc:
            results[name] = exc

    first = threading.Thread(target=call, args=("blocker", blocker))
    first.start()
    # The others are queued only once the writer is inside the blocker, so
    # they cannot join its group.
    assert running.wait(5)
    threads = [threading.Thread(target=call, args=(f"good{i}", good(i))) for i in range(5)]
    threads.append(threading.Thread(target=call, args=("bad", bad)))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(index.writer._queue) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)  # all queued behind the blocker
    assert len(index.writer._queue) == 6
    gate.set()
    for t in [first, *threads]:
        t.join(5)
    assert isinstance(results["bad"], ValueError)
    with index.reader() as txn:
        assert index.get(txn, "sessions", b"half-written", Session) is None
        for i in range(5):
            assert index.get(txn, "sessions", f"s{i}".encode(), Session) == sample_session(i)
    # The six queued operations shared one commit.
    assert index.writer.commits == 2
    index.close()


def test_actions_after_commit_run_only_for_committed_operations(tmp_path):
    """Deleting an object cannot be rolled back, so it waits for the commit: an
    operation that fails (or whose commit fails) leaves nothing deleted."""
    index = Index(tmp_path / "idx", durable=False)
    ran: list[tuple[str, bytes | None]] = []

    def op(name: str, fail: bool):
        def run(txn):
            txn.put(name.encode(), b"1", db=index.db["meta"])
            index.after_commit(
                lambda snap: ran.append((name, snap.get(name.encode(), db=index.db["meta"])))
            )
            if fail:
                raise ValueError(name)

        return run

    index.write(op("kept", False))
    with pytest.raises(ValueError):
        index.write(op("failed", True))
    # The action saw the committed change; the failed operation's never ran.
    assert ran == [("kept", b"1")]
    with pytest.raises(RuntimeError):
        index.after_commit(lambda snap: None)  # outside a write operation
    index.close()
