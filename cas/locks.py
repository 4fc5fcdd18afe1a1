"""Named locks that hold across the processes sharing a data directory.

Several daemon workers serve one data directory; some things must be done by
one of them at a time: writing to one tus upload, finishing one completion,
running the background services. Each lock is an `flock` on a file under
``<data>/locks/``: the kernel releases it when its holder dies, even by
SIGKILL, so a lock never outlives a crashed process. Two holders in one
process exclude each other too (each takes its own open file description).

The file of a per-upload lock is removed when it is released, so that the
directory does not grow with every upload. That is safe because a taker
checks, once it holds the lock, that the name still leads to the file it
locked; if the holder before it removed the file meanwhile, it starts over.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from pathlib import Path

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


class HeldLock:
    """A lock this process holds; `release` (or leaving the `with`) lets it go."""

    __slots__ = ("_fd", "_path", "_remove")

    def __init__(self, fd: int, path: str, remove: bool) -> None:
        self._fd = fd
        self._path = path
        self._remove = remove

    def release(self) -> None:
        if self._fd < 0:
            return
        if self._remove:
            # Removed while still held: a waiter that gets the old file next
            # sees that the name no longer leads to it.
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = -1

    def note(self, text: str) -> None:
        """Say in the lock's file who holds it (e.g. a PID, for operators)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LockDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def try_hold(self, name: str, *, remove: bool = True) -> HeldLock | None:
        """The lock `name` if no one holds it, else None; never waits."""
        return self._take(name, blocking=False, remove=remove)

    def hold(self, name: str, *, remove: bool = True) -> HeldLock:
        """The lock `name`, waiting for it as long as it takes (call from a thread)."""
        held = self._take(name, blocking=True, remove=remove)
        assert held is not None
        return held

    def _take(self, name: str, *, blocking: bool, remove: bool) -> HeldLock | None:
        if not _SAFE_NAME.match(name):
            # Any string names a lock (an upload id from a URL, say); one that
            # is not a plain file name is known by its hash.
            name = "h-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        path = str(self.path / name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return HeldLock(fd, path, remove)
            os.close(fd)  # the file was removed by the holder before: again
