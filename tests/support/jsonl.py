"""Made-up JSON lines files, and the edit of one (for dedup after an insertion)."""

from __future__ import annotations

import json
import random


def jsonl_bytes(size: int, seed: int) -> bytes:
    """Deterministic JSON lines, like a training set, whole lines up to `size` bytes."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
        for _ in range(2000)
    ]
    out = bytearray()
    i = 0
    while len(out) < size:
        record = {
            "id": i,
            "text": " ".join(rng.choices(words, k=rng.randint(5, 40))),
            "label": rng.choice(["pos", "neg", "neutral"]),
            "score": round(rng.random(), 4),
        }
        out += json.dumps(record).encode() + b"\n"
        i += 1
    return bytes(out[: out.rindex(b"\n", 0, size) + 1])


def insert_lines(data: bytes, at: int, extra: bytes) -> bytes:
    """`extra` inserted at the first line boundary after byte `at`."""
    cut = data.index(b"\n", at) + 1
    return data[:cut] + extra + data[cut:]
