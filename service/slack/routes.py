"""POST /slack/events: the HTTP way in for Slack (events, slash commands and interactivity all arrive here).

Public to kb's key authentication (Slack sends no kb key): every request must instead carry Slack's signature of its
body and timestamp (HMAC-SHA256 with KB_SLACK__SIGNING_SECRET), and a timestamp at most 5 minutes old; anything else
is 401 and reaches no listener, so nothing is posted. The signature is checked before the body is even parsed; a body
that is not UTF-8 (Slack's never is), not JSON or a form, or not shaped as Slack shapes its payloads is 400. The
request then goes to the Bolt app (service.slack.bot), which acknowledges it at once and answers in the background."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, post
from litestar.exceptions import ClientException, NotAuthorizedException, NotFoundException
from litestar.response import Response
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from service.slack.bot import SlackBot

log = logging.getLogger(__name__)

SLACK_EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are a few KiB; a view submission at most tens


@post(SLACK_EVENTS_PATH, include_in_schema=False, opt={"exclude_from_auth": True}, status_code=200,
      request_max_body_size=MAX_BODY_BYTES)  # fmt: skip
async def slack_events(request: Request[Any, Any, Any]) -> Response[Any]:
    bot: SlackBot | None = getattr(request.app.state, "slack", None)
    if bot is None or not bot.signing_secret:
        raise NotFoundException("the Slack bot is off for HTTP (KB_SLACK__BOT_TOKEN, KB_SLACK__SIGNING_SECRET)")
    body = await request.body()
    try:
        text = body.decode("utf-8")  # Slack sends UTF-8 only (the verifier would fail on anything else)
    except UnicodeDecodeError as exc:
        raise ClientException("unreadable Slack request body") from exc
    verifier = SignatureVerifier(bot.signing_secret)
    timestamp = request.headers.get("x-slack-request-timestamp") or ""
    signature = request.headers.get("x-slack-signature") or ""
    well_formed = timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
    if not well_formed or not verifier.is_valid(body=text, timestamp=timestamp, signature=signature):
        raise NotAuthorizedException("invalid or stale Slack signature")
    try:
        bolt_request = AsyncBoltRequest(
            body=text, query=request.url.query,
            headers={name: request.headers.getall(name) for name in request.headers.keys()},
        )  # fmt: skip
        if not well_shaped(bolt_request.body):
            raise ValueError("not a Slack payload")
        answered = await bot.app.async_dispatch(bolt_request)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # Not JSON or a form, or a payload of a shape Slack never sends (Bolt reads the payload as Slack shapes it):
        # the sender's error, not ours, whether or not it was signed.
        log.warning("an unreadable Slack request: %s", exc)
        raise ClientException("unreadable Slack request body") from exc
    headers = answered.first_headers_without_set_cookie()
    media_type = headers.pop("content-type", None) or "text/plain; charset=utf-8"
    return Response(answered.body, status_code=answered.status, headers=headers, media_type=media_type)


def well_shaped(body: Any) -> bool:
    """The parts of a payload Bolt and the listeners read without checking (an object; its event an object; its
    actions a list of objects), as Slack always sends them."""
    if not isinstance(body, dict):
        return False
    if "event" in body and not isinstance(body["event"], dict):
        return False
    actions = body.get("actions")
    return actions is None or (isinstance(actions, list) and all(isinstance(a, dict) for a in actions))
