"""deploy/ passes the schemas of what it is applied to: Kubernetes 1.30 (kubernetes-validate's bundled schemas,
offline), the KubeRay API version raycluster.yaml requires, the pinned Milvus Helm chart's values, and yamllint;
and the certificate names the manifests state are the ones their clients and probes verify."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kuberay_api import check as check_kuberay
from kuberay_api import version_text
from milvus_chart_values import CHART, CHART_VERSION, unknown_keys
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
HELM_VALUES = DEPLOY / "helm" / "milvus-values.yaml"
QUERY = K8S / "query.yaml"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes minor still supported by the clouds' managed services
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kubernetes_problems(resource: dict[str, Any]) -> list[str]:
    """What the Kubernetes schema says of `resource` (strict: unknown fields fail); [] when it passes."""
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        return [f"{resource['kind']} {resource['metadata'].get('name', '')}: {where}: {error.message}"]
    return []


def required_kuberay(text: str) -> tuple[int, int]:
    """The KubeRay operator version a manifest states it needs: "KubeRay (operator >= X.Y)"."""
    match = re.search(r"KubeRay \(operator >= (\d+)\.(\d+)\b", text)
    assert match, "deploy/k8s/raycluster.yaml must state the KubeRay operator it needs: 'KubeRay (operator >= X.Y)'"
    return int(match.group(1)), int(match.group(2))


def kuberay_problems(resources: list[dict[str, Any]], required: tuple[int, int]) -> list[str]:
    """KubeRay field problems plus the Kubernetes schema's verdict on every pod template inside."""
    problems = []
    for resource in resources:
        found, templates = check_kuberay(resource, required)
        problems += [f"{resource['kind']} {resource['metadata']['name']}: {p}" for p in found]
        for path, template in templates:
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": path}, "template": template}
            problems += kubernetes_problems(wrapped)
    return problems


def _kuberay_resources() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if d["apiVersion"].startswith("ray.io/")]


# -- Kubernetes ----------------------------------------------------------------------------------------------


def test_kubernetes_validate_works_offline_from_its_bundled_schemas() -> None:
    # The schemas ship inside the package: no fetch, so the suite runs without a network.
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (schemas / f"v{KUBERNETES_VERSION}-local-strict").is_dir()


def test_every_kubernetes_manifest_passes_the_kubernetes_schema() -> None:
    built_in = [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in built_in} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    problems = [p for d in built_in for p in kubernetes_problems(d)]

    assert problems == []


def test_the_schema_check_catches_a_misplaced_field() -> None:
    (deployment, *_) = _docs(QUERY)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcPort"] = 50052

    assert "'grpcPort' was unexpected" in " ".join(kubernetes_problems(deployment))


# -- KubeRay -------------------------------------------------------------------------------------------------


def test_kuberay_resources_use_only_fields_of_the_kuberay_version_they_require() -> None:
    required = required_kuberay((K8S / "raycluster.yaml").read_text())
    resources = _kuberay_resources()
    assert {r["kind"] for r in resources} == {"RayCluster", "RayJob"}

    assert kuberay_problems(resources, required) == []


def test_the_kuberay_check_catches_a_field_newer_than_the_stated_operator() -> None:
    # What deploy/ shipped before: raycluster.yaml said "operator >= 1.1", rayjob-ingest.yaml sets backoffLimit.
    problems = kuberay_problems(_kuberay_resources(), (1, 1))

    assert problems == ["RayJob cbmir-ingest: spec.backoffLimit: needs KubeRay >= 1.2, the manifest requires >= 1.1"]
    assert required_kuberay("# KubeRay (operator >= 1.2) Ray cluster") == (1, 2)


def test_the_kuberay_check_catches_unquoted_ray_start_params_and_unknown_fields() -> None:
    (cluster,) = [r for r in _kuberay_resources() if r["kind"] == "RayCluster"]
    cluster["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 1
    cluster["spec"]["workerGroupSpecs"][0]["replica"] = 2

    problems = kuberay_problems([cluster], (1, 2))

    assert any("rayStartParams: values must be strings" in p for p in problems)
    assert any("workerGroupSpecs[0].replica: not a field" in p for p in problems)
    assert version_text((1, 2)) == "1.2"


# -- Milvus Helm chart ---------------------------------------------------------------------------------------


def test_helm_values_are_written_for_the_chart_version_everyone_installs() -> None:
    pinned = {m for text in (HELM_VALUES.read_text(), (ROOT / "docs" / "scaling.md").read_text())
              for m in re.findall(rf"helm install \S+ {CHART} --version (\S+)", text)}

    assert pinned == {CHART_VERSION}


def test_every_helm_value_is_a_key_of_the_pinned_milvus_chart() -> None:
    (values,) = _docs(HELM_VALUES)

    assert unknown_keys(values) == []


def test_the_helm_check_catches_a_misspelled_key() -> None:
    (values,) = _docs(HELM_VALUES)
    values["queryNodes"] = values.pop("queryNode")
    values["proxy"]["replica"] = 2

    assert unknown_keys(values) == ["proxy.replica", "queryNodes"]


# -- yamllint --------------------------------------------------------------------------------------------------


def _lint(text: str, path: Path) -> list[str]:
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    return [f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.message} ({p.rule})"
            for p in linter.run(text, config, str(path)) if p.level == "error"]


def test_every_deploy_yaml_passes_yamllint() -> None:
    assert len(YAML_FILES) >= 5

    assert [p for path in YAML_FILES for p in _lint(path.read_text(), path)] == []


def test_yamllint_catches_a_duplicate_key_the_yaml_parser_would_swallow() -> None:
    # PyYAML keeps the last of two equal keys without a word: the first `args` below would vanish unseen.
    text = QUERY.read_text().replace("          imagePullPolicy: IfNotPresent\n",
                                     "          imagePullPolicy: IfNotPresent\n          args: []\n", 1)

    assert any("duplication of key \"args\"" in p for p in _lint(text, QUERY))


# -- certificate names -------------------------------------------------------------------------------------


def stated_certificate_names(text: str) -> set[str]:
    """The names a manifest's header says its server certificate carries: "SAN a, b" / "(SAN: a)"."""
    match = re.search(r"SANs?:? ([^;)\n]+?)(?=[;)\n]|: )", text)
    assert match, "the manifest must say which names its server certificate carries (SAN ...)"
    return {name.strip() for name in re.split(r",| and ", match.group(1)) if name.strip()}


def verified_names(probe: dict[str, Any]) -> set[str]:
    """The server names a probe verifies a certificate against ({} for a plain-text probe)."""
    argv = probe.get("exec", {}).get("command") or []
    argv = shlex.split(argv) if isinstance(argv, str) else argv
    return {argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag == "--tls-server-name"}


def certificate_problems(query_yaml: str) -> list[str]:
    """Names the query manifests verify (probes) or clients use (the Service name, in and across namespaces)
    that the stated certificate does not carry."""
    stated = stated_certificate_names(query_yaml)
    docs = [d for d in yaml.safe_load_all(query_yaml) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    problems = []
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            for name in verified_names(container.get(kind, {})) - stated:
                problems.append(f"{kind} verifies {name!r}, the certificate is stated for {sorted(stated)}")
    name = service["metadata"]["name"]
    for client_name in (name, f"{name}.<ns>.svc"):
        if client_name not in stated:
            problems.append(f"clients reach the Service as {client_name!r}: the certificate must carry it")
    return problems


def test_the_query_certificate_carries_every_name_its_probes_and_clients_verify() -> None:
    assert certificate_problems(QUERY.read_text()) == []


def test_the_certificate_check_catches_a_probe_verifying_a_name_the_certificate_lacks() -> None:
    # deploy/k8s/query.yaml as it shipped at 3d54361: SAN cbmir-query.<ns>.svc, probes verifying cbmir-query.
    shipped = (Path(__file__).parent / "data" / "query-3d54361.yaml").read_text()
    problems = certificate_problems(shipped)

    assert "startupProbe verifies 'cbmir-query', the certificate is stated for ['cbmir-query.<ns>.svc']" in problems
    assert "clients reach the Service as 'cbmir-query': the certificate must carry it" in problems


def test_compose_probe_needs_no_client_certificate_and_verifies_the_stated_name() -> None:
    compose = _docs(COMPOSE)[0]
    query = compose["services"]["query"]
    test = query["healthcheck"]["test"]
    argv = test[1:]
    target = argv[argv.index("--target") + 1]
    serve = query["command"]
    health_port = serve[serve.index("--health-port") + 1] if "--health-port" in serve else None
    # Probed on the plain-text health listener (inside the container only: it is not published), so the probe
    # passes with mutual TLS on the service port (--tls-client-ca) as without.
    assert health_port is not None and target == f"127.0.0.1:{health_port}"
    assert "--tls-ca" not in argv and f"{health_port}:{health_port}" not in query["ports"]
    assert verified_names({"exec": {"command": argv}}) <= stated_certificate_names(COMPOSE.read_text())


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_parses(path: Path) -> None:
    assert _docs(path)
