"""The Helm chart, rendered and linted by a real helm binary, validated against the
Kubernetes API schemas (kubernetes-validate); CRD objects checked field by field."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helmbin import PROJECT_ROOT, HelmUnavailable, helm_binary

from erc_stream.config import WorkerConfig

CHART = PROJECT_ROOT / "deploy" / "helm" / "erc-stream"
CI = CHART / "ci"
GPU_VALUES = CI / "gpu-keda-values.yaml"
HPA_VALUES = CI / "cpu-hpa-values.yaml"
IMAGE_VALUES = CI / "image-store-values.yaml"
DDP_VALUES = CI / "trainer-ddp-values.yaml"
RELEASE = "erc"
NAMESPACE = "erc-test"
# Oldest supported (Chart.yaml kubeVersion) and newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return helm_binary()
    except HelmUnavailable as exc:
        pytest.fail(f"no helm binary: {exc}")


def _run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def _template_args(values: list[Path], sets: list[str]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return args


def render(helm: Path, values: list[Path] | None = None, sets: list[str] | None = None) -> list[dict[str, Any]]:
    proc = _run(helm, *_template_args(values or [], sets or []))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_error(helm: Path, values: list[Path] | None = None, sets: list[str] | None = None) -> str:
    proc = _run(helm, *_template_args(values or [], sets or []))
    assert proc.returncode != 0, f"helm template accepted bad values {sets}:\n{proc.stdout[:2000]}"
    return proc.stderr


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "worker"
    return container


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# --- structural checks of the CRD objects (no Kubernetes schema for them) -------------


def _check_scaled_object(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    spec = doc["spec"]
    deployment = one(docs, "Deployment")
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[field], int) and spec[field] >= 0, field
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(meta)
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values must be strings"
    assert int(meta["lagThreshold"]) >= 1


def _check_service_monitor(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    service = one(docs, "Service", "-metrics")
    spec = doc["spec"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "ServiceMonitor selects no Service"
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def _check_prometheus_rule(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    groups = doc["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule["expr"]
            assert ("record" in rule) != ("alert" in rule), rule


CRD_CHECKS = {
    "ScaledObject": _check_scaled_object,
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
}


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        assert doc["metadata"]["name"], doc
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            CRD_CHECKS[doc["kind"]](doc, docs)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")


# --- the tests --------------------------------------------------------------------------


def test_helm_binary_is_real(helm: Path) -> None:
    proc = _run(helm, "version", "--short")
    assert proc.returncode == 0 and proc.stdout.startswith("v"), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "values",
    [None, GPU_VALUES, HPA_VALUES, IMAGE_VALUES, DDP_VALUES],
    ids=["default", "gpu-keda", "cpu-hpa", "image-store", "trainer-ddp"],
)
def test_helm_lint_strict(helm: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = _run(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_is_valid_kubernetes(helm: Path) -> None:
    docs = render(helm)
    assert kinds(docs) == [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    validate_all(docs)


def test_gpu_keda_render_is_valid(helm: Path) -> None:
    docs = render(helm, [GPU_VALUES])
    assert kinds(docs) == [
        "ConfigMap",
        "ConfigMap",
        "CronJob",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "PrometheusRule",
        "ScaledObject",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    validate_all(docs)


def test_cpu_hpa_and_image_store_renders_are_valid(helm: Path) -> None:
    hpa_docs = render(helm, [HPA_VALUES])
    assert kinds(hpa_docs) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    validate_all(hpa_docs)
    image_docs = render(helm, [IMAGE_VALUES])
    assert kinds(image_docs) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    validate_all(image_docs)


def test_k8s_validation_rejects_a_broken_manifest(helm: Path) -> None:
    """The schema check is not vacuous."""
    deployment = one(render(helm), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = {"a": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_default_values_map_onto_the_worker_contract(helm: Path) -> None:
    docs = render(helm)
    config = one(docs, "ConfigMap", "-worker")["data"]
    assert config == {
        "ERC_BOOTSTRAP_SERVERS": "kafka:9092",
        "ERC_SECURITY_PROTOCOL": "PLAINTEXT",
        "ERC_INPUT_TOPIC": "chat.turns",
        "ERC_OUTPUT_TOPIC": "chat.emotions",
        "ERC_DLQ_TOPIC": "chat.turns.dlq",
        "ERC_GROUP_ID": "erc-stream",
        "ERC_MODEL_STORE": "/models",
        "ERC_DEVICE": "auto",
        "ERC_DTYPE": "auto",
        "ERC_MAX_BATCH_SIZE": "32",
        "ERC_MAX_BATCH_TOKENS": "8192",
        "ERC_MAX_WAIT_MS": "20",
        "ERC_MAX_IN_FLIGHT": "512",
        "ERC_WINDOW_TTL_S": "3600",
        "ERC_MAX_CONVERSATIONS": "100000",
        "ERC_RELOAD_POLL_S": "5",
        "ERC_METRICS_HOST": "0.0.0.0",
        "ERC_METRICS_PORT": "9400",
        "ERC_LOG_LEVEL": "INFO",
    }
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = worker_container(docs)
    assert deployment["spec"]["replicas"] == 1
    assert container["command"] == ["erc-stream"] and container["args"] == ["worker"]
    assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-erc-stream-worker"}}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}}
    assert "tolerations" not in pod and "nodeSelector" not in pod
    # Model store: shared PVC, read-only in the worker.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"] == {"claimName": f"{RELEASE}-erc-stream-models", "readOnly": True}
    assert one(docs, "PersistentVolumeClaim")["metadata"]["name"] == f"{RELEASE}-erc-stream-models"
    # The ConfigMap checksum rolls the pods when settings change.
    changed = one(render(helm, sets=["worker.maxBatchSize=8"]), "Deployment")
    key = "checksum/config"
    assert changed["spec"]["template"]["metadata"]["annotations"][key] != pod_annotations(deployment)[key]


def pod_annotations(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["annotations"]


def test_model_channel_reaches_the_worker_only_when_set(helm: Path) -> None:
    config = one(render(helm, sets=["worker.modelChannel=emorynlp"]), "ConfigMap", "-worker")["data"]
    assert config["ERC_MODEL_CHANNEL"] == "emorynlp"
    assert "ERC_MODEL_CHANNEL" not in one(render(helm), "ConfigMap", "-worker")["data"]


def test_default_values_have_no_gpu_anywhere(helm: Path) -> None:
    proc = _run(helm, *_template_args([], []))
    assert proc.returncode == 0, proc.stderr
    assert "nvidia.com/gpu" not in proc.stdout
    assert "cuda" not in proc.stdout


def test_gpu_values_put_the_gpu_in_limits_only(helm: Path) -> None:
    docs = render(helm, [GPU_VALUES])
    container = worker_container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert container["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/gpu": 1}
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "6Gi"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "node.kubernetes.io/instance-type": "g5.xlarge"}
    assert one(docs, "ConfigMap", "-worker")["data"]["ERC_DEVICE"] == "cuda"
    assert one(docs, "ConfigMap", "-worker")["data"]["ERC_DTYPE"] == "fp16"
    # A GPU request slipped into resources.requests by the user is dropped; the count comes from gpu.count.
    docs = render(helm, [GPU_VALUES], ["resources.requests.nvidia\\.com/gpu=2", "gpu.count=2"])
    resources = worker_container(docs)["resources"]
    assert "nvidia.com/gpu" not in resources["requests"] and resources["limits"]["nvidia.com/gpu"] == 2


def test_gpu_with_cpu_device_is_refused(helm: Path) -> None:
    err = render_error(helm, [GPU_VALUES], ["worker.device=cpu"])
    assert "gpu.enabled=true with worker.device=cpu" in err


@pytest.mark.parametrize("value", ["0", "16"])
def test_prompts_per_forward_pass_reach_the_worker(helm: Path, value: str) -> None:
    config = one(render(helm, sets=[f"worker.maxForwardPrompts={value}"]), "ConfigMap", "-worker")["data"]
    assert config["ERC_MAX_FORWARD_PROMPTS"] == value
    assert WorkerConfig(max_forward_prompts=int(value)).max_forward_prompts == int(value)


def test_kafka_secrets_come_from_existing_secrets(helm: Path) -> None:
    docs = render(helm, [GPU_VALUES])
    container = worker_container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    password = [e for e in container["env"] if e["name"] == "ERC_SASL_PASSWORD"]
    assert password == [
        {"name": "ERC_SASL_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "erc-stream-kafka", "key": "password"}}}
    ]
    config = one(docs, "ConfigMap", "-worker")["data"]
    assert config["ERC_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["ERC_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["ERC_SASL_USERNAME"] == "erc-stream"
    assert config["ERC_SSL_CAFILE"] == "/etc/erc-stream/kafka-tls/ca.crt"
    assert "ERC_SASL_PASSWORD" not in config and "ERC_SSL_CERTFILE" not in config
    assert config["ERC_CONTEXT_TURNS"] == "6"
    assert "ERC_MAX_FORWARD_PROMPTS" not in config  # null: the worker's auto
    (tls,) = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
    assert tls["secret"]["secretName"] == "erc-stream-kafka-tls"
    assert {"name": "kafka-tls", "mountPath": "/etc/erc-stream/kafka-tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    # Mutual TLS.
    config = one(render(helm, [HPA_VALUES]), "ConfigMap", "-worker")["data"]
    assert config["ERC_SSL_CERTFILE"] == "/etc/erc-stream/kafka-tls/tls.crt"
    assert config["ERC_SSL_KEYFILE"] == "/etc/erc-stream/kafka-tls/tls.key"
    assert "ERC_SASL_MECHANISM" not in config


def test_keda_scaled_object_follows_values_and_partitions(helm: Path) -> None:
    docs = render(helm, [GPU_VALUES])
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["minReplicaCount"] == 2
    assert scaled["spec"]["maxReplicaCount"] == 24  # = kafka.inputPartitions
    assert scaled["spec"]["triggers"][0]["metadata"] == {
        "bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093,kafka-2.kafka:9093",
        "consumerGroup": "erc-stream",
        "topic": "chat.turns",
        "lagThreshold": "500",
        "activationLagThreshold": "10",
        "offsetResetPolicy": "latest",
        "allowIdleConsumers": "false",
    }
    assert scaled["spec"]["triggers"][0]["authenticationRef"] == {"name": "erc-stream-kafka"}
    assert "replicas" not in one(docs, "Deployment")["spec"], "the autoscaler owns the replica count"
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    for partitions, max_count, expected in [(4, None, 4), (24, 10, 10), (1, 1, 1)]:
        sets = [f"kafka.inputPartitions={partitions}", "autoscaling.keda.minReplicaCount=1"]
        if max_count is not None:
            sets.append(f"autoscaling.keda.maxReplicaCount={max_count}")
        got = one(render(helm, [GPU_VALUES], sets), "ScaledObject")["spec"]["maxReplicaCount"]
        assert got == expected and got <= partitions


def test_keda_max_above_partitions_is_refused(helm: Path) -> None:
    err = render_error(helm, [GPU_VALUES], ["autoscaling.keda.maxReplicaCount=30"])
    assert "autoscaling.keda.maxReplicaCount=30 exceeds kafka.inputPartitions=24" in err
    err = render_error(helm, [GPU_VALUES], ["kafka.inputPartitions=1"])  # minReplicaCount=2 > 1
    assert "autoscaling.keda.minReplicaCount=2 is above the ceiling 1" in err


def test_hpa_is_the_fallback_without_keda(helm: Path) -> None:
    docs = render(helm, [HPA_VALUES])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert (
        one(render(helm, sets=["autoscaling.hpa.enabled=true"]), "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 12
    )
    err = render_error(helm, [HPA_VALUES], ["autoscaling.hpa.maxReplicas=7"])
    assert "autoscaling.hpa.maxReplicas=7 exceeds kafka.inputPartitions=6" in err
    err = render_error(helm, [HPA_VALUES], ["autoscaling.keda.enabled=true"])
    assert "enable only one" in err


def test_trainer_cronjob_and_job(helm: Path) -> None:
    cron = one(render(helm, [GPU_VALUES]), "CronJob")
    assert cron["spec"]["schedule"] == "0 3 * * 0" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert trainer["command"] == ["erc-train"]
    assert trainer["args"] == ["fit", "--dataset", "meld", "--store", "/models", "--epochs", "8"]
    env = {e["name"]: e for e in trainer["env"]}
    assert env["OPENAI_API_KEY"] == {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "erc-stream-openai", "key": "api-key"}},
    }
    assert env["OPENAI_BASE_URL"]["value"] == "https://llm.internal.example.com/v1"
    assert env["OPENAI_MODEL"]["value"] == "gpt-4o-mini"
    assert env["ERC_DATA_DIR"]["value"] == "/data"
    # The trainer writes the store the workers read.
    assert {"name": "models", "mountPath": "/models"} in trainer["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": f"{RELEASE}-erc-stream-models"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "erc-datasets", "readOnly": True}

    docs = render(helm, [HPA_VALUES])
    job = one(docs, "Job")
    assert job["metadata"]["name"] == f"{RELEASE}-erc-stream-trainer-1"
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    assert trainer["args"] == ["fit", "--dataset", "emorynlp", "--store", "/models", "--quick", "--anchors", "plain"]
    assert "OPENAI_API_KEY" not in {e["name"] for e in trainer["env"]}
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared-models"
    worker_pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert worker_pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared-models", "readOnly": True}


def test_trainer_on_several_gpus_runs_torchrun(helm: Path) -> None:
    """nprocPerNode=4, gpus=4: `erc-train fit --nproc-per-node=4` (torchrun, NCCL), 4 GPUs in limits, /dev/shm."""
    docs = render(helm, [DDP_VALUES])
    assert kinds(docs) == [
        "ConfigMap",
        "Deployment",
        "Job",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    validate_all(docs)
    pod = one(docs, "Job")["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert trainer["command"] == ["erc-train"]
    assert trainer["args"] == ["fit", "--nproc-per-node=4", "--device", "cuda", "--dataset", "meld",
                               "--store", "/models", "--epochs", "8", "--batch-size", "64"]  # fmt: skip
    assert trainer["resources"]["limits"] == {"memory": "96Gi", "nvidia.com/gpu": 4}
    assert "nvidia.com/gpu" not in trainer["resources"]["requests"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in trainer["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    # The worker is untouched by the trainer's GPUs.
    assert "nvidia.com/gpu" not in json.dumps(one(docs, "Deployment"))


def test_trainer_processes_on_cpu_and_the_single_process_default(helm: Path) -> None:
    docs = render(helm, [HPA_VALUES], ["trainer.nprocPerNode=2"])
    validate_all(docs)
    pod = one(docs, "Job")["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    # gloo on CPU: no --device, no GPU, no GPU toleration.
    assert trainer["args"][:3] == ["fit", "--nproc-per-node=2", "--dataset"]
    assert "nvidia.com/gpu" not in json.dumps(pod)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in trainer["volumeMounts"]
    # nprocPerNode=1 (the default) renders the one-process trainer exactly as before.
    (single,) = one(render(helm, [HPA_VALUES]), "Job")["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--nproc-per-node") for a in single["args"])
    assert "dshm" not in json.dumps(single)
    # A GPU toleration the user already lists is not added twice.
    gpu_pod = one(render(helm, [GPU_VALUES], ["trainer.gpus=1"]), "CronJob")["spec"]["jobTemplate"]["spec"]
    tolerations = gpu_pod["template"]["spec"]["tolerations"]
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_image_model_store_uses_an_init_container(helm: Path) -> None:
    docs = render(helm, [IMAGE_VALUES])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example.com/erc-models:meld-2024-06-01"
    assert init["env"] == [{"name": "SRC", "value": "/store"}]
    assert init["volumeMounts"] == [{"name": "models", "mountPath": "/models"}]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume == {"name": "models", "emptyDir": {"sizeLimit": "10Gi"}}
    (mount,) = [m for m in worker_container(docs)["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "34%"
    err = render_error(helm, [IMAGE_VALUES], ["trainer.enabled=true", "trainer.data.existingClaim=d"])
    assert "trainer.enabled=true needs modelStore.source=pvc" in err


def test_monitoring_objects_embed_the_canonical_files(helm: Path) -> None:
    docs = render(helm, [GPU_VALUES])
    rule = one(docs, "PrometheusRule")
    canonical_rules = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == canonical_rules["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = one(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Support"}
    canonical_dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "erc-stream.json").read_text())
    assert json.loads(dashboard["data"]["erc-stream.json"]) == canonical_dashboard
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    service = one(docs, "Service", "-metrics")
    assert service["spec"]["publishNotReadyAddresses"] is True
    # The job label the Operator derives (the Service name) matches ErcWorkerDown's selector.
    assert "erc-stream" in service["metadata"]["name"]


@pytest.mark.parametrize(
    ("canonical", "copy"),
    [
        ("deploy/prometheus/rules.yaml", "deploy/helm/erc-stream/files/rules.yaml"),
        ("deploy/grafana/erc-stream.json", "deploy/helm/erc-stream/files/erc-stream.json"),
    ],
)
def test_chart_copies_are_identical(canonical: str, copy: str) -> None:
    assert (PROJECT_ROOT / copy).read_bytes() == (PROJECT_ROOT / canonical).read_bytes(), f"run: cp {canonical} {copy}"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["worker.maxBatchSize=-1"], "at '/worker/maxBatchSize': minimum: got -1, want 1"),
        (["worker.maxBatchSize=0"], "at '/worker/maxBatchSize': minimum: got 0, want 1"),
        (["worker.dtype=int8"], "at '/worker/dtype': value must be one of 'auto', 'bf16', 'fp16', 'fp32'"),
        (["worker.device=tpu"], "at '/worker/device': value must be one of 'auto', 'cpu', 'cuda'"),
        (
            ["kafka.securityProtocol=TLS"],
            "at '/kafka/securityProtocol': value must be one of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL'",
        ),
        (["kafka.inputPartitions=0"], "at '/kafka/inputPartitions': minimum: got 0, want 1"),
        (["worker.maxBatchSzie=8"], "additional properties 'maxBatchSzie' not allowed"),
        (["worker.maxWaitMs=fast"], "at '/worker/maxWaitMs': got string, want integer"),
        (["trainer.nprocPerNode=0"], "at '/trainer/nprocPerNode': minimum: got 0, want 1"),
        (["trainer.gpus=-1"], "at '/trainer/gpus': minimum: got -1, want 0"),
        (["worker.modelChannel=../x"], "at '/worker/modelChannel'"),
        (["worker.maxForwardPrompts=-1"], "at '/worker/maxForwardPrompts': minimum: got -1, want 0"),
    ],
    ids=[
        "negative-batch",
        "zero-batch",
        "dtype",
        "device",
        "protocol",
        "partitions",
        "typo",
        "type",
        "nproc",
        "gpus",
        "channel",
        "forward",
    ],
)
def test_bad_values_are_rejected_by_the_schema(helm: Path, sets: list[str], message: str) -> None:
    assert message in render_error(helm, sets=sets)
    lint = _run(helm, "lint", str(CHART), *[a for s in sets for a in ("--set", s)])
    assert lint.returncode != 0
    assert message in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["kafka.securityProtocol=SASL_SSL", "kafka.sasl.passwordSecret.name=s"],
            "kafka.securityProtocol=SASL_SSL needs kafka.sasl.mechanism",
        ),
        (
            ["kafka.securityProtocol=SASL_PLAINTEXT", "kafka.sasl.mechanism=PLAIN"],
            "kafka.securityProtocol=SASL_PLAINTEXT needs kafka.sasl.username",
        ),
        (
            ["kafka.securityProtocol=SASL_PLAINTEXT", "kafka.sasl.mechanism=PLAIN", "kafka.sasl.username=u"],
            "needs kafka.sasl.passwordSecret.name",
        ),
        (["kafka.sasl.mechanism=PLAIN"], "kafka.securityProtocol=PLAINTEXT does not use SASL"),
        (["kafka.tls.secretName=t"], "kafka.securityProtocol=PLAINTEXT does not use TLS"),
        (["kafka.securityProtocol=SSL", "kafka.tls.secretName=t", "kafka.tls.certKey=tls.crt"], "set both or neither"),
        (["trainer.enabled=true"], "trainer.enabled=true needs trainer.data.existingClaim"),
        (
            ["trainer.enabled=true", "trainer.data.existingClaim=d", "trainer.gpus=2"],
            "trainer.gpus=2 with trainer.nprocPerNode=1: torchrun runs one training process per GPU",
        ),
        (["modelStore.source=image"], "modelStore.source=image needs modelStore.image.repository"),
        (["modelStore.pvc.create=false"], "needs modelStore.pvc.existingClaim"),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(helm: Path, sets: list[str], message: str) -> None:
    assert message in render_error(helm, sets=sets)


def _leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, path)
        else:
            yield path


def test_readme_documents_every_values_key() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    leaves = list(_leaf_keys(values))
    assert len(leaves) > 100
    missing = [k for k in leaves if f"`{k}`" not in readme]
    assert not missing, f"chart README.md does not document: {missing}"


def test_schema_covers_every_values_key() -> None:
    """additionalProperties=false objects list every default key (helm lint enforces it too)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(node: dict[str, Any], sch: dict[str, Any], path: str) -> None:
        if sch.get("additionalProperties") is False:
            assert set(node) <= set(sch["properties"]), f"{path}: {set(node) - set(sch['properties'])}"
        for key, value in node.items():
            sub = sch.get("properties", {}).get(key)
            if isinstance(value, dict) and sub and sub.get("type") == "object" and "properties" in sub:
                check(value, sub, f"{path}.{key}")

    check(values, schema, "values")
    assert schema["properties"]["worker"]["properties"]["maxBatchSize"]["minimum"] == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, ["Device: auto, dtype: auto.", "publish a version with `erc-train fit --store ...`"]),
        (
            GPU_VALUES,
            [
                "Device: cuda (1 nvidia.com/gpu per pod), dtype: fp16.",
                "KEDA on consumer lag (target 500 per replica), 2..24 replicas.",
            ],
        ),
        (HPA_VALUES, ["logs -f job/erc-erc-stream-trainer-1", "CPU HPA, 2..6 replicas."]),
        (IMAGE_VALUES, ["copied from image registry.example.com/erc-models:meld-2024-06-01"]),
    ],
    ids=["default", "gpu-keda", "cpu-hpa", "image-store"],
)
def test_notes_render(helm: Path, values: Path | None, expected: list[str]) -> None:
    args = ["install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
    proc = _run(helm, *args, *(["-f", str(values)] if values else []))
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for line in expected:
        assert line in notes
