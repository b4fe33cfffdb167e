"""create_app(settings) -> Litestar. The lifespan opens the adapters, starts the generator and the ingest worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.response import File

from kb.container import Container
from kb.settings import Settings
from service.routes.ask import ask, conversation
from service.routes.documents import DocumentController
from service.routes.health import healthz, readyz
from service.routes.search import search
from service.state import Services

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"


def _services(state: State) -> Services:
    return state.services


@get("/", include_in_schema=False)
async def index_page() -> File:
    return File(WEB_DIR / "index.html", content_disposition_type="inline", media_type="text/html")


async def _start_generator(services: Services) -> None:
    try:
        await services.start_generator()
    except asyncio.CancelledError:
        raise
    except Exception:
        # /readyz reports the generator as not started; the log says why.
        log.exception("the generator failed to start")


def create_app(settings: Settings | None = None, *, with_generator: bool | None = None) -> Litestar:
    settings = settings or Settings()
    if with_generator is None:
        with_generator = settings.generator.enabled

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        container = await asyncio.to_thread(Container.open, settings)
        generator_task: asyncio.Task[None] | None = None
        try:
            services = await Services.open(container, with_generator=False)
            app.state.services = services
            services.worker.start()
            if with_generator:
                # The engine takes seconds to start: serve /healthz, search and uploads meanwhile; /readyz says when.
                generator_task = asyncio.create_task(_start_generator(services))
            try:
                yield
            finally:
                if generator_task is not None and not generator_task.done():
                    generator_task.cancel()
                await asyncio.to_thread(services.worker.stop)
        finally:
            await container.aclose()

    return Litestar(
        route_handlers=[DocumentController, search, ask, conversation, healthz, readyz, index_page],
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        lifespan=[lifespan],
        # Several files per request; each file is checked against max_upload_bytes with a precise message.
        request_max_body_size=settings.ingest.max_upload_bytes * 4 + 1024 * 1024,
        openapi_config=OpenAPIConfig(title="kb", version="0.1.0", path="/schema"),
    )
