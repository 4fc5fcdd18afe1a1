"""How the client groups missing chunks into run requests."""

from __future__ import annotations

from ingestd.daemon.client._chunking import Chunk
from ingestd.daemon.client._upload import MIN_RUN_BYTES, RUN_BYTES, _runs

MiB = 1 << 20


def chunks_of(sizes: list[int]) -> list[Chunk]:
    out, offset = [], 0
    for i, n in enumerate(sizes):
        out.append(Chunk(offset, n, f"{i:064x}"))
        offset += n
    return out


def test_runs_are_consecutive_bounded_and_cover_every_missing_chunk():
    chunks = chunks_of([MiB] * 200)
    missing = [i for i in range(200) if i % 50 != 7]  # holes: chunks the server has
    runs = _runs(chunks, missing, parallel=5)
    assert [i for run in runs for i, _ in run] == missing
    for run in runs:
        indexes = [i for i, _ in run]
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
        assert sum(c.size for _, c in run) <= RUN_BYTES
    assert max(sum(c.size for _, c in run) for run in runs) == RUN_BYTES


def test_a_small_file_is_spread_over_the_parallel_requests():
    chunks = chunks_of([MiB] * 40)
    runs = _runs(chunks, list(range(40)), parallel=5)
    assert [len(run) for run in runs] == [8, 8, 8, 8, 8]
    tiny = _runs(chunks_of([MiB] * 6), list(range(6)), parallel=5)
    assert [len(run) for run in tiny] == [MIN_RUN_BYTES // MiB, 6 - MIN_RUN_BYTES // MiB]
