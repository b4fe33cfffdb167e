"""API keys, the caller they identify (Principal), scope guards and the access filter every door applies.

Keys are 256-bit random tokens, so a plain SHA-256 digest is what is stored and looked up (a slow password hash
buys nothing against guessing 2^256 and would cost every request). The key itself is shown once, at creation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from kb.models import ALL_GROUPS, SCOPES, ApiKey, SearchFilter
from kb.ports import KeyStore
from kb.settings import AuthSettings
from service.routes.session import (
    CSRF_HEADER,
    PROXY_AUTH,
    SESSION_AUTH,
    SESSION_COOKIE,
    UNSAFE_METHODS,
    session_principal,
)

KEY_PREFIX = "kb_"
BOOTSTRAP_KEY_NAME = "local admin"
# Paths anyone may reach: liveness/readiness for orchestrators, the web page shell (it brings its own key) and the
# API description. None of them returns content.
PUBLIC_PATHS = ["^/healthz$", "^/readyz$", "^/$", "^/schema", "^/slack/events$"]  # Slack's: signed (service.slack)


# A group is a word an upload can name in a comma-separated form field: no commas, spaces or invisible characters.
_GROUP = re.compile(r"[\w.@:\-]{1,100}")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the key), its scopes and the document groups it may see."""

    key_id: str  # the caller's stable id (what owns its conversations): a key's id, or `user:<name>` (the proxy)
    name: str
    scopes: frozenset[str]
    groups: tuple[str, ...]
    expires_at: datetime | None = None
    user: str | None = None  # the user an authenticating proxy named (None: a key)
    email: str | None = None

    @property
    def unrestricted(self) -> bool:
        return ALL_GROUPS in self.groups

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    def holds(self, groups: Iterable[str]) -> bool:
        """Every one of `groups` is the caller's own (an unrestricted key holds them all; '*' only it holds)."""
        return self.unrestricted or set(groups) <= set(self.groups)

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, groups: Iterable[str]) -> bool:
        return self.unrestricted or bool(set(groups) & set(self.groups))

    @property
    def visible_groups(self) -> list[str] | None:
        """The group filter for the index; None: every group."""
        return None if self.unrestricted else list(self.groups)

    @classmethod
    def from_key(cls, key: ApiKey) -> Principal:
        return cls(key.key_id, key.name, frozenset(key.scopes), tuple(key.groups), key.expires_at)


PROXY_ID_PREFIX = "user:"
MAX_USER_CHARS = 200
MAX_EMAIL_CHARS = 320


class TrustedProxy:
    """Sign-in through an authenticating reverse proxy: the user (and email, groups) its headers name, believed only
    when the request's TCP peer is one of `AuthSettings.trusted_proxies`. The peer is the ASGI scope's `client`, never
    a forwarding header; a header from any other address is ignored."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._networks = [ipaddress.ip_network(entry, strict=False) for entry in settings.trusted_proxies]
        self._user = settings.proxy_user_header.lower().encode("latin-1")
        self._email = settings.proxy_email_header.lower().encode("latin-1")
        self._groups = settings.proxy_groups_header.lower().encode("latin-1")

    @property
    def enabled(self) -> bool:
        return bool(self._networks)

    def trusts(self, scope: Any) -> bool:
        client = scope.get("client")
        if not self._networks or not client:
            return False
        try:
            address = ipaddress.ip_address(str(client[0]).split("%")[0])
        except ValueError:  # a test client's name, a Unix socket
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def named_user(self, scope: Any) -> bool:
        """The request comes from a trusted proxy and names a user."""
        return self.trusts(scope) and bool(self._values(scope, self._user))

    def user_of(self, scope: Any) -> str | None:
        """The user a trusted proxy names (never raises): e.g. to count a rate limit per user rather than per the
        proxy's address, which every proxied user shares."""
        try:
            principal = self.principal(scope)
        except NotAuthorizedException:
            return None
        return principal.user if principal is not None else None

    def principal(self, scope: Any) -> Principal | None:
        """The user the trusted proxy names; None when the peer is not trusted or names no user. 401 when a trusted
        proxy sends a user header that is not one user name (empty, several different ones, control characters)."""
        if not self.trusts(scope):
            return None
        users = {v.strip() for v in self._values(scope, self._user)}
        if not users:
            return None
        user = users.pop() if len(users) == 1 else ""
        if not user or len(user) > MAX_USER_CHARS or "," in user or _UNPRINTABLE.search(user):
            raise NotAuthorizedException(
                f"the proxy's {self._settings.proxy_user_header} header does not name one user",
                headers={"WWW-Authenticate": 'Bearer realm="kb"'},
            )
        emails = [v.strip() for v in self._values(scope, self._email) if v.strip()]
        email = emails[0] if emails else None
        if email is not None and (len(email) > MAX_EMAIL_CHARS or "@" not in email or _UNPRINTABLE.search(email)
                                  or any(c.isspace() for c in email)):  # fmt: skip
            email = None
        named = proxy_groups(",".join(self._values(scope, self._groups)))
        groups = list(dict.fromkeys([*named, *self._settings.proxy_groups]))
        scopes = set(self._settings.proxy_scopes)
        if set(named) & set(self._settings.proxy_ingest_groups):
            scopes.add("ingest")
        if set(named) & set(self._settings.proxy_admin_groups):
            scopes.add("admin")
        return Principal(f"{PROXY_ID_PREFIX}{user}", user, frozenset(scopes), tuple(groups), user=user, email=email)

    @staticmethod
    def _values(scope: Any, name: bytes) -> list[str]:
        values = []
        for header, raw in scope.get("headers") or ():
            if header.lower() == name:
                try:
                    values.append(bytes(raw).decode("utf-8"))
                except UnicodeDecodeError:
                    values.append(bytes(raw).decode("latin-1"))
        return values


def from_browser(auth: Any) -> bool:
    """The request (its `request.auth`) was signed in by what a browser sends by itself: the page's session cookie or
    the proxy's headers (not a key sent by a program)."""
    return auth in (SESSION_AUTH, PROXY_AUTH)


def proxy_groups(header: str) -> list[str]:
    """The groups a proxy's comma-separated header names: each trimmed; empty entries, '*' (kb's "every group", which
    no proxy may grant) and names that are no group name (spaces inside, control characters) left out."""
    groups = (g.strip() for g in header.split(","))
    return list(dict.fromkeys(g for g in groups if g and g != ALL_GROUPS and _GROUP.fullmatch(g)))


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


def default_groups(principal: Principal, default: Sequence[str]) -> list[str]:
    """Groups of an upload (or a new key) that names none: the configured default when the caller holds all of it
    (an unrestricted key, or one in every default group), otherwise every group of the caller's own. So the caller
    can always read back what it uploaded, and nothing lands in an audience the caller is not part of."""
    if default and principal.holds(default):
        return list(dict.fromkeys(default))
    return [g for g in dict.fromkeys(principal.groups) if g != ALL_GROUPS] or list(default)


def assignable_groups(principal: Principal, requested: Sequence[str], default: Sequence[str]) -> list[str]:
    """Groups for an upload: the requested ones, which the caller must belong to, or `default_groups`."""
    if not requested:
        return default_groups(principal, default)
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

    def __init__(self, registry: KeyStore, settings: AuthSettings, *, cache_s: float = 5.0) -> None:
        self._registry = registry
        self._settings = settings
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self.proxy = TrustedProxy(settings)
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        groups: Sequence[str] | None = None,
        *,
        expires_at: datetime | None = None,
        by: Principal | None = None,
    ) -> tuple[ApiKey, str]:
        """The stored key and the key itself (shown once). `by`: the key creating it over HTTP (None: the local
        CLI, which holds the registry itself), which can grant only what it holds: its scopes (admin holds them
        all), its groups ('*' only if it has '*'), and no later expiry than its own. Without groups the new key
        gets `default_groups` of its creator. ValueError: bad input (400); PermissionDeniedException: beyond the
        creator's own rights (403)."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
        if len(name or "") > 200 or _UNPRINTABLE.search(name or ""):
            raise ValueError("a key's name is at most 200 printable characters")
        groups = [g.strip() for g in groups or [] if g.strip()]
        bad = [g for g in groups if g != ALL_GROUPS and not _GROUP.fullmatch(g)]
        if bad:
            raise ValueError(f"group names are 1 to 100 letters, digits, '.', '_', '-', '@' or ':' ; got {bad[0]!r}")
        if not groups:
            default = self._settings.default_groups
            groups = default_groups(by, default) if by is not None else list(default)
        if not groups:
            raise ValueError("a key needs at least one group ('*' for every group)")
        if expires_at is not None:
            expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
            if expires_at <= datetime.now(UTC):
                raise ValueError(f"expires_at {expires_at.isoformat()} is in the past")
        if by is not None:
            beyond = sorted(s for s in set(scopes) if not by.can(s))
            if beyond:
                raise PermissionDeniedException(f"this key may not grant scopes it does not hold: {', '.join(beyond)}")
            if not by.holds(groups):
                foreign = sorted(set(groups) - set(by.groups))
                raise PermissionDeniedException(
                    f"this key may not grant groups it does not belong to: {', '.join(foreign)}"
                )
            if by.expires_at is not None:
                if expires_at is not None and expires_at > by.expires_at:
                    raise PermissionDeniedException(
                        f"this key expires at {by.expires_at.isoformat()}: a key it creates may not outlive it"
                    )
                expires_at = expires_at or by.expires_at
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=uuid.uuid4().hex[:16], name=name or "unnamed", prefix=secret[:10],
            scopes=list(dict.fromkeys(scopes)), groups=list(dict.fromkeys(groups)), expires_at=expires_at,
        )  # fmt: skip
        return self._registry.add_api_key(key, digest(secret)), secret

    def list(self, *, by: Principal | None = None) -> list[ApiKey]:
        """Every key; for a key restricted to some groups (`by`), only keys within its own groups."""
        return [k for k in self._registry.list_api_keys() if by is None or by.holds(k.groups)]

    def revoke(self, key_id: str, *, by: Principal | None = None) -> bool:
        """False if there is no such key, or (`by`) it is not within the revoking key's groups."""
        if by is not None and not by.unrestricted:
            key = next((k for k in self._registry.list_api_keys() if k.key_id == key_id), None)
            if key is None or not by.holds(key.groups):
                return False
        revoked = self._registry.revoke_api_key(key_id)
        with self._lock:
            self._cache.clear()
        return revoked

    def authenticate(self, secret: str) -> Principal | None:
        return self.verify(secret)[0]

    def verify(self, secret: str) -> tuple[Principal | None, str]:
        """(the caller, "") or (None, why the key is refused: unknown or revoked, or expired)."""
        refused = "the API key is unknown or revoked"
        if not secret.startswith(KEY_PREFIX):
            return None, refused
        key_digest = digest(secret)
        now = time.monotonic()
        principal = self._cached(key_digest, lambda: self._registry.api_key_by_digest(key_digest))
        if principal is not None and principal.expires_at is not None and principal.expired:
            # Checked on every request (not only when the cache is refreshed): an expiry is exact.
            return None, f"the API key expired at {principal.expires_at.isoformat()}"
        if principal is None:
            return None, refused
        if now - self._touched.get(principal.key_id, -1e9) > 60:
            # last_used_at to the minute: one write per key per minute, not one per request.
            self._touched[principal.key_id] = now
            self._registry.touch_api_key(principal.key_id)
        return principal, ""

    def authenticate_id(self, key_id: str) -> Principal | None:
        """The caller a web-page session names by its key's id: None if that key is unknown, revoked or expired.
        Cached like `verify`, so revoking a key ends its sessions within `cache_s` as well."""
        principal = self._cached(f"id:{key_id}", lambda: self._registry.api_key_by_id(key_id))
        return None if principal is None or principal.expired else principal

    def _cached(self, cache_key: str, load: Callable[[], ApiKey | None]) -> Principal | None:
        """The unrevoked key's Principal, from the registry at most once per `cache_s` per `cache_key`."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        key = load()
        principal = Principal.from_key(key) if key is not None and key.revoked_at is None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[cache_key] = (now, principal)
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
        if secret is None and SESSION_COOKIE in connection.cookies:  # the web page (service.routes.session)
            try:
                return session_principal(connection, keys)
            except NotAuthorizedException:
                # A stale cookie (an expired key session) in a browser the proxy signs in: the proxy's user.
                if not keys.proxy.named_user(connection.scope):
                    raise
        if secret is None and (proxied := keys.proxy.principal(connection.scope)) is not None:
            # Browsers send the proxy's sign-in by themselves, as they send cookies: the same CSRF rule as sessions.
            if connection.scope.get("method", "GET") in UNSAFE_METHODS and connection.headers.get(CSRF_HEADER) != "1":
                raise PermissionDeniedException(
                    "a request signed in through the proxy must send the header 'X-KB-Request: 1'"
                )
            return AuthenticationResult(user=proxied, auth=PROXY_AUTH)
        if secret is None:
            raise NotAuthorizedException(
                "an API key is required: send 'Authorization: Bearer <key>' (create one with `kb keys create`)",
                headers={"WWW-Authenticate": 'Bearer realm="kb"'},
            )
        principal, refused = keys.verify(secret)
        if principal is None:
            raise NotAuthorizedException(refused, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return AuthenticationResult(user=principal, auth=principal.key_id)


class FailedAuthLimitMiddleware:
    """Failed authentication counts against the caller's address: past `limit` refusals (401) in `window_s`, the
    address gets 429 instead, until the window ends. Random keys are thus limited like any other requests (each
    would otherwise be a new key to the per-key rate limit). A valid key from the same address is unaffected: only
    refusals are counted and answered 429. The count lives in the rate limit's store (Redis: shared by replicas).
    Sits right outside ApiKeyAuthMiddleware, whose 401 passes through it as an exception."""

    def __init__(self, app: Any, *, limit: int, window_s: int, store: str = "rate_limit") -> None:
        self.app = app
        self.limit = limit
        self.window_s = window_s
        self.store = store

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except NotAuthorizedException as exc:
            if scope["type"] != "http" or self.limit <= 0 or not _presents_credentials(scope):
                # Only a refused credential is a guess worth limiting; a request that sent none (the signed-out web
                # page asking who is signed in) guesses nothing, and many users may share an address behind a proxy.
                raise
            address = (scope.get("client") or ("unknown",))[0]
            retry_after = await self._count(scope["app"].stores.get(self.store), f"failed_auth:addr:{address}")
            if retry_after is not None:
                raise TooManyRequestsException(
                    f"too many requests with a missing or invalid API key from this address; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                ) from exc
            raise

    async def _count(self, store: Any, key: str) -> int | None:
        """One more refusal; the seconds until the window ends if the address is past its limit, else None."""
        now = int(time.time())
        raw = await store.get(key)
        count, reset = (int(part) for part in raw.decode().split(":")) if raw else (0, 0)
        if reset <= now:
            count, reset = 0, now + self.window_s
        count += 1
        await store.set(key, f"{count}:{reset}", expires_in=max(1, reset - now))
        return max(1, reset - now) if count > self.limit else None


def _presents_credentials(scope: Any) -> bool:
    for name, value in scope.get("headers") or ():
        if name in (b"authorization", b"x-api-key"):
            return True
        if name == b"cookie" and b"kb_session=" in value:
            return True
    return False


def requires(*scopes: str):
    """A guard: the caller's key must hold one of `scopes` (admin holds them all)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal: Principal = connection.user
        if not any(principal.can(scope) for scope in scopes):
            raise PermissionDeniedException(f"this key lacks the scope {' or '.join(scopes)}")

    guard.__name__ = f"requires_{'_or_'.join(scopes)}"
    return guard
