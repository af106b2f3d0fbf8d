"""The Helm chart: lints, renders (default and non-default values), refuses bad
values through values.schema.json, every manifest validates offline against the
Kubernetes schema, RBAC equals what the controller's code needs, CRDs are the
generated ones and survive uninstall, and the operator's real command line
accepts what the Deployment passes it. helm-python-sdk (Helm's Go SDK, no binary)."""
from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from prune_operator import chartfiles, crdgen, main as operator_main, rbac
from prune_operator.prunejob import builders
from prune_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "prune-operator"
KUBE_VERSION = "1.31.0"
RELEASE, NAMESPACE = "po", "prune-system"

NON_DEFAULT = {
    "image": {"repository": "registry.example/ops/prune-operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "worker": {"image": {"repository": "registry.example/ops/prune-job", "tag": "1.2.3-cuda", "pullPolicy": "Always"}},
    "s3": {"endpoint": "http://minio.minio.svc:9000"},
    "policy": {"allowedCredentialSecrets": ["minio-credentials", "s3-reader"], "allowedPriorityClasses": ["batch"],
               "allowedNodeSelectors": ["pool=gpu", "zone=*"], "allowedTolerationKeys": ["nvidia.com/gpu"]},
    "watch": {"allNamespaces": False, "namespaces": ["ml", "research"]},
    "crds": {"install": True, "keep": False},
    "serviceAccount": {"create": True, "name": "pruner", "annotations": {"iam.example/role": "pruner"}},
    "verbose": True,
    "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                                   "labels": {"release": "prometheus"}}},
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"a": "b"},
    "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"memory": "1Gi"}},
}
NO_METRICS = {"metrics": {"enabled": False}, "crds": {"install": False}, "rbac": {"create": True},
              "serviceAccount": {"create": False, "name": "existing"}}
VARIANTS = {"default": {}, "non-default": NON_DEFAULT, "no-metrics": NO_METRICS}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, **options)
    docs = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = by_kind(docs, kind)
    return found


@pytest.fixture(scope="module")
def rendered(chart):
    return {name: render(chart, values) for name, values in VARIANTS.items()}


# ---------------------------------------------------------------- lint, render, schema


@pytest.mark.parametrize("variant", VARIANTS)
def test_lints_clean(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_renders_the_expected_objects(rendered):
    kinds = lambda docs: sorted(f"{d['kind']}/{d['metadata'].get('namespace', '')}" for d in docs)
    assert kinds(rendered["default"]) == sorted([
        "ClusterRole/", "ClusterRoleBinding/", *["CustomResourceDefinition/"] * 3,
        f"Deployment/{NAMESPACE}", f"Service/{NAMESPACE}", f"ServiceAccount/{NAMESPACE}"])
    assert kinds(rendered["non-default"]) == sorted([
        "ClusterRole/", "ClusterRoleBinding/", *["CustomResourceDefinition/"] * 3,
        f"Deployment/{NAMESPACE}", f"Service/{NAMESPACE}", f"ServiceAccount/{NAMESPACE}",
        f"ServiceMonitor/{NAMESPACE}", "Role/ml", "RoleBinding/ml", "Role/research", "RoleBinding/research"])
    assert kinds(rendered["no-metrics"]) == sorted([
        "ClusterRole/", "ClusterRoleBinding/", f"Deployment/{NAMESPACE}"])


@pytest.mark.parametrize("values,where,says", [
    ({"replicaCount": 2}, "at ''", "additional properties 'replicaCount' not allowed"),
    ({"image": {"tagg": "1"}}, "/image", "'tagg' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "one of"),
    ({"watch": {"allNamespaces": "yes"}}, "/watch/allNamespaces", "boolean"),
    ({"watch": {"allNamespaces": False}}, "/watch/namespaces", "minItems"),
    ({"watch": {"allNamespaces": False, "namespaces": ["ML_team"]}}, "/watch/namespaces/0", "pattern"),
    ({"s3": {"endpoint": "minio:9000"}}, "/s3/endpoint", "pattern"),
    ({"metrics": {"port": 70000}}, "/metrics/port", "maximum"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval", "pattern"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory", ""),
    ({"crds": {"keep": "no"}}, "/crds/keep", "boolean"),
])
def test_bad_values_are_refused_by_the_schema(chart, values, where, says):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert where in str(err.value) and says in str(err.value)
    report = helm.lint(CHART, values, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"], "lint must fail on the same values"


def test_every_value_is_documented_and_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)

    def walk(node: dict[str, Any], sub: dict[str, Any], path: str) -> None:
        assert sub.get("additionalProperties") is False or path in FREE_FORM, f"{path}: schema must be closed"
        for key, value in node.items():
            assert key in sub.get("properties", {}), f"{path}.{key} is not in values.schema.json"
            if isinstance(value, dict) and f"{path}.{key}" not in FREE_FORM:
                walk(value, sub["properties"][key], f"{path}.{key}")

    FREE_FORM = {".podSecurityContext", ".securityContext", ".affinity", ".resources.requests", ".resources.limits",
                 ".podAnnotations", ".podLabels", ".nodeSelector", ".serviceAccount.annotations",
                 ".metrics.service.annotations", ".metrics.serviceMonitor.labels"}
    walk(values, schema, "")
    # every key has a comment right above it, unless a whole block is documented at once
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "-")) or ":" not in line:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = lines[i - 1].strip() if i else ""
        documented = above.startswith("#")
        block_documented = above.startswith("# --")
        assert documented or any(doc for _, doc in stack), f"values.yaml line {i + 1}: {line.strip()!r} is not documented"
        stack.append((indent, block_documented))


# ---------------------------------------------------------------- offline validation


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_validates_against_the_kubernetes_schema(rendered, variant):
    checked = 0
    for doc in rendered[variant]:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # not a Kubernetes type; checked in test_service_monitor_selects_the_metrics_service
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        checked += 1
    assert checked == len([d for d in rendered[variant] if d["apiVersion"] != "monitoring.coreos.com/v1"])


def test_service_monitor_selects_the_metrics_service(rendered):
    docs = rendered["non-default"]
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


# ---------------------------------------------------------------- RBAC


def granted(docs: list[dict[str, Any]], kind: str, namespace: str | None = None):
    rules = [r for d in by_kind(docs, kind) if namespace is None or d["metadata"].get("namespace") == namespace
             for r in d["rules"]]
    return chartfiles.permissions(rules)


def test_rbac_all_namespaces_equals_what_the_controller_needs(rendered):
    docs = rendered["default"]
    assert granted(docs, "ClusterRole") == chartfiles.permissions(rbac.RULES)
    assert by_kind(docs, "Role") == []
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-prune-operator", "namespace": NAMESPACE}]


def test_rbac_namespace_list_grants_per_namespace(rendered):
    docs = rendered["non-default"]
    needed = chartfiles.permissions(rbac.RULES)
    cluster = granted(docs, "ClusterRole")
    assert {(g, r.split("/")[0]) for g, r, _, _ in cluster} <= chartfiles.CLUSTER_SCOPED
    for namespace in ("ml", "research"):
        assert cluster | granted(docs, "Role", namespace) == needed
        binding = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == namespace][0]
        assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "pruner", "namespace": NAMESPACE}
        assert binding["roleRef"]["kind"] == "Role"


def test_rbac_has_no_wildcards_and_no_secrets(rendered):
    for g, r, v, _ in granted(rendered["default"], "ClusterRole"):
        assert "*" not in (g, r, v)
        assert r != "secrets", "the operator never reads Secrets: the Job takes them as env"


def test_generated_chart_files_are_fresh():
    assert chartfiles.main([str(CHART), "--check"]) == 0, "run `make crds`"


# ---------------------------------------------------------------- CRDs


def test_crds_are_the_generated_ones(rendered):
    crds = {d["metadata"]["name"]: d for d in by_kind(rendered["default"], "CustomResourceDefinition")}
    generated = {c["metadata"]["name"]: c for c in crdgen.all_crds().values()}
    assert set(crds) == {"prunejobs.pruning.dev", "pruneschedules.pruning.dev", "prunesweeps.pruning.dev"} == set(generated)
    for name, crd in crds.items():
        assert crd["spec"] == generated[name]["spec"]


def test_crds_are_templates_kept_on_uninstall(rendered):
    assert not (CHART / "crds").exists(), "Helm never upgrades crds/: CRDs must be templates"
    for crd in by_kind(rendered["default"], "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for crd in by_kind(rendered["non-default"], "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


def test_upgrade_renders_the_crds_so_a_new_schema_is_applied(chart):
    docs = render(chart, {}, is_upgrade=True, is_install=False, revision=2)
    names = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert names == {"prunejobs.pruning.dev", "pruneschedules.pruning.dev", "prunesweeps.pruning.dev"}


# ---------------------------------------------------------------- the operator Deployment


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [c] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_one_active_replica_with_probes(rendered):
    deployment = one(rendered["default"], "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(rendered["default"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]


def test_security_context_is_the_workers(rendered):
    owner = builders.Owner("x", "ml", "uid")
    from prune_job.spec import parse_spec

    job = builders.job(owner, parse_spec({"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://b/p/"}}),
                       OperatorConfig())
    worker_pod = job["spec"]["template"]["spec"]
    pod = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == worker_pod["securityContext"]
    assert container(rendered["default"])["securityContext"] == worker_pod["containers"][0]["securityContext"]


def run_cli(monkeypatch, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the real `prune-operator` main() with the Deployment's args and env, up to
    the point where it would connect; return what it would run with."""
    c = container(docs)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for name in list(__import__("os").environ):
        if name.startswith("PRUNE_OPERATOR_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(operator_main, "load_configuration", lambda kubeconfig: "configuration")
    monkeypatch.setattr("prometheus_client.start_http_server", lambda port: seen.setdefault("metrics_port", port))

    def fake_run(configuration, config, **kwargs):
        seen.update(kwargs, config=config)
        return "coroutine"

    monkeypatch.setattr(operator_main, "run", fake_run)
    monkeypatch.setattr(operator_main, "asyncio", types.SimpleNamespace(run=lambda coroutine: None))
    assert operator_main.main(c["args"]) == 0
    return seen


def test_the_operator_accepts_the_deployments_command_line(monkeypatch, rendered):
    seen = run_cli(monkeypatch, rendered["default"])
    assert seen["namespaces"] == [] and seen["peering"] is None
    assert seen["metrics_port"] == 9090 and seen["liveness"] == "http://0.0.0.0:8080/healthz"
    assert seen["config"].job_image == "ghcr.io/prune-operator/prune-job:0.1.0"

    seen = run_cli(monkeypatch, rendered["non-default"])
    assert seen["namespaces"] == ["ml", "research"]
    assert seen["config"].job_image == "registry.example/ops/prune-job:1.2.3-cuda"
    assert seen["config"].image_pull_policy == "Always"

    assert seen["config"].allowed_secrets == ("minio-credentials", "s3-reader")
    assert seen["config"].allowed_node_selectors == ("pool=gpu", "zone=*")
    assert seen["config"].allowed_priority_classes == ("batch",)
    assert seen["config"].allowed_toleration_keys == ("nvidia.com/gpu",)

    seen = run_cli(monkeypatch, rendered["no-metrics"])
    assert "metrics_port" not in seen
    assert seen["config"].allowed_secrets == ()  # default: no restriction


def test_worker_image_and_s3_endpoint_are_values(rendered):
    env = {e["name"]: e.get("value") for e in container(rendered["non-default"])["env"]}
    assert env["PRUNE_OPERATOR_JOB_IMAGE"] == "registry.example/ops/prune-job:1.2.3-cuda"
    assert env["PRUNE_OPERATOR_S3_ENDPOINT"] == "http://minio.minio.svc:9000"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert container(rendered["non-default"])["image"] == "registry.example/ops/prune-operator:1.2.3"
    assert container(rendered["default"])["image"] == "ghcr.io/prune-operator/prune-operator:0.1.0"


def test_metrics_service_targets_the_metrics_port(rendered):
    service = one(rendered["default"], "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= one(rendered["default"], "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert "--metrics-port=0" in container(rendered["no-metrics"])["args"]


def test_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: dict[str, Any], prefix: str = ""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and not any(f"`{path}`" in readme for _ in [0]):
                yield from leaves(value, f"{path}.")
            else:
                yield path

    missing = [p for p in leaves(values) if f"`{p}`" not in readme]
    assert missing == [], f"charts/prune-operator/README.md lacks {missing}"
