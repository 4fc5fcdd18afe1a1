"""An in-process app with auth on, and its tokens (tests/http/)."""

from __future__ import annotations

from ingestd.daemon.http.auth import create_token


class Secured:
    """An app with auth on and tokens of two tenants."""

    def __init__(self, test_app) -> None:
        self.test_app = test_app
        self.client = test_app.test_client()
        self.rt = test_app.app.extensions["ingestd"]
        self.tokens: dict[str, str] = {}

    def token(self, name: str, tenant: str, scope: str = "write", **kw) -> dict[str, str]:
        token, _ = create_token(self.rt.store.tokens, tenant=tenant, scope=scope, name=name, **kw)
        self.tokens[name] = token
        return bearer(token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
