"""LMDB environments shared within a process.

LMDB allows one Environment per file in a process; stores of the same
directory in one process (tests, a command beside its own store) share it,
counted, and the last to close it closes it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from .errors import StorageError

_ENVS: dict[str, tuple[lmdb.Environment, int]] = {}
_ENVS_LOCK = threading.Lock()


def open_env(path: Path, *, durable: bool, readonly: bool) -> lmdb.Environment:
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        found = _ENVS.get(key)
        if found is not None:
            env, users = found
            if env.flags()["readonly"] and not readonly:
                raise StorageError(f"{path} is open read-only in this process")
            _ENVS[key] = (env, users + 1)
            return env
        env = lmdb.open(
            key,
            max_dbs=4,
            map_size=1 << 36,
            sync=durable,
            metasync=durable,
            max_readers=1024,
            readonly=readonly,
        )
        _ENVS[key] = (env, 1)
        return env


def close_env(env: lmdb.Environment) -> None:
    with _ENVS_LOCK:
        for key, (known, users) in list(_ENVS.items()):
            if known is env:
                if users > 1:
                    _ENVS[key] = (env, users - 1)
                    return
                del _ENVS[key]
        env.close()
