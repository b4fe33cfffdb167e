"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from litestar import get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.response import Response

from service.problems import classify_failure
from service.state import Services

PUBLIC: list[dict[str, list[str]]] = [{}]  # no key needed


@get(
    "/healthz", tags=["health"], summary="The process is up", security=PUBLIC,
    responses={200: ResponseSpec(data_container=dict[str, str], examples=[Example(value={"status": "ok"})],
                                 generate_examples=False, description="Alive")},  # fmt: skip
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


READY = {"ready": True, "degraded": False, "checks": {"registry": "ok", "index": "ok", "blobs": "ok", "generator": "ok"}}
DEGRADED = {"ready": True, "degraded": True, "checks": {"registry": "ok", "index": "ok", "blobs": "ok", "generator": (
    "degraded: the breaker to the generator server is open after: GeneratorUnavailable: cannot reach the generator "
    "server; the fallback engine answers")}}  # fmt: skip
NOT_READY = {"ready": False, "degraded": False, "checks": {"registry": "ok", "index": "ok", "blobs": "ok",
             "generator": "starting (or failed to start: see the log)"}}  # fmt: skip
# A check whose value starts so is ready: the service answers, with less (kb/adapters/fallback_generator.py).
DEGRADED_PREFIX = "degraded:"
WARMING = "warming up: one query embedding and one index query"


@get(
    "/readyz", tags=["health"], summary="The service can answer: warmed up, index, registry and generator reachable",
    description="503 with the failing check's reason while not ready (`warm_start` while the models are being loaded "
    "and warmed). 200 with `degraded: true` while the answers come from the fallback generator.", security=PUBLIC,
    responses={
        200: ResponseSpec(data_container=dict[str, Any], examples=[Example(summary="ready", value=READY),
                          Example(summary="ready, degraded", value=DEGRADED)], generate_examples=False,
                          description="Ready"),
        503: ResponseSpec(data_container=dict[str, Any], examples=[Example(value=NOT_READY)],
                          generate_examples=False, description="Not ready, with the reason"),
    },
)  # fmt: skip
async def readyz(services: Services) -> Response[dict[str, Any]]:
    container = services.container
    checks: dict[str, str] = {}
    probes: dict[str, Any] = {
        "registry": _in_thread(f"registry:{id(container)}", container.registry.pending_jobs),
        "index": _in_thread(f"index:{id(container)}", container.index.count),
        # Where uploads are kept and workers read them: a shared volume not mounted, a bucket gone, keys revoked.
        "blobs": _in_thread(f"blobs:{id(container)}", container.blobs.check),
    }
    generator = container.generator
    if not container.settings.generator.enabled:
        pass  # an ingest-and-search node: ready without one
    elif generator is None:
        checks["generator"] = "starting (or failed to start: see the log)"
    else:
        probes["generator"] = _generator_ready(generator)
    # Concurrently, each within CHECK_TIMEOUT_S: a dependency that hangs makes /readyz say so, never hang.
    results = await asyncio.gather(*(_bounded(probe) for probe in probes.values()))
    checks.update(zip(probes, results))
    if not getattr(container, "retrieval_warm", True):
        checks["warm_start"] = WARMING
    checks = {name: checks[name] for name in ("warm_start", "registry", "index", "blobs", "generator") if name in checks}
    degraded = any(v.startswith(DEGRADED_PREFIX) for v in checks.values())
    ready = all(v == "ok" or v.startswith(DEGRADED_PREFIX) for v in checks.values())
    return Response({"ready": ready, "degraded": degraded, "checks": checks}, status_code=200 if ready else 503)


# Longest a check may take; its thread is left to finish on its own, and the next /readyz does not start another
# while it is still running (a hung database never holds more than one thread per check).
CHECK_TIMEOUT_S = 3.0
# A check's answer serves every /readyz within this long: the route needs no key, and probes from the kubelet, the load
# balancer and whoever polls it must not each run a database query, an index count and a blob-store write.
CHECK_REUSE_S = 1.0
_EXECUTOR = ThreadPoolExecutor(max_workers=3, thread_name_prefix="kb-readyz")
_RUNNING: dict[str, tuple[float, Future[Any]]] = {}


async def _in_thread(key: str, check: Callable[[], Any]) -> str:
    now = time.monotonic()
    running = _RUNNING.get(key)
    if running is not None:
        started, future = running
        if not future.done() and now - started >= CHECK_TIMEOUT_S:
            return f"error: no answer for {now - started:.0f} s (the last check is still waiting)"
        if future.done() and now - getattr(future, "finished_at", started) >= CHECK_REUSE_S:
            running = None
    if running is None:  # none yet, or its answer is too old: start one; calls meanwhile wait for the same one
        future = _EXECUTOR.submit(check)
        future.add_done_callback(lambda done: setattr(done, "finished_at", time.monotonic()))
        _RUNNING[key] = (now, future)
    try:
        # Shielded: one caller's timeout must not cancel the check the others wait for.
        await asyncio.shield(asyncio.wrap_future(future))
    except Exception as exc:
        return f"error: {_describe(exc)}"
    return "ok"


def forget_answers(dependency: str) -> None:
    """A request has just seen `dependency` fail: its next check runs at once rather than repeat an earlier "ok".
    A check still running is kept (one thread per hung check)."""
    for key, (_, future) in list(_RUNNING.items()):
        if key.startswith(f"{dependency}:") and future.done():
            _RUNNING.pop(key, None)


async def _generator_ready(generator: Any) -> str:
    try:
        health = getattr(generator, "health", None)
        if health is not None:  # one with a fallback says which answers, and whether the service is degraded
            return str(await health())
        return "ok" if await generator.ready() else "not ready (its server does not answer /models with 200)"
    except Exception as exc:
        return f"error: {_describe(exc)}"


async def _bounded(probe: Any) -> str:
    try:
        return await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"error: no answer within {CHECK_TIMEOUT_S:g} s"


def _describe(exc: BaseException) -> str:
    failure = classify_failure(exc)
    return failure.reason if failure is not None else f"{type(exc).__name__}: {str(exc)[:300]}"
