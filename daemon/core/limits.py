"""Each tenant's limits, from `[quotas]` (and its `[quotas.tenants.NAME]`) and `[limits]`."""

from __future__ import annotations

from dataclasses import dataclass

from ingestd import cas

from .config import Config


@dataclass(frozen=True, slots=True)
class TenantLimits:
    max_bytes: int | None  # logical bytes held and reserved; None: no limit
    max_open_uploads: int | None
    max_file_size: int


class Limits:
    def __init__(self, config: Config) -> None:
        self._quotas = config.quotas
        self._max_file_size = config.limits.max_file_size

    def of(self, tenant: str) -> TenantLimits:
        q = self._quotas
        own = q.tenants.get(tenant)

        def pick(name: str) -> int:
            value = getattr(own, name, None) if own is not None else None
            return getattr(q, name) if value is None else value

        max_bytes, max_open = pick("max_bytes"), pick("max_open_uploads")
        max_file = pick("max_file_size") or self._max_file_size
        return TenantLimits(max_bytes or None, max_open or None, min(max_file, self._max_file_size))

    def quota_for(self, tenant: str) -> cas.Quota:
        """The store's view of them (`Store(quota_for=...)`)."""
        own = self.of(tenant)
        return cas.Quota(max_bytes=own.max_bytes, max_open_uploads=own.max_open_uploads)
