"""py-spy on a server during a case: Profiler (waits for py-spy to attach;
bench/upload.py), Spy (starts without waiting, optionally the GIL holder alone;
bench/processing.py), and the top functions by self time of their collapsed stacks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import BenchError, log

PROFILER_TIMEOUT = 60.0


class Profiler:
    """py-spy record --format raw on a PID, stopped with SIGINT (collapsed stacks)."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
            + ["--nonblocking", "--threads", "--subprocesses", "-o", str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach
        if self.proc.poll() is not None:
            raise BenchError(f"py-spy exited: {self.proc.stderr.read().decode()[-1000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=PROFILER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=PROFILER_TIMEOUT)


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


def top_self_frames(raw: Path, n: int = 15) -> list[tuple[str, int, float]]:
    """(function, samples, share) by self time from py-spy's collapsed stacks."""
    self_time: Counter[str] = Counter()
    total = 0
    with open(raw, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            # The leaf frame, by function: "name (file.py:123)" -> "name (file.py)".
            leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
            self_time[leaf] += int(count)
            total += int(count)
    return [(frame, c, c / total) for frame, c in self_time.most_common(n)] if total else []


def print_top_self(raw: Path, key: str, n: int = 15, what: str = "daemon") -> list[dict[str, Any]]:
    """Print the top `n` functions by self time in py-spy's output `raw`, taken
    during case `key`; returns them as the results file's rows."""
    frames = top_self_frames(raw, n)
    print(f"\n{what} during {key}: top functions by self time ({raw})")
    for frame, samples, share in frames:
        print(f"  {share:6.1%} {samples:6d}  {frame}")
    return [{"frame": f, "samples": c, "share": sh} for f, c, sh in frames]
