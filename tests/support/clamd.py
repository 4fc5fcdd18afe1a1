"""A private clamd for tests: its own config, socket and signature database.

No official ClamAV databases are needed (nor freshclam, nor network): the
database directory holds one body signature that detects the EICAR test
string. clamd refuses to start with no database at all, and it appends
".UNOFFICIAL" to the names of signatures from unsigned databases, so it
reports "Eicar-Test-Signature.UNOFFICIAL".

Every wait is bounded; the daemon is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The EICAR anti-virus test file: harmless, detected by every scanner.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Eicar-Test-Signature"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100


def find_clamd() -> str | None:
    # /usr/sbin is often not on a non-root user's PATH.
    found = shutil.which("clamd")
    if found:
        return found
    return "/usr/sbin/clamd" if os.access("/usr/sbin/clamd", os.X_OK) else None


@dataclass
class Clamd:
    socket: str
    workdir: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, size: int = 3000) -> str:
        parts = []
        for name in ("clamd.log", "clamd.out"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-size:]}")
        return "\n".join(parts)


def write_config(workdir: Path, socket_path: str, extra: dict[str, str]) -> Path:
    db = workdir / "db"
    db.mkdir()
    # .ndb body signature, "Name:TargetType:Offset:HexSignature"; target 0 =
    # any file, offset * = anywhere, so it also matches EICAR inside a JSON line.
    body = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE".hex()
    (db / "eicar.ndb").write_text(f"{SIGNATURE}:0:*:{body}\n")
    settings = {
        "LocalSocket": socket_path,
        "DatabaseDirectory": str(db),
        "Foreground": "yes",
        "LogFile": str(workdir / "clamd.log"),
        "PidFile": str(workdir / "clamd.pid"),
        # No TCPSocket line: no TCP listener. No User line: clamd keeps the
        # user that starts it (root in CI containers, or an ordinary user).
        **extra,
    }
    conf = workdir / "clamd.conf"
    conf.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
    return conf


def ping(socket_path: str, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(b"zPING\0")
            return sock.recv(16).rstrip(b"\0") == b"PONG"
    except OSError:
        return False


def start_clamd(workdir: Path, **extra: str) -> Clamd:
    """Start clamd with `extra` clamd.conf settings; return once it answers PING."""
    binary = find_clamd()
    if binary is None:
        pytest.skip("clamd not installed (apt-get install clamav-daemon)")
    socket_path = str(workdir / "clamd.sock")
    if len(socket_path) > _MAX_SOCKET_PATH:
        socket_path = os.path.join(tempfile.mkdtemp(prefix="clamd-"), "clamd.sock")
    conf = write_config(workdir, socket_path, extra)
    with open(workdir / "clamd.out", "wb") as out:
        process = subprocess.Popen(
            [binary, f"--config-file={conf}"], stdout=out, stderr=subprocess.STDOUT
        )
    daemon = Clamd(socket_path, workdir, process)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not ping(socket_path):
        if process.poll() is not None:
            pytest.fail(f"clamd exited with {process.returncode}\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            stop_clamd(daemon)
            pytest.fail(f"clamd did not answer PING in {STARTUP_TIMEOUT:g} s\n{daemon.log_tail()}")
        time.sleep(0.1)
    return daemon


def stop_clamd(daemon: Clamd) -> None:
    process = daemon.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(KILL_TIMEOUT)
    if not daemon.socket.startswith(str(daemon.workdir)):
        shutil.rmtree(os.path.dirname(daemon.socket), ignore_errors=True)
