"""Processing benchmark (issue 4): dataset validation, PII scan, uploads beside a job.

One run against one fresh `ingestd serve` on 127.0.0.1 (new data dir,
INGESTD_STORAGE_DURABILITY=fsync, INGESTD_PLUGINS_AUTOLOAD=false,
INGESTD_PLUGINS_ENABLED=detect,datasets,pii; every other setting is the
daemon's default). Files, written to a temp dir first:

- train.jsonl: --jsonl-mib of deterministic chat-style records (prompt and
  response text of a few hundred bytes, numbers, a tag list, a little non-ASCII
  text), with sparse PII: an e-mail address about every 10,000 lines and a phone
  number about every 50,000;
- other-idle.bin, other-busy.bin and other-busy-plugins.bin: three different
  random files of --other-mib (`.bin`, detected as binary, so their own
  processing is cheap; different, so that none is deduplicated against another).

Cases, in this order:

1. idle upload: other-idle.bin uploaded with `ingestd.daemon.client.Client`
   while no job runs;
2. (b) train.jsonl is uploaded; the moment the daemon accepts its completion
   (202, job id) other-busy.bin starts uploading from a second client. The
   JSONL job's state is read when that upload starts and when it has
   finished: it must be queued/running both times (it ran for the whole
   upload), otherwise the run fails (use a larger --jsonl-mib). This job
   starts with its completion (verify + materialize the file), then runs the
   plugins;
3. (c) train.jsonl uploaded again as a new upload: every chunk is stored, so
   nothing is sent and the completion links the earlier copy, and the job is
   the plugins alone (detect, validate, scan); other-busy-plugins.bin is
   uploaded beside it the same way. If the job ends before that upload does,
   the ratio is an upper bound (it decides only if below the target);
4. isolated job: train.jsonl uploaded once more the same way, with nothing
   beside its job.

Which parts of the JSONL job each busy upload ran beside is printed: the
completion, and the plugin stages, whose windows are laid out backwards from
the job's end with their timings.

From each JSONL job (`GET /v1/jobs/{id}`): `timings` {plugin: {stage: s}} give
JSONL validation MiB/s = size / timings.datasets.validate and PII scan MiB/s =
size / timings.pii.scan; job seconds = `updated - created` (from the accepted
completion to the job's end), split into completion (verify + materialize) and
plugins (the sum of the timings). The daemon's peak RSS is VmHWM from /proc,
reset through /proc/PID/clear_refs when each job starts (cases 2 and 3: it
covers the busy upload too); its CPU seconds are from /proc/PID/stat. An
upload's MiB/s is file size / wall seconds of `Client.upload` (hash, send and
its own completion job), as in bench/upload.py.

Targets: JSONL validation >= 200 MiB/s (the isolated job, and the slower of
the two beside an upload); (b) and (c) each >= 0.8x idle. A missed target is
reported, not an error. Checks (exit status 1 if one fails): uploads succeed and match their
BLAKE3, the job ran for the whole of upload (b), no plugin reported an
error, validation counted every line, the PII scan found exactly the e-mails
and phone numbers written, and the daemon's peak RSS during a job stays at
most max(256 MiB, 1/2 of the JSONL size): validation streams, it does not
load the file (the growth over the RSS at the job's start is shown too).

--profile DIR records the daemon with py-spy (raw collapsed stacks) during each
busy upload and the isolated job and prints the top functions by self time;
--profile-gil samples only the thread holding the GIL.

Usage: .venv/bin/python bench/processing.py [--jsonl-mib 1024] [--other-mib 256]
       [--parallel 5] [--json PATH] [--profile DIR [--profile-gil]] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _clients import REQUEST_TIMEOUT, blake3_file
from _common import (
    MIB,
    BenchError,
    ServerProcess,
    finish,
    free_port,
    log,
    make_source,
    make_tmp_dir,
    run_main,
    settle,
)
from _measure import own_cpu_seconds, run_bounded, upload_timeout
from _processing_files import JsonlWriter
from _processing_jobs import (
    JOB_WAIT,
    RUNNING,
    JobMonitor,
    Upload,
    _diff,
    _num,
    busy_overlap,
    get_job,
    job_summary,
    wait_job,
)
from _processing_report import summarize
from _procs import proc_status_kib
from _profile import Spy, print_top_self

PLUGINS = "detect,datasets,pii"


def job_timeout(size: int) -> float:
    """Bound for one processing job: ten minutes plus 2 MiB/s."""
    return 600.0 + size / (2 * MIB)


# -- the daemon and the client ----------------------------------------------------------


def start_daemon(data_dir: Path, log_path: Path, plugins: str) -> ServerProcess:
    ingestd = Path(sys.executable).parent / "ingestd"
    if not ingestd.exists():
        ingestd = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "ingestd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env["INGESTD_STORAGE_DURABILITY"] = "fsync"
    env["INGESTD_PLUGINS_AUTOLOAD"] = "false"
    env["INGESTD_PLUGINS_ENABLED"] = plugins
    port = free_port()
    argv = [str(ingestd), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--data-dir", str(data_dir)]
    server = ServerProcess("ingestd", argv, port=port, log_path=log_path, env=env)
    server.start()
    return server


# -- the run --------------------------------------------------------------------------


def measure_upload(
    server: ServerProcess, up: Upload, blake3: str, what: str, reset_rss: bool = True
) -> dict[str, Any]:
    settle()
    reset = server.reset_peak_rss() if reset_rss else False
    cpu0, own0 = server.cpu_seconds(), own_cpu_seconds()
    run_bounded(up, upload_timeout(up.size) + job_timeout(up.size), what)
    cpu1, own1 = server.cpu_seconds(), own_cpu_seconds()
    case = up.summary(blake3)
    case.update(
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        server_peak_rss_mib=server.peak_rss_mib(),
        server_peak_rss_scope="case" if reset else "process lifetime",
        client_cpu_s=own1 - own0,
    )
    log(f"  {what}: {case['seconds']:.2f}s, {case['mib_s']:.0f} MiB/s, ok={case['ok']}")
    return case


def run(args: argparse.Namespace) -> dict[str, Any]:
    jsonl_size = args.jsonl_mib * MIB
    other_size = args.other_mib * MIB
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-processing-")
    daemon: ServerProcess | None = None
    result: dict[str, Any] = {}
    profiles: dict[str, Path] = {}
    try:
        log(f"work dir {work}")
        # Other processes on the host compete for the CPUs: note how busy it was.
        result["loadavg_at_start"] = os.getloadavg()
        t = time.perf_counter()
        jsonl_path = work / "train.jsonl"
        writer = JsonlWriter()
        writer.write(jsonl_path, jsonl_size)
        result["jsonl"] = writer.facts(jsonl_path)
        result["jsonl"]["generate_seconds"] = time.perf_counter() - t
        log(
            f"wrote {args.jsonl_mib} MiB JSONL in {time.perf_counter() - t:.1f}s: "
            f"{writer.lines:,} lines, {writer.emails} e-mails, {writer.phones} phone numbers"
        )
        idle_path, busy_path = work / "other-idle.bin", work / "other-busy.bin"
        late_path = work / "other-busy-plugins.bin"
        for path in (idle_path, busy_path, late_path):
            make_source(path, other_size)
        digests = {p: blake3_file(p) for p in (jsonl_path, idle_path, busy_path, late_path)}

        data_dir = work / "data"
        data_dir.mkdir()
        daemon = start_daemon(data_dir, work / "ingestd.log", args.plugins)
        log(f"ingestd pid {daemon.pid} on port {daemon.port}, plugins {args.plugins}")

        # 1. idle
        log("1. upload of the other file, no job running")
        idle = Upload(daemon, idle_path, work / "state-idle", args.parallel)
        result["idle"] = measure_upload(daemon, idle, digests[idle_path], "idle upload")
        if idle.job_id:
            result["idle"]["job"] = job_summary(get_job(daemon.base_url, idle.job_id), other_size)

        def busy_upload(key: str, path: Path, job_id: str) -> tuple[Upload, dict[str, Any]]:
            """Upload `path` while job `job_id` runs; its state is read before and after."""
            assert daemon is not None
            spy = None
            if args.profile:
                profiles[key] = args.profile / f"{key}.txt"
                spy = Spy(daemon.pid, profiles[key], gil=args.profile_gil)
            up = Upload(daemon, path, work / f"state-{key}", args.parallel)
            before = get_job(daemon.base_url, job_id)["state"]
            own0, cpu_b0 = own_cpu_seconds(), daemon.cpu_seconds()
            try:
                run_bounded(up, upload_timeout(other_size) + job_timeout(other_size), key)
            finally:
                after = get_job(daemon.base_url, job_id)["state"]
                if spy is not None:
                    spy.stop()
            cpu_b1, own1 = daemon.cpu_seconds(), own_cpu_seconds()
            case = up.summary(digests[path])
            case.update(
                server_cpu_s=_diff(cpu_b0, cpu_b1),
                client_cpu_s=own1 - own0,
                job_state_before=before,
                job_state_after=after,
                jsonl_job_running_throughout=before in RUNNING and after in RUNNING,
            )
            if up.job_id:
                case["job"] = job_summary(get_job(daemon.base_url, up.job_id), other_size)
            log(
                f"  {key}: {up.seconds:.2f}s, {case['mib_s']:.0f} MiB/s; "
                f"JSONL job {before} -> {after}"
            )
            return up, case

        def jsonl_job_beside(key: str, busy_key: str, busy_path: Path) -> dict[str, Any]:
            """Upload the JSONL file; the moment its completion is accepted, upload
            busy_path while the JSONL job runs. The JSONL job's facts."""
            assert daemon is not None
            settle()
            daemon.reset_peak_rss()
            cpu0 = daemon.cpu_seconds()
            jsonl_up = Upload(daemon, jsonl_path, work / f"state-{key}", args.parallel)
            jsonl_thread = threading.Thread(target=jsonl_up, name=key, daemon=True)
            jsonl_thread.start()
            deadline = time.monotonic() + upload_timeout(jsonl_size)
            while not jsonl_up.completed.wait(0.05):
                if not jsonl_thread.is_alive():
                    raise BenchError(f"the JSONL upload ended before completing: {jsonl_up.error}")
                if time.monotonic() > deadline:
                    raise BenchError("the JSONL upload did not complete in time")
            job_id = jsonl_up.job_id
            assert job_id is not None
            upload_rss = daemon.peak_rss_mib()
            cpu_upload = daemon.cpu_seconds()
            daemon.reset_peak_rss()
            rss_start = rss_mib(daemon)
            monitor = JobMonitor(daemon.base_url, job_id)
            monitor.start()
            busy, result[busy_key] = busy_upload(busy_key, busy_path, job_id)
            job = wait_job(daemon.base_url, job_id, job_timeout(jsonl_size))
            monitor.stop()
            cpu1 = daemon.cpu_seconds()
            job_rss = daemon.peak_rss_mib()
            jsonl_thread.join(REQUEST_TIMEOUT + JOB_WAIT)
            summary = job_summary(job, jsonl_size)
            result[busy_key]["overlap_s"] = busy_overlap(busy, job, summary)
            jsonl_case = jsonl_up.summary(digests[jsonl_path])
            jsonl_case.pop("seconds")  # includes the wait for the job; see upload_seconds
            jsonl_case.pop("mib_s")
            phases = jsonl_case.get("phases") or {}
            log(
                f"  JSONL job: {summary['job_seconds']:.1f}s, validate "
                f"{_num(summary['validate_mib_s'])} MiB/s, "
                f"scan {_num(summary['scan_mib_s'])} MiB/s"
            )
            return {
                "upload": {
                    **jsonl_case,
                    "upload_seconds": (phases.get("hash_s") or 0) + (phases.get("send_s") or 0),
                    "server_cpu_s": _diff(cpu0, cpu_upload),
                    "server_peak_rss_mib": upload_rss,
                },
                **summary,
                "server_cpu_s": _diff(cpu_upload, cpu1),
                "server_peak_rss_mib": job_rss,
                "server_rss_at_start_mib": rss_start,
                "job_states_seen": monitor.states,
                "file_record_seen": monitor.file_seen,
                "busy_upload": busy_key,
            }

        # 2. (b) JSONL, then the busy upload right after its completion is accepted
        log("2. JSONL upload, then the other file while the JSONL job runs")
        result["concurrent"] = jsonl_job_beside("jsonl", "busy", busy_path)
        # 3. (c) JSONL again, deduplicated: its job is the plugins alone
        log("3. JSONL uploaded again (deduplicated), then the other file while its plugins run")
        result["concurrent_dedup"] = jsonl_job_beside("jsonl-dedup", "busy_plugins", late_path)

        # 4. the same JSONL again: nothing sent, the job runs alone
        log("4. JSONL uploaded again (deduplicated): its job runs alone")
        settle()
        again = Upload(daemon, jsonl_path, work / "state-again", args.parallel)
        again_thread = threading.Thread(target=again, name="jsonl-again", daemon=True)
        profiler = None
        if args.profile:
            profiles["isolated"] = args.profile / "isolated.txt"
            profiler = Spy(daemon.pid, profiles["isolated"], gil=args.profile_gil)
        try:
            again_thread.start()
            deadline = time.monotonic() + upload_timeout(jsonl_size)
            while not again.completed.wait(0.05):
                if not again_thread.is_alive():
                    raise BenchError(f"the JSONL re-upload ended before completing: {again.error}")
                if time.monotonic() > deadline:
                    raise BenchError("the JSONL re-upload did not complete in time")
            assert again.job_id is not None
            daemon.reset_peak_rss()
            rss_start = rss_mib(daemon)
            cpu0 = daemon.cpu_seconds()
            job = wait_job(daemon.base_url, again.job_id, job_timeout(jsonl_size))
            cpu1 = daemon.cpu_seconds()
            job_rss = daemon.peak_rss_mib()
        finally:
            if profiler is not None:
                profiler.stop()
        again_thread.join(REQUEST_TIMEOUT + JOB_WAIT)
        again_case = again.summary(digests[jsonl_path])
        summary = job_summary(job, jsonl_size)
        result["isolated"] = {
            "upload": {k: again_case[k] for k in ("result", "error", "ok", "phases", "job_id")},
            **summary,
            "server_cpu_s": _diff(cpu0, cpu1),
            "server_peak_rss_mib": job_rss,
            "server_rss_at_start_mib": rss_start,
        }
        log(
            f"  JSONL job alone: {summary['job_seconds']:.1f}s, validate "
            f"{_num(summary['validate_mib_s'])} MiB/s, scan {_num(summary['scan_mib_s'])} MiB/s"
        )
        result["server_cpu_total_s"] = daemon.cpu_seconds()
        result["profiles"] = {k: str(v) for k, v in profiles.items()}
        return result
    except BaseException:
        if daemon is not None:
            log(f"ingestd log tail:\n{daemon.log_tail()}")
        raise
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def rss_mib(server: ServerProcess) -> float | None:
    kib = proc_status_kib(server.pid, "VmRSS")
    return None if kib is None else kib / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsonl-mib", type=int, default=1024, help="JSONL file (1024)")
    parser.add_argument("--other-mib", type=int, default=256, help="the other upload (256)")
    parser.add_argument("--parallel", type=int, default=5, help="client parallelism (5)")
    parser.add_argument(
        "--plugins",
        default=PLUGINS,
        help=f"INGESTD_PLUGINS_ENABLED for the daemon ({PLUGINS})",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the daemon during each busy upload and the isolated job into "
        "DIR/{busy,busy_plugins,isolated}.txt (collapsed stacks) and print the top functions "
        "by self time; the numbers then include py-spy's cost",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (py-spy --gil)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="results file (default bench/results/processing.json)"
    )
    parser.add_argument(
        "--tmp-dir",
        metavar="DIR",
        help="parent of the temp dir holding the files and the data dir "
        "(default $INGESTD_BENCH_TMP, else the repo's parent dir)",
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if args.jsonl_mib <= 0 or args.other_mib <= 0 or args.parallel <= 0:
        parser.error("--jsonl-mib, --other-mib and --parallel must be positive")

    result = run(args)
    summary = summarize(args, result)
    if args.profile:
        summary["profile_top_self"] = {}
        for key, raw in result["profiles"].items():
            raw = Path(raw)
            if not raw.is_file():
                continue
            what = "GIL holder" if args.profile_gil else "daemon"
            summary["profile_top_self"][key] = print_top_self(raw, key, 20, what)
    ok = all(summary["checks"].values())
    return finish(
        args.json,
        "processing",
        {
            "jsonl_mib": args.jsonl_mib,
            "other_mib": args.other_mib,
            "parallel": args.parallel,
            "plugins": args.plugins,
            "chunking": "cdc",
            "durability": "fsync",
            "profiled": bool(args.profile),
            "profile_gil": bool(args.profile and args.profile_gil),
        },
        {**result, **summary, "all_ok": ok},
        ok,
    )


if __name__ == "__main__":
    run_main(main, "processing")
