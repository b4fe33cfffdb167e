"""The OpenAPI description's helpers: a route's success response with its schema (the Struct it returns) and one
example."""

from __future__ import annotations

from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example


def ok(container: type, value: Any, description: str = "Success", status: int = 200) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=container,
            description=description,
            examples=[Example(summary="example", value=value)],
            generate_examples=False,
        )
    }
