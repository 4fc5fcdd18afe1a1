"""What access control costs per request: the daemon with auth off and on.

Alternating rounds (off, on, off, on, …), each a fresh `ingestd serve` on a
fresh data directory with `storage.durability = none` (so that the disk does
not hide a per-request cost) and rate limits off. In each round one client
on one keep-alive connection sends `--requests` small requests of two kinds:
`GET /v1/files?limit=1` (a read: Host or token check, the listing) and `PUT`
of 4 KiB chunks into one upload (a write through the upload core). Reported:
requests per second, median and p99 latency, the server's CPU seconds per
1,000 requests, medians over the rounds, and the on/off ratios.

Usage: .venv/bin/python bench/auth.py [--rounds 3] [--requests 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _common import (
    ingestd_exe,
    log,
    machine_info,
    make_tmp_dir,
    percentile,
    print_table,
    settle,
    start_ingestd,
    write_json,
)

CHUNK = 4096


def one_round(auth: bool, requests: int, tmp: Path, n: int) -> dict[str, float]:
    data_dir = tmp / f"data-{n}-{'on' if auth else 'off'}"
    env = {
        "INGESTD_STORAGE_DURABILITY": "none",
        "INGESTD_STORAGE_CHUNK_SIZE": str(CHUNK),
        "INGESTD_PLUGINS_ENABLED": "detect",
        "INGESTD_AUTH_REQUIRED": "true" if auth else "false",
        "INGESTD_AUTH_RATE_WRITE": "0",
        "INGESTD_AUTH_RATE_READ": "0",
    }
    headers = {}
    if auth:
        token = subprocess.run(
            [
                str(ingestd_exe()),
                "token",
                "create",
                "--tenant",
                "bench",
                "--data-dir",
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        headers["Authorization"] = f"Bearer {token}"
    server = start_ingestd(data_dir, tmp / f"server-{n}.log", extra_env=env)
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            size = CHUNK * requests
            r = http.post("/v1/uploads", json={"filename": "b.bin", "size": size})
            r.raise_for_status()
            upload = r.json()["id"]
            body = os.urandom(CHUNK)
            cpu0 = server.tree_cpu_seconds() or 0.0
            started = time.perf_counter()
            latencies = []
            for i in range(requests):
                t0 = time.perf_counter()
                if i % 2:
                    r = http.get("/v1/files", params={"limit": 1})
                else:
                    # Distinct bytes per chunk (the index in the first 8).
                    r = http.put(
                        f"/v1/uploads/{upload}/chunks/{i}", content=i.to_bytes(8) + body[8:]
                    )
                latencies.append(time.perf_counter() - t0)
                if r.status_code >= 400:
                    raise RuntimeError(f"{r.status_code} {r.text}")
            elapsed = time.perf_counter() - started
            cpu = (server.tree_cpu_seconds() or 0.0) - cpu0
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "requests_per_s": requests / elapsed,
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0.0) * 1000,
        "cpu_s_per_1000": cpu / requests * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tmp", help="parent of the temp directory")
    parser.add_argument("--json", help="where to write the results (default: bench/results/)")
    args = parser.parse_args()
    tmp = make_tmp_dir(args.tmp, "ingestd-bench-auth-")
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        for n in range(args.rounds):
            for mode in ("off", "on"):
                settle(0.5)
                log(f"round {n + 1}/{args.rounds}: auth {mode}")
                results[mode].append(one_round(mode == "on", args.requests, tmp, n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ("requests_per_s", "median_ms", "p99_ms", "cpu_s_per_1000")
    medians = {
        mode: {k: statistics.median(r[k] for r in rounds) for k in keys}
        for mode, rounds in results.items()
    }
    rows = [[mode, *(round(medians[mode][k], 3) for k in keys)] for mode in ("off", "on")]
    rows.append(["on/off", *(round(medians["on"][k] / medians["off"][k], 3) for k in keys)])
    print_table(
        f"auth off vs on, {args.requests} requests per round (half GET, half 4 KiB PUT), "
        f"medians of {args.rounds} rounds",
        ["auth", "req/s", "median ms", "p99 ms", "server CPU s / 1000 req"],
        rows,
    )
    path = write_json(
        args.json,
        "auth",
        {
            "machine": machine_info(),
            "rounds": results,
            "medians": medians,
            "requests": args.requests,
        },
    )
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
