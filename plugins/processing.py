"""Running the processing hooks over a completed file, plugin by plugin.

Each hook implementation is called on its own, so that every plugin's
answer, error or timeout is recorded under its name, and one failing plugin
cannot hide the others' results. Sync implementations run in worker threads;
async ones on the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import msgspec
import pluggy
import trio

from .manager import Plugins
from .types import (
    Detection,
    FileFacts,
    FileLookup,
    HookContext,
    Outbox,
    Outcome,
    Refusal,
    UploadRequest,
    Verdict,
)

log = logging.getLogger("ingestd.plugins")

ErrorCallback = Callable[[str, str], None]


class PluginFailed(Exception):
    """A plugin raised, timed out or answered with the wrong type."""


class PolicyUnavailable(Exception):
    """A policy plugin failed, so whether an upload may start is unknown."""

    def __init__(self, plugin: str) -> None:
        super().__init__(f"the upload policy could not be checked: plugin {plugin} failed")
        self.plugin = plugin


# The stages whose answers depend on the content (and name) only, so that an
# earlier run's answers can stand for a new file with the same decision key.
REUSABLE_STAGES = ("detect", "validate", "scan")


class Processing:
    """One run of the pipeline over one file."""

    def __init__(
        self,
        plugins: Plugins,
        facts: FileFacts,
        open_content: Callable[[], BinaryIO],
        *,
        outbox_for: Callable[[str], Outbox],
        files: FileLookup,
        limiter: trio.CapacityLimiter | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.plugins = plugins
        self.facts = facts
        self.open_content = open_content
        self.outbox_for = outbox_for
        self.files = files
        self.limiter = limiter
        self.on_error = on_error
        self.results: dict[str, dict[str, Any]] = {}
        # Seconds each plugin spent per stage, for operators and benchmarks.
        self.timings: dict[str, dict[str, float]] = {}
        self.detection: Detection | None = None
        self.rejections: list[str] = []
        self.errors: list[str] = []
        # (plugin, stage) of every failed call, notify and pipeline included.
        self.failed: list[tuple[str, str]] = []
        self.metadata: dict[str, Any] = {}
        self.parents: list[str] = []
        # The job whose deciding answers this run took (`reuse`), if any.
        self.reused_from: str | None = None

    async def run(self) -> Outcome:
        """detect → validate → scan → describe → lineage → verdict → notify → pipeline."""
        outcome = await self.decide()
        return await self.announce(outcome)

    def reuse(
        self, results: Mapping[str, Mapping[str, Any]], detection: Detection | None, job_id: str
    ) -> None:
        """Take the answers of `REUSABLE_STAGES` from an earlier job that accepted
        the same content under the same decision key (`Plugins.decision_key`)
        instead of asking the plugins again. Each reused answer is marked with
        ``reused_from_job``, so that nobody takes it for a fresh scan; describe
        and lineage still run for this file."""
        for plugin, stages in results.items():
            kept = {
                stage: {**answer, "reused_from_job": job_id}
                for stage, answer in stages.items()
                if stage in REUSABLE_STAGES and isinstance(answer, Mapping)
            }
            if kept:
                self.results[plugin] = kept
        self.detection = detection
        self.reused_from = job_id

    async def decide(self) -> Outcome:
        """The stages up to the verdict. The caller records it, then `announce`s it."""
        if self.reused_from is None:
            await self._detect()
            for stage in ("validate", "scan"):
                for name, verdict in await self._all(stage, Verdict):
                    if not verdict.ok:
                        self.rejections.append(f"{name}: {verdict.reason}")
        for name, described in await self._all("describe", dict):
            self.metadata[name] = described
        for _, parents in await self._all("lineage", list):
            self.parents += [str(p) for p in parents if str(p) not in self.parents]
        return self._outcome()

    # The deciding stages may run in another process (see plugins/worker.py);
    # these carry what they found back.

    def export_state(self) -> dict[str, Any]:
        detection = dataclasses.asdict(self.detection) if self.detection else None
        return {
            "results": self.results,
            "timings": self.timings,
            "detection": detection,
            "rejections": self.rejections,
            "errors": self.errors,
            "failed": self.failed,
            "metadata": self.metadata,
            "parents": self.parents,
        }

    def import_state(self, state: dict[str, Any]) -> Outcome:
        self.results = state["results"]
        self.timings = state["timings"]
        self.detection = Detection(**state["detection"]) if state["detection"] else None
        self.rejections = state["rejections"]
        self.errors = state["errors"]
        self.failed = [tuple(f) for f in state["failed"]]
        self.metadata = state["metadata"]
        self.parents = state["parents"]
        return self._outcome()

    def record_failure(self, plugin: str, stage: str, detail: str) -> None:
        """Record a failure outside any one hook call (e.g. a crashed worker)."""
        self.results.setdefault(plugin, {})[stage] = {"error": detail}
        self.errors.append(f"{plugin} failed in {stage}: {detail}")
        self.failed.append((plugin, stage))

    async def announce(self, outcome: Outcome) -> Outcome:
        """notify and pipeline; their errors are recorded but change nothing."""
        await self._all("notify", dict, outcome=outcome)
        await self._all("pipeline", str, outcome=outcome)
        return dataclasses.replace(outcome, results=self.results)

    def _outcome(self) -> Outcome:
        reasons = list(self.rejections)
        if self.plugins.settings.on_error == "reject":
            reasons += self.errors
        return Outcome(
            accepted=not reasons,
            reason="; ".join(reasons),
            results={k: dict(v) for k, v in self.results.items()},
            detection=self.detection,
            metadata=self.metadata,
            parents=tuple(self.parents),
        )

    async def _detect(self) -> None:
        for impl in self.plugins.hookimpls("ingestd_detect"):
            answer = await self._call(impl, "detect", Detection)
            if answer is not None:
                self.detection = answer
                return

    async def _all(self, stage: str, kind: type, **extra: Any) -> list[tuple[str, Any]]:
        answers = []
        for impl in self.plugins.hookimpls(f"ingestd_{stage}"):
            answer = await self._call(impl, stage, kind, **extra)
            if answer is not None:
                answers.append((impl.plugin_name, answer))
        return answers

    def context(self, plugin_name: str) -> HookContext:
        return HookContext(
            facts=self.facts,
            config=self.plugins.configs.get(plugin_name, {}),
            plugin_name=plugin_name,
            detection=self.detection,
            results={k: dict(v) for k, v in self.results.items()},
            rejections=tuple(self.rejections),
            log=logging.getLogger(f"ingestd.plugins.{plugin_name}"),
            outbox=self.outbox_for(plugin_name),
            files=self.files,
            _open=self.open_content,
        )

    async def _call(self, impl: pluggy.HookImpl, stage: str, kind: type, **extra: Any) -> Any:
        name = impl.plugin_name
        available = {"ctx": self.context(name), **extra}
        # A hook implementation gets only the arguments it names.
        kwargs = {k: available[k] for k in impl.argnames if k in available}
        started = trio.current_time()
        try:
            answer = await call_hook(
                impl.function, kwargs, self.plugins.settings.timeout, self.limiter
            )
            if answer is not None and not isinstance(answer, kind):
                raise PluginFailed(
                    f"returned {type(answer).__name__}, expected {kind.__name__} or None"
                )
            recorded = None if answer is None else _jsonable(answer)
        except Exception as exc:  # a plugin's failure is data, not a crash
            self._timed(name, stage, started)
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, trio.TooSlowError):
                detail = f"timed out after {self.plugins.settings.timeout:g} s"
            log.warning(
                "plugin %s failed in %s: %s",
                name,
                stage,
                detail,
                exc_info=exc,
                extra={"plugin": name, "stage": stage, "error": detail},
            )
            self.results.setdefault(name, {})[stage] = {"error": detail}
            self.failed.append((name, stage))
            if stage not in ("notify", "pipeline"):
                self.errors.append(f"{name} failed in {stage}: {detail}")
            if self.on_error is not None:
                self.on_error(name, stage)
            return None
        self._timed(name, stage, started)
        if recorded is not None:
            self.results.setdefault(name, {})[stage] = recorded
        return answer

    def _timed(self, plugin: str, stage: str, started: float) -> None:
        seconds = round(trio.current_time() - started, 6)
        self.timings.setdefault(plugin, {})[stage] = seconds


async def call_hook(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    timeout: float,
    limiter: trio.CapacityLimiter | None = None,
) -> Any:
    """Call a hook implementation: async on the loop, sync in a worker thread."""
    with trio.fail_after(timeout):
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        # A thread that overruns is abandoned (Python cannot stop it); its
        # result is ignored.
        result = await trio.to_thread.run_sync(
            functools.partial(fn, **kwargs), abandon_on_cancel=True, limiter=limiter
        )
        if inspect.isawaitable(result):
            result = await result
        return result


def _jsonable(answer: Any) -> Any:
    if isinstance(answer, Verdict):
        return {"ok": answer.ok, "reason": answer.reason, **msgspec.to_builtins(answer.details)}
    if dataclasses.is_dataclass(answer):
        return msgspec.to_builtins(dataclasses.asdict(answer))
    if isinstance(answer, str):
        return {"value": answer}
    if isinstance(answer, list):
        return {"value": msgspec.to_builtins(answer)}
    return msgspec.to_builtins(answer)


async def run_policy(
    plugins: Plugins,
    request: UploadRequest,
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> Refusal | None:
    """Ask every `ingestd_policy` implementation; the first refusal wins.

    A policy plugin that fails is logged; under ``on_error = "reject"``
    `PolicyUnavailable` is raised (the server's fault, not the client's).
    """
    for impl in plugins.hookimpls("ingestd_policy"):
        available = {"request": request, "config": plugins.configs.get(impl.plugin_name, {})}
        kwargs = {k: available[k] for k in impl.argnames if k in available}
        try:
            answer = await call_hook(impl.function, kwargs, plugins.settings.timeout, limiter)
        except Exception as exc:
            log.warning(
                "policy plugin %s failed: %s",
                impl.plugin_name,
                exc,
                exc_info=exc,
                extra={"plugin": impl.plugin_name, "stage": "policy", "error": str(exc)},
            )
            if plugins.settings.on_error == "reject":
                raise PolicyUnavailable(impl.plugin_name) from exc
            continue
        if isinstance(answer, Refusal):
            return answer
    return None
