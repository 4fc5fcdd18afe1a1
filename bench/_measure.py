"""One measured case against a server (bench/upload.py, bench/tus.py): wall
seconds, the server's CPU over its process tree, its peak RSS per process and
this process's CPU; and the bounds in time that every upload runs under."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from _common import MIB, BenchError, ServerProcess, log, settle
from _procs import TreeWatch, wait_tree
from _profile import Profiler

T = TypeVar("T")

REAP_TIMEOUT = 30.0  # for a case's child processes to be reaped before CPU is read


def upload_timeout(size: int) -> float:
    """Bound for one upload: two minutes plus 4 MiB/s."""
    return 120.0 + size / (4 * MIB)


def run_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a daemon thread; BenchError if it has not returned within timeout."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchError(f"{what} did not finish within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def own_cpu_seconds() -> float:
    """CPU of this process plus its waited-for children (the node tus client)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def measured(
    server: ServerProcess,
    fn: Callable[[], T],
    timeout: float,
    what: str,
    profile: Path | None = None,
    wait_children: bool = False,
    after: Callable[[T], float | None] | None = None,
) -> tuple[T, dict[str, Any]]:
    """Run one case after settling the disk: wall seconds, the server's CPU over its
    process tree, its peak RSS per process, and this process's CPU (the client's,
    when it runs here).

    With wait_children, the CPU is read once the processes the case started in the
    server's tree have gone (a processing job's worker, reaped by the daemon); the
    cases here wait for their job, so this takes no time unless something lingers.
    Without it (bench/tus.py, which times the job itself) the CPU is read at once.
    `after(value)`: work the server does after answering that belongs to the case
    (ingestd writes a file's materialised copy after the verdict): waited for
    before the CPU is read, its seconds reported as after_s, not in seconds."""
    settle()
    profiler = Profiler(server.pid, profile) if profile is not None else None
    watch = TreeWatch(server.pid)
    try:
        watch.start()
        cpu0, main0 = server.tree_cpu_seconds(), server.cpu_seconds()
        own0 = own_cpu_seconds()
        t0 = time.perf_counter()
        value = run_bounded(fn, timeout, what)
        seconds = time.perf_counter() - t0
        after_s = after(value) if after is not None else None
        reaped = wait_tree(server.pid, watch.baseline, REAP_TIMEOUT if wait_children else 0)
        if wait_children and not reaped:
            log(f"  {what}: the server's children were not all reaped in {REAP_TIMEOUT:.0f}s")
        cpu1, main1 = server.tree_cpu_seconds(), server.cpu_seconds()
        own1 = own_cpu_seconds()
    finally:
        rss = watch.stop()
        if profiler is not None:
            profiler.stop()
    return value, {
        "seconds": seconds,
        "server_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        # The PID we started alone (its threads), without any child: the rest of
        # server_cpu_s is the plugin workers' (and, with --workers, the workers').
        "server_main_cpu_s": None if main0 is None or main1 is None else main1 - main0,
        "server_children_reaped": reaped,
        "after_s": after_s,
        **rss,
        "client_cpu_s": own1 - own0,
    }
