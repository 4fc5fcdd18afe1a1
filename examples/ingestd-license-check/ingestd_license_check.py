"""Example ingestd plugin: datasets must declare a license the team allows.

- ``ingestd_config_schema``: the ``[plugins.license-check]`` table.
- ``ingestd_policy``: refuses, before any bytes are sent, a dataset upload
  whose metadata has no allowed ``license``.
- ``ingestd_validate``: JSONL datasets must have a ``text`` field in every
  record (checked on the first ``sample_lines`` lines, streaming).
- ``ingestd_describe``: records the license in the file's metadata.
"""

from __future__ import annotations

import fnmatch
import json

import msgspec
from ingestd.plugins import Refusal, Verdict, hookimpl

NAME = "license-check"


class LicenseConfig(msgspec.Struct, forbid_unknown_fields=True):
    allowed: list[str] = msgspec.field(
        default_factory=lambda: ["mit", "apache-2.0", "cc-by-4.0", "cc0-1.0"]
    )
    # Files that count as datasets, by name.
    datasets: list[str] = msgspec.field(default_factory=lambda: ["*.jsonl", "*.csv", "*.parquet"])
    sample_lines: int = 1000


def _is_dataset(filename: str, config: LicenseConfig) -> bool:
    return any(fnmatch.fnmatch(filename.lower(), pattern) for pattern in config.datasets)


@hookimpl
def ingestd_config_schema(plugin_name):
    return LicenseConfig if plugin_name == NAME else None


@hookimpl
def ingestd_policy(request, config):
    if not _is_dataset(request.filename, config):
        return None
    license = str(request.metadata.get("license", "")).lower()
    if license not in config.allowed:
        return Refusal(
            f"dataset uploads need metadata license in {', '.join(config.allowed)}; "
            f"got {license or 'none'}",
            status=422,
            code="license_required",
        )
    return None


@hookimpl
def ingestd_validate(ctx):
    if ctx.detection is None or ctx.detection.format != "jsonl":
        return None
    with ctx.open() as f:
        for number, line in enumerate(f, start=1):
            if number > ctx.config.sample_lines:
                break
            if line.strip() and "text" not in json.loads(line):
                return Verdict.reject(f"line {number} has no 'text' field", line=number)
    return Verdict.accept(sampled=min(number, ctx.config.sample_lines))


@hookimpl
def ingestd_describe(ctx):
    license = ctx.facts.declared_metadata.get("license")
    return {"license": license} if license else None
