"""Which of the processes sharing a data directory runs the background services.

Jobs, outbox deliveries and maintenance (expiry, garbage collection) must run
in exactly one process at a time. The one holding the store's ``leader``
lock runs them; the others keep trying, so that when the leader dies (the
kernel drops its lock, even on SIGKILL) another takes over within a poll.
"""

from __future__ import annotations

import logging
import os

import trio
from ingestd import cas

log = logging.getLogger("ingestd")

# Seconds between attempts to become the leader.
POLL_INTERVAL = 0.5
LOCK_NAME = "leader"


async def become_leader(store: cas.Store) -> cas.HeldLock:
    """Wait until this process holds the leader lock; the caller releases it."""
    waited = False
    while True:
        # A non-blocking flock: fine on the event loop.
        held = store.locks.try_hold(LOCK_NAME, remove=False)
        if held is not None:
            held.note(f"{os.getpid()}\n")
            if waited:
                log.info("process %d took over the background services", os.getpid())
            return held
        waited = True
        await trio.sleep(POLL_INTERVAL)
