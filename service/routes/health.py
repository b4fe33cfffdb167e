"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.response import Response

from service.state import Services


PUBLIC: list[dict[str, list[str]]] = [{}]  # no key needed


@get(
    "/healthz", tags=["health"], summary="The process is up", security=PUBLIC,
    responses={200: ResponseSpec(data_container=dict[str, str], examples=[Example(value={"status": "ok"})],
                                 generate_examples=False, description="Alive")},  # fmt: skip
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


READY = {"ready": True, "checks": {"registry": "ok", "index": "ok", "generator": "ok"}}
NOT_READY = {"ready": False, "checks": {"registry": "ok", "index": "ok",
                                        "generator": "starting (or failed to start: see the log)"}}  # fmt: skip


@get(
    "/readyz", tags=["health"], summary="The service can answer: index, registry and generator reachable",
    description="503 with the failing check's reason while not ready.", security=PUBLIC,
    responses={
        200: ResponseSpec(data_container=dict[str, Any], examples=[Example(value=READY)], generate_examples=False,
                          description="Ready"),
        503: ResponseSpec(data_container=dict[str, Any], examples=[Example(value=NOT_READY)],
                          generate_examples=False, description="Not ready, with the reason"),
    },
)  # fmt: skip
async def readyz(services: Services) -> Response[dict[str, Any]]:
    checks: dict[str, str] = {}
    try:
        services.container.registry.pending_jobs()
        checks["registry"] = "ok"
    except Exception as exc:
        checks["registry"] = f"error: {exc}"
    try:
        services.container.index.count()
        checks["index"] = "ok"
    except Exception as exc:
        checks["index"] = f"error: {exc}"
    generator = services.container.generator
    if not services.container.settings.generator.enabled:
        pass  # an ingest-and-search node: ready without one
    elif generator is None:
        checks["generator"] = "starting (or failed to start: see the log)"
    else:
        try:
            checks["generator"] = "ok" if await generator.ready() else "not ready"
        except Exception as exc:
            checks["generator"] = f"error: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
