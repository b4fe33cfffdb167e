"""Which store an error says is down, rather than the work being wrong: the registry, the index or the blob store.

The API maps such an error to a 503 (service/problems.py); the ingestion worker waits for the store instead of
spending a document's attempts on an outage (ingest/worker.py). Read by the exception's type and module: no adapter
is imported here.
"""

from __future__ import annotations

from collections.abc import Iterator

BOTOCORE_CONNECTION_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                              "ConnectionClosedError"}  # fmt: skip


def store_down(exc: BaseException) -> str | None:
    """"registry", "index" or "blobs" when `exc` itself says that store cannot be reached (or answered 5xx)."""
    from sqlalchemy import exc as sql

    kind, module = type(exc).__name__, type(exc).__module__
    if isinstance(exc, sql.OperationalError | sql.TimeoutError) or (
        isinstance(exc, sql.DBAPIError) and exc.connection_invalidated
    ):
        return "registry"
    if kind == "OperationalError" and module.startswith(("psycopg", "sqlite3")):
        return "registry"
    if module.startswith("qdrant_client"):
        status = getattr(exc, "status_code", None)
        if kind == "ResponseHandlingException" or (kind == "UnexpectedResponse" and (status or 0) >= 500):
            return "index"
    if module.startswith("botocore") and kind in BOTOCORE_CONNECTION_ERRORS:
        return "blobs"
    return None


def causes(exc: BaseException, depth: int = 4) -> Iterator[BaseException]:
    """`exc` and the errors it was raised from (`raise ... from`), at most `depth` of them."""
    current: BaseException | None = exc
    for _ in range(depth):
        if current is None:
            return
        yield current
        current = current.__cause__


def store_down_in_chain(exc: BaseException) -> str | None:
    """store_down of `exc` or of the errors it was raised from."""
    return next((store for cause in causes(exc) if (store := store_down(cause)) is not None), None)
