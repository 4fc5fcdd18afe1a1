"""bench/upload.py's run: the rounds of fresh, identical (re-upload) and seed-API
uploads paired with the tus peers, then the edited (JSONL insertion) case."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from _clients import REQUEST_TIMEOUT, SourceFile
from _common import (
    MIB,
    ServerProcess,
    disk_write_limit,
    durable_ack_limit,
    ingestd_serve_options,
    log,
    make_source,
    make_tmp_dir,
    settle,
    start_ingestd,
)
from _peers import ensure_peer, start_peer
from _upload_cases import cli_reupload, ingestd_upload, peer_upload, seed_upload
from _upload_files import INSERT_BYTES, JSONL_SEED, make_jsonl, make_jsonl_variant

GIB = 1 << 30
DURABLE_WRITERS = 5

LABELS = {
    "disk_seq": "disk: sequential write + 1 fsync",
    "disk_durable": f"disk: durable acks (1 MiB files, {DURABLE_WRITERS} writers)",
    "fresh_a": "ingestd /v1 fresh (pair with shipped peer)",
    "fresh_b": "ingestd /v1 fresh (pair with fsync peer)",
    "peer_shipped": "tus peer as shipped (no fsync)",
    "peer_fsync": "tus peer, fsync before last answer",
    "reupload": "ingestd re-upload, same client",
    "reupload_cold": "ingestd re-upload, new client state dir",
    "seed": "ingestd seed API",
    "jsonl": "ingestd JSONL original",
    "insert": "ingestd JSONL +1 MiB inserted",
}
FRESH_1 = ("fresh_a", "fresh_b")
NOT_VS_DISK = ("reupload", "reupload_cold", "jsonl", "insert")  # they write little


def label(key: str) -> str:
    if key.startswith("fresh_w"):
        return f"ingestd /v1 fresh, workers={key[7:]}"
    return LABELS.get(key, key)


class Bench:
    """One run: the work dir, the servers alive now, and every case in run order."""

    def __init__(self, args: argparse.Namespace, work: Path, peer: dict[str, str] | None):
        self.args = args
        self.work = work
        self.peer = peer
        self.size = args.size_mib * MIB
        self.extra_workers = [w for w in args.workers if w > 1]
        self.live: list[ServerProcess] = []
        self.cases: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.info: dict[str, Any] | None = None
        self.serial = 0
        self.source: SourceFile | None = None
        self.notes: list[str] = []

    def new_dir(self, prefix: str) -> Path:
        self.serial += 1
        path = self.work / f"{prefix}-{self.serial:02d}"
        path.mkdir()
        return path

    def profile(self, round_no: int, key: str) -> Path | None:
        """py-spy output for this case: the first round's (and the JSONL) cases only."""
        if self.args.profile is None or round_no > 1:
            return None
        return self.args.profile / f"{key}.txt"

    @contextlib.contextmanager
    def server(self, start: Callable[[], ServerProcess]) -> Iterator[ServerProcess]:
        server = start()
        self.live.append(server)
        try:
            yield server
        except BaseException:
            tail = server.log_tail()
            if tail:
                log(f"{server.name} log tail:\n{tail}")
            raise
        finally:
            server.stop()
            self.live.remove(server)

    def ingestd(self, data_dir: Path, workers: int = 1) -> contextlib.AbstractContextManager:
        def start() -> ServerProcess:
            self.serial += 1
            log_path = self.work / f"ingestd-{self.serial:02d}.log"
            server = start_ingestd(data_dir, log_path, workers)
            procs = len(server.tree())
            log(f"ingestd pid {server.pid} port {server.port}, workers={workers}, {procs} proc(s)")
            if self.info is None:
                with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as c:
                    r = c.get("/v1/info")
                    r.raise_for_status()
                    self.info = r.json()
            return server

        return self.server(start)

    def record(
        self, round_no: int | None, key: str, fn: Callable[[], dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        """Run one case; a failure is recorded (ok false, error) and the run goes on."""
        log(f"[round {round_no or '-'}] {label(key)}")
        try:
            case = fn()
        except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
            log(f"  {label(key)} FAILED: {type(exc).__name__}: {exc}")
            for server in self.live:  # a case run inside an open server
                tail = server.log_tail()
                if tail:
                    log(f"{server.name} log tail:\n{tail}")
            case = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        case = {"round": round_no, "key": key, "label": label(key), **extra, **case}
        if case.get("ok") and case.get("seconds"):
            case["mib_s"] = case["size_bytes"] / MIB / case["seconds"]
            if case.get("server_cpu_s") is not None:
                case["server_cpu_s_per_gib"] = case["server_cpu_s"] / (case["size_bytes"] / GIB)
        self.cases.append(case)
        return case

    # -- the cases --------------------------------------------------------------

    def probes(self, round_no: int) -> None:
        settle()
        seq = disk_write_limit(self.work, self.size)
        settle()
        durable = durable_ack_limit(self.work, self.size, writers=DURABLE_WRITERS)
        log(
            f"[round {round_no}] disk: sequential write+fsync {seq['mib_s']:.0f} MiB/s, "
            f"durable acks {durable['mib_s']:.0f} MiB/s "
            f"(file p99 {durable['file_p99_ms']:.1f} ms)"
        )
        self.rounds.append({"round": round_no, "disk_seq": seq, "disk_durable": durable})

    def fresh(
        self,
        round_no: int,
        key: str,
        workers: int = 1,
        data_dir: Path | None = None,
        state_dir: Path | None = None,
    ) -> dict[str, Any]:
        """A fresh upload of the random file to a new daemon; the data dir and the
        client's state dir are removed afterwards unless they were passed in."""
        own_data, own_state = data_dir is None, state_dir is None
        data = data_dir or self.new_dir("ingestd-data")
        state = state_dir or self.new_dir("client-state")
        assert self.source is not None
        source = self.source

        def case() -> dict[str, Any]:
            with self.ingestd(data, workers) as server:
                return ingestd_upload(
                    server,
                    source,
                    state,
                    self.args.parallel,
                    label(key),
                    self.profile(round_no, key),
                )

        try:
            return self.record(round_no, key, case, workers=workers)
        finally:
            if own_data:
                shutil.rmtree(data, ignore_errors=True)
            if own_state:
                shutil.rmtree(state, ignore_errors=True)

    def peer_case(self, round_no: int, key: str, fsync: bool) -> dict[str, Any]:
        assert self.peer is not None and self.source is not None
        source, node = self.source, self.peer["node_bin"]
        store = self.new_dir("tus-store")
        self.serial += 1
        log_path = self.work / f"tus-peer-{self.serial:02d}.log"

        def case() -> dict[str, Any]:
            with self.server(lambda: start_peer(store, log_path, fsync, node)) as peer:
                out = peer_upload(peer, store, source, node, self.args.peer_chunk_mib, label(key))
                out["peer_health"] = peer.health
                return out

        try:
            return self.record(round_no, key, case, fsync=fsync)
        finally:
            shutil.rmtree(store, ignore_errors=True)

    def reuploads(self, round_no: int, data: Path, state: Path) -> None:
        """The daemon of a fresh case again, on its data dir: the same file as a new
        upload, by the same client (warm chunk-list cache) and by a new one."""
        assert self.source is not None
        source = self.source
        cold_state = self.new_dir("client-state")
        todo = [("reupload", state), ("reupload_cold", cold_state)]
        try:
            with self.ingestd(data) as server:
                for key, state_dir in todo:

                    def case(key: str = key, state_dir: Path = state_dir) -> dict[str, Any]:
                        return ingestd_upload(
                            server,
                            source,
                            state_dir,
                            self.args.parallel,
                            label(key),
                            self.profile(round_no, key),
                        )

                    self.record(round_no, key, case, workers=1)
                log(f"[round {round_no}] CLI start-up and re-upload")
                try:
                    self.rounds[-1]["cli"] = cli_reupload(server, source, state)
                except Exception as exc:  # noqa: BLE001 - reported as a missed target
                    log(f"  CLI FAILED: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the daemon did not start again
            for key, _ in todo:
                if not any(c["round"] == round_no and c["key"] == key for c in self.cases):
                    self.record(round_no, key, lambda exc=exc: _raise(exc))
        finally:
            shutil.rmtree(cold_state, ignore_errors=True)

    def seed(self, round_no: int) -> dict[str, Any]:
        assert self.source is not None
        source = self.source
        data = self.new_dir("ingestd-data")

        def case() -> dict[str, Any]:
            with self.ingestd(data) as server:
                return seed_upload(
                    server,
                    source,
                    self.args.parallel,
                    label("seed"),
                    self.profile(round_no, "seed"),
                )

        try:
            return self.record(round_no, "seed", case, workers=1)
        finally:
            shutil.rmtree(data, ignore_errors=True)

    def jsonl_cases(self, jsonl: SourceFile, variant: SourceFile) -> None:
        data = self.new_dir("ingestd-data")
        state = self.new_dir("client-state")
        try:
            with self.ingestd(data) as server:
                for key, src in (("jsonl", jsonl), ("insert", variant)):

                    def case(key: str = key, src: SourceFile = src) -> dict[str, Any]:
                        return ingestd_upload(
                            server,
                            src,
                            state,
                            self.args.parallel,
                            label(key),
                            self.profile(1, key),
                        )

                    self.record(None, key, case, workers=1)
        except Exception as exc:  # noqa: BLE001 - the daemon did not start
            for key in ("jsonl", "insert"):
                if not any(c["key"] == key for c in self.cases):
                    self.record(None, key, lambda exc=exc: _raise(exc))
        finally:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)

    def one_round(self, r: int) -> None:
        self.probes(r)
        for w in self.extra_workers if self.args.workers_supported else ():
            self.fresh(r, f"fresh_w{w}", workers=w)
        self.fresh(r, "fresh_a")
        if self.peer is not None:
            self.peer_case(r, "peer_shipped", fsync=False)
        data, state = self.new_dir("ingestd-data"), self.new_dir("client-state")
        try:
            fresh_b = self.fresh(r, "fresh_b", data_dir=data, state_dir=state)
            if self.peer is not None:
                self.peer_case(r, "peer_fsync", fsync=True)
            if fresh_b.get("ok"):
                settle()
                self.reuploads(r, data, state)
        finally:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
        if not self.args.skip_seed:
            self.seed(r)


def _raise(exc: BaseException) -> dict[str, Any]:
    raise exc


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    jsonl_size = args.jsonl_mib * MIB
    peer_versions = None if args.skip_peer else ensure_peer()
    args.workers_supported = True
    if any(w > 1 for w in args.workers):
        args.workers_supported = "--workers" in ingestd_serve_options()
        if not args.workers_supported:
            log("`ingestd serve` has no --workers option yet: the workers > 1 cases are skipped")
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-upload-")
    bench = Bench(args, work, peer_versions)
    result: dict[str, Any] = {}
    try:
        log(f"work dir {work}")
        log(f"writing a {args.size_mib} MiB random file and {args.jsonl_mib} MiB JSONL files")
        bench.source = SourceFile(work / "random.bin", make_source(work / "random.bin", size))
        jsonl = variant = None
        if jsonl_size:
            make_jsonl(work / "train.jsonl", jsonl_size)
            jsonl = SourceFile(work / "train.jsonl")
            insert_at = make_jsonl_variant(jsonl.path, work / "train-inserted.jsonl")
            variant = SourceFile(work / "train-inserted.jsonl")
            result["jsonl"] = {
                "size_bytes": jsonl.size,
                "variant_size_bytes": variant.size,
                "insert_offset": insert_at,
                "insert_bytes": INSERT_BYTES,
                "seed": JSONL_SEED,
            }
        for r in range(1, args.pairs + 1):
            bench.one_round(r)
        if jsonl is not None and variant is not None:
            bench.jsonl_cases(jsonl, variant)
    finally:
        for server in list(bench.live):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result.update(
        {
            "ingestd_info": bench.info,
            "peer_versions": peer_versions,
            "workers_supported": args.workers_supported,
            "rounds": bench.rounds,
            "cases": bench.cases,
        }
    )
    return result
