"""The refusal whose HTTP answer is decided where it is raised.

`ApiError` carries a status, a stable `code`, words for people and extra
headers: a malformed header, a protocol rule, a limit. The sans-IO tus core,
the upload core and the API modules all raise this one type. Refusals of
the store (and of the core, when they are of the same kind) are
`ingestd.cas.ClientError`s, mapped to statuses in `problems`.
"""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra
