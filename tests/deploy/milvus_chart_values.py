"""The value keys of the Milvus Helm chart deploy/helm/milvus-values.yaml is written for (milvus-helm 4.1.17).

Written here from the chart's documented configuration (its README's values table for chart 4.1.x, Milvus 2.3.x),
not copied from the chart: the keys a deployment of cbmir has reason to set. ANY marks a value the chart passes
through whole (Kubernetes resources, affinity, extra config files), where any keys are the user's. A key missing
here fails the check: add it from the chart's documentation for CHART_VERSION, or fix the values file.
"""

from __future__ import annotations

from typing import Any

CHART = "milvus/milvus"
CHART_VERSION = "4.1.17"
ANY: dict[str, Any] = {}  # identity-compared: "any keys below"

_POD_PLACEMENT = {"nodeSelector": ANY, "affinity": ANY, "tolerations": ANY}
# What every Milvus component (proxy, coordinators, nodes) takes in chart 4.1.x.
_COMPONENT = {"enabled": None, "replicas": None, "resources": ANY, "extraEnv": ANY, "heaptrack": ANY,
              "profiling": ANY, **_POD_PLACEMENT}
_COORDINATOR = {**_COMPONENT, "activeStandby": {"enabled": None}, "service": {"port": None, "annotations": ANY}}
_PERSISTENCE = {"enabled": None, "size": None, "storageClass": None, "accessMode": None, "existingClaim": None,
                "annotations": ANY}

KEYS: dict[str, Any] = {
    "nameOverride": None, "fullnameOverride": None,
    "cluster": {"enabled": None},
    "image": {"all": {"repository": None, "tag": None, "pullPolicy": None, "pullSecrets": ANY},
              "tools": {"repository": None, "tag": None, "pullPolicy": None}},
    **_POD_PLACEMENT, "labels": ANY, "annotations": ANY,
    "extraConfigFiles": ANY,  # file name -> Milvus config YAML (user.yaml)
    "service": {"type": None, "port": None, "portName": None, "nodePort": None, "annotations": ANY, "labels": ANY,
                "externalIPs": ANY, "loadBalancerSourceRanges": ANY},
    "ingress": ANY, "serviceAccount": ANY, "livenessProbe": ANY, "readinessProbe": ANY, "customConfigMap": None,
    "metrics": {"enabled": None, "serviceMonitor": {"enabled": None, "interval": None, "scrapeTimeout": None,
                                                    "additionalLabels": ANY}},
    "log": {"level": None, "file": ANY, "format": None, "persistence": ANY},
    "heaptrack": ANY,
    "standalone": {**_COMPONENT, "messageQueue": None, "persistence": ANY, "disk": ANY},
    "proxy": {**_COMPONENT, "http": ANY, "tls": ANY},
    "rootCoordinator": _COORDINATOR, "queryCoordinator": _COORDINATOR, "indexCoordinator": _COORDINATOR,
    "dataCoordinator": _COORDINATOR,
    "queryNode": {**_COMPONENT, "disk": ANY},
    "indexNode": {**_COMPONENT, "disk": ANY},
    "dataNode": _COMPONENT,
    "attu": ANY,
    # Sub-charts the chart bundles; the keys of their own documented values that matter here.
    "etcd": {"enabled": None, "replicaCount": None, "persistence": _PERSISTENCE, "resources": ANY, "image": ANY,
             "auth": ANY, **_POD_PLACEMENT},
    "minio": {"enabled": None, "mode": None, "persistence": _PERSISTENCE, "resources": ANY, "accessKey": None,
              "secretKey": None, "bucketName": None, "rootPath": None, "image": ANY, **_POD_PLACEMENT},
    "pulsar": {"enabled": None, "components": ANY, "zookeeper": ANY, "bookkeeper": ANY, "broker": ANY,
               "proxy": ANY, "autorecovery": ANY},
    "kafka": {"enabled": None, "replicaCount": None, "persistence": _PERSISTENCE, "resources": ANY},
    "externalS3": ANY, "externalEtcd": ANY, "externalPulsar": ANY, "externalKafka": ANY,
}


def unknown_keys(values: dict[str, Any], keys: dict[str, Any] = KEYS, path: str = "") -> list[str]:
    """Dotted paths of the keys in `values` that the chart does not take."""
    found = []
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in keys:
            found.append(where)
            continue
        below = keys[key]
        if below is ANY:
            continue
        if isinstance(below, dict) and isinstance(value, dict):
            found += unknown_keys(value, below, where)
        elif isinstance(value, dict) and below is None:
            found.append(f"{where} (a plain value in the chart, given a mapping)")
    return found
