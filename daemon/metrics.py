"""Prometheus metrics of one daemon (its own registry, so tests can run many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.chunks = Counter(
            "ingestd_chunks",
            "Chunks received: stored, or repeated (the upload had them already)",
            ["result"],
            registry=self.registry,
        )
        self.chunk_bytes = Counter(
            "ingestd_chunk_bytes", "Body bytes received into uploads", registry=self.registry
        )
        self.jobs = Counter(
            "ingestd_jobs",
            "Processing jobs finished, by verdict",
            ["verdict"],
            registry=self.registry,
        )
        self.plugin_errors = Counter(
            "ingestd_plugin_errors",
            "Plugin hook calls that raised or timed out",
            ["plugin", "stage"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "ingestd_outbox_deliveries",
            "Outbox delivery attempts, by result",
            ["plugin", "result"],
            registry=self.registry,
        )

        self.access_refusals = Counter(
            "ingestd_access_refusals",
            "Requests refused by access control (401, 403, 421, 429), by problem code",
            ["code"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
