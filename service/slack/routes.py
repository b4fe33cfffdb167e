"""POST /slack/events: the HTTP way in for Slack (events, slash commands and interactivity all arrive here).

Public to kb's key authentication (Slack sends no kb key): every request must instead carry Slack's signature of its
body and timestamp (HMAC-SHA256 with KB_SLACK__SIGNING_SECRET), and a timestamp at most 5 minutes old; anything else
is 401 and reaches no listener, so nothing is posted. The signature is checked before the body is even parsed. The
request then goes to the Bolt app (service.slack.bot), which acknowledges it at once and answers in the background."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.exceptions import ClientException, NotAuthorizedException, NotFoundException
from litestar.response import Response
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from service.slack.bot import SlackBot

SLACK_EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are a few KiB; a view submission at most tens


@post(SLACK_EVENTS_PATH, include_in_schema=False, opt={"exclude_from_auth": True}, status_code=200,
      request_max_body_size=MAX_BODY_BYTES)  # fmt: skip
async def slack_events(request: Request[Any, Any, Any]) -> Response[Any]:
    bot: SlackBot | None = getattr(request.app.state, "slack", None)
    if bot is None or not bot.signing_secret:
        raise NotFoundException("the Slack bot is off for HTTP (KB_SLACK__BOT_TOKEN, KB_SLACK__SIGNING_SECRET)")
    body = await request.body()
    verifier = SignatureVerifier(bot.signing_secret)
    timestamp = request.headers.get("x-slack-request-timestamp") or ""
    signature = request.headers.get("x-slack-signature") or ""
    well_formed = timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
    if not well_formed or not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise NotAuthorizedException("invalid or stale Slack signature")
    try:
        text = body.decode("utf-8")
        bolt_request = AsyncBoltRequest(
            body=text, query=request.url.query,
            headers={name: request.headers.getall(name) for name in request.headers.keys()},
        )  # fmt: skip
    except ValueError as exc:  # not UTF-8, or not the JSON / form body it claims to be
        raise ClientException("unreadable Slack request body") from exc
    answered = await bot.app.async_dispatch(bolt_request)
    headers = answered.first_headers_without_set_cookie()
    media_type = headers.pop("content-type", None) or "text/plain; charset=utf-8"
    return Response(answered.body, status_code=answered.status, headers=headers, media_type=media_type)
