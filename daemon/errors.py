"""Errors the HTTP layer itself finds in a request, and errors of the upload core.

`ApiError` is a refusal with its HTTP answer decided where it is raised (a
malformed header, a protocol rule, a limit): a status, a stable `code`, words
for people, extra headers. It is the one such type: the sans-IO tus core, the
upload core and the API modules all raise it. Refusals of the store are
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
