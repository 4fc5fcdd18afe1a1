"""Resource sampling from /proc: a process's RSS and CPU, a server's process tree
(its CPU, reaped children included) and the peak RSS of each of its processes."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def proc_status_kib(pid: int, field: str) -> int | None:
    """A `VmXxx:` value from /proc/PID/status, in KiB (None if unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- process trees ----------------------------------------------------------------
#
# A server may not be one process: ingestd runs each processing job in a
# `python -m ingestd.plugins.worker` child, and with `serve --workers N` (N > 1)
# the PID we start is a master whose children serve the requests. So CPU and
# peak RSS are measured over the process tree of the PID we started, found by
# reading every /proc/*/stat (the ppid field); nothing here depends on how the
# server names or arranges its processes.


def _proc_stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> list[int]:
    """root and all its live descendants (by ppid in /proc/*/stat), root first."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return [root]
    for name in names:
        if not name.isdigit():
            continue
        fields = _proc_stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [root]
    while todo and len(tree) < 100_000:  # bounded, whatever /proc says
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float | None:
    """User + system CPU seconds of root and its descendants, the reaped ones included.

    For each live process in the tree: utime + stime (all its threads) plus
    cutime + cstime (its children that it has waited for). A child that has
    exited and been reaped is thus counted once, in its parent; one still
    running is counted by itself. Read it when no child is about to be reaped
    (see wait_tree), or a child reaped mid-scan may be counted twice or not at all.
    None if root is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    total = None
    for pid in process_tree(root):
        fields = _proc_stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (1-based) of /proc/PID/stat.
        ticks = sum(int(v) for v in fields[11:15])
        total = (total or 0.0) + ticks / tick
    return total


def wait_tree(root: int, allowed: set[int], timeout: float, interval: float = 0.05) -> bool:
    """Wait until root's tree holds no process outside `allowed` (e.g. a job's
    child has exited and been reaped); False if it still does after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if set(process_tree(root)) <= allowed:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class TreeWatch:
    """Peak RSS (VmHWM) per process of a server's tree during one case.

    start() resets VmHWM of every process in the tree and remembers them as the
    server's own processes (the master and its workers); a thread then scans the
    tree every `interval` seconds, so short-lived children (a processing job's
    worker) are seen too, and stop() reads every process a last time. The
    server's figure is the largest VmHWM among its own processes; children that
    came and went are reported apart."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.baseline: set[int] = set()
        self.reset_ok = False
        self.peak_kib: dict[int, int] = {}
        self.cmdline: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.baseline = set(process_tree(self.root))
        self.reset_ok = all([reset_peak_rss(pid) for pid in self.baseline])
        self._sample()
        self._thread = threading.Thread(target=self._run, name="tree-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for pid in process_tree(self.root):
            kib = proc_status_kib(pid, "VmHWM")
            if kib is None:
                continue
            if pid not in self.cmdline:
                self.cmdline[pid] = proc_cmdline(pid)
            self.peak_kib[pid] = max(kib, self.peak_kib.get(pid, 0))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample()
        own = {p: k for p, k in self.peak_kib.items() if p in self.baseline}
        others = {p: k for p, k in self.peak_kib.items() if p not in self.baseline}
        return {
            "server_processes": len(self.baseline),
            "server_peak_rss_mib": max(own.values()) / 1024 if own else None,
            "server_peak_rss_mib_by_pid": {str(p): k / 1024 for p, k in sorted(own.items())},
            "server_peak_rss_scope": "case" if self.reset_ok else "process lifetime",
            "children_seen": len(others),
            "children_peak_rss_mib": max(others.values()) / 1024 if others else None,
            "children_cmdlines": sorted({self.cmdline.get(p, "?")[:120] for p in others}),
        }


def proc_start_time(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return None if fields is None else fields[19]  # starttime, field 22
