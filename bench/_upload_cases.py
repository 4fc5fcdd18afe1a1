"""bench/upload.py's uploads, one of each kind, measured and checked: ingestd
through the /v1 client, the tus peer through tus-js-client, ingestd's seed API."""

from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from _clients import REQUEST_TIMEOUT, ChunkSender, PhaseClock, SourceFile
from _common import (
    BENCH_DIR,
    MIB,
    BenchError,
    ServerProcess,
    ingestd_exe,
    log,
    percentile,
    sha256_file,
)
from _measure import measured, upload_timeout
from _peers import PEER_DIR

JOB_WAIT = 30.0


def ingestd_upload(
    server: ServerProcess,
    source: SourceFile,
    state_dir: Path,
    parallel: int,
    what: str,
    profile: Path | None = None,
    wait_copy: bool = True,
) -> dict[str, Any]:
    """`wait_copy`: the daemon materialises a copy after the verdict, and the
    case waits for it (False with materialize = "none")."""
    from ingestd.daemon.client import Client

    clock = PhaseClock()

    def upload():
        clock.start()
        with Client(
            server.base_url, parallel=parallel, chunking="cdc", state_dir=state_dir
        ) as client:
            options: dict[str, Any] = {}
            parameters = inspect.signature(client.upload).parameters
            if "progress" in parameters:
                options["progress"] = clock
            if "new" in parameters:
                # A new file record each time, even of a file already accepted:
                # the case measures the upload (and its dedup), not the lookup.
                options["new"] = True
            result = client.upload(source.path, **options)
        clock.stop()
        return result

    result, m = measured(
        server,
        upload,
        upload_timeout(source.size),
        what,
        profile,
        wait_children=True,
        after=(lambda result: wait_for_copy(server, result.file_id)) if wait_copy else None,
    )
    fields = (
        "file_id",
        "upload_id",
        "bytes_total",
        "bytes_sent",
        "chunks_total",
        "chunks_sent",
        "chunks_skipped",
        "seconds",
        "blake3",
        "resumed",
    )
    res = {f: getattr(result, f, None) for f in fields}
    checks = verify_ingestd(server, source, res)
    log(
        f"  {what}: {m['seconds']:.2f}s, {source.size / MIB / m['seconds']:.0f} MiB/s, "
        f"sent {res['bytes_sent']:,} of {source.size:,} bytes, server CPU "
        f"{_num(m['server_cpu_s'])}s, peak RSS {_num(m['server_peak_rss_mib'])} MiB "
        f"({m['server_processes']} process(es)), checks "
        f"{'OK' if all(checks.values()) else checks}"
    )
    return {
        "kind": "ingestd",
        "size_bytes": source.size,
        "bytes_sent": res["bytes_sent"],
        **m,
        "phases": clock.phases(),
        "result": res,
        "checks": checks,
        "ok": all(checks.values()),
    }


CLI_PAIRS = 5


def cli_reupload(server: ServerProcess, source: SourceFile, state_dir: Path) -> dict[str, Any]:
    """`ingestd --version` and `ingestd upload` of the file the daemon has
    accepted (the client state dir of its upload: its chunk list is known),
    alternating, CLI_PAIRS times: the wall seconds of each, and their medians."""
    env = {
        **os.environ,
        "INGESTD_URL": server.base_url,
        "INGESTD_STATE_DIR": str(state_dir),
    }
    env.pop("INGESTD_TOKEN", None)
    commands = {
        "start_s": [str(ingestd_exe()), "--version"],
        "reupload_s": [str(ingestd_exe()), "upload", "--json", "-q", str(source.path)],
    }
    times: dict[str, list[float]] = {key: [] for key in commands}
    answers = []
    for _ in range(CLI_PAIRS):
        for key, command in commands.items():
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            times[key].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
            if key == "reupload_s":
                answers.append(json.loads(done.stdout.splitlines()[-1]))
    sent = sum(a.get("bytes_sent") or 0 for a in answers)
    if sent:
        raise BenchError(f"the re-uploads of an accepted file sent {sent:,} bytes")
    out: dict[str, Any] = {key: statistics.median(values) for key, values in times.items()}
    out.update({f"{key}_all": values for key, values in times.items()})
    out["ratio"] = out["reupload_s"] / out["start_s"]
    log(
        f"  CLI: --version {out['start_s']:.3f}s, re-upload of the accepted file "
        f"{out['reupload_s']:.3f}s (medians of {CLI_PAIRS}), {out['ratio']:.2f}x"
    )
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


COPY_TIMEOUT = 120.0


def wait_for_copy(server: ServerProcess, file_id: str) -> float | None:
    """Seconds until the file's materialised copy is recorded (ingestd writes it
    after answering); None if it did not appear within COPY_TIMEOUT."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
        while time.perf_counter() - t0 < COPY_TIMEOUT:
            if client.get(f"/v1/files/{file_id}").json().get("path"):
                return time.perf_counter() - t0
            time.sleep(0.02)
    return None


def verify_ingestd(
    server: ServerProcess, source: SourceFile, res: dict[str, Any]
) -> dict[str, bool]:
    checks = {
        "result_blake3": res["blake3"] == source.blake3,
        "result_size": res["bytes_total"] == source.size,
        "not_resumed": res["resumed"] is False,
    }
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
        r = client.get(f"/v1/files/{res['file_id']}")
    checks["file_record"] = r.status_code == 200
    if r.status_code == 200:
        info = r.json()
        checks["file_blake3"] = info.get("blake3") == source.blake3
        checks["file_size"] = info.get("size") == source.size
        if info.get("sha256"):
            checks["file_sha256"] = info["sha256"] == source.sha256
        path = info.get("path")
        checks["materialized"] = bool(path) and Path(path).is_file()
        if checks["materialized"]:
            checks["materialized_sha256"] = sha256_file(path) == source.sha256
    return checks


def peer_upload(
    peer: ServerProcess,
    store_dir: Path,
    source: SourceFile,
    node: str,
    chunk_mib: int,
    what: str,
) -> dict[str, Any]:
    argv = [
        node,
        str(BENCH_DIR / "tus_peer_client.mjs"),
        "--peer-dir",
        str(PEER_DIR),
        "--endpoint",
        f"{peer.base_url}/files",
        "--file",
        str(source.path),
        "--chunk-mib",
        str(chunk_mib),
    ]
    timeout = upload_timeout(source.size)

    def upload() -> dict[str, Any]:
        r = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise BenchError(f"tus_peer_client.mjs failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    out, m = measured(peer, upload, timeout + 10, what, wait_children=True)
    how = f"{out['patches']} PATCH" + ("es" if out["patches"] != 1 else "")
    how += " of the whole file" if out["chunk_size"] is None else f" of {chunk_mib} MiB"
    how += ", streamed"
    stored = store_dir / out["url"].rstrip("/").rsplit("/", 1)[-1]
    got = sha256_file(stored) if stored.is_file() else None
    ok = got == source.sha256
    log(
        f"  {what}: {out['seconds']:.2f}s, {source.size / MIB / out['seconds']:.0f} MiB/s "
        f"({how}), server CPU {_num(m['server_cpu_s'])}s, stored sha256 "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    return {
        "kind": "peer",
        "size_bytes": source.size,
        "bytes_sent": source.size,
        **m,
        # The client's own timing (start to the answer to the last PATCH), without
        # node's start-up; the wall time around the client is wall_seconds.
        "wall_seconds": m["seconds"],
        "seconds": out["seconds"],
        "client": out["client"],
        "how": how,
        "url": out["url"],
        "checks": {"stored_sha256": ok},
        "ok": ok,
    }


def seed_upload(
    server: ServerProcess,
    source: SourceFile,
    parallel: int,
    what: str,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The seed API: init, `parallel` threads posting multipart chunks, complete;
    then the processing job that complete queued is waited for (outside `seconds`,
    inside the server CPU figure)."""
    timeout = upload_timeout(source.size)

    def upload() -> dict[str, Any]:
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
            t0 = time.perf_counter()
            r = client.post(
                "/api/upload/init", json={"filename": source.path.name, "totalSize": source.size}
            )
            r.raise_for_status()
            init = r.json()
            upload_id, chunk_size = init["uploadId"], int(init["chunkSize"])
            sender = ChunkSender(
                server.base_url, source.path, upload_id, chunk_size, source.size, parallel
            )
            chunks_s = sender.run()
            t_chunks = time.perf_counter()
            r = client.post(f"/api/upload/complete/{upload_id}")
            t_done = time.perf_counter()
            if r.status_code != 200:
                raise BenchError(f"seed complete: HTTP {r.status_code}: {r.text[:500]}")
            done = r.json()
            job = None
            job_id = done.get("downstreamJobId")
            deadline = time.monotonic() + timeout
            while job_id and time.monotonic() < deadline:
                r = client.get(f"/v1/jobs/{job_id}", params={"wait": JOB_WAIT})
                r.raise_for_status()
                job = r.json()
                if job.get("state") in ("succeeded", "failed"):
                    break
            t_job = time.perf_counter()
        return {
            "seconds": t_done - t0,
            "init_s": t_chunks - t0 - chunks_s,
            "chunks_s": chunks_s,
            "complete_s": t_done - t_chunks,
            "job_wait_s": t_job - t_done,
            "chunk_size": chunk_size,
            "chunks": sender.total,
            "latencies": sender.latencies,
            "retries": sender.retries,
            "filepath": done.get("filepath", ""),
            "job_state": job and job.get("state"),
        }

    out, m = measured(server, upload, timeout + 10, what, profile, wait_children=True)
    lat = out.pop("latencies")
    filepath = out["filepath"]
    got = sha256_file(filepath) if filepath and Path(filepath).is_file() else None
    checks = {
        "completed_sha256": got == source.sha256,
        "job_succeeded": out["job_state"] == "succeeded",
        "no_retries": out["retries"] == 0,
    }
    latency_ms = {
        "p50": (percentile(lat, 50) or 0.0) * 1000,
        "p90": (percentile(lat, 90) or 0.0) * 1000,
        "p99": (percentile(lat, 99) or 0.0) * 1000,
        "max": max(lat, default=0.0) * 1000,
    }
    log(
        f"  {what}: {out['seconds']:.2f}s, {source.size / MIB / out['seconds']:.0f} MiB/s "
        f"({out['chunks']} chunks of {out['chunk_size']:,}; p99 {latency_ms['p99']:.0f} ms), "
        f"server CPU {_num(m['server_cpu_s'])}s, peak RSS {_num(m['server_peak_rss_mib'])} MiB, "
        f"checks {'OK' if all(checks.values()) else checks}"
    )
    return {
        "kind": "seed",
        "size_bytes": source.size,
        "bytes_sent": source.size,
        **m,
        "wall_seconds": m["seconds"],  # with the wait for the processing job
        **out,
        "chunk_latency_ms": latency_ms,
        "chunk_latencies_s": lat,
        "checks": checks,
        "ok": all(checks.values()),
    }
