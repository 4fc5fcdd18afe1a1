"""The client side shared by the upload benchmarks: a source file with its
digests, the /v1 client's progress clock (PhaseClock) and the seed API's chunk
sender (ChunkSender: bench/seed_upload.py, bench/upload.py's seed case)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import blake3
import httpx
from _common import log, sha256_file

REQUEST_TIMEOUT = 60.0
SEED_REQUEST_TIMEOUT = 120.0  # a ChunkSender post, and bench/seed_upload.py's other requests
MAX_ATTEMPTS = 3  # per chunk; a chunk failing this often aborts the run


def blake3_file(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


class SourceFile:
    def __init__(self, path: Path, sha256: str | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.sha256 = sha256 or sha256_file(path)
        self.blake3 = blake3_file(path)


class PhaseClock:
    """The client's progress callback: when hashing ended and the last chunk was sent,
    so an upload's time splits into hash (read + chunk + BLAKE3 the file), send
    (create the upload, send the missing chunks) and complete (the completion job:
    verify, materialize; the client waits for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t0 = self._end = None
        self._last: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._end = time.perf_counter()

    def __call__(self, kind: str, nbytes: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self._last[kind] = now

    def phases(self) -> dict[str, float] | None:
        hashed = self._last.get("hashed")
        if self._t0 is None or self._end is None or hashed is None:
            return None
        sent = max(hashed, self._last.get("sent", hashed), self._last.get("skipped", hashed))
        return {
            "hash_s": hashed - self._t0,
            "send_s": sent - hashed,
            "complete_s": self._end - sent,
        }


# -- the seed API ------------------------------------------------------------


class ChunkSender:
    """N threads, each with its own httpx.Client, sending chunks from a shared queue."""

    def __init__(
        self, base_url: str, path: Path, upload_id: str, chunk_size: int, size: int, parallel: int
    ):
        self.base_url = base_url
        self.path = path
        self.upload_id = upload_id
        self.chunk_size = chunk_size
        self.size = size
        self.total = -(-size // chunk_size)
        self.parallel = parallel
        self._next = 0
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.retries = 0
        self.errors: list[str] = []

    def _take(self) -> int | None:
        with self._lock:
            if self.errors or self._next >= self.total:
                return None
            i = self._next
            self._next += 1
            return i

    def _worker(self, fd: int) -> None:
        latencies = []
        try:
            with httpx.Client(base_url=self.base_url, timeout=SEED_REQUEST_TIMEOUT) as client:
                while (index := self._take()) is not None:
                    offset = index * self.chunk_size
                    data = os.pread(fd, min(self.chunk_size, self.size - offset), offset)
                    fields = {
                        "uploadId": self.upload_id,
                        "chunkIndex": str(index),
                        "totalChunks": str(self.total),
                    }
                    for attempt in range(1, MAX_ATTEMPTS + 1):
                        t0 = time.perf_counter()
                        try:
                            r = client.post(
                                "/api/upload/chunk",
                                data=fields,
                                files={"chunk": ("chunk", data, "application/octet-stream")},
                            )
                        except httpx.HTTPError as exc:
                            problem = f"chunk {index}: {type(exc).__name__}: {exc}"
                        else:
                            if r.status_code == 200:
                                latencies.append(time.perf_counter() - t0)
                                break
                            problem = f"chunk {index}: HTTP {r.status_code}: {r.text[:300]}"
                        if attempt == MAX_ATTEMPTS:
                            raise RuntimeError(problem)
                        with self._lock:
                            self.retries += 1
                        log(f"retrying {problem}")
                        time.sleep(0.2 * attempt)
        except Exception as exc:  # noqa: BLE001 - reported by run()
            with self._lock:
                self.errors.append(str(exc))
        finally:
            with self._lock:
                self.latencies.extend(latencies)

    def run(self) -> float:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            threads = [
                threading.Thread(target=self._worker, args=(fd,), name=f"sender-{i}")
                for i in range(self.parallel)
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
        finally:
            os.close(fd)
        if self.errors:
            raise RuntimeError("upload failed: " + "; ".join(self.errors[:5]))
        return elapsed
