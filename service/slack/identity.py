"""Who a Slack user is to kb: the kb groups of a Slack user, and what an answer posted in a channel may draw on.

A user's groups are the union of every mapping of `KB_SLACK__*` that matches them: by Slack user id
(`user_groups`), by the domain of their e-mail address (`email_domain_groups`, through users.info) and by the Slack
user groups they belong to (`usergroup_groups`, by id or handle, through usergroups.list). A user no mapping matches
gets `default_groups` (empty by default: no documents).

A direct message is answered with the asker's groups. An answer in a channel is read by everyone in it, so it draws
only on the groups that every member holds (the intersection of the members' groups and the asker's; the bot itself
does not count; a member holding every group, '*', narrows nothing). Members are read with conversations.members and
kept `membership_cache_s` seconds; a member joining or leaving the channel drops them at once (`forget_channel`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from kb.models import ALL_GROUPS
from kb.settings import SlackSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
MEMBERS_PAGE = 200  # conversations.members' page size (Slack allows up to 1000; it recommends 200)
LOOKUPS_AT_ONCE = 8  # users.info calls in flight while a large channel's members are resolved


@dataclass(frozen=True)
class SlackUser:
    user_id: str
    email: str | None
    groups: tuple[str, ...]
    may_ingest: bool  # holds one of KB_SLACK__INGEST_GROUPS: may add files


class ChannelUnreadable(Exception):
    """The bot cannot list the channel's members (it is not in the private channel, or the channel is gone)."""


class _Cache:
    """Values for `ttl_s` seconds; one load per key at a time."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._values: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        cached = self._values.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._values.get(key)
            if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
                return cached[1]
            value = await load()
            if len(self._values) > 50_000:
                self._values.clear()
            self._values[key] = (time.monotonic(), value)
            return value

    def forget(self, key: str) -> None:
        self._values.pop(key, None)


def intersect(member_groups: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The groups every one of `member_groups` holds, in the first's order; '*' (every group) narrows nothing, and
    only when all hold '*' is the result '*'."""
    common: list[str] | None = None
    for groups in member_groups:
        if ALL_GROUPS in groups:
            continue
        common = list(groups) if common is None else [g for g in common if g in groups]
    return (ALL_GROUPS,) if common is None else tuple(dict.fromkeys(common))


class SlackDirectory:
    def __init__(self, client: AsyncWebClient, settings: SlackSettings) -> None:
        self._client = client
        self._settings = settings
        self._users = _Cache(settings.membership_cache_s)
        self._channels = _Cache(settings.membership_cache_s)
        self._usergroups = _Cache(settings.membership_cache_s)
        self._bot_user_id: str | None = None

    async def bot_user_id(self) -> str:
        if self._bot_user_id is None:
            self._bot_user_id = (await self._client.auth_test())["user_id"]
        return self._bot_user_id

    async def user(self, user_id: str) -> SlackUser:
        return await self._users.get(user_id, lambda: self._load_user(user_id))

    async def channel_groups(self, channel_id: str, asker: str) -> tuple[str, ...]:
        """What an answer posted in `channel_id` may draw on. ChannelUnreadable: the members cannot be listed."""
        members = await self._channels.get(channel_id, lambda: self._members(channel_id))
        bot = await self.bot_user_id()
        people = [m for m in dict.fromkeys((asker, *members)) if m != bot]
        semaphore = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def groups_of(user_id: str) -> tuple[str, ...]:
            async with semaphore:
                return (await self.user(user_id)).groups

        return intersect(await asyncio.gather(*(groups_of(m) for m in people)))

    def forget_channel(self, channel_id: str) -> None:
        self._channels.forget(channel_id)

    async def _members(self, channel_id: str) -> tuple[str, ...]:
        members: list[str] = []
        cursor = None
        try:
            while True:
                page = await self._client.conversations_members(channel=channel_id, limit=MEMBERS_PAGE, cursor=cursor)
                members += page.get("members") or []
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return tuple(members)
        except SlackApiError as exc:
            log.warning("cannot list the members of %s: %s", channel_id, exc.response.get("error"))
            raise ChannelUnreadable(channel_id) from exc

    async def _load_user(self, user_id: str) -> SlackUser:
        settings = self._settings
        email = await self._email(user_id) if settings.email_domain_groups else None
        groups: list[str] = list(settings.user_groups.get(user_id, []))
        if email and "@" in email:
            groups += settings.email_domain_groups.get(email.rsplit("@", 1)[1].lower(), [])
        if settings.usergroup_groups:
            for usergroup in await self._usergroups.get("all", self._load_usergroups):
                if user_id in usergroup["users"]:
                    for name in (usergroup["id"], usergroup["handle"]):
                        groups += settings.usergroup_groups.get(name, [])
        matched = tuple(dict.fromkeys(groups))
        groups_held = matched or tuple(settings.default_groups)
        may_ingest = bool(set(groups_held) & set(settings.ingest_groups))
        return SlackUser(user_id, email, groups_held, may_ingest)

    async def _email(self, user_id: str) -> str | None:
        try:
            info = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            log.warning("users.info %s: %s", user_id, exc.response.get("error"))
            return None
        user = info.get("user") or {}
        if user.get("deleted") or user.get("is_bot"):
            return None  # a bot's or a deactivated account's address maps to nobody's groups
        email = (user.get("profile") or {}).get("email")
        return email.strip() if isinstance(email, str) and email.strip() else None

    async def _load_usergroups(self) -> list[dict[str, Any]]:
        try:
            listed = await self._client.usergroups_list(include_users=True)
        except SlackApiError as exc:
            log.warning("usergroups.list: %s", exc.response.get("error"))
            return []
        return [{"id": g.get("id"), "handle": g.get("handle"), "users": set(g.get("users") or [])}
                for g in listed.get("usergroups") or []]  # fmt: skip
