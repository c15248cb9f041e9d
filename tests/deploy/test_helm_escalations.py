"""The chart's escalations toggle, rendered and linted by the real helm, validated like the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_helm import CHART, GPU_VALUES, K8S_VERSIONS, NAMESPACE, RELEASE, _run, helm, one, render, render_error

from erc_stream.escalations.rules import RulesConfig, SpikeRule, rules_from_mapping

__all__ = ["helm"]  # the fixture, imported for these tests

ON = ["escalations.enabled=true"]
NAME = f"{RELEASE}-erc-stream-escalations"


def _mine(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"]["name"].startswith(NAME)]


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")


def test_off_by_default(helm: Path) -> None:
    assert _mine(render(helm)) == []


def test_lint_strict_with_escalations(helm: Path) -> None:
    proc = _run(helm, "lint", "--strict", str(CHART), "--set", ON[0], "-f", str(GPU_VALUES))
    assert proc.returncode == 0 and "0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr


def test_enabled_renders_a_valid_deployment_on_the_contract(helm: Path) -> None:
    docs = render(helm, sets=ON)
    mine = _mine(docs)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in mine) == [
        ("ConfigMap", NAME),
        ("Deployment", NAME),
        ("Service", NAME),
    ]
    _validate(mine)
    assert one(docs, "ConfigMap", "-escalations")["data"] == {
        "ERC_BOOTSTRAP_SERVERS": "kafka:9092",
        "ERC_SECURITY_PROTOCOL": "PLAINTEXT",
        "ERC_ESCALATIONS_INPUT_TOPIC": "chat.emotions",  # the worker's output
        "ERC_ESCALATIONS_OUTPUT_TOPIC": "chat.escalations",
        "ERC_ESCALATIONS_DLQ_TOPIC": "chat.emotions.dlq",
        "ERC_ESCALATIONS_APP_ID": "erc-escalations",
        "ERC_ESCALATIONS_REPLICATION_FACTOR": "3",
        "ERC_ESCALATIONS_AUTO_OFFSET_RESET": "earliest",
        "ERC_ESCALATIONS_COMMIT_INTERVAL_MS": "1000",
        "ERC_ESCALATIONS_PRODUCER_MAX_BATCH_BYTES": "16384",
        "ERC_ESCALATIONS_METRICS_HOST": "0.0.0.0",
        "ERC_ESCALATIONS_METRICS_PORT": "9401",
        "ERC_LOG_LEVEL": "INFO",
    }
    deployment = one(docs, "Deployment", "-escalations")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["erc-stream"] and container["args"] == ["escalations"]
    assert container["envFrom"] == [{"configMapRef": {"name": NAME}}]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9401, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert "nvidia.com/gpu" not in yaml.safe_dump(deployment)
    # Selectors: the escalations Service picks its own pods only, the worker's Service not them.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert one(docs, "Service", "-escalations")["spec"]["selector"].items() <= labels.items()
    assert not one(docs, "Service", "-metrics")["spec"]["selector"].items() <= labels.items()
    assert not one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_rules_become_a_mounted_file_the_app_accepts(helm: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules-values.yaml"
    rules.write_text(
        "escalations:\n  rules:\n    rules:\n      spike:\n        threshold: 0.7\n    history_turns: 10\n"
    )
    docs = render(helm, [rules], ON)
    _validate(_mine(docs))
    text = one(docs, "ConfigMap", "-escalations-rules")["data"]["rules.yaml"]
    assert rules_from_mapping(yaml.safe_load(text)) == RulesConfig(spike=SpikeRule(threshold=0.7), history_turns=10)
    config = one(docs, "ConfigMap", "-escalations")["data"]
    assert config["ERC_ESCALATIONS_RULES_FILE"] == "/etc/erc-stream/escalations/rules.yaml"
    pod = one(docs, "Deployment", "-escalations")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {"name": "rules", "mountPath": "/etc/erc-stream/escalations", "readOnly": True} in container["volumeMounts"]
    assert {"name": "rules", "configMap": {"name": f"{NAME}-rules"}} in pod["spec"]["volumes"]
    # Changing a rule rolls the pods.
    before = one(render(helm, sets=ON), "Deployment", "-escalations")["spec"]["template"]["metadata"]["annotations"]
    assert pod["metadata"]["annotations"]["checksum/config"] != before["checksum/config"]


def test_secure_kafka_and_service_monitor(helm: Path) -> None:
    docs = render(helm, [GPU_VALUES], ON)
    mine = _mine(docs)
    _validate(mine)
    config = one(docs, "ConfigMap", "-escalations")["data"]
    assert config["ERC_SECURITY_PROTOCOL"] == "SASL_SSL" and config["ERC_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["ERC_SSL_CAFILE"] == "/etc/erc-stream/kafka-tls/ca.crt"
    (container,) = one(docs, "Deployment", "-escalations")["spec"]["template"]["spec"]["containers"]
    password = [e for e in container["env"] if e["name"] == "ERC_SASL_PASSWORD"]
    assert password == [
        {"name": "ERC_SASL_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "erc-stream-kafka", "key": "password"}}}
    ]
    monitor = one(docs, "ServiceMonitor", "-escalations")
    service = one(docs, "Service", "-escalations")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= one(docs, "Service", "-metrics")["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["escalations.appId=erc-stream"], "escalations.appId=erc-stream equals worker.groupId"),
        (["escalations.outputTopic=chat.emotions"], "escalations.outputTopic=chat.emotions is already used"),
        (["escalations.dlqTopic=chat.turns.dlq"], "escalations.dlqTopic=chat.turns.dlq is already used"),
        (["escalations.autoOffsetReset=middle"], "autoOffsetReset"),
        (["escalations.producerMaxBatchBytes=0"], "producerMaxBatchBytes"),
        (["escalations.extra=1"], "extra"),
    ],
)
def test_bad_escalations_values_are_refused(helm: Path, sets: list[str], message: str) -> None:
    assert message in render_error(helm, sets=[*ON, *sets])
