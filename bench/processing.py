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
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import (
    MIB,
    free_port,
    machine_info,
    make_source,
    make_tmp_dir,
    print_table,
    proc_status_kib,
    settle,
    write_json,
)
from upload import (
    REQUEST_TIMEOUT,
    BenchError,
    PhaseClock,
    ServerProcess,
    blake3_file,
    log,
    own_cpu_seconds,
    run_bounded,
    top_self_frames,
    upload_timeout,
)

JSONL_SEED = 20240604
PLUGINS = "detect,datasets,pii"
EMAIL_EVERY = 10_000  # lines, on average
PHONE_EVERY = 50_000
POLL_INTERVAL = 0.2  # seconds between job polls while the busy upload runs
JOB_WAIT = 30.0  # seconds per long-poll of GET /v1/jobs/{id}
PROFILER_TIMEOUT = 60.0
RUNNING = ("queued", "running")
FINISHED = ("succeeded", "failed")
STAGES = ("detect", "validate", "scan", "describe", "lineage", "notify", "pipeline")

TARGET_VALIDATE_MIB_S = 200.0
TARGET_BUSY_VS_IDLE = 0.8
# A check: peak RSS during a job <= max(RSS_LIMIT_FLOOR, RSS_LIMIT_SHARE x the JSONL size);
# a plugin that loads the file whole goes over it.
RSS_LIMIT_SHARE = 0.5
RSS_LIMIT_FLOOR = 256 * MIB


def rss_limit(size: int) -> float:
    return max(RSS_LIMIT_FLOOR, RSS_LIMIT_SHARE * size)


def job_timeout(size: int) -> float:
    """Bound for one processing job: ten minutes plus 2 MiB/s."""
    return 600.0 + size / (2 * MIB)


# -- the JSONL file -----------------------------------------------------------------

FIRST_NAMES = ["maria", "james", "wei", "fatima", "olga", "kenji", "amara", "lucas", "priya"]
LAST_NAMES = ["garcia", "smith", "chen", "haddad", "petrova", "tanaka", "okafor", "silva"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example"]
SOURCES = ["forum", "support", "wiki", "qa", "chat", "docs"]
TAGS = ["science", "code", "math", "history", "cooking", "travel", "health", "law", "music"]
NON_ASCII = ["café", "naïve", "über", "déjà", "façade", "smörgåsbord", "東京", "données", "niño"]


def _sentences(rng: random.Random, n: int = 8192) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(6000)]
    vocab += NON_ASCII
    out = []
    for _ in range(n):
        words = rng.choices(vocab, k=rng.randint(6, 22))
        out.append(" ".join(words).capitalize() + rng.choice(".?!"))
    return out


class JsonlWriter:
    """Deterministic, realistic JSONL records with sparse PII; counts what it wrote."""

    def __init__(self, seed: int = JSONL_SEED) -> None:
        self.rng = random.Random(seed)
        self.sentences = _sentences(self.rng)
        self.lines = 0
        self.emails = 0
        self.phones = 0

    def _record(self, i: int, next_email: int, next_phone: int) -> tuple[bytes, bool, bool]:
        rng = self.rng
        choices, randint = rng.choices, rng.randint
        prompt = " ".join(choices(self.sentences, k=randint(1, 3)))
        response = " ".join(choices(self.sentences, k=randint(2, 6)))
        email = i == next_email
        phone = i == next_phone
        if email:
            who = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{randint(1, 99)}"
            response += f" You can reach me at {who}@{rng.choice(DOMAINS)} if that helps."
        if phone:
            response += f" Or call +1 555 {randint(200, 999)} {randint(1000, 9999)} after six."
        tags = ", ".join(f'"{t}"' for t in rng.sample(TAGS, randint(1, 3)))
        line = (
            f'{{"id": {i}, "source": "{rng.choice(SOURCES)}", "lang": "en", '
            f'"prompt": "{prompt}", "response": "{response}", '
            f'"score": {rng.random():.4f}, "tokens": {randint(40, 900)}, '
            f'"turns": {randint(1, 8)}, "created": {1_700_000_000 + i * 7}, '
            f'"tags": [{tags}]}}\n'
        )
        return line.encode(), email, phone

    def write(self, path: Path, size: int) -> None:
        """Exactly `size` bytes of whole lines; a final {"pad": "..."} line fills the rest."""
        rng = self.rng
        pad_min = len(b'{"pad": ""}\n')
        next_email = rng.randint(1, 2 * EMAIL_EVERY)
        next_phone = rng.randint(1, 2 * PHONE_EVERY)
        written = 0
        i = 0
        with open(path, "wb", buffering=8 * MIB) as f:
            while True:
                line, email, phone = self._record(i, next_email, next_phone)
                if written + len(line) + pad_min > size:
                    break
                f.write(line)
                written += len(line)
                self.lines += 1
                if email:
                    self.emails += 1
                    next_email = i + rng.randint(1, 2 * EMAIL_EVERY - 1)
                if phone:
                    self.phones += 1
                    next_phone = i + rng.randint(1, 2 * PHONE_EVERY - 1)
                i += 1
            f.write(b'{"pad": "' + b"x" * (size - written - pad_min) + b'"}\n')
            self.lines += 1
            f.flush()
            os.fsync(f.fileno())

    def facts(self, path: Path) -> dict[str, Any]:
        return {
            "path_name": path.name,
            "size_bytes": path.stat().st_size,
            "lines": self.lines,
            "emails": self.emails,
            "phones": self.phones,
            "seed": JSONL_SEED,
        }


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


def tracing_client_class() -> type:
    """`Client` that reports the job id the moment the daemon accepts the
    completion (`Client.upload` itself returns only once the job is over)."""
    from ingestd.daemon.client import Client

    if not callable(getattr(Client, "_complete", None)):
        raise BenchError("ingestd.daemon.client.Client has no _complete(upload_id) to hook")

    class TracingClient(Client):
        def __init__(self, *args: Any, on_complete=None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_complete = on_complete

        def _complete(self, upload_id: str) -> str:
            job_id = super()._complete(upload_id)
            if self.on_complete is not None:
                self.on_complete(upload_id, job_id)
            return job_id

    return TracingClient


class Upload:
    """One `Client.upload` of a file, timed; `completed` is set when the job is accepted."""

    def __init__(self, server: ServerProcess, path: Path, state_dir: Path, parallel: int) -> None:
        self.server = server
        self.path = path
        self.size = path.stat().st_size
        self.state_dir = state_dir
        self.parallel = parallel
        self.clock = PhaseClock()
        self.completed = threading.Event()
        self.job_id: str | None = None
        self.upload_id: str | None = None
        self.complete_wall: float | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.t0 = self.t1 = None
        self.wall0 = self.wall1 = None

    def _on_complete(self, upload_id: str, job_id: str) -> None:
        self.upload_id, self.job_id = upload_id, job_id
        self.complete_wall = time.time()
        self.completed.set()

    def __call__(self) -> Any:
        from ingestd.daemon.client import UploadError

        client_class = tracing_client_class()
        self.wall0, self.t0 = time.time(), time.perf_counter()
        self.clock.start()
        try:
            with client_class(
                self.server.base_url,
                parallel=self.parallel,
                chunking="cdc",
                state_dir=self.state_dir,
                on_complete=self._on_complete,
            ) as client:
                # new=True: a re-upload of the same file is a new upload (whose
                # job the bench measures), not answered with the accepted file.
                self.result = client.upload(self.path, progress=self.clock, new=True)
        except UploadError as exc:  # e.g. a plugin rejected the file: the job says why
            self.error = exc
        finally:
            self.clock.stop()
            self.t1, self.wall1 = time.perf_counter(), time.time()
        return self.result

    @property
    def seconds(self) -> float:
        assert self.t0 is not None and self.t1 is not None
        return self.t1 - self.t0

    def summary(self, blake3: str) -> dict[str, Any]:
        r = self.result
        fields = ("file_id", "upload_id", "bytes_total", "bytes_sent", "chunks_total")
        fields += ("chunks_sent", "chunks_skipped", "blake3", "resumed")
        res = {f: getattr(r, f, None) for f in fields} if r is not None else None
        ok = self.error is None and r is not None and r.blake3 == blake3
        return {
            "file": self.path.name,
            "size_bytes": self.size,
            "seconds": self.seconds,
            "mib_s": self.size / MIB / self.seconds,
            "phases": self.clock.phases(),
            "job_id": self.job_id,
            "result": res,
            "error": None if self.error is None else str(self.error),
            "ok": ok,
        }


def get_job(base_url: str, job_id: str, wait: float = 0.0) -> dict[str, Any]:
    params = {"wait": f"{wait:g}"} if wait else None
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT + wait) as http:
        r = http.get(f"/v1/jobs/{job_id}", params=params)
    r.raise_for_status()
    return r.json()


def wait_job(base_url: str, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"job {job_id} did not finish within {timeout:.0f}s")
        job = get_job(base_url, job_id, wait=min(JOB_WAIT, max(1.0, left)))
        if job["state"] in FINISHED:
            return job


class Spy:
    """py-spy record --format raw on the daemon, started without waiting (so a
    measured upload is not delayed) and stopped with SIGINT. With `gil`, only
    the thread holding the GIL is sampled: who keeps the event loop waiting."""

    def __init__(self, pid: int, out: Path, gil: bool = False) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
        argv += ["--nonblocking", "--threads", "-o", str(out)]
        if gil:
            argv.append("--gil")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=PROFILER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=PROFILER_TIMEOUT)
        if self.proc.returncode not in (0, -signal.SIGINT):
            log(f"py-spy exited with {self.proc.returncode}: {self.proc.stderr.read()[-500:]!r}")
        self.proc.stderr.close()


class JobMonitor(threading.Thread):
    """Polls a job (and its file) until stopped: when the file record appeared
    (the completion is done, the plugins start) and every state seen."""

    def __init__(self, base_url: str, job_id: str) -> None:
        super().__init__(name="job-monitor", daemon=True)
        self.base_url = base_url
        self.job_id = job_id
        self.stop_event = threading.Event()
        self.states: list[tuple[float, str]] = []
        self.file_seen: float | None = None
        self.errors = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT) as http:
            while not self.stop_event.is_set():
                try:
                    job = http.get(f"/v1/jobs/{self.job_id}").json()
                    now = time.time()
                    if not self.states or self.states[-1][1] != job["state"]:
                        self.states.append((now, job["state"]))
                    if self.file_seen is None and job.get("file_id"):
                        r = http.get(f"/v1/files/{job['file_id']}")
                        if r.status_code == 200:
                            self.file_seen = time.time()
                    if job["state"] in FINISHED:
                        return
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1
                self.stop_event.wait(POLL_INTERVAL)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(REQUEST_TIMEOUT + 5)


# -- analysis -------------------------------------------------------------------------


def job_summary(job: dict[str, Any], size: int) -> dict[str, Any]:
    timings: dict[str, dict[str, float]] = job.get("timings") or {}
    validate = timings.get("datasets", {}).get("validate")
    scan = timings.get("pii", {}).get("scan")
    total = job["updated"] - job["created"]
    plugins = sum(s for stages in timings.values() for s in stages.values())
    by_stage = {
        stage: sum(stages.get(stage, 0.0) for stages in timings.values()) for stage in STAGES
    }
    errors = [
        f"{plugin}.{stage}: {answer['error']}"
        for plugin, stages in (job.get("results") or {}).items()
        if isinstance(stages, dict)
        for stage, answer in stages.items()
        if isinstance(answer, dict) and "error" in answer
    ]
    return {
        "job_id": job["id"],
        "state": job["state"],
        "verdict": job.get("verdict"),
        "error": job.get("error"),
        "job_seconds": total,
        "completion_seconds": total - plugins,
        "plugins_seconds": plugins,
        "stage_seconds": by_stage,
        "validate_seconds": validate,
        "scan_seconds": scan,
        "validate_mib_s": size / MIB / validate if validate else None,
        "scan_mib_s": size / MIB / scan if scan else None,
        "plugin_errors": errors,
        "timings": timings,
        "results": job.get("results"),
    }


def overlap(a0: float, a1: float, b0: float | None, b1: float | None) -> float | None:
    if b0 is None or b1 is None:
        return None
    return max(0.0, min(a1, b1) - max(a0, b0))


def busy_overlap(busy: Upload, job: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Seconds of the busy upload spent beside each part of the job. The plugin
    stages run one after another and the job ends right after the last, so
    their windows are laid out backwards from the job's end with their timings;
    the completion (verify, materialize) is what comes before."""
    assert busy.wall0 is not None and busy.wall1 is not None
    b0, b1 = busy.wall0, busy.wall1
    plugins_start = job["updated"] - summary["plugins_seconds"]
    out: dict[str, Any] = {
        "upload_window_s": b1 - b0,
        "completion": overlap(b0, b1, job["created"], plugins_start),
        "plugins": overlap(b0, b1, plugins_start, job["updated"]),
        "plugins_started_after_upload_start_s": plugins_start - b0,
        "job_finished_after_upload_s": job["updated"] - b1,
    }
    t = plugins_start
    for stage in STAGES:
        seconds = summary["stage_seconds"][stage]
        out[f"stage_{stage}"] = overlap(b0, b1, t, t + seconds)
        t += seconds
    return out


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


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# -- report ---------------------------------------------------------------------------


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    jsonl = result["jsonl"]
    conc, dedup, iso = result["concurrent"], result["concurrent_dedup"], result["isolated"]
    jobs = {"concurrent": conc, "concurrent_dedup": dedup, "isolated": iso}
    idle, busy, late = result["idle"], result["busy"], result["busy_plugins"]
    uploads = [
        ("idle (no job running)", idle),
        ("(b) right after the JSONL completion", busy),
        ("(c) beside a dedup JSONL job (plugins)", late),
    ]

    print_table(
        f"processing of a {args.jsonl_mib} MiB JSONL file ({jsonl['lines']:,} lines), "
        f"plugins {args.plugins}, durability=fsync, 127.0.0.1",
        [
            "job",
            "job s",
            "completion s",
            "plugins s",
            "validate s",
            "validate MiB/s",
            "PII scan s",
            "PII scan MiB/s",
            "server CPU s",
            "RSS at start MiB",
            "peak RSS MiB",
            "growth MiB",
            "verdict",
        ],
        [
            [
                label,
                c["job_seconds"],
                c["completion_seconds"],
                c["plugins_seconds"],
                c["validate_seconds"],
                c["validate_mib_s"],
                c["scan_seconds"],
                c["scan_mib_s"],
                c["server_cpu_s"],
                c["server_rss_at_start_mib"],
                c["server_peak_rss_mib"],
                _diff(c["server_rss_at_start_mib"], c["server_peak_rss_mib"]),
                c["verdict"] or c["state"],
            ]
            for label, c in (
                ("JSONL, upload (b) beside it", conc),
                ("JSONL again (dedup), upload (c) beside it", dedup),
                ("JSONL again (dedup), alone", iso),
            )
        ],
    )

    def phase(c: dict[str, Any], key: str) -> float | None:
        return (c.get("phases") or {}).get(key)

    print_table(
        f"upload of a {args.other_mib} MiB random .bin file (cdc, {args.parallel} parallel)",
        [
            "case",
            "MiB/s",
            "seconds",
            "hash",
            "create+send",
            "complete",
            "server CPU s",
            "client CPU s",
            "JSONL job before/after",
            "check",
        ],
        [
            [
                label,
                c["mib_s"],
                c["seconds"],
                phase(c, "hash_s"),
                phase(c, "send_s"),
                phase(c, "complete_s"),
                c.get("server_cpu_s"),
                c.get("client_cpu_s"),
                f"{c['job_state_before']}/{c['job_state_after']}"
                if "job_state_after" in c
                else "-",
                "OK" if c["ok"] else "FAIL",
            ]
            for label, c in uploads
        ],
    )

    for label, c in uploads[1:]:
        ov = c["overlap_s"]
        parts = [f"completion {_sec(ov['completion'])}", f"plugins {_sec(ov['plugins'])}"]
        stages = [f"{st} {_sec(ov.get(f'stage_{st}'))}" for st in STAGES if ov.get(f"stage_{st}")]
        if stages:
            parts[-1] += " (" + ", ".join(stages) + ")"
        print(
            f"\nupload {label!r} ({ov['upload_window_s']:.2f}s) ran beside the JSONL job's "
            + ", ".join(parts)
            + _finished_note(ov["job_finished_after_upload_s"])
        )
    upload = conc["upload"]
    print(
        f"JSONL upload itself: {upload['upload_seconds']:.2f}s "
        f"({jsonl['size_bytes'] / MIB / upload['upload_seconds']:.0f} MiB/s), "
        f"daemon peak RSS {_num(upload['server_peak_rss_mib'])} MiB"
    )
    pii = (iso.get("results") or {}).get("pii")
    if pii is not None:
        print(
            f"PII written: {jsonl['emails']} e-mails, {jsonl['phones']} phone numbers; "
            f"pii results: {_short(pii)}"
        )

    checks: dict[str, bool] = {
        "uploads_ok": all(c["ok"] for _, c in uploads)
        and all(c["upload"]["ok"] for c in jobs.values()),
        "job_running_for_whole_busy_upload": busy["jsonl_job_running_throughout"],
        "timings_present": all(
            c["validate_seconds"] is not None and c["scan_seconds"] is not None
            for c in jobs.values()
        ),
        "no_plugin_errors": not any(c["plugin_errors"] for c in jobs.values()),
    }
    for label, c in jobs.items():
        rows = ((c.get("results") or {}).get("datasets") or {}).get("validate", {}).get("rows")
        checks[f"validated_every_line_{label}"] = rows == jsonl["lines"]
        found = ((c.get("results") or {}).get("pii") or {}).get("scan", {}).get("found") or {}
        checks[f"pii_found_what_was_written_{label}"] = (
            found.get("email") == jsonl["emails"] and found.get("phone") == jsonl["phones"]
        )
        rss = c["server_peak_rss_mib"]
        checks[f"peak_rss_streaming_{label}"] = rss is not None and rss * MIB <= rss_limit(
            jsonl["size_bytes"]
        )
    failed = [k for k, v in checks.items() if not v]
    print("\nchecks: " + ("all OK" if not failed else "FAILED " + ", ".join(failed)))
    if not checks["job_running_for_whole_busy_upload"]:
        print("  the JSONL job finished before the busy upload did: use a larger --jsonl-mib")
    for c in jobs.values():
        for e in c["plugin_errors"]:
            print(f"  plugin error in job {c['job_id']}: {e}")

    targets: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float | None, goal: float, unit: str, bound: bool = False) -> None:
        """`bound`: value is only an upper bound (the job ended before the upload
        did); below the goal it still decides, above it nothing is known."""
        met = None if value is None else value >= goal
        if bound and met:
            met = None
        targets[name] = {
            "value": value,
            "goal": goal,
            "at_most": False,
            "upper_bound": bound,
            "met": met,
        }
        shown = "-" if value is None else f"{'<= ' if bound else ''}{value:.2f}{unit}"
        status = "n/a" if met is None else ("OK" if met else "MISSED")
        print(f"  {name:<44} {shown:>14}  >= {goal:g}{unit:<6} {status}")

    print("\ntargets")
    target("JSONL validation, job alone", iso["validate_mib_s"], TARGET_VALIDATE_MIB_S, " MiB/s")
    beside = [c["validate_mib_s"] for c in (conc, dedup) if c["validate_mib_s"] is not None]
    target(
        "JSONL validation, beside an upload (slower)",
        min(beside) if beside else None,
        TARGET_VALIDATE_MIB_S,
        " MiB/s",
    )
    ratios: dict[str, float | None] = {}
    for key, name, c in (
        ("busy_vs_idle", "(b) upload right after completion vs idle", busy),
        ("busy_plugins_vs_idle", "(c) upload beside the plugins vs idle", late),
    ):
        ratios[key] = c["mib_s"] / idle["mib_s"]
        target(name, ratios[key], TARGET_BUSY_VS_IDLE, "x", not c["jsonl_job_running_throughout"])
    if not late["jsonl_job_running_throughout"]:
        print(
            f"  (c): the JSONL job ended {-late['overlap_s']['job_finished_after_upload_s']:.1f}s "
            "before the upload did, so its ratio is an upper bound"
        )
    print(f"  {'PII scan, job alone (no target)':<44} {_num(iso['scan_mib_s']):>6} MiB/s")
    return {"checks": checks, "targets": targets, **ratios}


def _finished_note(after: float) -> str:
    if after >= 0:
        return f"; the job finished {after:.1f}s after the upload"
    return f"; the job finished {-after:.1f}s BEFORE the upload did"


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _short(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
            frames = top_self_frames(raw, 20)
            what = "GIL holder" if args.profile_gil else "daemon"
            print(f"\n{what} during {key}: top functions by self time ({raw})")
            for frame, samples, share in frames:
                print(f"  {share:6.1%} {samples:6d}  {frame}")
            summary["profile_top_self"][key] = [
                {"frame": f, "samples": n, "share": sh} for f, n, sh in frames
            ]
    ok = all(summary["checks"].values())
    out = write_json(
        args.json,
        "processing",
        {
            "benchmark": "processing",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "params": {
                "jsonl_mib": args.jsonl_mib,
                "other_mib": args.other_mib,
                "parallel": args.parallel,
                "plugins": args.plugins,
                "chunking": "cdc",
                "durability": "fsync",
                "profiled": bool(args.profile),
                "profile_gil": bool(args.profile and args.profile_gil),
            },
            **result,
            **summary,
            "all_ok": ok,
        },
    )
    print(f"\nresults written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"processing benchmark failed: {exc}")
        sys.exit(1)
