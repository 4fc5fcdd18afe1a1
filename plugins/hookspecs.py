"""Hook specifications: the plugin author's reference.

A plugin is a module or object with functions decorated by
``ingestd.plugins.hookimpl`` and named after the hooks below. A hook
implementation accepts only the arguments it names (any subset, in any
order). It may be a plain function — run in a worker thread, so it may block
and burn CPU — or an ``async def`` function run on the daemon's trio event
loop (it must not block). Returning ``None`` means "nothing to say".

Processing runs when an upload completes, in this order::

    detect → validate → scan → describe → lineage → (accepted | rejected) → notify → pipeline

Every plugin's answer (or its error) is kept in the job record under the
plugin's name and the stage. A plugin that raises or exceeds
``[plugins] timeout`` is recorded as an error; with ``[plugins] on_error =
"reject"`` (the default, fail closed) the file is rejected, with ``"accept"``
the error is only recorded. It never stops the daemon.

Plugins are registered by the daemon (the built-ins) and discovered from the
``ingestd`` entry-point group. Each has a name: the entry point's name, or
the built-in's module name.
"""

from __future__ import annotations

from typing import Any

import pluggy

from .types import (
    Detection,
    HookContext,
    OutboxMessage,
    Outcome,
    Refusal,
    UploadRequest,
    Verdict,
)

PROJECT = "ingestd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def ingestd_config_schema(plugin_name: str) -> type | None:
    """Declare the type of your plugin's config table, ``[plugins.<name>]``.

    Called once at start-up for each plugin, with ``plugin_name`` set to the
    name of the plugin being configured; answer only for your own name (and
    ``None`` otherwise). Return a ``msgspec.Struct`` subclass (or a
    ``dataclass``); the table is converted to it, and an invalid table stops
    the daemon with a message naming the key. The result is ``ctx.config`` in
    processing hooks and ``config`` in ``ingestd_policy``. Plugins that
    return nothing get the table as a plain dict (empty if absent).

    firstresult: the first non-None answer is used. Sync only.
    """


@hookspec
def ingestd_policy(request: UploadRequest, config: Any) -> Refusal | None:
    """Decide whether an upload may start, before any bytes are accepted.

    Runs when a client creates an upload (original API ``init``, ``POST
    /v1/uploads``, tus creation). ``request`` carries the tenant, filename,
    declared size, the API and client metadata — all client claims. Return a
    ``Refusal(reason, status=4xx, code=...)`` to refuse: the client gets that
    status as a problem response naming the reason. Return ``None`` to allow.

    All plugins run; the first refusal (in call order) is the answer. Keep it
    fast: it is on the request path. Sync (in a thread) or async.
    """


@hookspec(firstresult=True)
def ingestd_detect(ctx: HookContext) -> Detection | None:
    """Say what the file is: ``Detection(kind, format, mime_type)``.

    First stage of processing. Read the content with ``ctx.open()`` (sniff
    magic bytes; do not read the whole file unless needed) and use
    ``ctx.facts.filename`` as a hint. Return ``None`` if you do not recognise
    it.

    firstresult: plugins are asked in turn (the most recently registered
    first) until one answers, so a third-party detector can refine the
    built-in one. The answer is ``ctx.detection`` in later stages. Sync or
    async.
    """


@hookspec
def ingestd_validate(ctx: HookContext) -> Verdict | None:
    """Check that the content is well-formed for its type.

    Runs after detection for every file; look at ``ctx.detection`` and return
    ``None`` for formats you do not handle. Return ``Verdict.accept(**facts)``
    (facts such as row counts go into the results) or
    ``Verdict.reject(reason, **details)`` — e.g. the first bad line number.
    Stream the content with ``ctx.open()``; never load a large file whole.

    All plugins run; any rejection rejects the file. Sync (in a worker thread)
    or async.
    """


@hookspec
def ingestd_scan(ctx: HookContext) -> Verdict | None:
    """Look for dangerous or sensitive content: malware, unsafe pickles, PII.

    Runs after validation. Return ``Verdict.reject(reason, **details)`` to
    block the file, ``Verdict.accept(**findings)`` to report findings without
    blocking (e.g. PII counts under a ``report`` policy), or ``None``. Never
    put the sensitive values themselves in ``details`` or logs.

    All plugins run; any rejection rejects the file. Sync (in a worker thread)
    or async.
    """


@hookspec
def ingestd_describe(ctx: HookContext) -> dict[str, Any] | None:
    """Return metadata about the file (a JSON-serialisable dict).

    Runs after scanning. Each plugin's dict is stored under its name in the
    file's metadata (``GET /v1/files/{id}``), e.g. ``{"rows": 10, "columns":
    [...]}``. All plugins run. Sync (in a worker thread) or async.
    """


@hookspec
def ingestd_lineage(ctx: HookContext) -> list[str] | None:
    """Return the ids of files this file derives from (its parents).

    Runs after describe. ``ctx.facts.declared_metadata`` holds what the
    client declared (e.g. ``parents``); other plugins may link by content.
    The union of all answers is stored as the file's lineage. All plugins
    run. Sync or async.
    """


@hookspec
def ingestd_notify(ctx: HookContext, outcome: Outcome) -> dict[str, Any] | None:
    """Tell the world about the decision, after it is final.

    Runs once the file is accepted or rejected (``outcome.accepted``,
    ``outcome.reason``, every plugin's results). Errors here are recorded but
    do not change the outcome. Use a durable mechanism for anything that must
    arrive (the built-in webhooks plugin keeps an outbox). All plugins run.
    Sync (in a worker thread) or async.
    """


@hookspec
def ingestd_pipeline(ctx: HookContext, outcome: Outcome) -> str | None:
    """Enqueue a downstream job (fine-tuning, curation, ...) for the file.

    Runs after ``ingestd_notify``. Return the downstream job's id (it is
    recorded in the job's results) or ``None``. All plugins run. Sync or
    async.
    """


@hookspec
def ingestd_deliver(message: OutboxMessage, config: Any) -> None:
    """Deliver one message your plugin queued with ``ctx.outbox.enqueue``.

    Called by the daemon's outbox service only for messages of your own
    plugin, with your parsed config. Return normally when delivered; raise to
    have it retried with exponential backoff (``message.attempt`` counts
    from 1), or raise ``ingestd.plugins.DeliveryFailed`` when retrying cannot
    help (the message is kept as dead). Messages survive restarts, so
    delivery is at least once: give receivers a stable id (``message.id`` or
    your own) to deduplicate. Sync (in a worker thread) or async.
    """
