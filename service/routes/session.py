"""The web page's session: the page trades an API key once (POST /v1/session) for an HttpOnly cookie holding a
short-lived signed page token, so that no script (the page's own, or one inside an uploaded original) can ever read
a key. The auth middleware (service.auth) accepts the cookie when a request carries no key header.

A token is `key_id.expiry.nonce.signature`: HMAC-SHA256 over the first three with the session secret. It names a key,
so revoking that key ends its sessions (within the key cache's few seconds); it holds nothing secret of its own.
Requests authorised by the cookie with an unsafe method must send `X-KB-Request: 1` (CSRF: a cross-site form cannot
set a header, and SameSite=Strict keeps the cookie off cross-site requests as well).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Request, delete, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import ClientException, NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AuthenticationResult
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.response import Response
from msgspec import Struct

from kb.ports import KeyStore
from kb.settings import Settings

if TYPE_CHECKING:  # service.auth imports this module
    from service.auth import ApiKeyService, Principal

SESSION_COOKIE = "kb_session"
CSRF_HEADER = "x-kb-request"
SESSION_AUTH = "session"  # request.auth of a caller authorised by the cookie
SECRET_FILE = "session.secret"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _secret_from_file(path: Path) -> bytes:
    """DATA_DIR/session.secret (mode 0600), created with 32 random bytes on first use, like admin.key."""
    try:
        existing = path.read_text().strip()
        if len(existing) >= 32:
            return existing.encode()
    except FileNotFoundError:  # first start: created below
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    try:
        os.link(temporary, path)  # atomic, and never replaces a secret another process wrote meanwhile
    except FileExistsError:
        if len(path.read_text().strip()) < 32:  # an empty file left by a crash: replace it
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_text().strip().encode()


class SessionTokens:
    """Signs and verifies page tokens."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionTokens:
        configured = settings.auth.session_secret.get_secret_value()
        secret = configured.encode() if configured else _secret_from_file(settings.resolved_data_dir / SECRET_FILE)
        return cls(secret, settings.auth.session_ttl_s)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, key_id: str, *, expires: int | None = None) -> tuple[str, int]:
        """(token, expiry as a Unix time) for the key `key_id`."""
        expiry = int(time.time() + self.ttl_s) if expires is None else expires
        payload = f"{key_id}.{expiry}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._sign(payload)}", expiry

    def verify(self, token: str) -> tuple[str, int] | None:
        """(key_id, expiry) of a genuine token that has not expired; None otherwise (signed out or not: see
        `SessionRevocations`)."""
        parsed = self.parse(token)
        return (parsed[0], parsed[1]) if parsed is not None else None

    def parse(self, token: str) -> tuple[str, int, str] | None:
        """(key_id, expiry, nonce) of a genuine token that has not expired; None otherwise."""
        parts = token.split(".")
        if len(parts) != 4 or not all(parts):
            return None
        key_id, expiry, nonce, signature = parts
        if not hmac.compare_digest(signature.encode(), self._sign(f"{key_id}.{expiry}.{nonce}").encode()):
            return None
        if not expiry.isdigit() or int(expiry) <= time.time():
            return None
        return key_id, int(expiry), nonce


class SessionRevocations:
    """Tokens signed out before their expiry, kept in the registry (every replica sees them). Checked on each
    cookie-authorised request, with a few seconds' cache of "not revoked" answers; a sign-out takes effect at once on
    the replica that handled it, within `cache_s` on the others."""

    def __init__(self, registry: KeyStore, cache_s: float = 5.0) -> None:
        self._registry = registry
        self._cache_s = cache_s
        self._checked: dict[str, float] = {}
        self._lock = threading.Lock()

    def revoke(self, nonce: str, expiry: int) -> None:
        self._registry.revoke_session(nonce, datetime.fromtimestamp(expiry, UTC))
        with self._lock:
            self._checked.pop(nonce, None)

    def revoked(self, nonce: str) -> bool:
        now = time.monotonic()
        with self._lock:
            checked = self._checked.get(nonce)
        if checked is not None and now - checked < self._cache_s:
            return False
        if self._registry.session_revoked(nonce):
            return True
        with self._lock:
            if len(self._checked) > 10_000:
                self._checked.clear()
            self._checked[nonce] = now
        return False


def session_principal(connection: ASGIConnection[Any, Any, Any, Any], keys: ApiKeyService) -> AuthenticationResult:
    """The caller named by the session cookie (a request without a key header). 401: no valid session (forged,
    tampered, expired, or its key revoked); 403: an unsafe method without `X-KB-Request: 1`."""
    sessions: SessionTokens | None = getattr(connection.app.state, "sessions", None)
    revocations: SessionRevocations | None = getattr(connection.app.state, "session_revocations", None)
    verified = sessions.parse(connection.cookies.get(SESSION_COOKIE, "")) if sessions is not None else None
    if verified is not None and revocations is not None and revocations.revoked(verified[2]):
        verified = None  # signed out: a copy of the token is worth nothing
    principal = keys.authenticate_id(verified[0]) if verified is not None else None
    if principal is None:
        raise NotAuthorizedException(
            "the session has expired or is not valid (or its key was revoked): sign in again with an API key",
            headers={"WWW-Authenticate": 'Bearer realm="kb"'},
        )
    if connection.scope.get("method", "GET") in UNSAFE_METHODS and connection.headers.get(CSRF_HEADER) != "1":
        raise PermissionDeniedException(
            "a request authorised by the session cookie must send the header 'X-KB-Request: 1'"
        )
    connection.scope.setdefault("state", {})["kb_session_expires"] = verified[1] if verified is not None else None
    return AuthenticationResult(user=principal, auth=SESSION_AUTH)


PROXY_AUTH = "proxy"  # request.auth of a caller signed in by the trusted proxy's headers (service.auth)


class SessionOut(Struct):
    signed_in: bool  # always True here: a caller who is not signed in gets 401
    key_id: str | None  # the key's id; None for a user signed in through the proxy
    name: str  # the key's name, or the proxy's user name
    user: str | None  # the user an authenticating proxy named; None for a key or its session
    email: str | None  # the proxy's email header, if any
    scopes: list[str]
    groups: list[str]
    via: str  # key (sent with the request) | session (the page's cookie) | proxy (trusted headers)
    expires_at: str | None  # the session's end; None when the caller sent a key or came through the proxy


SESSION_EXAMPLE = {
    "signed_in": True, "key_id": "9c1e0b7d4e5f8a6b", "name": "alice", "user": None, "email": None,
    "scopes": ["search", "ask"], "groups": ["staff"], "via": "session", "expires_at": "2025-01-01T20:00:00+00:00",
}  # fmt: skip
PROXY_SESSION_EXAMPLE = {
    "signed_in": True, "key_id": None, "name": "alice", "user": "alice", "email": "alice@example.com",
    "scopes": ["search", "ask", "ingest"], "groups": ["eng", "everyone"], "via": "proxy", "expires_at": None,
}  # fmt: skip


def _responses(status: int) -> dict[int, ResponseSpec]:
    examples = [
        Example(summary="signed in with a key", value=SESSION_EXAMPLE),
        Example(summary="signed in through the company's proxy", value=PROXY_SESSION_EXAMPLE),
    ]
    spec = ResponseSpec(
        data_container=SessionOut, description="Who is signed in (never the key itself)", examples=examples,
        generate_examples=False,
    )  # fmt: skip
    return {status: spec}


def _out(principal: Principal, expires: int | None, auth: Any = None) -> dict[str, Any]:
    via = "session" if auth == SESSION_AUTH else "proxy" if auth == PROXY_AUTH else "key"
    return {
        "signed_in": True, "key_id": principal.key_id if via != "proxy" else None, "name": principal.name,
        "user": principal.user, "email": principal.email, "scopes": sorted(principal.scopes),
        "groups": list(principal.groups), "via": via,
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat() if expires is not None else None,
    }  # fmt: skip


@post(
    "/v1/session", status_code=200, tags=["session"], responses=_responses(200),
    summary="Sign the web page in: trade the API key (Authorization: Bearer) for an HttpOnly session cookie",
    description="Sets the cookie `kb_session` (HttpOnly, SameSite=Strict, Secure over https) holding a signed "
    "token that expires after `KB_AUTH__SESSION_TTL_S` (default 12 h). Requests that send no key are then "
    "authorised by the cookie; those with POST/PUT/PATCH/DELETE must also send `X-KB-Request: 1`.",
)  # fmt: skip
async def create_session(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    if request.auth == SESSION_AUTH:
        raise NotAuthorizedException("a session starts from an API key: send 'Authorization: Bearer <key>'")
    if request.auth == PROXY_AUTH:
        raise ClientException("signed in through the proxy already: no session is needed (GET /v1/session says who)")
    sessions: SessionTokens = request.app.state.sessions
    token, expiry = sessions.issue(request.user.key_id)
    response = Response(_out(request.user, expiry, SESSION_AUTH), status_code=200)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max(0, expiry - int(time.time())), path="/", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@get("/v1/session", tags=["session"], summary="Who is signed in: the key sent, the cookie's key, or the proxy's user",
     description="`via` says how: `key` (sent with the request), `session` (the page's cookie) or `proxy` (headers of "
     "an authenticating reverse proxy at a trusted address, `KB_AUTH__TRUSTED_PROXIES`). 401 when nobody is.",
     responses=_responses(200))  # fmt: skip
async def current_session(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return _out(request.user, request.scope.get("state", {}).get("kb_session_expires"), request.auth)


@delete(
    "/v1/session", tags=["session"], opt={"exclude_from_auth": True},
    summary="Sign out: clear the session cookie (send 'X-KB-Request: 1' unless a key is sent)",
)  # fmt: skip
async def end_session(request: Request[Any, Any, Any]) -> Response[None]:
    # Not behind the auth middleware, so that a page whose session has already expired can still sign out.
    has_key = bool(request.headers.get("authorization") or request.headers.get("x-api-key"))
    if not has_key and request.headers.get(CSRF_HEADER) != "1":
        raise PermissionDeniedException("sign-out through the cookie must send the header 'X-KB-Request: 1'")
    sessions: SessionTokens | None = getattr(request.app.state, "sessions", None)
    revocations: SessionRevocations | None = getattr(request.app.state, "session_revocations", None)
    parsed = sessions.parse(request.cookies.get(SESSION_COOKIE, "")) if sessions is not None else None
    if parsed is not None and revocations is not None:
        # The token itself is refused from now on (a copy kept by anyone, a log, a shared machine), not only the
        # browser's cookie cleared.
        await asyncio.to_thread(revocations.revoke, parsed[2], parsed[1])
    response: Response[None] = Response(None, status_code=204)
    response.set_cookie(
        SESSION_COOKIE, "", max_age=0, expires=0, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


SESSION_ROUTES = [create_session, current_session, end_session]
