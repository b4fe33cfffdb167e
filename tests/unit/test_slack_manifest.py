"""deploy/slack/manifest.yml, the Slack app people install (deploy/slack/README.md): valid YAML in Slack's manifest
schema, with a bot scope for every Web API method the bot calls (those the design names, and every call found in
service/slack/), the events its listeners need, and no scope nothing uses; the guide documents every Slack setting."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kb.settings import SlackSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "slack" / "manifest.yml"
GUIDE = ROOT / "deploy" / "slack" / "README.md"
BOT_PACKAGE = ROOT / "service" / "slack"
EVENTS_URL = "https://kb.example.com/slack/events"

# The bot-token scopes each Web API method needs (Slack's method reference; a method that reads several kinds of
# conversation needs the scope of each kind the bot serves: public and private channels, group and direct messages).
CONVERSATION_READ = frozenset({"channels:read", "groups:read", "im:read", "mpim:read"})
METHOD_SCOPES: dict[str, frozenset[str]] = {
    "auth.test": frozenset(),
    "apps.connections.open": frozenset(),  # the app-level token's connections:write, not a bot scope
    "chat.postMessage": frozenset({"chat:write"}),
    "chat.update": frozenset({"chat:write"}),
    "chat.postEphemeral": frozenset({"chat:write"}),
    "chat.delete": frozenset({"chat:write"}),
    "users.info": frozenset({"users:read", "users:read.email"}),  # the e-mail: KB_SLACK__EMAIL_DOMAIN_GROUPS
    "users.lookupByEmail": frozenset({"users:read.email"}),
    "conversations.members": CONVERSATION_READ,
    "conversations.info": CONVERSATION_READ,
    "conversations.open": frozenset({"im:write"}),
    "conversations.history": frozenset({"im:history"}),  # read only in kb's direct messages (the files shared there)
    "usergroups.list": frozenset({"usergroups:read"}),
    "usergroups.users.list": frozenset({"usergroups:read"}),
    "files.info": frozenset({"files:read"}),
    "reactions.add": frozenset({"reactions:write"}),
    "reactions.remove": frozenset({"reactions:write"}),
    "views.open": frozenset(),
    "views.update": frozenset(),
    "views.publish": frozenset(),
}
# What the design (issue 16) has the bot call, whoever's code makes the call.
DESIGN_METHODS = {
    "auth.test", "chat.postMessage", "chat.update", "chat.postEphemeral", "users.info", "conversations.members",
    "usergroups.list", "files.info",
}  # fmt: skip
# The scopes that let Slack send each event (for the membership events: of public and of private channels).
EVENT_SCOPES: dict[str, frozenset[str]] = {
    "app_mention": frozenset({"app_mentions:read"}),
    "message.im": frozenset({"im:history"}),
    "file_shared": frozenset({"files:read"}),
    "member_joined_channel": frozenset({"channels:read", "groups:read"}),
    "member_left_channel": frozenset({"channels:read", "groups:read"}),
}
# The scopes the brief asks for by name: present whether or not a call in this tree uses them yet.
BRIEF_SCOPES = {
    "app_mentions:read", "chat:write", "commands", "im:history", "im:read", "im:write", "users:read",
    "users:read.email", "usergroups:read", "channels:read", "groups:read", "files:read",
}  # fmt: skip
METHOD_FAMILIES = r"auth|apps|chat|users|conversations|usergroups|files|reactions|views|team|bots|pins|emoji"
CLIENT_METHOD = re.compile(rf"^(?:{METHOD_FAMILIES})_[A-Za-z_]+$")


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def bot_sources() -> list[Path]:
    return sorted(BOT_PACKAGE.rglob("*.py")) if BOT_PACKAGE.is_dir() else []


def called_methods() -> set[str]:
    """The Web API methods service/slack/ calls: `client.chat_postMessage(...)` (slack-sdk's name for
    chat.postMessage) or `client.api_call("chat.postMessage", ...)`; Bolt's `say` posts with chat.postMessage."""
    found: set[str] = set()
    for path in bot_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if CLIENT_METHOD.match(name) and isinstance(func, ast.Attribute) and receiver(func).endswith("client"):
                found.add(name.replace("_", "."))
            elif name == "api_call" and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
            elif name == "say":
                found.add("chat.postMessage")
    return found


def receiver(call: ast.Attribute) -> str:
    """The name a method is called on: `client` of client.x(), `_client` of self._client.x()."""
    value = call.value
    return (value.attr if isinstance(value, ast.Attribute) else value.id if isinstance(value, ast.Name) else "").lower()


def listened_events() -> set[str]:
    """The events service/slack/ listens to: `app.event("app_mention")` / `app.event({"type": ...})`, and
    `app.message(...)` or `app.event("message")` (for the bot, a direct message: message.im)."""
    found: set[str] = set()
    for path in bot_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr == "message":
                found.add("message.im")
            elif node.func.attr == "event" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Dict):
                    first = next((v for k, v in zip(first.keys, first.values, strict=True)
                                  if isinstance(k, ast.Constant) and k.value == "type"), first)  # fmt: skip
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add("message.im" if first.value == "message" else first.value)
    return found


def bot_scopes(manifest: dict[str, Any]) -> set[str]:
    return set(manifest["oauth_config"]["scopes"]["bot"])


def test_the_manifest_has_slacks_sections_and_limits(manifest: dict[str, Any]) -> None:
    assert {"display_information", "features", "oauth_config", "settings"} <= manifest.keys()
    info = manifest["display_information"]
    assert 0 < len(info["name"]) <= 35 and 0 < len(info["description"]) <= 140
    assert 175 <= len(info["long_description"]) <= 4000  # Slack refuses a shorter one
    assert re.fullmatch(r"#[0-9a-fA-F]{6}", info["background_color"])
    assert manifest["features"]["bot_user"]["display_name"] == "kb"
    home = manifest["features"]["app_home"]
    assert home["messages_tab_enabled"] is True and home["messages_tab_read_only_enabled"] is False  # DMs to kb


def test_the_kb_command_events_and_interactivity_go_to_slack_events(manifest: dict[str, Any]) -> None:
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/kb" and command["url"] == EVENTS_URL and command["description"]
    settings = manifest["settings"]
    assert settings["event_subscriptions"]["request_url"] == EVENTS_URL
    assert settings["interactivity"] == {"is_enabled": True, "request_url": EVENTS_URL}  # the 👍/👎 buttons
    assert settings["socket_mode_enabled"] is False
    text = MANIFEST.read_text(encoding="utf-8")
    assert "connections:write" in text and "socket_mode_enabled: true" in text  # how to switch to Socket Mode


def test_every_method_the_bot_calls_has_its_scopes(manifest: dict[str, Any]) -> None:
    called = DESIGN_METHODS | called_methods()
    unknown = sorted(called - METHOD_SCOPES.keys())
    assert not unknown, f"service/slack calls {unknown}: add their scopes to the manifest and to METHOD_SCOPES"
    missing = {method: sorted(METHOD_SCOPES[method] - bot_scopes(manifest)) for method in called}
    assert {m: s for m, s in missing.items() if s} == {}
    assert "commands" in bot_scopes(manifest)  # the /kb command


def test_every_event_the_bot_listens_to_is_subscribed_with_its_scope(manifest: dict[str, Any]) -> None:
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.im"} <= events
    assert listened_events() <= events, "a listener in service/slack/ waits for an event the app is not sent"
    unknown = sorted(events - EVENT_SCOPES.keys())
    assert not unknown, f"add the scopes of {unknown} to EVENT_SCOPES"
    lacking = {event: sorted(EVENT_SCOPES[event] - bot_scopes(manifest)) for event in events}
    assert {event: scopes for event, scopes in lacking.items() if scopes} == {}


def test_no_scope_is_asked_for_that_nothing_uses(manifest: dict[str, Any]) -> None:
    """Past the brief's list, each scope must be needed by a method the bot calls or an event it is sent: a scope is
    a permission every workspace admin reviews when installing."""
    called = DESIGN_METHODS | called_methods()
    needed = set().union(*(METHOD_SCOPES.get(m, frozenset()) for m in called))
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    needed |= set().union(*(EVENT_SCOPES.get(event, frozenset()) for event in events))
    assert bot_scopes(manifest) - needed - BRIEF_SCOPES - {"commands"} == set()
    assert BRIEF_SCOPES <= bot_scopes(manifest)


def test_the_guide_documents_every_slack_setting_and_both_modes() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    for name in SlackSettings.model_fields:
        if name != "api_url":  # for tests (a local Slack), not for installing
            assert f"KB_SLACK__{name.upper()}" in guide, name
    for needed in ("KB_PUBLIC_URL", "/slack/events", "kb serve", "kb slack", "connections:write", "Socket Mode",
                   "intersection", "#doc=<document_id>&chunk=<chunk_id>", "manifest.yml"):  # fmt: skip
        assert needed in guide, needed
