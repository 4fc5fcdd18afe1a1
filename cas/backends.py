"""The chunk store a configuration names, opened the same way by the daemon
and by its plugin worker processes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .chunkstore import ChunkStore
from .packstore import LocalPackStore

BACKENDS = ("local", "s3")


def open_chunk_store(
    root: str | os.PathLike[str],
    *,
    backend: str = "local",
    s3: Mapping[str, Any] | None = None,
    durable: bool = True,
    readonly: bool = False,
    worker: str | None = None,
) -> ChunkStore:
    """`backend` "local": packs under `root`; "s3": packs in the bucket that
    `s3` describes (`s3_client`'s arguments plus `prefix`), with `root` for
    the spool and the pack index."""
    if backend == "local":
        return LocalPackStore(root, durable=durable, readonly=readonly, worker=worker)
    if backend == "s3":
        from .s3store import S3PackStore, s3_client  # obstore only when it is used

        settings = dict(s3 or {})
        prefix = str(settings.pop("prefix", ""))
        return S3PackStore(
            root, s3_client(**settings), prefix=prefix, readonly=readonly, worker=worker
        )
    raise ValueError(f"unknown chunk store backend {backend!r} (known: {', '.join(BACKENDS)})")
