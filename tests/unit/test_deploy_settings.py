"""Every KB_* variable a deployment sets is a setting kb reads, with a value it accepts.

pydantic-settings ignores what it does not know (Settings has extra="ignore", and so do the nested models): a
misspelt KB_INDEX__URLL would leave kb on its default index without a word. So the names set in docker-compose.yml
(every service) and in the Helm chart (ConfigMaps, Secrets, the env of every container, in each variant of
test_deploy_helm) are walked down kb.settings.Settings by their "__" path, case-insensitively as pydantic-settings
reads them, and each process's whole set is loaded into Settings() so that every value validates too."""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from kb.settings import Settings
from tests.unit.test_deploy_helm import VARIANTS, render

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Settings.model_config["env_prefix"]
DELIMITER = Settings.model_config["env_nested_delimiter"]
# What a value taken from elsewhere (a secretKeyRef, a compose ${VARIABLE}) stands for here.
FROM_ELSEWHERE = "value-from-elsewhere"
# How Settings() refuses a value: a field's validation, or a complex (JSON) value that does not parse.
REFUSED = (ValidationError, SettingsError)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: Any) -> bool:
    """A dict field: pydantic-settings fills its keys from deeper names (KB_GENERATOR__HF_OVERRIDES__X)."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(c is dict or typing.get_origin(c) is dict for c in candidates)


def setting_path(name: str) -> str | None:
    """The settings field an environment variable sets ("index.url" for KB_INDEX__URL), or None when kb reads no such
    setting. Case-insensitive, as Settings (case_sensitive False) reads the environment."""
    if Settings.model_config.get("case_sensitive"):
        raise AssertionError("Settings became case-sensitive: match names exactly here")
    if not name.upper().startswith(PREFIX.upper()):
        return None
    parts = name[len(PREFIX) :].lower().split(DELIMITER)
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if i == len(parts) - 1:
            return ".".join(parts)  # a nested model named whole takes a JSON object: its value says the rest
        nested = _nested_model(field.annotation)
        if nested is None:
            return ".".join(parts) if _is_mapping(field.annotation) else None
        model = nested
    return None


def unknown_settings(names: typing.Iterable[str]) -> list[str]:
    """The KB_* names among these that are no setting of kb (other variables: HOME, AWS_*, are not kb's)."""
    return sorted(n for n in names if n.upper().startswith(PREFIX.upper()) and setting_path(n) is None)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings() as a process with exactly these KB_* variables would build it (raises on a value it refuses)."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIX.upper()):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- Where deployments set them ---------------------------------------------------------------------------------------


def compose_environments() -> dict[str, dict[str, str]]:
    """Each docker-compose.yml service's environment, with ${VARIABLE...} interpolations standing for some value."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    found: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
        found[name] = {
            key: re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*[^}]*\}", FROM_ELSEWHERE, str(value)).replace("$$", "$")
            for key, value in environment.items()
        }
    return found


def chart_environments(documents: tuple[dict[str, Any], ...]) -> dict[str, dict[str, str]]:
    """Each rendered container's environment: its ConfigMaps and Secrets (envFrom; one that the chart does not render,
    such as secrets.existingSecret, adds nothing here) and its own env, a valueFrom standing for some value."""
    maps = {("ConfigMap", d["metadata"]["name"]): d.get("data", {}) for d in documents if d["kind"] == "ConfigMap"}
    for d in documents:
        if d["kind"] == "Secret":
            maps[("Secret", d["metadata"]["name"])] = {**d.get("data", {}), **d.get("stringData", {})}
    found: dict[str, dict[str, str]] = {}
    for d in documents:
        if d["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else (
                    "Secret", source["secretRef"])  # fmt: skip
                env.update({k: str(v) for k, v in maps.get((kind, ref["name"]), {}).items()})
            for e in c.get("env", []):
                env[e["name"]] = str(e["value"]) if "value" in e else FROM_ELSEWHERE
            found[f"{d['kind']}/{d['metadata']['name']}/{c['name']}"] = env
    return found


def every_chart_name(documents: tuple[dict[str, Any], ...]) -> set[str]:
    """Every variable name the chart sets anywhere: ConfigMap and Secret keys too, used by a container or not."""
    names = {k for d in documents if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    names |= {k for d in documents if d["kind"] == "Secret" for k in {**d.get("data", {}), **d.get("stringData", {})}}
    return names | {n for env in chart_environments(documents).values() for n in env}


# --- The checks -------------------------------------------------------------------------------------------------------


def test_every_kb_variable_of_docker_compose_is_a_setting_with_a_valid_value(monkeypatch: pytest.MonkeyPatch) -> None:
    environments = compose_environments()
    kb_services = {name: env for name, env in environments.items() if any(k.startswith(PREFIX) for k in env)}
    assert {"api", "worker", "migrate"} <= kb_services.keys()
    for service, env in kb_services.items():
        assert unknown_settings(env) == [], f"docker-compose.yml, service {service}"
        with monkeypatch.context() as patch:
            settings_from(env, patch)
    with monkeypatch.context() as patch:
        api = settings_from(kb_services["api"], patch)
    assert (api.index.backend, api.generator.max_model_len, api.ingest.workers) == ("qdrant", 131072, 0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_kb_variable_of_the_chart_is_a_setting_with_a_valid_value(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = render(*VARIANTS[name])
    assert unknown_settings(every_chart_name(documents)) == [], f"chart variant {name}"
    environments = chart_environments(documents)
    kb_containers = {where: env for where, env in environments.items() if any(k.startswith(PREFIX) for k in env)}
    assert {"Deployment/kb-api/api", "Deployment/kb-worker/worker", "Job/kb-migrate/migrate"} <= kb_containers.keys()
    loaded: dict[str, Settings] = {}
    for where, env in kb_containers.items():
        with monkeypatch.context() as patch:
            try:
                loaded[where] = settings_from(env, patch)
            except REFUSED as exc:
                pytest.fail(f"chart variant {name}, {where}: {exc}")
    if name == "external-secrets":
        return  # the registry URL and the rest are in a Secret made elsewhere
    api, worker = loaded["Deployment/kb-api/api"], loaded["Deployment/kb-worker/worker"]
    # The values reached the settings they are meant for.
    assert api.registry_url.startswith("postgresql+psycopg://")
    assert (api.index.shards, api.index.replication_factor, api.index.write_consistency_factor) == (6, 2, 1)
    assert api.auth.session_secret.get_secret_value() and api.generator.fallback == "engine"
    assert worker.ingest.workers >= 1 and worker.ingest.heartbeat_path.startswith("/")
    assert worker.blobs.backend == api.blobs.backend and worker.index.url == api.index.url


def test_the_checker_finds_a_misspelt_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert setting_path("KB_INDEX__URL") == "index.url"
    assert setting_path("kb_index__url") == "index.url"  # as pydantic-settings reads it
    assert setting_path("KB_REGISTRY_URL") == "registry_url"
    assert setting_path("KB_RATE_LIMIT__REDIS_URL") == "rate_limit.redis_url"
    assert setting_path("KB_GENERATOR__HF_OVERRIDES__MAX_POSITION_EMBEDDINGS") is not None  # a dict's key
    assert setting_path("KB_INDEX") == "index"  # a whole section as JSON
    wrong = ["KB_INDEX__URLL", "KB_INDEX_URL", "KB_DATA_DIR__X", "KB_INDEX__URL__X", "KB_INDEX___URL"]
    assert unknown_settings([*wrong, "HOME", "AWS_REGION"]) == sorted(wrong)
    # The typo Settings() alone would swallow: it loads, on the default index.
    with monkeypatch.context() as patch:
        assert settings_from({"KB_INDEX__URLL": "http://qdrant:6333"}, patch).index.url == ""
    # ...and the chart check catches it wherever it is set.
    typo = render("--set", "settings.KB_INDEX__URLL=http://qdrant:6333")
    assert unknown_settings(every_chart_name(typo)) == ["KB_INDEX__URLL"]
    extra = render("--set", "secrets.extra.KB_SLACK__BOT_TOKENN=xoxb-1")
    assert unknown_settings(every_chart_name(extra)) == ["KB_SLACK__BOT_TOKENN"]
    # A known name with a value kb refuses fails the load.
    for wrong in ({"KB_INDEX__SHARDS": "0"}, {"KB_BLOBS__BACKEND": "ftp"}, {"KB_GENERATOR__STOP": "not json"}):
        with monkeypatch.context() as patch, pytest.raises(REFUSED):
            settings_from(wrong, patch)
    bad = render("--set", "settings.KB_RETRIEVAL__TOP_K=many")
    env = chart_environments(bad)["Deployment/kb-api/api"]
    with monkeypatch.context() as patch, pytest.raises(REFUSED):
        settings_from(env, patch)
