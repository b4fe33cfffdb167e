"""Files shared with the bot in a direct message, added to kb when their owner asks (a button or `/kb add`).

The walk of a file:
1. The user drops files in the DM. `offer` answers there with one "Add to kb" button per file (and "Add all" for
   several), above a choice of the kb groups the file will be shared with: the user's own groups, never '*'. A user
   who may not add files (`SlackUser.may_ingest`) is told why, and no button is shown.
2. A click (`register`'s block actions) or `/kb add` (`add_command`) adds the files. Everything a client sends is
   judged again, as a forged request could send anything: the clicking user must still be allowed to add files, the
   groups must all be theirs, and each file must be one they shared themselves (files.info names its owner).
3. Each file is read from Slack (files.info, then its `url_private_download` with the bot token, sent only to Slack
   or to the configured `api_url`'s host), streamed to a temporary file and cut off beyond
   `KB_INGEST__MAX_UPLOAD_BYTES`. Its bytes decide its type, as the ingest worker's do: a type kb cannot read is
   refused with the list of those it can.
4. It goes through the upload API's path (`IngestionPipeline.submit`: the blob store, the registry and its job, then
   the worker is woken), and the bot watches the document in the registry until it is ready or failed, then says so
   in the DM: "<file> is ready (N chunks)" or "<file> failed: <reason>".

Where offered files are remembered: in Slack itself, not in kb. The offer's buttons carry the files' ids, and each
click reads the file again with files.info; `/kb add` reads the DM's recent history (conversations.history, the last
RECENT_FILES_S) for the messages with files the user sent there. So a restart or another replica loses no offer and
no table is needed (the bot's `im:history` scope, which DMs need anyway, covers it). What is not durable is the
watch of step 4: a process that stops while a file is being ingested does not say when it is ready (the document
itself is ingested all the same; `kb ingest` / the web page's library show its status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError

from ingest.formats import EXTENSIONS, ZIP, sniff_content_type
from ingest.pipeline import UploadRejected, sanitize_filename
from kb.models import ALL_GROUPS, DocumentStatus
from kb.settings import Settings
from service.slack.mrkdwn import escape

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    from service.slack.identity import SlackDirectory, SlackUser
    from service.state import Services

log = logging.getLogger(__name__)

ACTION_ADD = "kb_file_add"  # one file: the button's value is its Slack file id
ACTION_ADD_ALL = "kb_file_add_all"  # every file of the offer: the value is their ids, comma-separated
ACTION_GROUPS = "kb_file_groups"  # the group choice (checkboxes, or a multi-select beyond Slack's 10 checkboxes)
GROUPS_BLOCK = "kb_file_groups"
MAX_CHECKBOXES = 10  # Slack's limit of options in one checkboxes element
MAX_SELECT_OPTIONS = 100  # ... and in one select menu
MAX_FILES_PER_OFFER = 20  # a message holds at most 50 blocks; one file takes one
RECENT_FILES_S = 24 * 3600  # `/kb add` adds what the user shared in the DM within this window
WATCH_INTERVAL_S = 1.0
WATCH_LIMIT_S = 6 * 3600  # a document still not done after this long is not waited for any more
DOWNLOAD_CHUNK = 1 << 16

# What the ingest worker reads (ingest/partition.py: the types it has a partitioner or converter for, its data
# formats read as plain text, and zip archives). A password-protected file is no unknown type: the worker fails it
# with the reason "password protected".
_DATA_TYPES = {"application/json": ".json", "application/x-ndjson": ".ndjson", "application/yaml": ".yaml"}
SUPPORTED_TYPES = frozenset({*EXTENSIONS, *_DATA_TYPES, ZIP})
_LEFT_TO_THE_WORKER = {"application/encrypted"}
SUPPORTED_EXTENSIONS = sorted({*EXTENSIONS.values(), *_DATA_TYPES.values(), ".zip"})

NOT_ALLOWED = (
    "You can't add files to kb: your Slack account is not in a kb group that may add documents. "
    "Ask your kb administrator if you need to."
)
NO_GROUPS = "You can't add files to kb: you belong to no kb group to share them with. Ask your kb administrator."
TROUBLE = "Something went wrong on kb's side while looking at your files; try again in a minute."
ONLY_IN_DM = "Files are added from a direct message: share them with me there, then use `/kb add` (or the button)."
# `/kb add [file name] [to group, group]`: the groups are the words after the last " to ", when they are all single
# words separated by commas.
_GROUPS_TAIL = re.compile(r"(?:^|\s)to\s+(?P<groups>[^\s,]+(?:\s*,\s*[^\s,]+)*)\s*$", re.IGNORECASE)


def parse_add_command(text: str) -> tuple[str, list[str]]:
    """`/kb add` text -> (part of a file name or "", groups named or [])."""
    text = re.sub(r"^\s*add\b", "", text.strip(), flags=re.IGNORECASE).strip()
    groups: list[str] = []
    tail = _GROUPS_TAIL.search(text)
    if tail:
        groups = [g.strip() for g in tail.group("groups").split(",") if g.strip()]
        text = text[: tail.start()]
    return text.strip().strip("\"'“”‘’").strip(), groups


class FileRefused(Exception):
    """A file (or a request) kb will not take, with the reason in words for the user."""


@dataclass(frozen=True)
class SharedFile:
    file_id: str
    name: str


def supported_list() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS)


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def _is_direct_message(channel_id: str, channel_type: str | None = None) -> bool:
    return channel_type in ("im", "directmessage") or channel_id.startswith("D")


class SlackFiles:
    """The bot's file intake. `directory` answers who a Slack user is in kb (groups, may_ingest)."""

    def __init__(self, services: Services, settings: Settings, directory: SlackDirectory) -> None:
        self._services = services
        self._settings = settings
        self._directory = directory
        self._tasks: set[asyncio.Task[None]] = set()

    # --- Slack's entry points ------------------------------------------------------------------------------------

    def register(self, app: AsyncApp) -> None:
        app.action(ACTION_ADD)(self._on_add)
        app.action(ACTION_ADD_ALL)(self._on_add)
        # Ticking a group sends an action too: it is only acknowledged (the choice is read from the click's state).
        app.action(ACTION_GROUPS)(self._on_group_choice)

    async def offer(self, event: dict[str, Any], client: AsyncWebClient) -> None:
        """A DM message with files: offer to add them, or say why the user cannot."""
        try:
            await self._offer(event, client)
        except Exception:
            log.exception("offering Slack files failed")
            await self._say(client, event["channel"], TROUBLE)

    async def _offer(self, event: dict[str, Any], client: AsyncWebClient) -> None:
        channel, user_id = event["channel"], event["user"]
        files = [f for f in event.get("files") or [] if f.get("id")]
        if not files:
            return
        user = await self._directory.user(user_id)
        groups = self._choosable(user)
        if not user.may_ingest:
            await self._say(client, channel, NOT_ALLOWED)
            return
        if not groups:
            await self._say(client, channel, NO_GROUPS)
            return
        shown = files[:MAX_FILES_PER_OFFER]
        blocks = offer_blocks(shown, groups, self._default_groups(groups), self._settings.ingest.max_upload_bytes)
        names = ", ".join(f.get("name") or f["id"] for f in shown)
        text = f"Add {escape(names)} to kb?"
        if len(files) > len(shown):
            text += f" (the first {len(shown)} of {len(files)} files; send the others in another message)"
        await client.chat_postMessage(channel=channel, text=text, blocks=blocks)

    async def add_command(self, command: dict[str, Any], client: AsyncWebClient, respond: Any) -> None:
        """`/kb add [file name] [to group, group]`: the files the user shared with the bot in this DM within the last
        RECENT_FILES_S (those whose name contains `file name`, if given), with the groups named (default: as the
        offer preselects)."""
        channel, user_id = command["channel_id"], command["user_id"]
        if not _is_direct_message(channel, command.get("channel_name")):
            await respond(text=ONLY_IN_DM, response_type="ephemeral")
            return
        try:
            await self._add_recent(client, channel, user_id, command.get("text") or "")
        except Exception:
            log.exception("/kb add failed")
            await self._say(client, channel, TROUBLE)

    async def _add_recent(self, client: AsyncWebClient, channel: str, user_id: str, text: str) -> None:
        if not (await self._directory.user(user_id)).may_ingest:
            await self._say(client, channel, NOT_ALLOWED)
            return
        wanted, named_groups = parse_add_command(text)
        try:
            files = await self._recent_files(client, channel, user_id)
        except SlackApiError as exc:
            await self._say(client, channel, f"I could not read this conversation's files: {slack_error(exc)}.")
            return
        if wanted:
            files = [f for f in files if wanted.casefold() in f.name.casefold()]
        if not files:
            what = f"file named like “{wanted}”" if wanted else "file"
            await self._say(client, channel, f"I found no {what} you shared with me here in the last "
                                             f"{RECENT_FILES_S // 3600} hours. Drop the files in this conversation, "
                                             "then use `/kb add`.")  # fmt: skip
            return
        await self._add(client, channel, user_id, [f.file_id for f in files], named_groups or None)

    async def _on_add(self, ack: Any, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        user_id = (body.get("user") or {}).get("id")
        if not channel or not user_id:
            return
        file_ids = [v for v in str(action.get("value") or "").split(",") if v.strip()]
        offer_ts = (body.get("container") or {}).get("message_ts")
        await self._add(client, channel, user_id, file_ids, chosen_groups(body), offer_ts=offer_ts)

    async def _on_group_choice(self, ack: Any) -> None:
        await ack()

    # --- adding --------------------------------------------------------------------------------------------------

    async def _add(
        self,
        client: AsyncWebClient,
        channel: str,
        user_id: str,
        file_ids: Sequence[str],
        chosen: Sequence[str] | None,
        *,
        offer_ts: str | None = None,
    ) -> None:
        """Check the request as a whole, then ingest each file in the background and report each one."""
        try:
            await self._check_and_start(client, channel, user_id, file_ids, chosen, offer_ts)
        except Exception:
            log.exception("adding Slack files failed")
            await self._say(client, channel, TROUBLE)

    async def _check_and_start(
        self,
        client: AsyncWebClient,
        channel: str,
        user_id: str,
        file_ids: Sequence[str],
        chosen: Sequence[str] | None,
        offer_ts: str | None,
    ) -> None:
        if not _is_direct_message(channel):
            await self._say(client, channel, ONLY_IN_DM)
            return
        user = await self._directory.user(user_id)
        if not user.may_ingest:
            await self._say(client, channel, NOT_ALLOWED)
            return
        try:
            groups = self._assignable(user, chosen)
        except FileRefused as exc:
            await self._say(client, channel, f"Nothing was added: {exc}")
            return
        file_ids = list(dict.fromkeys(file_ids))[:MAX_FILES_PER_OFFER]
        if not file_ids:
            await self._say(client, channel, "Nothing was added: no file was named.")
            return
        summary = f"Adding {len(file_ids)} file{'s' if len(file_ids) > 1 else ''} for {', '.join(groups)}…"
        if offer_ts:
            # The offer's buttons go, so that a second click does not add the files twice.
            with contextlib.suppress(SlackApiError):
                await client.chat_update(channel=channel, ts=offer_ts, text=escape(summary),
                                         blocks=[_section(escape(summary))])  # fmt: skip
        else:
            await self._say(client, channel, summary)
        for file_id in file_ids:
            self._spawn(self._ingest_one(client, channel, user, file_id, groups))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Until every file in hand has been reported (tests; a clean shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop watching the files in hand (their ingestion goes on in the worker; only the replies are lost)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _ingest_one(
        self, client: AsyncWebClient, channel: str, user: SlackUser, file_id: str, groups: list[str]
    ) -> None:
        name = file_id
        try:
            file = await self._file_info(client, file_id)
            name = str(file.get("name") or file.get("title") or file_id)
            if file.get("user") != user.user_id:
                raise FileRefused("it is not a file you shared")
            data = await self._download(client, file)
            content_type = await asyncio.to_thread(sniff_content_type, data, sanitize_filename(name))
            if content_type not in SUPPORTED_TYPES | _LEFT_TO_THE_WORKER:
                raise FileRefused(f"kb cannot read this type of file ({content_type}). It reads: {supported_list()}")
            metadata = {"source": "slack", "slack_user": user.user_id, "slack_file": file_id}
            submitted = await asyncio.to_thread(
                self._services.pipeline.submit, name, data, groups=groups, metadata=metadata
            )
            self._services.worker.notify()
        except FileRefused as exc:
            await self._say(client, channel, f"{name} can't be added: {exc}")
            return
        except UploadRejected as exc:  # empty, too large: the same reasons as the upload API's
            await self._say(client, channel, f"{name} can't be added: {str(exc).removeprefix(f'{name}: ')}")
            return
        except Exception:
            log.exception("adding Slack file %s failed", file_id)
            await self._say(client, channel, f"{name} failed: kb could not store it. Try again later, or ask your "
                                             "kb administrator to look at the server's log.")  # fmt: skip
            return
        await self._report_when_done(client, channel, name, submitted.document.document_id)

    async def _report_when_done(self, client: AsyncWebClient, channel: str, name: str, document_id: str) -> None:
        registry = self._services.container.registry
        deadline = time.monotonic() + WATCH_LIMIT_S
        while True:
            document = await asyncio.to_thread(registry.get_document, document_id)
            if document is None:
                await self._say(client, channel, f"{name} failed: it was deleted before it was ready.")
                return
            if document.status == DocumentStatus.READY:
                chunks = document.chunks or 0
                await self._say(client, channel, f"{name} is ready ({chunks} chunk{'' if chunks == 1 else 's'}).")
                return
            if document.status == DocumentStatus.FAILED:
                await self._say(client, channel, f"{name} failed: {document.error or 'no reason was recorded'}")
                return
            if time.monotonic() > deadline:
                await self._say(client, channel, f"{name} is still being processed; I stopped watching it.")
                return
            await asyncio.sleep(WATCH_INTERVAL_S)

    # --- Slack's side --------------------------------------------------------------------------------------------

    async def _file_info(self, client: AsyncWebClient, file_id: str) -> dict[str, Any]:
        try:
            response = await client.files_info(file=file_id)
        except SlackApiError as exc:
            raise FileRefused(f"Slack would not describe it: {slack_error(exc)}") from exc
        return dict(response["file"])

    async def _download(self, client: AsyncWebClient, file: dict[str, Any]) -> bytes:
        """The file's bytes, streamed to a temporary file and cut off beyond the upload limit."""
        limit = self._settings.ingest.max_upload_bytes
        size = file.get("size")
        if isinstance(size, int) and size > limit:
            raise FileRefused(f"it is {megabytes(size)}, over kb's limit of {megabytes(limit)}")
        url = file.get("url_private_download") or file.get("url_private")
        if not url:
            raise FileRefused("Slack offers no download of it (an external or a link-only file?)")
        if not self._trusted_download(url):
            raise FileRefused("its download address is not Slack's")
        token = client.token or self._settings.slack.bot_token.get_secret_value()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        # No redirects: the bot token goes to Slack's file host only (a redirect elsewhere is refused).
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False) as reply,
        ):
            if reply.status != 200:
                raise FileRefused(f"Slack refused the download (HTTP {reply.status}); the bot needs the files:read "
                                  "scope")  # fmt: skip
            expected_html = "html" in str(file.get("mimetype") or file.get("filetype") or "")
            if reply.content_type == "text/html" and not expected_html:
                # Slack answers a request it does not accept with its sign-in page, not an error status.
                raise FileRefused("Slack sent its sign-in page instead of the file; the bot needs files:read")
            with tempfile.TemporaryFile(prefix="kb-slack-") as spool:
                received = 0
                async for piece in reply.content.iter_chunked(DOWNLOAD_CHUNK):
                    received += len(piece)
                    if received > limit:
                        raise FileRefused(f"it is over kb's limit of {megabytes(limit)}")
                    spool.write(piece)
                spool.seek(0)
                return spool.read()

    def _trusted_download(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com")):
            return True
        configured = urlsplit(self._settings.slack.api_url)
        return bool(host) and host == (configured.hostname or "").lower() and parts.scheme == configured.scheme

    async def _recent_files(self, client: AsyncWebClient, channel: str, user_id: str) -> list[SharedFile]:
        """The files `user_id` shared in the DM within RECENT_FILES_S, newest first."""
        oldest = f"{time.time() - RECENT_FILES_S:.6f}"
        found: dict[str, SharedFile] = {}
        cursor: str | None = None
        for _ in range(10):  # at most 10 pages of 200 messages
            response = await client.conversations_history(channel=channel, oldest=oldest, limit=200, cursor=cursor)
            for message in response.get("messages") or []:
                if message.get("user") != user_id:
                    continue
                for file in message.get("files") or []:
                    if file.get("id") and file.get("mode") != "tombstone":
                        found.setdefault(file["id"], SharedFile(file["id"], str(file.get("name") or file["id"])))
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        return list(found.values())

    async def _say(self, client: AsyncWebClient, channel: str, text: str) -> None:
        """Post `text` as written: a file name or a reason never reads as a mention or a link."""
        try:
            await client.chat_postMessage(channel=channel, text=escape(text))
        except SlackApiError as exc:
            log.warning("could not post to Slack channel %s: %s", channel, slack_error(exc))

    # --- groups --------------------------------------------------------------------------------------------------

    @staticmethod
    def _choosable(user: SlackUser) -> list[str]:
        """The groups a user may share a file with: their own, never kb's "every group"."""
        return [g for g in dict.fromkeys(user.groups) if g != ALL_GROUPS]

    def _default_groups(self, choosable: Sequence[str]) -> list[str]:
        """As the upload API: the configured default groups if the user holds all of them, else all their groups."""
        defaults = [g for g in self._settings.auth.default_groups if g != ALL_GROUPS]
        return defaults if defaults and set(defaults) <= set(choosable) else list(choosable)

    def _assignable(self, user: SlackUser, chosen: Sequence[str] | None) -> list[str]:
        choosable = self._choosable(user)
        if not choosable:
            raise FileRefused(NO_GROUPS.removeprefix("You can't add files to kb: "))
        if chosen is None:
            return self._default_groups(choosable)
        groups = list(dict.fromkeys(g.strip() for g in chosen if g.strip()))
        if not groups:
            raise FileRefused("choose at least one group to share the files with.")
        foreign = [g for g in groups if g not in choosable]
        if foreign:
            raise FileRefused(f"you can only share files with your own groups ({', '.join(choosable)}), not with "
                              f"{', '.join(foreign)}.")  # fmt: skip
        return groups


def slack_error(exc: SlackApiError) -> str:
    error = str((exc.response or {}).get("error") or "an error") if exc.response is not None else "an error"
    return {
        "file_not_found": "the file is gone from Slack",
        "file_deleted": "the file was deleted",
        "missing_scope": "the bot lacks a Slack permission (scope) it needs",
        "not_in_channel": "the bot is not in this conversation",
        "ratelimited": "Slack's rate limit; try again in a minute",
    }.get(error, f"Slack answered “{error}”")


def chosen_groups(body: dict[str, Any]) -> list[str] | None:
    """The groups ticked in the offer when its button was clicked; None when the click carries no choice."""
    values = ((body.get("state") or {}).get("values")) or {}
    for block in values.values():
        element = block.get(ACTION_GROUPS) if isinstance(block, dict) else None
        if isinstance(element, dict):
            return [str(o.get("value", "")) for o in element.get("selected_options") or [] if isinstance(o, dict)]
    return None


def _section(text: str) -> dict[str, Any]:
    # verbatim: Slack does not link or mention-parse what a file name holds (its text is escaped here already).
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


def _option(group: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": group[:75]}, "value": group}


def offer_blocks(
    files: Iterable[dict[str, Any]], groups: Sequence[str], preselected: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    """The offer: who may read the files (a choice among the user's groups), then a button per file and one for all."""
    files = list(files)
    options = [_option(g) for g in groups[:MAX_SELECT_OPTIONS]]
    initial = [_option(g) for g in preselected if g in groups[:MAX_SELECT_OPTIONS]]
    if len(options) <= MAX_CHECKBOXES:
        choice: dict[str, Any] = {"type": "checkboxes", "action_id": ACTION_GROUPS, "options": options}
    else:
        choice = {"type": "multi_static_select", "action_id": ACTION_GROUPS, "options": options,
                  "placeholder": {"type": "plain_text", "text": "Groups"}}  # fmt: skip
    if initial:
        choice["initial_options"] = initial
    blocks: list[dict[str, Any]] = [
        _section("Add to kb? Those in the groups ticked below will be able to find these files:"),
        {"type": "actions", "block_id": GROUPS_BLOCK, "elements": [choice]},
    ]
    for file in files:
        name = str(file.get("name") or file["id"])
        size = file.get("size")
        line = f"*{escape(name)}*" + (f" ({megabytes(size)})" if isinstance(size, int) else "")
        if isinstance(size, int) and size > limit:
            blocks.append(_section(f"{line}: too large, kb's limit is {megabytes(limit)}"))
            continue
        button = {"type": "button", "action_id": ACTION_ADD, "value": file["id"],
                  "text": {"type": "plain_text", "text": "Add to kb"}}  # fmt: skip
        blocks.append({**_section(line), "accessory": button})
    addable = [f["id"] for f in files if not (isinstance(f.get("size"), int) and f["size"] > limit)]
    if len(addable) > 1:
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "action_id": ACTION_ADD_ALL, "value": ",".join(addable), "style": "primary",
            "text": {"type": "plain_text", "text": f"Add all {len(addable)} to kb"},
        }]})  # fmt: skip
    return blocks
