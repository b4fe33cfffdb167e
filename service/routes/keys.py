"""API keys over HTTP, for administrators (the CLI's `kb keys` works on the registry directly)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, delete, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body
from msgspec import Struct

from kb.models import SCOPES
from service.auth import requires
from service.schemas import EXAMPLES, CreatedKey, KeyList, ok
from service.state import Services


class CreateKeyRequest(Struct):
    name: str
    scopes: list[str]
    groups: list[str] | None = None  # default: the configured default groups; "*" for every group


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    guards = [requires("admin")]

    @post(status_code=201, summary=f"Create an API key (scopes: {', '.join(SCOPES)}); the key is shown only here",
          responses=ok(CreatedKey, EXAMPLES["created_key"]))  # fmt: skip
    async def create_key(
        self,
        data: Annotated[CreateKeyRequest, Body(examples=[Example(
            summary="a bot that searches and asks", value={"name": "support bot", "scopes": ["search", "ask"],
                                                            "groups": ["staff"]})])],  # fmt: skip
        services: Services,
    ) -> dict[str, Any]:
        try:
            key, secret = services.keys.create(data.name, data.scopes, data.groups)
        except ValueError as exc:
            raise ClientException(str(exc)) from exc
        return {**key.to_dict(), "key": secret}

    @get(summary="All keys (never the keys themselves)", responses=ok(KeyList, EXAMPLES["keys"]))
    async def list_keys(self, services: Services) -> dict[str, Any]:
        return {"keys": [k.to_dict() for k in services.keys.list()]}

    @delete("/{key_id:str}", summary="Revoke a key (effective within seconds on every replica)")
    async def revoke_key(self, key_id: str, services: Services) -> None:
        if not services.keys.revoke(key_id):
            raise NotFoundException(f"no key {key_id}")
