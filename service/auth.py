"""API keys, the caller they identify (Principal), scope guards and the access filter every door applies.

Keys are 256-bit random tokens, so a plain SHA-256 digest is what is stored and looked up (a slow password hash
buys nothing against guessing 2^256 and would cost every request). The key itself is shown once, at creation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from kb.models import ALL_GROUPS, SCOPES, ApiKey, SearchFilter
from kb.ports import Registry
from kb.settings import AuthSettings

KEY_PREFIX = "kb_"
BOOTSTRAP_KEY_NAME = "local admin"
# Paths anyone may reach: liveness/readiness for orchestrators, the web page shell (it brings its own key) and the
# API description. None of them returns content.
PUBLIC_PATHS = ["^/healthz$", "^/readyz$", "^/$", "^/schema"]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the key), its scopes and the document groups it may see."""

    key_id: str
    name: str
    scopes: frozenset[str]
    groups: tuple[str, ...]

    @property
    def unrestricted(self) -> bool:
        return ALL_GROUPS in self.groups

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, groups: Iterable[str]) -> bool:
        return self.unrestricted or bool(set(groups) & set(self.groups))

    @property
    def visible_groups(self) -> list[str] | None:
        """The group filter for the index; None: every group."""
        return None if self.unrestricted else list(self.groups)

    @classmethod
    def from_key(cls, key: ApiKey) -> "Principal":
        return cls(key.key_id, key.name, frozenset(key.scopes), tuple(key.groups))


# Every caller when authentication is switched off (a single-user box behind its own gate).
LOCAL_ADMIN = Principal("local", "authentication disabled", frozenset(SCOPES), (ALL_GROUPS,))


def scoped_filter(principal: Principal, requested: SearchFilter | None) -> SearchFilter:
    """The caller's filter narrowed to what the caller may see: requested groups are intersected with the key's,
    never trusted. An empty intersection matches nothing."""
    allowed = principal.visible_groups
    result = dataclasses.replace(requested) if requested is not None else SearchFilter()
    if requested is not None and requested.groups is not None:
        result.groups = list(requested.groups) if allowed is None else [g for g in requested.groups if g in allowed]
    else:
        result.groups = allowed
    return result


def assignable_groups(principal: Principal, requested: Sequence[str], default: Sequence[str]) -> list[str]:
    """Groups for an upload: the requested ones, which the caller must belong to, or the configured default."""
    if not requested:
        return list(default)
    if not principal.unrestricted:
        foreign = sorted(set(requested) - set(principal.groups))
        if foreign:
            raise PermissionDeniedException(
                f"this key may not assign groups it does not belong to: {', '.join(foreign)}"
            )
    return list(dict.fromkeys(requested))


class ApiKeyService:
    """Creates, lists, revokes and verifies keys. Verification is cached for a few seconds (one registry query
    per key per `cache_s`, not per request), so a revocation takes effect within that time."""

    def __init__(self, registry: Registry, settings: AuthSettings, *, cache_s: float = 5.0) -> None:
        self._registry = registry
        self._settings = settings
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def create(self, name: str, scopes: Sequence[str], groups: Sequence[str] | None = None) -> tuple[ApiKey, str]:
        """The stored key and the key itself (shown once)."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
        groups = [g.strip() for g in (groups or self._settings.default_groups) if g.strip()]
        if not groups:
            raise ValueError("a key needs at least one group ('*' for every group)")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=uuid.uuid4().hex[:16], name=name or "unnamed", prefix=secret[:10],
            scopes=list(dict.fromkeys(scopes)), groups=list(dict.fromkeys(groups)),
        )  # fmt: skip
        return self._registry.add_api_key(key, digest(secret)), secret

    def list(self) -> list[ApiKey]:
        return self._registry.list_api_keys()

    def revoke(self, key_id: str) -> bool:
        revoked = self._registry.revoke_api_key(key_id)
        with self._lock:
            self._cache.clear()
        return revoked

    def authenticate(self, secret: str) -> Principal | None:
        if not secret.startswith(KEY_PREFIX):
            return None
        key_digest = digest(secret)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_digest)
        if cached is not None and now - cached[0] < self._cache_s:
            principal = cached[1]
        else:
            key = self._registry.api_key_by_digest(key_digest)
            principal = Principal.from_key(key) if key is not None and key.active else None
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[key_digest] = (now, principal)
        if principal is not None and now - self._touched.get(principal.key_id, -1e9) > 60:
            # last_used_at to the minute: one write per key per minute, not one per request.
            self._touched[principal.key_id] = now
            self._registry.touch_api_key(principal.key_id)
        return principal

    def ensure_bootstrap_key(self, path: Path) -> str | None:
        """The local admin key in `path` (created on first start); None if switched off. A key file whose key was
        revoked is replaced."""
        if not self._settings.enabled or not self._settings.bootstrap_admin_key:
            return None
        if path.exists():
            secret = path.read_text().strip()
            if self.authenticate(secret) is not None:
                return secret
        _, secret = self.create(BOOTSTRAP_KEY_NAME, ["admin"], [ALL_GROUPS])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        return secret


def bearer_token(headers: Any) -> str | None:
    authorization = headers.get("authorization") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    """Sets `request.user` to the caller's Principal; 401 without a valid key."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        keys: ApiKeyService | None = getattr(connection.app.state, "api_keys", None)
        if keys is None:
            raise NotAuthorizedException("the service is starting")
        if not keys.enabled:
            return AuthenticationResult(user=LOCAL_ADMIN, auth=None)
        secret = bearer_token(connection.headers)
        if secret is None:
            raise NotAuthorizedException(
                "an API key is required: send 'Authorization: Bearer <key>' (create one with `kb keys create`)",
                headers={"WWW-Authenticate": 'Bearer realm="kb"'},
            )
        principal = keys.authenticate(secret)
        if principal is None:
            raise NotAuthorizedException(
                "the API key is unknown or revoked", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return AuthenticationResult(user=principal, auth=principal.key_id)


def requires(*scopes: str):  # noqa: ANN201 - a Litestar guard
    """A guard: the caller's key must hold one of `scopes` (admin holds them all)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal: Principal = connection.user
        if not any(principal.can(scope) for scope in scopes):
            raise PermissionDeniedException(f"this key lacks the scope {' or '.join(scopes)}")

    guard.__name__ = f"requires_{'_or_'.join(scopes)}"
    return guard
