"""The OpenAPI document describes the app's real routes: every operation, one
tag each, unique ids without a repeated method, every `$ref` resolvable."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.api

# Served for browsers, hidden from the document on purpose.
HIDDEN = {"web.page", "web.docs", "web.redoc", "web.static_file", "openapi"}


def werkzeug_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


async def test_the_document_lists_exactly_the_apps_operations(app):
    client = app.test_client()
    document = await (await client.get("/openapi.json")).get_json()
    documented = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    routes = set()
    for rule in app.app.url_map.iter_rules():
        if rule.endpoint in HIDDEN:
            continue
        for method in rule.methods:
            explicit_head = method == "HEAD" and rule.endpoint == "tus.upload"
            if method == "HEAD" and not explicit_head:
                continue  # werkzeug's automatic HEAD for a GET
            if method == "OPTIONS" and rule.provide_automatic_options:
                continue
            routes.add((werkzeug_to_openapi(rule.rule), method))
    assert documented == routes, (documented - routes, routes - documented)
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for ops in document["paths"].values():
        for method, op in ops.items():
            assert not op["operationId"].startswith(f"{method}_"), op["operationId"]
            assert len(op["tags"]) == 1 and op["tags"][0] in {t["name"] for t in document["tags"]}
    text = json.dumps(document)
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
    assert refs <= set(document["components"]["schemas"]), refs - set(
        document["components"]["schemas"]
    )
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "Problem" in document["components"]["schemas"]
