"""The JSONL files of bench/upload.py's insertion case: a deterministic JSONL
file and a variant of it with INSERT_BYTES of new lines inserted near its start."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from _common import MIB

INSERT_BYTES = MIB
INSERT_OFFSET = 4 * MIB
JSONL_SEED = 20240603


def _vocabulary(rng: random.Random, n: int = 4096) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(n)]


def _jsonl_lines(seed: int, first_id: int):
    """An endless, deterministic stream of JSONL records (bytes, newline included)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    i = first_id
    while True:
        prompt = " ".join(rng.choices(vocab, k=rng.randint(8, 40)))
        response = " ".join(rng.choices(vocab, k=rng.randint(20, 120)))
        yield (
            f'{{"id": {i}, "prompt": "{prompt}", "response": "{response}", '
            f'"score": {rng.random():.4f}}}\n'
        ).encode()
        i += 1


def _write_lines(f, lines, nbytes: int) -> None:
    """Exactly nbytes of whole lines; a final {"pad": "..."} line fills the rest."""
    pad_min = len(b'{"pad": ""}\n')
    written = 0
    for line in lines:
        if written + len(line) + pad_min > nbytes:
            break
        f.write(line)
        written += len(line)
    f.write(b'{"pad": "' + b"x" * (nbytes - written - pad_min) + b'"}\n')


def make_jsonl(path: Path, size: int) -> None:
    with open(path, "wb", buffering=8 * MIB) as f:
        _write_lines(f, _jsonl_lines(JSONL_SEED, 0), size)
        f.flush()
        os.fsync(f.fileno())


def make_jsonl_variant(original: Path, path: Path) -> int:
    """original with INSERT_BYTES of new lines inserted at the first line boundary after
    min(INSERT_OFFSET, size/8); returns the insertion offset."""
    size = original.stat().st_size
    with open(original, "rb") as src:
        src.seek(min(INSERT_OFFSET, size // 8))
        src.readline()
        at = src.tell()
        src.seek(0)
        with open(path, "wb", buffering=8 * MIB) as dst:
            remaining = at
            while remaining:
                block = src.read(min(4 * MIB, remaining))
                dst.write(block)
                remaining -= len(block)
            _write_lines(dst, _jsonl_lines(JSONL_SEED + 1, 10**9), INSERT_BYTES)
            shutil.copyfileobj(src, dst, 4 * MIB)
            dst.flush()
            os.fsync(dst.fileno())
    return at
