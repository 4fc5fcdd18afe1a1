"""Fixtures of the HTTP tests (the root conftest has `app`, `client`, `make_config`)."""

from __future__ import annotations

import pytest
from ingestd.daemon.http.app import create_app
from support.auth import Secured


@pytest.fixture
async def secured(make_config):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true"))
    async with app.test_app() as test_app:
        yield Secured(test_app)
