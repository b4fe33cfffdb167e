"""The OpenAPI description's helpers: a route's success response with its schema (the Struct it returns) and one
example; and its HTML viewers (ReDoc, Swagger UI), served from kb's own files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from litestar import Request, Router, get
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Example
from litestar.response import File


def ok(container: type, value: Any, description: str = "Success", status: int = 200) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=container,
            description=description,
            examples=[Example(summary="example", value=value)],
            generate_examples=False,
        )
    }


# The HTML viewers of the description, served with their assets from kb itself (service/web/vendor/apidocs, pinned
# there): nothing is loaded from a CDN or Google Fonts, so they work on an intranet without internet access, and their
# pages run no inline script: only kb's own files (the CSP below), with the description fetched from /schema.
APIDOCS_DIR = Path(__file__).parent / "web" / "vendor" / "apidocs"
REDOC_VERSION = "2.5.4"
SWAGGER_UI_VERSION = "5.35.0"
_ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}
# ReDoc and Swagger UI set inline styles (styled-components, React), ReDoc searches in a worker it starts from a blob:,
# and both draw icons as data: images; scripts and requests stay on kb's origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
{links}
</head>
"""


class _VendoredViewer:
    """What both viewers share: their files served under `<path>/assets/<name>` (by name: no path from the request
    reaches the file system) and the page's own CSP."""

    paths: list[str]
    assets: tuple[str, ...]

    def asset_url(self, request: Request[Any, Any, Any], name: str) -> str:
        return f"{request.app.openapi_config.path}{self.paths[0]}/assets/{name}"  # type: ignore[union-attr]

    def receive_router(self, router: Router) -> None:
        files = {name: APIDOCS_DIR / name for name in self.assets}

        @get(f"{self.paths[0]}/assets/{{name:str}}", include_in_schema=False, sync_to_thread=False,
             opt={"exclude_from_auth": True})  # fmt: skip
        def asset(name: str) -> File:
            path = files.get(name)
            if path is None:
                raise NotFoundException(f"no file {name}")
            return File(path, content_disposition_type="inline", media_type=_ASSET_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip

        router.register(asset)
        # The page Litestar made for this viewer (registered before this call) gets its CSP here: the app's default
        # for everything but the web page allows no script at all.
        for route in router.routes:
            for handler in getattr(route, "route_handlers", []):
                if set(getattr(handler, "paths", ())) & set(self.paths):
                    handler.response_headers = [ResponseHeader(name="Content-Security-Policy", value=DOCS_CSP)]


class RedocViewer(_VendoredViewer, RedocRenderPlugin):
    """ReDoc at /schema/redoc."""

    assets = ("redoc.standalone.js",)

    def __init__(self, path: str = "/redoc") -> None:
        super().__init__(path=path, google_fonts=False, favicon="", js_url="assets/redoc.standalone.js")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec = html.escape(self.get_openapi_json_route(request), quote=True)
        script = html.escape(self.asset_url(request, "redoc.standalone.js"), quote=True)
        body = f'<body>\n<redoc spec-url="{spec}"></redoc>\n<script src="{script}"></script>\n</body>\n</html>\n'
        return (_HEAD.format(title=f"{title}: API reference", links="") + body).encode()


class SwaggerViewer(_VendoredViewer, SwaggerRenderPlugin):
    """Swagger UI at /schema/swagger ("Try it out": Authorize with a kb key). Without Swagger UI's OAuth2 redirect
    page (kb's keys are bearer keys, and that page is an inline script): _VendoredViewer.receive_router comes first."""

    assets = ("swagger-ui-bundle.js", "swagger-ui.css", "kb-swagger-init.js")

    def __init__(self, path: str = "/swagger") -> None:
        super().__init__(path=path, favicon="", js_url="assets/swagger-ui-bundle.js", css_url="assets/swagger-ui.css")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec = html.escape(self.get_openapi_json_route(request), quote=True)
        css = html.escape(self.asset_url(request, "swagger-ui.css"), quote=True)
        scripts = "\n".join(
            f'<script src="{html.escape(self.asset_url(request, name), quote=True)}"></script>'
            for name in ("swagger-ui-bundle.js", "kb-swagger-init.js")
        )
        links = f'<link rel="stylesheet" href="{css}">'
        body = f'<body>\n<div id="swagger-ui" data-spec-url="{spec}"></div>\n{scripts}\n</body>\n</html>\n'
        return (_HEAD.format(title=f"{title}: API (Swagger UI)", links=links) + body).encode()
