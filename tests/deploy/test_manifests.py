"""deploy/ agrees with the code: every manifest parses, and its ports, `cbmir` flags, env names, image, probes and
GPU settings are the ones the code has. A renamed flag or port breaks this test, not a production rollout."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cbmir.cli import build_parser
from cbmir.ingestion.pipeline import plan_resources
from cbmir.services.embedding.model import resolve_precision
from cbmir.services.embedding.precision import query_precision_tolerance, serving_precision
from cbmir.services.query.server import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
HELM_VALUES = DEPLOY / "helm" / "milvus-values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
HEALTH_CHECK = DEPLOY / "grpc_health_check.py"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"cbmir/cbmir:{VERSION}"
GRPC_PORT, METRICS_PORT, MILVUS_PORT = 50051, 9108, 19530
MILVUS_SERVER_VERSION = "2.3.5"  # PyPI `milvus` (the server the tests run) = the official image's tag
PARSER = build_parser()


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _kind(kind: str) -> list[dict[str, Any]]:
    found = [d for d in _k8s() if d["kind"] == kind]
    assert found, f"no {kind} in deploy/k8s"
    return found


def _compose() -> dict[str, Any]:
    return _docs(COMPOSE)[0]


def _parse(argv: list[str]) -> Any:
    """The real `cbmir` parser on a manifest's command; argparse's exit becomes a readable failure."""
    try:
        return PARSER.parse_args(argv)
    except SystemExit:
        pytest.fail(f"`cbmir {' '.join(argv)}` is not accepted by cbmir.cli.build_parser()")


def _containers(obj: Any) -> list[dict[str, Any]]:
    """Every container spec anywhere in a manifest (Deployments, Ray head/worker groups, submitter pods)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += value
            else:
                found += _containers(value)
    elif isinstance(obj, list):
        for value in obj:
            found += _containers(value)
    return found


def _cbmir_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `cbmir`) for every cbmir invocation in compose and k8s."""
    commands = []
    for name, service in _compose()["services"].items():
        if service.get("image") == IMAGE and "entrypoint" not in service:
            commands.append((f"compose {name}", list(service["command"])))
    for doc in _k8s():
        for container in _containers(doc):
            if container.get("image") == IMAGE and container.get("args"):
                commands.append((f"{doc['kind']} {container['name']}", list(container["args"])))
        if doc["kind"] == "RayJob":
            argv = shlex.split(doc["spec"]["entrypoint"])
            assert argv[0] == "cbmir"
            commands.append(("RayJob entrypoint", argv[1:]))
    return commands


# -- every file parses --------------------------------------------------------------------------------------


def test_every_manifest_parses_as_yaml() -> None:
    files = [COMPOSE, HELM_VALUES, *sorted(K8S.glob("*.yaml"))]
    assert len(files) >= 5
    for path in files:
        assert _docs(path), f"{path} is empty"
    kinds = {d["kind"] for d in _k8s()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "RayCluster", "RayJob"} <= kinds


def test_dockerfile_builds_the_one_image_from_this_tree() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    copied = set(re.findall(r"^COPY (\S+) ", text, re.M)) | {
        name for line in re.findall(r"^COPY (.+) \./$", text, re.M) for name in line.split()}
    # The stubs are generated in the image (setup.py + proto/ at build time), never committed; every folder the
    # package maps into `cbmir` is copied.
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    assert {"setup.py", "proto/", *(f"{folder}/" for folder in mapped)} <= copied
    assert f"-t {IMAGE}" in text
    assert 'ENTRYPOINT ["cbmir"]' in text
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert {GRPC_PORT, METRICS_PORT} <= exposed
    assert f"-t {IMAGE}" in COMPOSE.read_text()


# -- image, commands, flags ---------------------------------------------------------------------------------


def test_every_cbmir_container_runs_the_same_image_at_the_package_version() -> None:
    images = [s["image"] for s in _compose()["services"].values() if "cbmir" in s["image"]]
    images += [c["image"] for d in _k8s() for c in _containers(d) if "cbmir" in c["image"]]
    assert len(images) >= 8
    assert set(images) == {IMAGE}


def test_every_cbmir_command_is_accepted_by_the_real_parser() -> None:
    commands = _cbmir_commands()
    assert {argv[0] for _, argv in commands} >= {"serve", "ingest"}
    for _, argv in commands:
        _parse(argv)


def test_serve_commands_listen_on_the_documented_ports_with_tls_and_tokens() -> None:
    serves = [(where, _parse(argv)) for where, argv in _cbmir_commands() if argv[0] == "serve"]
    assert len(serves) == 2  # compose query + k8s Deployment
    for where, args in serves:
        assert args.port == GRPC_PORT == DEFAULT_PORT, where
        assert args.metrics_port == METRICS_PORT == PARSER.parse_args(["serve"]).metrics_port, where
        assert args.host == args.metrics_host == "0.0.0.0", where  # noqa: S104 - a container listens on its pod IP
        # A non-loopback --host needs TLS and client authentication (cbmir.services.query.tls.check_plaintext_allowed).
        assert args.tls_cert and args.tls_key and args.auth_tokens_file and not args.insecure, where


def test_ingest_commands_attach_to_the_ray_cluster() -> None:
    ingests = {where: _parse(argv) for where, argv in _cbmir_commands() if argv[0] == "ingest"}
    assert set(ingests) == {"compose ingest", "RayJob entrypoint"}
    assert ingests["compose ingest"].ray_address == "ray://ray-head:10001"
    job = ingests["RayJob entrypoint"]
    assert job.ray_address == "auto" and job.device == "cuda" and job.precision == "auto"


def test_the_cpu_query_service_accepts_what_the_gpu_job_ingests() -> None:
    # The shipped pair: the RayJob writes fp16 vectors (auto on CUDA), the Deployment serves them on CPU.
    commands = dict(_cbmir_commands())
    job, serve = _parse(commands["RayJob entrypoint"]), _parse(commands["Deployment cbmir"])
    stored = resolve_precision(job.precision, job.device)
    assert stored == "fp16" and serve.device == "cpu" and serve.precision == "auto"
    # auto adopts fp16 where the node's CPU has native fp16 kernels, else fp32: both within the measured tolerance.
    for served in {serving_precision(stored, serve.device), "fp16", "fp32"}:
        assert query_precision_tolerance(stored, served) is not None, served


def test_env_names_are_the_ones_the_code_reads() -> None:
    code = "\n".join(p.read_text() for d in ("services", "ingestion") for p in (ROOT / d).rglob("*.py"))
    read = set(re.findall(r'"(CBMIR_[A-Z_]+)"', code))
    used = {e["name"] for d in _k8s() for c in _containers(d) for e in c.get("env", [])}
    for service in _compose()["services"].values():
        used |= set(service.get("environment") or {})
    cbmir_env = {n for n in used if n.startswith("CBMIR_")}
    assert "CBMIR_MILVUS_URI" in cbmir_env
    assert cbmir_env <= read, f"manifests set env the code never reads: {sorted(cbmir_env - read)}"


def test_milvus_uri_points_at_the_milvus_port_everywhere() -> None:
    values = [e["value"] for d in _k8s() for c in _containers(d) for e in c.get("env", [])
              if e["name"] == "CBMIR_MILVUS_URI"]
    values += [s["environment"]["CBMIR_MILVUS_URI"] for s in _compose()["services"].values()
               if "CBMIR_MILVUS_URI" in (s.get("environment") or {})]
    assert len(values) >= 4
    assert set(values) == {f"http://milvus:{MILVUS_PORT}"}
    assert f"{MILVUS_PORT}:{MILVUS_PORT}" in _compose()["services"]["milvus"]["ports"]
    assert f"http://milvus:{MILVUS_PORT}" in DOCKERFILE.read_text()


# -- query service: ports, probes, secrets, metrics ---------------------------------------------------------


def _query_container() -> dict[str, Any]:
    (deployment,) = _kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_service_and_annotations_agree_on_ports() -> None:
    (deployment,) = _kind("Deployment")
    container = _query_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT, "health": _parse(container["args"]).health_port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == METRICS_PORT
    (service,) = [s for s in _kind("Service") if s["metadata"]["name"] == "cbmir-query"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in service["spec"]["ports"]} == {GRPC_PORT, METRICS_PORT}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports) - {"health"}  # probes only
    (hpa,) = _kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def _check_probe_command(argv: list[str], where: str) -> Any:
    """A gRPC health check (service "") of the service port, over TLS with the served certificate."""
    assert argv[0] == "cbmir-health", where
    parser_args = {}
    it = iter(argv[1:])
    for flag in it:
        parser_args[flag] = next(it)
    assert parser_args["--service"] == "", where
    host, _, port = parser_args["--target"].rpartition(":")
    assert host == "127.0.0.1" and int(port) == GRPC_PORT, where
    return parser_args


def test_query_probes_are_grpc_health_checks_on_the_service_port() -> None:
    container = _query_container()
    args = _parse(container["args"])
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if "grpc" in probe:
            # The kubelet's native gRPC probe has no TLS: only valid on a port that speaks plain text, the
            # service port without TLS or the --health-port listener (plain text always, reachable on the pod IP).
            port = probe["grpc"]["port"]
            assert probe["grpc"].get("service", "") == "", kind
            if port == GRPC_PORT:
                assert not args.tls_cert, f"{kind}: a native grpc probe cannot reach a TLS port"
            else:
                assert port == args.health_port and args.health_host in ("0.0.0.0", "::"), kind
            continue
        flags = _check_probe_command(probe["exec"]["command"], kind)
        assert flags["--tls-ca"] == args.tls_cert, kind  # verifies against the served certificate
        assert str(Path(flags["--tls-ca"]).parent) in mounted


def test_tls_and_token_files_come_from_mounted_secrets() -> None:
    (deployment,) = _kind("Deployment")
    container = _query_container()
    args = _parse(container["args"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    tls = mounts[str(Path(args.tls_cert).parent)]
    assert tls["secret"]["secretName"] == "cbmir-tls" and Path(args.tls_key).parent == Path(args.tls_cert).parent
    assert {Path(args.tls_cert).name, Path(args.tls_key).name} == {"tls.crt", "tls.key"}  # kubernetes.io/tls keys
    auth = mounts[str(Path(args.auth_tokens_file).parent)]
    assert auth["secret"]["secretName"] == "cbmir-auth"
    assert {i["path"] for i in auth["secret"]["items"]} == {Path(args.auth_tokens_file).name}


def test_compose_query_service_mounts_its_secrets_and_checks_health_on_the_health_port() -> None:
    compose = _compose()
    query = compose["services"]["query"]
    args = _parse(query["command"])
    secrets = {f"/run/secrets/{name}" for name in query["secrets"]}
    assert {args.tls_cert, args.tls_key, args.auth_tokens_file} <= secrets
    assert set(query["secrets"]) <= set(compose["secrets"])
    assert f"{GRPC_PORT}:{GRPC_PORT}" in query["ports"] and f"{METRICS_PORT}:{METRICS_PORT}" in query["ports"]
    test = query["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "cbmir-health"
    flags = dict(zip(test[2::2], test[3::2], strict=True))
    # Plain text on the container's own loopback health listener: no TLS, so no client certificate under mTLS.
    assert flags == {"--target": f"127.0.0.1:{args.health_port}", "--service": ""}
    assert args.health_host == "127.0.0.1"


def test_the_probe_script_is_a_valid_cli() -> None:
    spec = importlib.util.spec_from_file_location("grpc_health_check", HEALTH_CHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Nothing listens on port 1: the check must fail (exit 1), not crash.
    assert module.main(["--target", "127.0.0.1:1", "--service", "", "--timeout", "0.5"]) == 1


# -- Milvus ---------------------------------------------------------------------------------------------------


def test_milvus_images_are_official_and_pinned_to_the_tested_server_version() -> None:
    compose = _compose()["services"]
    assert compose["milvus"]["image"] == f"milvusdb/milvus:v{MILVUS_SERVER_VERSION}"
    assert compose["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert compose["milvus"]["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert compose["etcd"]["image"].startswith("quay.io/coreos/etcd:")
    assert compose["minio"]["image"].startswith("minio/minio:")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"milvus=={MILVUS_SERVER_VERSION}"' in pyproject


def test_helm_values_run_milvus_in_cluster_mode() -> None:
    (values,) = _docs(HELM_VALUES)
    assert values["cluster"]["enabled"] is True
    assert values["image"]["all"]["repository"] == "milvusdb/milvus"
    assert values["image"]["all"]["tag"] == f"v{MILVUS_SERVER_VERSION}"
    assert values["service"]["port"] == MILVUS_PORT
    assert values["queryNode"]["replicas"] >= 2 and values["etcd"]["replicaCount"] >= 3
    assert values["pulsar"]["enabled"] is True or values["kafka"]["enabled"] is True
    for component in ("proxy", "queryNode", "dataNode", "indexNode"):
        assert values[component]["resources"]["requests"]["memory"]


# -- Ray / KubeRay ----------------------------------------------------------------------------------------------


def test_kuberay_cluster_has_gpu_workers_and_matches_ray_version() -> None:
    import ray

    (cluster,) = _kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    (group,) = cluster["spec"]["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and int(group["rayStartParams"]["num-gpus"]) == gpus
    env = {e["name"] for c in _containers(cluster) for e in c["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env  # Ray 2.5x token auth: every node presents it
    for container in _containers(cluster):
        assert "/archive" in {m["mountPath"] for m in container["volumeMounts"]}


def test_rayjob_fits_its_gpu_actors_on_the_cluster() -> None:
    (cluster,) = _kind("RayCluster")
    (job,) = _kind("RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    args = _parse(shlex.split(job["spec"]["entrypoint"])[1:])
    (group,) = cluster["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    gpus_per_node = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    cpus_per_node = float(worker["resources"]["limits"]["cpu"])
    total_gpus = group["replicas"] * gpus_per_node
    assert args.actors * args.gpus_per_actor <= total_gpus
    assert (gpus_per_node / args.gpus_per_actor).is_integer()  # fractions tile a GPU exactly
    plan = plan_resources(cpus_per_node * group["replicas"], args.actors, args.device, args.gpus_per_actor,
                          node_cpus=[cpus_per_node] * group["replicas"])
    assert plan.actor_gpus == args.gpus_per_actor
    per_node = args.actors // group["replicas"]
    assert plan.read_cpus + per_node * plan.actor_cpus <= cpus_per_node


def test_compose_ray_nodes_share_the_archive_path_and_auth() -> None:
    services = _compose()["services"]
    for name in ("ray-head", "ray-worker", "ingest"):
        assert "./archive:/archive:ro" in services[name]["volumes"], name
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token", name
    assert services["ray-head"]["entrypoint"] == services["ray-worker"]["entrypoint"] == ["ray"]
    head = services["ray-head"]["command"]
    assert "--head" in head and "--ray-client-server-port=10001" in head
    assert "--address=ray-head:6379" in services["ray-worker"]["command"] and "--port=6379" in head
