"""Sample index records for the index tests."""

from __future__ import annotations

from ingestd.cas import Session, SessionState


def sample_session(i: int) -> Session:
    """An open upload record, with metadata that needs encoding (a list, a NUL)."""
    return Session(
        id=f"s{i}",
        tenant="default",
        filename=f"f{i}.jsonl",
        size=10,
        chunk_size=4,
        total_chunks=3,
        state=SessionState.OPEN,
        created=1.0,
        updated=1.0,
        expires=2.0,
        metadata={"k": [1, "two"], "nul": "a\0b"},
    )
