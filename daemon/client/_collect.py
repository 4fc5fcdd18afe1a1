"""Which files an upload of paths means: files as they are, directories
recursively, filtered by globs, each with its name on the server."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path


def collect(
    paths: list[str | os.PathLike[str]] | tuple[str | os.PathLike[str], ...],
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
) -> list[tuple[Path, str]]:
    """(local path, name on the server) of each file to upload. A file is
    itself, under its own name; a directory is every regular file below it
    (recursively, symbolic links to directories not followed), named by its
    path from the directory's parent: `data/` gives `data/train.jsonl`,
    `data/eval/a.csv`. `include` and `exclude` are globs (`*.jsonl`,
    `eval/*`) matched against a file's path inside the directory and against
    its name; with `include`, only matching files are taken; `exclude` wins.
    They filter what directories hold, not files named on their own.
    Raises FileNotFoundError for a path that does not exist."""
    found: list[tuple[Path, str]] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            base = path.resolve().name or "root"
            below: list[tuple[Path, str]] = []
            for root, _dirs, names in os.walk(path):
                for name in names:
                    local = Path(root) / name
                    rel = local.relative_to(path).as_posix()
                    if not local.is_file():
                        continue  # sockets, fifos, broken links
                    if include and not _matches(rel, include):
                        continue
                    if _matches(rel, exclude):
                        continue
                    below.append((local, f"{base}/{rel}"))
            found += sorted(below, key=lambda item: item[1])
        elif path.exists():
            found.append((path, path.name))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def _matches(rel: str, patterns: list[str] | tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)
