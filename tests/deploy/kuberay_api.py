"""The KubeRay ray.io/v1 fields deploy/ may use, each with the KubeRay release that added it.

Written here from KubeRay's documented API (its CRD API reference, ray.io/v1) and release notes, not copied from
KubeRay: only the types and fields cbmir's manifests have reason to use. ray.io/v1 appeared in KubeRay 1.0, so its
original fields are "1.0"; fields added later carry their release (1.1.0: RayJob activeDeadlineSeconds and
submissionMode, RayCluster suspend, WorkerGroupSpec numOfHosts; 1.2.0: RayJob retries, `backoffLimit`).
A field missing here fails the check: add it with the release that documents it, never without one.
Pod templates (`template`, `submitterPodTemplate`) are Kubernetes PodTemplateSpecs, checked against the Kubernetes
schema by kubernetes-validate instead.
"""

from __future__ import annotations

from typing import Any

Version = tuple[int, int]
POD_TEMPLATE = "PodTemplateSpec"
STRING_MAP = "map[string]string"

# type name -> field -> (release that added it, the field's type: another type here, POD_TEMPLATE, STRING_MAP or a
# JSON type name)
TYPES: dict[str, dict[str, tuple[Version, str]]] = {
    "RayCluster": {
        "apiVersion": ((1, 0), "string"), "kind": ((1, 0), "string"), "metadata": ((1, 0), "object"),
        "spec": ((1, 0), "RayClusterSpec"),
    },
    "RayClusterSpec": {
        "rayVersion": ((1, 0), "string"), "headGroupSpec": ((1, 0), "HeadGroupSpec"),
        "workerGroupSpecs": ((1, 0), "[]WorkerGroupSpec"), "enableInTreeAutoscaling": ((1, 0), "boolean"),
        "autoscalerOptions": ((1, 0), "object"), "headServiceAnnotations": ((1, 0), STRING_MAP),
        "suspend": ((1, 1), "boolean"),
    },
    "HeadGroupSpec": {
        "rayStartParams": ((1, 0), STRING_MAP), "template": ((1, 0), POD_TEMPLATE),
        "serviceType": ((1, 0), "string"), "headService": ((1, 0), "object"), "enableIngress": ((1, 0), "boolean"),
    },
    "WorkerGroupSpec": {
        "groupName": ((1, 0), "string"), "replicas": ((1, 0), "integer"), "minReplicas": ((1, 0), "integer"),
        "maxReplicas": ((1, 0), "integer"), "rayStartParams": ((1, 0), STRING_MAP),
        "template": ((1, 0), POD_TEMPLATE), "scaleStrategy": ((1, 0), "object"), "numOfHosts": ((1, 1), "integer"),
    },
    "RayJob": {
        "apiVersion": ((1, 0), "string"), "kind": ((1, 0), "string"), "metadata": ((1, 0), "object"),
        "spec": ((1, 0), "RayJobSpec"),
    },
    "RayJobSpec": {
        "entrypoint": ((1, 0), "string"), "metadata": ((1, 0), STRING_MAP), "runtimeEnvYAML": ((1, 0), "string"),
        "jobId": ((1, 0), "string"), "shutdownAfterJobFinishes": ((1, 0), "boolean"),
        "ttlSecondsAfterFinished": ((1, 0), "integer"), "rayClusterSpec": ((1, 0), "RayClusterSpec"),
        "clusterSelector": ((1, 0), STRING_MAP), "suspend": ((1, 0), "boolean"),
        "submitterPodTemplate": ((1, 0), POD_TEMPLATE), "entrypointResources": ((1, 0), "string"),
        "entrypointNumCpus": ((1, 0), "number"), "entrypointNumGpus": ((1, 0), "number"),
        "activeDeadlineSeconds": ((1, 1), "integer"), "submissionMode": ((1, 1), "string"),
        "backoffLimit": ((1, 2), "integer"),
    },
}
ENUMS = {("RayJobSpec", "submissionMode"): {(1, 1): {"K8sJobMode", "HTTPMode"}}}
_JSON_TYPES = {"string": str, "boolean": bool, "integer": int, "number": (int, float), "object": dict}


def version_text(version: Version) -> str:
    return ".".join(map(str, version))


def check(resource: dict[str, Any], required: Version) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Problems of `resource` (a RayCluster or RayJob) for a KubeRay operator at `required`, and the pod templates
    found in it as (path, template) for the Kubernetes schema."""
    problems: list[str] = []
    templates: list[tuple[str, dict[str, Any]]] = []

    def walk(value: Any, type_name: str, path: str) -> None:
        if type_name.startswith("[]"):
            if not isinstance(value, list):
                problems.append(f"{path}: a list of {type_name[2:]}, got {type(value).__name__}")
                return
            for i, item in enumerate(value):
                walk(item, type_name[2:], f"{path}[{i}]")
            return
        if type_name == POD_TEMPLATE:
            templates.append((path, value))
            return
        if type_name == STRING_MAP:
            bad = [k for k, v in (value or {}).items() if not isinstance(v, str)]
            if bad:
                problems.append(f"{path}: values must be strings (quote them): {', '.join(bad)}")
            return
        if type_name in _JSON_TYPES:
            expected = _JSON_TYPES[type_name]
            if not isinstance(value, expected) or (type_name in ("integer", "number") and isinstance(value, bool)):
                problems.append(f"{path}: a {type_name}, got {value!r}")
            return
        fields = TYPES[type_name]
        if not isinstance(value, dict):
            problems.append(f"{path}: a {type_name} object, got {type(value).__name__}")
            return
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key not in fields:
                problems.append(f"{where}: not a field of KubeRay ray.io/v1 {type_name} (as written in "
                                f"tests/deploy/kuberay_api.py)")
                continue
            added, field_type = fields[key]
            if added > required:
                problems.append(f"{where}: needs KubeRay >= {version_text(added)}, the manifest requires "
                                f">= {version_text(required)}")
            for (owner, name), by_version in ENUMS.items():
                if owner == type_name and name == key:
                    allowed = set().union(*(v for since, v in by_version.items() if since <= required))
                    if item not in allowed:
                        problems.append(f"{where}: {item!r} is not one of {sorted(allowed)}")
            walk(item, field_type, where)

    kind = resource.get("kind")
    if kind not in ("RayCluster", "RayJob") or resource.get("apiVersion") != "ray.io/v1":
        problems.append(f"{kind} {resource.get('apiVersion')}: only ray.io/v1 RayCluster and RayJob are described")
    else:
        walk(resource, kind, "")
    return problems, templates
