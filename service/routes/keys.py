"""API keys over HTTP, for administrators (the CLI's `kb keys` works on the registry directly).

A key manages only keys within its own reach: it grants only scopes it holds (admin holds them all) and groups it
belongs to ('*' only if it has '*'), never a later expiry than its own; it lists only keys whose groups are all its
own, and revoking any other key answers 404, as for a key that does not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body
from msgspec import Meta, Struct

from kb.models import SCOPES
from service.auth import Principal, requires
from service.schemas import EXAMPLES, CreatedKey, KeyList, ok
from service.state import Services

MAX_EXPIRES_IN_S = 10 * 365 * 86400


class CreateKeyRequest(Struct):
    name: str
    scopes: list[str]
    # Default: the configured default groups if the creating key holds them, else the creating key's own groups;
    # "*" for every group (only a key with "*" may grant it).
    groups: list[str] | None = None
    # Optional expiry, either in seconds from now or as a moment (RFC 3339); default: never (or, for a key created
    # by an expiring key, that key's expiry).
    expires_in_s: Annotated[int, Meta(ge=1, le=MAX_EXPIRES_IN_S)] | None = None
    expires_at: datetime | None = None


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    guards = [requires("admin")]

    @post(status_code=201, summary=f"Create an API key (scopes: {', '.join(SCOPES)}); the key is shown only here",
          description="A key grants only what it holds: its own scopes and groups, and no later expiry than its "
                      "own (403 otherwise). `expires_in_s` or `expires_at` makes the key expire; an expired key is "
                      "refused with 401 like a revoked one.",
          responses=ok(CreatedKey, EXAMPLES["created_key"]))  # fmt: skip
    async def create_key(
        self,
        data: Annotated[CreateKeyRequest, Body(examples=[
            Example(summary="a bot that searches and asks", value={"name": "support bot", "scopes": ["search", "ask"],
                                                                   "groups": ["staff"]}),
            Example(summary="a contractor's key for 30 days", value={"name": "contractor", "scopes": ["search"],
                                                                     "groups": ["eng"], "expires_in_s": 2592000}),
        ])],  # fmt: skip
        request: Request[Principal, Any, Any],
        services: Services,
    ) -> dict[str, Any]:
        if data.expires_in_s is not None and data.expires_at is not None:
            raise ClientException("give expires_in_s or expires_at, not both")
        expires_at = data.expires_at
        if data.expires_in_s is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=data.expires_in_s)
        try:
            key, secret = services.keys.create(data.name, data.scopes, data.groups, expires_at=expires_at,
                                               by=request.user)  # fmt: skip
        except ValueError as exc:
            raise ClientException(str(exc)) from exc
        return {**key.to_dict(), "key": secret}

    @get(summary="The keys within the caller's groups (every key for an unrestricted admin; never the keys themselves)",
         responses=ok(KeyList, EXAMPLES["keys"]))  # fmt: skip
    async def list_keys(self, request: Request[Principal, Any, Any], services: Services) -> dict[str, Any]:
        return {"keys": [k.to_dict() for k in services.keys.list(by=request.user)]}

    @delete("/{key_id:str}", summary="Revoke a key within the caller's groups (effective within seconds on every "
                                     "replica); any other key: 404")  # fmt: skip
    async def revoke_key(self, key_id: str, request: Request[Principal, Any, Any], services: Services) -> None:
        if not services.keys.revoke(key_id, by=request.user):
            raise NotFoundException(f"no key {key_id}")
