"""Several worker processes on one listening socket (`server.workers` > 1).

The master binds the socket, clears the temp files a crashed run may have
left, and starts `workers` processes (`ingestd serve` again, told the
socket's file descriptor and their slot). The kernel spreads connections
over the processes accepting on the shared socket. They share the data
directory: LMDB serialises their writes, `cas.LockDir` locks hold across
them, and one of them at a time runs the background services (`leader.py`).

A worker that dies is started again in its slot (after a pause if it keeps
dying young, so that a broken configuration does not spin). SIGINT or
SIGTERM to the master is passed on to the workers; the master exits once
they have, killing any that outlast the grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from ingestd import cas

from ..core.config import Config

log = logging.getLogger("ingestd")

# A worker that dies within this many seconds of starting is restarted only
# after RESTART_PAUSE.
YOUNG = 5.0
RESTART_PAUSE = 1.0
# Beyond the workers' shutdown grace, how long the master waits for them
# (closing the store, flushing the index) before it kills them.
STOP_SLACK = 12.0
TICK = 0.1


class Master:
    def __init__(self, config: Config, worker_argv: Sequence[str]) -> None:
        """`worker_argv`: the `ingestd serve` arguments every worker gets
        (config and overrides); the master adds the socket and the slot."""
        self.config = config
        self.count = config.server.workers
        self.worker_argv = list(worker_argv)
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.stopping = False

    def _spawn(self, slot: int, sock: socket.socket) -> None:
        argv = [
            sys.executable,
            "-m",
            "ingestd.daemon.cli",
            "serve",
            *self.worker_argv,
            "--listen-fd",
            str(sock.fileno()),
            "--worker-slot",
            str(slot),
        ]
        self.workers[slot] = subprocess.Popen(argv, pass_fds=(sock.fileno(),))
        self.started[slot] = time.monotonic()
        log.info("worker %d started (pid %d)", slot, self.workers[slot].pid)

    def _stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("received %s, stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def run(self, sock: socket.socket) -> int:
        """Serve on `sock` (bound by the caller, who holds the data directory)."""
        # No worker runs yet: every temp file is a crashed run's.
        cas.clear_temp(self.config.data_dir)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.count):
            self._spawn(slot, sock)
        log.info("master pid %d, %d workers", os.getpid(), self.count)
        due: dict[int, float] = {}  # slots waiting to be restarted, and when
        while not self.stopping:
            time.sleep(TICK)
            for slot, proc in list(self.workers.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.workers[slot]
                young = time.monotonic() - self.started[slot] < YOUNG
                log.warning(
                    "worker %d (pid %d) exited with %s; starting it again",
                    slot,
                    proc.pid,
                    code,
                )
                due[slot] = time.monotonic() + (RESTART_PAUSE if young else 0.0)
            for slot, when in list(due.items()):
                if time.monotonic() >= when and not self.stopping:
                    del due[slot]
                    self._spawn(slot, sock)
        sock.close()
        return self._stop_workers()

    def _stop_workers(self) -> int:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # A worker's own stop takes up to server.shutdown_grace; then some slack.
        deadline = time.monotonic() + self.config.server.shutdown_grace + STOP_SLACK
        for slot, proc in self.workers.items():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop; killing it", slot, proc.pid)
                proc.kill()
                proc.wait()
        return 0
