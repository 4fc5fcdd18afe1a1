"""The web page's chunker (daemon/http/web/chunker.js, in node) cuts and hashes
exactly as `ingestd upload` does (pyfastcdc + blake3), on files chosen to hit
the bounds' edge cases, so that dedup works between the browser and the CLI.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from ingestd.daemon.client._chunking import ChunkingParams, chunk_file

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[1] / "web" / "chunk_file.mjs"
KiB, MiB = 1 << 10, 1 << 20

# (min, avg, max): the daemon's defaults, the tests' small bounds, an odd
# minimum (rounded up by both), and the tightest FastCDC allows.
BOUNDS = [
    (256 * KiB, 1 * MiB, 4 * MiB),
    (256, 1024, 2048),
    (4097, 16 * KiB, 64 * KiB),
    (64, 256, 1024),
]


def vector_files(directory: Path, lo: int, avg: int, hi: int) -> list[Path]:
    rng = random.Random(lo * 31 + hi)
    lo += lo % 2
    sizes = [0, 1, 2, lo - 1, lo, lo + 1, avg - 1, avg, avg + 1, hi - 1, hi, hi + 1, 2 * hi + 3]
    contents = [rng.randbytes(n) for n in sizes if n >= 0]
    contents.append(rng.randbytes(3 * hi + avg // 3))  # several chunks, random
    contents.append(bytes(2 * hi + 5))  # zeros: no cut point, every chunk is max
    text = b"".join(
        b'{"id": %d, "text": "%s"}\n' % (i, rng.choice([b"alpha", b"beta", b"gamma"]) * 3)
        for i in range(max(4 * hi // 40, 100))
    )
    contents.append(text)  # low-entropy, repetitive: many content-defined cuts
    paths = []
    for i, data in enumerate(contents):
        path = directory / f"v{i:02d}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.parametrize(("lo", "avg", "hi"), BOUNDS)
def test_javascript_chunker_matches_the_cli(tmp_path, lo, avg, hi):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on the PATH: the JavaScript chunker test needs it")
    paths = vector_files(tmp_path, lo, avg, hi)
    params = ChunkingParams(fixed_size=avg, min_size=lo, avg_size=avg, max_size=hi)
    expected = [
        [[c.offset, c.size, c.hash] for c in chunk_file(p, params, "cdc", whole_file=False).chunks]
        for p in paths
    ]
    done = subprocess.run(
        [node, str(SCRIPT), str(lo), str(avg), str(hi), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(got) == len(paths)
    for path, mine, theirs in zip(paths, got, expected, strict=True):
        assert mine == theirs, (path.name, os.path.getsize(path), mine[:5], theirs[:5])
    # The vectors do cut inside the bounds (not only at max).
    sizes = [n for per_file in expected for _, n, _ in per_file[:-1]]
    assert any(lo <= n < hi for n in sizes)
