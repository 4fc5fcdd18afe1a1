"""The OpenAPI document: quart-schema's, with the schemas it leaves out.

quart-schema (0.21) describes each msgspec request and response struct but
drops the structs they contain, leaving `$ref`s to `#/components/schemas/X`
that resolve to nothing (Swagger UI and ReDoc then fail on them). This
provider adds every such component, from the msgspec structs of the API
modules.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import msgspec
from quart_schema.openapi import OpenAPIProvider

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


class CompleteOpenAPIProvider(OpenAPIProvider):
    # The modules whose structs appear in requests and answers.
    MODULES = [
        "ingestd.daemon.v1_api",
        "ingestd.daemon.seed_api",
        "ingestd.daemon.problems",
        "ingestd.daemon.app",
    ]

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        _, components = msgspec.json.schema_components(_structs(self.MODULES), ref_template=REF)
        # Add what is referred to (and what that refers to), until nothing is missing.
        while True:
            wanted = set(_REF_NAME.findall(msgspec.json.encode(document).decode()))
            missing = [n for n in wanted if n not in schemas and n in components]
            if not missing:
                return document
            for name in missing:
                schemas[name] = components[name]
