"""The OpenAPI document: quart-schema's, completed.

quart-schema (0.21) describes each msgspec request and response struct but
drops the structs they contain, leaving `$ref`s to `#/components/schemas/X`
that resolve to nothing (Swagger UI and ReDoc then fail on them); this
provider adds every such component, from the msgspec structs of the API
modules. It also tags each operation with its API, names operations without
repeating the method (`v1_put_chunk`, not `put_put_chunk`), lists tus's
`HEAD`, and declares the bearer-token scheme.

What the decorators cannot say — request and answer headers, raw bodies,
every answer an operation gives — is in one table here (`OPERATIONS`), read
from the handlers; headers and the Problem answer are components, each
defined once.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from quart_schema.openapi import OpenAPIProvider
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Rule

from .problems import EXTRA_TITLES, PROBLEM_JSON

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
    "ingestd.daemon.http.seed_api": ("seed", "seed API"),
    "ingestd.daemon.http.v1_api": ("v1", "v1"),
    "ingestd.daemon.http.tus_api": ("tus", "tus"),
    "ingestd.daemon.http.app": ("ops", "operations"),
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


# -- headers, raw bodies and answers: the table ------------------------------

_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}
_TUS_VERSION = {"type": "string", "enum": ["1.0.0"]}

# Answer headers (components/headers).
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Location": ("Where the created resource (or the job) is.", _STR),
    "ETag": ("The file's BLAKE3, quoted.", _STR),
    "Accept-Ranges": ("Byte ranges are served.", {"type": "string", "enum": ["bytes"]}),
    "Content-Range": ("The bytes sent (206), or the size (416: `bytes */SIZE`).", _STR),
    "Content-Disposition": ("An attachment with the file's name (RFC 6266).", _STR),
    "Retry-After": ("Seconds to wait before trying again.", _INT),
    "WWW-Authenticate": ("The bearer challenge.", _STR),
    "Allow": ("The methods this URL takes.", _STR),
    "Tus-Resumable": ("The tus version of this answer.", _TUS_VERSION),
    "Tus-Version": ("The tus versions this server speaks.", _STR),
    "Tus-Extension": ("The tus extensions this server supports.", _STR),
    "Tus-Max-Size": ("The largest upload, in bytes.", _INT),
    "Tus-Checksum-Algorithm": ("The algorithms Upload-Checksum may name.", _STR),
    "Upload-Offset": ("Bytes of the upload received so far.", _INT),
    "Upload-Length": ("The upload's length, once declared.", _INT),
    "Upload-Defer-Length": ("1 while the length is not declared yet.", _INT),
    "Upload-Metadata": ("The metadata given at creation.", _STR),
    "Upload-Concat": ("`partial`, or `final;` and the partial uploads' URLs.", _STR),
    "Upload-Expires": ("When an open upload expires (RFC 9110 date).", _STR),
    "Ingestd-Upload-State": ("The upload's state in ingestd.", _STR),
    "Ingestd-File-Id": ("The file recorded from the upload.", _STR),
    "Ingestd-Job-Id": ("The job processing the upload.", _STR),
    "X-Request-Id": ("The request's id in the daemon's log (the client's, if it sent one).", _STR),
}

# Request headers (components/parameters, named after the header).
_REQUEST_HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Tus-Resumable": ("The tus version the client speaks.", _TUS_VERSION),
    "Upload-Length": ("The upload's length in bytes.", _INT),
    "Upload-Defer-Length": ("1: the length comes later.", {"type": "integer", "enum": [1]}),
    "Upload-Metadata": ("Comma-separated `key base64value` pairs.", _STR),
    "Upload-Concat": ("`partial`, or `final;` and partial upload URLs.", _STR),
    "Upload-Checksum": ("`algorithm base64digest` of this request's body.", _STR),
    "Upload-Offset": ("Where this request's body starts.", _INT),
    "X-HTTP-Method-Override": (
        "The method this POST stands for.",
        {"type": "string", "enum": ["HEAD", "GET", "PATCH", "DELETE"]},
    ),
    "Range": ("One byte range: `bytes=START-END`, `START-` or `-SUFFIX`.", _STR),
    "If-None-Match": ("ETags the client has (compared weakly); 304 if one matches.", _STR),
    "Ingestd-Tenant": ("An admin acts on this tenant's data.", _STR),
    "X-Request-Id": (
        "The request's id in the daemon's log (printable ASCII, at most 64 characters; "
        "otherwise the daemon makes one).",
        {"type": "string", "maxLength": 64},
    ),
}
# Request headers an operation cannot do without — except where a POST
# stands for another method: it may be a HEAD, which sends no Upload-Offset.
_REQUIRED = {"Tus-Resumable", "Upload-Offset", "X-HTTP-Method-Override"}
_OPTIONAL_IN = {("tus_upload_post", "Upload-Offset")}

_BINARY = {"type": "string", "format": "binary"}
_OFFSET_OCTETS = "application/offset+octet-stream"


def _body(media: str, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {media: {"schema": _BINARY}}}


def _answer(
    description: str, headers: Iterable[str] = (), media: str | None = None
) -> dict[str, Any]:
    """An answer: its headers (`!` = always sent) and a binary body of `media`."""
    answer: dict[str, Any] = {"description": description}
    if headers:
        answer["headers"] = {
            h.rstrip("!"): {"$ref": f"#/components/headers/{h.rstrip('!')}"}
            | ({"required": True} if h.endswith("!") else {})
            for h in headers
        }
    if media:
        answer["content"] = {media: {"schema": _BINARY}}
    return answer


_CONTENT = ("Accept-Ranges!", "Content-Disposition!", "ETag")
_DOWNLOAD = {
    "200": _answer("The bytes.", _CONTENT, "application/octet-stream"),
    "206": _answer("The bytes of the range.", (*_CONTENT, "Content-Range!"), "*/*"),
    "304": _answer("The client's copy is current (If-None-Match).", ("ETag!",)),
}
_TUS_STATE = ("Upload-Expires", "Ingestd-Upload-State!", "Ingestd-File-Id", "Ingestd-Job-Id")
_TUS_OPTIONS = {
    "204": _answer(
        "What the server supports.",
        (
            "Tus-Resumable!",
            "Tus-Version!",
            "Tus-Extension!",
            "Tus-Max-Size!",
            "Tus-Checksum-Algorithm!",
        ),
    )
}
_TUS_HEAD = _answer(
    "The upload's offset and facts.",
    (
        "Tus-Resumable!",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Metadata",
        "Upload-Concat",
        *_TUS_STATE,
    ),
)
_TUS_PATCHED = _answer("The bytes were kept.", ("Tus-Resumable!", "Upload-Offset!", *_TUS_STATE))
_TUS_DELETED = _answer("The upload is terminated.", ("Tus-Resumable!",))
_NO_CONTENT = {"204": _answer("Done.")}

# Per operation: request headers, raw body (media, required), answers besides
# the decorators' (status -> answer), and every error status it can give.
OPERATIONS: dict[str, dict[str, Any]] = {
    "seed_init": {"errors": (400, 413, 429, 507)},
    "seed_chunk": {"errors": (400, 404, 408, 409, 413, 415, 507)},
    "seed_status": {"errors": (404,)},
    "seed_complete": {"errors": (404, 409, 422, 507)},
    "v1_info": {"errors": ()},
    "v1_usage": {"errors": ()},
    "v1_list_tokens": {"errors": (403,)},
    "v1_make_token": {"errors": (400, 403, 507)},
    "v1_revoke_token": {"answers": _NO_CONTENT, "errors": (403, 404, 507)},
    "v1_create_upload": {
        "answers": {"201": {"headers": ("Location!",)}},
        "errors": (400, 404, 409, 413, 429, 507),
    },
    "v1_upload_status": {"errors": (404,)},
    "v1_put_chunk": {
        "body": ("application/octet-stream", True),
        "errors": (400, 404, 408, 409, 413, 422, 507),
    },
    "v1_complete_upload": {
        "answers": {"202": {"headers": ("Location!",)}},
        "errors": (404, 409, 507),
    },
    "v1_cancel_upload": {"answers": _NO_CONTENT, "errors": (404, 409, 507)},
    "v1_job_status": {"errors": (400, 404)},
    "v1_list_files": {"errors": (400,)},
    "v1_describe_file": {"errors": (404,)},
    "v1_file_content": {
        "headers": ("Range", "If-None-Match"),
        "answers": _DOWNLOAD,
        "errors": (404, 409, 410, 416, 503),
    },
    "v1_delete_file": {"answers": _NO_CONTENT, "errors": (404, 507)},
    "tus_creation_options": {"answers": _TUS_OPTIONS, "errors": ()},
    "tus_upload_options": {"answers": _TUS_OPTIONS, "errors": ()},
    "tus_creation_post": {
        "headers": (
            "Tus-Resumable",
            "Upload-Length",
            "Upload-Defer-Length",
            "Upload-Metadata",
            "Upload-Concat",
            "Upload-Checksum",
        ),
        "body": (_OFFSET_OCTETS, False),
        "answers": {
            "201": _answer(
                "The upload is created (with creation-with-upload, its first bytes kept).",
                ("Location!", "Tus-Resumable!", "Upload-Offset", *_TUS_STATE),
            )
        },
        "errors": (400, 403, 404, 408, 409, 410, 412, 413, 415, 460, 507),
    },
    "tus_upload_head": {
        "headers": ("Tus-Resumable",),
        "answers": {"200": _TUS_HEAD},
        "errors": (404, 410, 412),
    },
    "tus_upload_patch": {
        "headers": ("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Checksum"),
        "body": (_OFFSET_OCTETS, True),
        "answers": {"204": _TUS_PATCHED},
        "errors": (400, 403, 404, 408, 409, 410, 412, 413, 415, 460, 507),
    },
    "tus_upload_delete": {
        "headers": ("Tus-Resumable",),
        "answers": {"204": _TUS_DELETED},
        "errors": (404, 410, 412, 507),
    },
    "tus_upload_get": {
        "headers": ("Tus-Resumable", "Range", "If-None-Match"),
        "answers": _DOWNLOAD,
        "errors": (404, 409, 410, 412, 416, 503),
    },
    # POST with X-HTTP-Method-Override: any of the four.
    "tus_upload_post": {
        "headers": (
            "Tus-Resumable",
            "X-HTTP-Method-Override",
            "Upload-Offset",
            "Upload-Length",
            "Upload-Checksum",
            "Range",
            "If-None-Match",
        ),
        "body": (_OFFSET_OCTETS, False),
        "answers": {"200": _TUS_HEAD, "204": _TUS_PATCHED, "206": _DOWNLOAD["206"]},
        "errors": (400, 403, 404, 405, 408, 409, 410, 412, 413, 415, 416, 460, 503, 507),
    },
    "ops_healthz": {
        "answers": {
            "200": {
                "description": "Alive.",
                "content": {"application/json": {"schema": {"$ref": REF.format(name="Health")}}},
            }
        },
        "errors": (),
    },
    "ops_metrics": {
        "answers": {"200": _answer("Prometheus text format.", (), "text/plain")},
        "errors": (),
    },
}
# Errors any operation can give: a Host not allowed without auth (421) and too
# many requests in flight from one address (429); with a token also 401, 403
# (scope) and 400 (a bad Ingestd-Tenant).
_EVERYWHERE = (421, 429)
_WITH_TOKEN = (400, 401, 403)
# Headers an error answer carries.
_ERROR_HEADERS = {
    401: ("WWW-Authenticate!",),
    405: ("Allow!",),
    412: ("Tus-Version",),
    416: ("Content-Range!",),
    429: ("Retry-After",),
    503: ("Retry-After",),
    507: ("Retry-After",),
}


def _complete_operation(op_id: str, operation: dict[str, Any]) -> None:
    """Add the table's request headers, raw body and answers to an operation."""
    spec = OPERATIONS.get(op_id)
    if spec is None:
        return
    tus = op_id.startswith("tus_")
    parameters = operation.setdefault("parameters", [])
    headers = list(spec.get("headers", ()))
    if op_id not in _OPEN:
        headers.append("Ingestd-Tenant")
    headers.append("X-Request-Id")
    for name in headers:
        parameters.append({"$ref": f"#/components/parameters/{_parameter_name(op_id, name)}"})
    if "body" in spec:
        operation["requestBody"] = _body(*spec["body"])
    # quart-schema keys answers by int status.
    responses = {str(k): v for k, v in operation.get("responses", {}).items()}
    operation["responses"] = responses
    for status, answer in spec.get("answers", {}).items():
        if "description" in answer:
            responses[status] = answer
        else:  # headers of the decorators' answer
            responses[status]["headers"] = _answer("", answer["headers"])["headers"]
    errors = set(spec["errors"]) | set(_EVERYWHERE)
    if op_id not in _OPEN:
        errors |= set(_WITH_TOKEN)
    for status in sorted(errors):
        error_headers = (*_ERROR_HEADERS.get(status, ()), *(("Tus-Resumable!",) if tus else ()))
        problem = _answer(EXTRA_TITLES.get(status) or HTTP_STATUS_CODES[status], error_headers)
        if op_id != "tus_upload_head":  # HEAD answers have no body
            problem["content"] = {PROBLEM_JSON: {"schema": {"$ref": REF.format(name="Problem")}}}
        responses[str(status)] = problem
    request_id = {"$ref": "#/components/headers/X-Request-Id", "required": True}
    for status, answer in responses.items():  # every answer names its request
        headers = {**answer.get("headers", {}), "X-Request-Id": request_id}
        responses[status] = {**answer, "headers": headers}


def _parameter_name(op_id: str, header: str) -> str:
    return f"{header}-optional" if (op_id, header) in _OPTIONAL_IN else header


def _components() -> tuple[dict[str, Any], dict[str, Any]]:
    headers = {
        name: {"description": description, "schema": schema}
        for name, (description, schema) in HEADERS.items()
    }
    parameters = {}
    for name, (description, schema) in _REQUEST_HEADERS.items():
        parameter = {"in": "header", "name": name, "description": description, "schema": schema}
        parameters[name] = parameter | {"required": name in _REQUIRED}
    for _, name in _OPTIONAL_IN:
        parameters[f"{name}-optional"] = parameters[name] | {"required": False}
    return headers, parameters


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
        "ingestd.daemon.http.v1_api",
        "ingestd.daemon.http.v1_models",
        "ingestd.daemon.http.seed_api",
        "ingestd.daemon.http.problems",
        "ingestd.daemon.http.app",
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
                _complete_operation(op_id, operation)
        components["headers"], components["parameters"] = _components()
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
