"""What `ingestd serve` says before the first request: a banner (version,
address, documentation, config file, data directory, plugins) and warnings
about settings an operator may not have meant."""

from __future__ import annotations

import time
from pathlib import Path

from ingestd import cas

from ..core.config import Config
from ..core.services import open_index

VERSION = "0.1.0"


def banner(config: Config, plugin_names: list[str], config_path: str | None) -> list[str]:
    scheme = "https" if config.tls else "http"
    host = config.server.host
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{config.server.port}"
    workers = config.server.workers
    return [
        f"ingestd {VERSION} serving {url} — the page at {url}/, the API at {url}/docs",
        f"  config: {Path(config_path).absolute() if config_path else '(defaults)'}; "
        f"data: {config.data_dir}; auth: {'on' if config.auth_required else 'off'}; "
        f"workers: {workers}",
        f"  plugins: {', '.join(plugin_names) or 'none'}",
    ]


def warnings(config: Config, plugin_names: list[str]) -> list[str]:
    """What an operator should know before the first request."""
    found = []
    if config.auth_required:
        index = open_index(config)
        try:
            if not cas.Tokens(index, time.time).all():
                found.append(
                    "auth is on and there are no tokens yet: every request will be refused. "
                    "Create one with: ingestd token create --tenant NAME --scope write"
                )
        finally:
            index.close()
        if not config.tls:
            found.append(
                "tokens travel in plain text over http://; anyone on the network path can "
                "read them. Set server.certfile and server.keyfile to serve HTTPS."
            )
    else:
        found.append(
            "auth is off: only requests to a loopback address are answered, all as tenant "
            "'default' (set auth.required = true to serve a team)"
        )
    clamav = config.plugin_tables.get("clamav", {})
    if "clamav" in plugin_names and not (clamav.get("socket") or clamav.get("address")):
        found.append(
            "clamd is not configured: files are not scanned for viruses "
            "(set [plugins.clamav] socket)"
        )
    if config.storage.materialize == "copy":
        found.append(
            f"storage.materialize = 'copy' writes a second copy of every accepted file under "
            f"{config.completed_dir}: accepted files take twice their size on disk "
            "(set 'none' to serve them from the store only)"
        )
    return found
