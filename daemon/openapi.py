"""The OpenAPI document: quart-schema's, completed.

quart-schema (0.21) describes each msgspec request and response struct but
drops the structs they contain, leaving `$ref`s to `#/components/schemas/X`
that resolve to nothing (Swagger UI and ReDoc then fail on them); this
provider adds every such component, from the msgspec structs of the API
modules. It also tags each operation with its API, names operations without
repeating the method (`v1_put_chunk`, not `put_put_chunk`), lists tus's
`HEAD`, and declares the bearer-token scheme.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from quart_schema.openapi import OpenAPIProvider
from werkzeug.routing import Rule

REF = "#/components/schemas/{name}"
_REF_NAME = re.compile(r'"\$ref":\s*"#/components/schemas/([^"]+)"')


def _structs(module_names: list[str]) -> list[type[msgspec.Struct]]:
    found = []
    for name in module_names:
        module = sys.modules.get(name)
        for value in vars(module).values() if module else ():
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value.__module__ == name
            ):
                found.append(value)
    return found


# Operation id prefix and tag of each API module.
_APIS = {
    "ingestd.daemon.seed_api": ("seed", "seed API"),
    "ingestd.daemon.v1_api": ("v1", "v1"),
    "ingestd.daemon.tus_api": ("tus", "tus"),
    "ingestd.daemon.app": ("ops", "operations"),
}
TAGS = [
    {"name": "v1", "description": "The native, deduplicating API (docs/api-v1.md)."},
    {"name": "tus", "description": "tus 1.0 with every extension (docs/api-tus.md)."},
    {"name": "seed API", "description": "The original REST API, shapes unchanged."},
    {"name": "operations", "description": "Liveness and metrics."},
]
# Routes whose one view serves several methods: the method ends their ids.
_MULTI_METHOD = {"creation", "upload"}
# Operations that need no token even with auth on.
_OPEN = {"ops_healthz", "ops_metrics", "tus_creation_options", "tus_upload_options"}


def _share_problem(operation: dict[str, Any]) -> None:
    """Error answers refer to the one Problem schema, as problem+json."""
    for response in operation.get("responses", {}).values():
        content = response.get("content", {})
        for media in list(content.values()):
            if media.get("schema", {}).get("title") == "Problem":
                response["content"] = {
                    "application/problem+json": {"schema": {"$ref": REF.format(name="Problem")}}
                }
                break


class CompleteOpenAPIProvider(OpenAPIProvider):
    # The modules whose structs appear in requests and answers.
    MODULES = [
        "ingestd.daemon.v1_api",
        "ingestd.daemon.seed_api",
        "ingestd.daemon.problems",
        "ingestd.daemon.app",
    ]

    def generate_methods(self, rule: Rule) -> Iterable[str]:
        # tus's HEAD is an operation of its own (werkzeug adds HEAD to every GET).
        yield from super().generate_methods(rule)
        if rule.endpoint == "tus.upload":
            yield "HEAD"

    def operation_id(self, method: str, path: str, func: Callable) -> str | None:
        prefix = _APIS.get(func.__module__, ("web", ""))[0]
        name = f"{prefix}_{func.__name__}"
        if func.__name__ in _MULTI_METHOD:
            name += f"_{method.lower()}"
        return name

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        document["tags"] = TAGS
        components = document.setdefault("components", {})
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from `ingestd token create`; needed when auth is on.",
            }
        }
        # A token, or none on a loopback daemon without auth.
        document["security"] = [{"bearer": []}, {}]
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                op_id = operation.get("operationId", "")
                tag = next((t for p, t in _APIS.values() if op_id.startswith(p + "_")), None)
                if tag:
                    operation["tags"] = [tag]
                if op_id in _OPEN:
                    operation["security"] = [{}]
                _share_problem(operation)
        schemas = components.setdefault("schemas", {})
        _, components = msgspec.json.schema_components(_structs(self.MODULES), ref_template=REF)
        # Add what is referred to (and what that refers to), until nothing is missing.
        while True:
            wanted = set(_REF_NAME.findall(msgspec.json.encode(document).decode()))
            missing = [n for n in wanted if n not in schemas and n in components]
            if not missing:
                return document
            for name in missing:
                schemas[name] = components[name]
