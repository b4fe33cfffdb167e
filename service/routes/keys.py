"""API keys over HTTP, for administrators (the CLI's `kb keys` works on the registry directly).

A key manages only keys within its own reach: it grants only scopes it holds (admin holds them all) and groups it
belongs to ('*' only if it has '*'), never a later expiry than its own; it lists only keys whose groups are all its
own, and revoking any other key answers 404, as for a key that does not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body
from msgspec import Meta, Struct

from kb.models import SCOPES, ApiKey
from service.auth import Principal, requires
from service.openapi import ok
from service.state import Services

MAX_EXPIRES_IN_S = 10 * 365 * 86400


class KeyOut(Struct):
    key_id: str
    name: str
    prefix: str
    scopes: list[str]
    groups: list[str]
    created_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    expires_at: str | None  # None: never

    @classmethod
    def of(cls, key: ApiKey) -> "KeyOut":
        return msgspec.convert(key.to_dict(), cls)


class CreatedKey(KeyOut):
    key: str  # shown once

    @classmethod
    def created(cls, key: ApiKey, secret: str) -> "CreatedKey":
        return msgspec.convert({**key.to_dict(), "key": secret}, cls)


class KeyList(Struct):
    keys: list[KeyOut]


_KEY = {
    "key_id": "5e1f0c9a7b3d2e4f", "name": "support bot", "prefix": "kb_Zx81fQ2", "scopes": ["search", "ask"],
    "groups": ["staff"], "created_at": "2026-11-26T09:00:00+00:00", "revoked_at": None, "last_used_at": None,
    "expires_at": None,
}  # fmt: skip


KEY_EXAMPLE = _KEY
CREATED_KEY_EXAMPLE = {**_KEY, "key": "kb_Zx81fQ2…(shown once)"}
KEYS_EXAMPLE = {"keys": [_KEY]}

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
          responses=ok(CreatedKey, CREATED_KEY_EXAMPLE, status=201))  # fmt: skip
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
    ) -> CreatedKey:
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
        return CreatedKey.created(key, secret)

    @get(summary="The keys within the caller's groups (every key for an unrestricted admin; never the keys themselves)",
         responses=ok(KeyList, KEYS_EXAMPLE))  # fmt: skip
    async def list_keys(self, request: Request[Principal, Any, Any], services: Services) -> KeyList:
        return KeyList([KeyOut.of(k) for k in services.keys.list(by=request.user)])

    @delete("/{key_id:str}", summary="Revoke a key within the caller's groups (effective within seconds on every "
                                     "replica); any other key: 404")  # fmt: skip
    async def revoke_key(self, key_id: str, request: Request[Principal, Any, Any], services: Services) -> None:
        if not services.keys.revoke(key_id, by=request.user):
            raise NotFoundException(f"no key {key_id}")
