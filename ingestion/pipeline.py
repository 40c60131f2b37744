"""Pipeline: the one module that knows about Ray; starts it, plans the resources, streams embedded batches."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.exceptions
from ray.util.annotations import RayDeprecationWarning

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.embedder import Embedder, ModelDescription, describe_model
from cbmir.ingestion.reader import read_task

log = logging.getLogger(__name__)

# A worker that dies (OOM kill, node loss, segfault in a codec) is restarted and its batch re-run, a bounded
# number of times: a batch that kills every actor it meets fails the run instead of looping forever. What was
# already upserted stays, and the rerun skips it.
ACTOR_MAX_RESTARTS = 4
ACTOR_MAX_TASK_RETRIES = 4
READ_TASK_RETRIES = 4
# On a cluster, the actor pool starts whole before the first batch is dispatched: a node that starts its actor
# later (shipping py_modules, importing torch) otherwise sees no batch of a short run, and the work is not spread.
CLUSTER_ACTOR_START_SECONDS = 600
# How long a cluster gets to reserve one place per node for the embedding actors (a placement group) before they
# are scheduled without it: the reservation waits only for resources that running work holds.
PLACEMENT_WAIT_SECONDS = 60
# The listing goes to Ray as about this many blocks at most (more past 256 x LISTING_CHUNK_ITEMS items): enough
# parallel read tasks for a cluster, few enough for the driver, where each block costs ~45 KB (its ref and
# from_arrow_refs' metadata task; measured by bench/listing_memory.py: 1 563 blocks of 64 items took 69 MiB).
MAX_LISTING_BLOCKS = 256
# Where each batch was embedded: the Ray node and actor, so a report can show the actors spread over nodes.
NODE_ID = "node_id"
ACTOR_ID = "actor_id"
# A local Ray start is tried this many times; Ray's wait for the GCS port is raised to this many seconds.
RAY_START_ATTEMPTS = 3
GCS_PORT_WAIT_SECONDS = 60
# Ray Data's per-operator reservations (its ReservationOpResourceAllocator) hold half the cluster's CPUs back,
# split per operator: on 2 cores the read operator then runs one decode for seconds at a time while a core idles.
# Off, operators take what is free, backpressured by the object store as before: 500 clinical-size images went
# 13.4-15.2 -> 15.4-16.0 img/s (docs/benchmarks.md, "Box-reduced DICOM decode, and Ray Data's reservations").
RAY_DATA_RESERVATIONS = False
RESERVATION_ENV = "RAY_DATA_ENABLE_OP_RESOURCE_RESERVATION"


@dataclass(frozen=True)
class ResourcePlan:
    """What each stage reserves from Ray; reads need a share left free or the actors starve them forever."""

    total_cpus: float
    read_cpus: float  # per read+decode task
    actor_cpus: float  # per embedding actor
    actor_gpus: float
    torch_threads: int


def plan_resources(total_cpus: float, actors: int, device: str, gpus_per_actor: float,
                   node_cpus: Sequence[float] | None = None, read_cpus: float | None = None) -> ResourcePlan:
    """Split the CPUs between read tasks and `actors` embedding actors.

    Actors hold their CPUs for the whole run. On 2 CPUs, a read task plus two actors at num_cpus=1 needs 3 CPUs
    and deadlocks (the actors wait for batches no read task can run to make), so actors get what the reads
    leave, fractionally. Reads keep a quarter of the CPUs, at least one (half of one on a single CPU), and each
    read task asks for half a CPU of that budget.

    On a cluster (`node_cpus`: the CPUs of each node) the free CPUs are fragmented: two 1-CPU nodes with one
    0.5-CPU actor each have 1 CPU free in all but no node with a whole one, so a read task asking for 1 CPU never
    runs. Reads then ask for at most what the smallest node keeps once it hosts its share of the actors
    (actors are spread over nodes), floored at 0.1 CPU.

    `read_cpus` (`cbmir ingest --read-cpus`) replaces the per-task figure; the split of the budget stays.
    """
    read_budget = max(1.0, total_cpus / 4) if total_cpus >= 2 else total_cpus / 2
    # Half a CPU per read task: two decode at once in a budget of one, so a decode-bound archive (clinical-size
    # JPEG 2000, ~0.3 s an image) keeps both cores of a small machine decoding while the model waits on neither.
    requested_read_cpus, read_cpus = read_cpus, min(0.5, read_budget)
    actor_cpus = max(0.01, (total_cpus - read_budget) / actors)
    if device == "cuda":
        actor_cpus = min(1.0, actor_cpus)  # a GPU actor only feeds the GPU
    nodes = [c for c in (node_cpus or []) if c > 0]
    if len(nodes) > 1:
        per_node = math.ceil(actors / len(nodes))
        left = min(nodes) - per_node * actor_cpus
        read_cpus = round(max(0.1, min(read_cpus, left)), 4)
    if requested_read_cpus is not None:
        read_cpus = requested_read_cpus
    # Torch threads per actor: its share of the machine, as the brief's max(1, cpus // actors).
    threads = max(1, int(total_cpus // actors))
    return ResourcePlan(total_cpus=total_cpus, read_cpus=read_cpus, actor_cpus=round(actor_cpus, 4),
                        actor_gpus=gpus_per_actor if device == "cuda" else 0.0, torch_threads=threads)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray already running in this process, else start one: local (`num_cpus`: Ray's own count of this
    machine by default), or attached to the cluster at `address`. The one place cbmir starts Ray.

    A local start first ends what a SIGKILLed run left behind (stale_ray_sessions), then retries a failed start
    a bounded number of times; Ray is shut down on the way out, also on an error."""
    started_here = False
    address = ray_address(address)
    if not ray.is_initialized():
        if address is None:
            start_local_ray(num_cpus)
        else:
            attach_to_cluster(address)
        started_here = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the runner draws one bar over images, not one per operator
        context.print_on_execution_start = False
        context.enable_auto_log_stats = False
        # Ray Data's memory detector tells the user to pass `memory=` to map_batches, which a cbmir user cannot:
        # actors are sized by CPU (plan_resources), and an actor that runs out is OOM-killed and restarted.
        detectors = context.issue_detectors_config
        detectors.detectors = [d for d in detectors.detectors if d.__name__ != "HighMemoryIssueDetector"]
        if address is not None:
            context.wait_for_min_actors_s = CLUSTER_ACTOR_START_SECONDS
        if RESERVATION_ENV not in os.environ:  # Ray's own kill-switch, set explicitly, still wins (for A/B runs)
            context.op_resource_reservation_enabled = RAY_DATA_RESERVATIONS
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # It warns that Ray Data's own bars are off, which is the point: the runner's bar counts images.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        with drop_stderr_lines(RAY_FALSE_ALARMS):
            yield
    finally:
        if started_here:
            ray.shutdown()


def ray_address(address: str | None) -> str | None:
    """The cluster to attach to: `address`, else $RAY_ADDRESS (what `ray.init()` itself would attach to), else None
    (a local Ray). One answer for the report, the plan and the start, whichever way the address was given."""
    return address or os.environ.get("RAY_ADDRESS") or None


class RayAttachError(ValueError):
    """The Ray cluster refused this driver; the message says what to set (a ValueError: one line, exit 2)."""


def attach_to_cluster(address: str) -> None:
    """ray.init attached to the cluster at `address`, shipping the driver's cbmir package so its workers run the
    same reader and model code. A cluster with token auth (Ray 2.60 `ray start` turns it on) refuses a driver
    without its token: that becomes one RayAttachError naming RAY_AUTH_MODE and RAY_AUTH_TOKEN."""
    try:
        ray.init(address=address, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [str(staged_cbmir_package())]})
    except Exception as error:  # noqa: BLE001 - the auth error arrives wrapped (ConnectionError <- RuntimeError)
        if not _refused_token(error):
            raise
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise RayAttachError(
            f"the Ray cluster at {address} refused this driver's token (none, or not the cluster's): "
            f"set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the token its nodes were started with> (or "
            f"RAY_AUTH_TOKEN_PATH=<file holding it>) and run again (docs/scaling.md)") from None


def _refused_token(error: BaseException | None) -> bool:
    """Whether `error` or an error that caused it is the cluster refusing the auth token. Ray 2.60's ray.init
    raises ConnectionError from a RuntimeError whose message carries the AuthenticationError's text."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


# Lines Ray's C++ core prints on the driver's stderr that ask nothing of the user. Ray Data always puts an actor
# pool's constructor arguments (its map transformer) in the object store, so any pool with max_restarts > 0 gets
# this error line, even with no constructor arguments at all (ray-project/ray#57733); the transformer stays
# referenced by the operator for the whole run, so the restarts it warns about do work (docs/reliability.md).
RAY_FALSE_ALARMS = (re.compile(rb"core_worker\.cc:\d+: Actor with class name: 'MapWorker\(.*"
                               rb"has constructor arguments in the object store and max_restarts > 0"),)


@contextlib.contextmanager
def drop_stderr_lines(patterns: Sequence[re.Pattern[bytes]]) -> Iterator[None]:
    """Drop the lines of this process's stderr (fd 2: Python and C++ alike) that match one of `patterns`.

    fd 2 becomes a pipe that a thread copies, line by line, to the real stderr; the real fd 2 comes back on exit.
    Everything else passes unchanged, in order.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def dropped(line: bytes) -> bool:
        return any(p.search(line) for p in patterns)

    def copy() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                # Lines end at \n or \r (a progress bar redraws with \r). An unfinished line is held back only
                # if it may be one of Ray's C++ log lines ("[date ..."), so a progress bar shows as it is drawn.
                *lines, pending = re.split(rb"(?<=[\r\n])", pending + chunk)
                kept = [line for line in lines if not dropped(line)]
                if pending and not pending.startswith(b"["):
                    kept.append(pending)
                    pending = b""
                if kept:
                    with contextlib.suppress(OSError):
                        os.write(saved, b"".join(kept))
            if pending and not dropped(pending):
                with contextlib.suppress(OSError):
                    os.write(saved, pending)

    thread = threading.Thread(target=copy, name="cbmir-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end but for children that inherited it
        thread.join(timeout=5)
        os.close(saved)


def start_local_ray(num_cpus: int | None, attempts: int = RAY_START_ATTEMPTS) -> None:
    """ray.init a local Ray for this process, after ending stale sessions; a failed start is retried.

    A start that fails ("Timed out waiting for file .../gcs_server_port_...": the GCS did not publish its port
    within Ray's wait, which a loaded machine overruns) leaves a half-started node: it is shut down before the
    next attempt. The last failure raises one RuntimeError saying what to do.
    """
    for pid in end_stale_ray_sessions():
        log.info("ended process %d of a local Ray session whose driver is gone", pid)
    # Ray's default wait for the GCS port (30 s) is overrun on a busy 2-core machine; an operator's value stands.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(GCS_PORT_WAIT_SECONDS))
    # Ray turns token auth on for a new local cluster and says so at WARNING, asking nothing of the user.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for attempt in range(1, attempts + 1):
        try:
            # Worker logs stay in the session's logs/ folder: the driver's output is the progress bar and summary.
            # The dashboard is off (ingest never serves it); Ray still runs its per-node agents.
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            return
        except Exception as error:  # noqa: BLE001 - Ray raises RuntimeError, ConnectionError, TimeoutError...
            ray.shutdown()  # the processes a half-done start left
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if attempt == attempts:
                raise RuntimeError(
                    f"local Ray did not start after {attempts} attempts: {reason} (the machine may be overloaded: "
                    f"raise RAY_gcs_server_port_wait_time_s, or start Ray with `ray start --head` and pass "
                    f"--ray-address)") from error
            log.warning("local Ray did not start (attempt %d of %d): %s; retrying", attempt, attempts, reason)


_SESSION_DIR = re.compile(r"^(.*/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_(\d+))(?:/|$)")
# A session whose GCS or raylet still runs is alive, whoever started it (`ray start --head` exits at once).
_SESSION_KEEPERS = {"gcs_server", "raylet"}


def stale_ray_sessions() -> dict[str, list[int]]:
    """Local Ray sessions of this user whose driver is gone and whose GCS and raylet are gone: session dir ->
    the pids still holding files in it (e.g. ray::DashboardAgent, ray::RuntimeEnvAgent orphaned at ppid 1 by a
    SIGKILLed `cbmir ingest`). Linux only (reads /proc); empty elsewhere.

    A Ray session directory ends in the pid of the process that started it; its processes keep their log
    files open in it, which ties each process to its session.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    uid = os.getuid()
    holders: dict[str, set[int]] = {}
    keepers: set[str] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            comm = (entry / "comm").read_text().strip()
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for link in links:
            match = _SESSION_DIR.match(link)
            if match:
                holders.setdefault(match.group(1), set()).add(int(entry.name))
                if comm in _SESSION_KEEPERS:
                    keepers.add(match.group(1))
    stale = {}
    for session, pids in holders.items():
        driver = int(_SESSION_DIR.match(session).group(2))
        if session not in keepers and driver not in pids and not _alive(driver):
            stale[session] = sorted(pids)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_ray_sessions(grace_s: float = 5.0) -> list[int]:
    """SIGTERM the processes of stale_ray_sessions(), SIGKILL what still runs after `grace_s`; their pids."""
    pids = [pid for session_pids in stale_ray_sessions().values() for pid in session_pids]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


def staged_cbmir_package() -> Path:
    """A directory holding the `cbmir` package as the driver imports it, with what workers run: the stubs,
    cbmir.services and cbmir.ingestion.

    An installed wheel already has that shape; a source checkout maps the repository's top folders into the
    namespace, so they are copied into one tree. Ray uploads it by content hash: an unchanged tree is sent once.
    """
    import cbmir
    import cbmir.ingestion
    import cbmir.services

    staged = Path(tempfile.mkdtemp(prefix="cbmir-py-module-")) / "cbmir"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(cbmir.__file__).parent, staged, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "services", "ingestion", "training", "bench"))
    for area in (cbmir.services, cbmir.ingestion):
        name = area.__name__.rpartition(".")[2]
        shutil.copytree(Path(area.__file__).parent, staged / name, ignore=skip, dirs_exist_ok=True)
    return staged


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))


def node_cpus() -> list[float]:
    """CPUs of each alive node of the Ray cluster (one entry on a local Ray)."""
    return [float(node["Resources"].get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")]


def _model_options(config: IngestConfig, plan: ResourcePlan) -> dict[str, Any]:
    return {"backbone": config.backbone, "weights": config.weights, "random_init": config.random_init,
            "device": config.device, "precision": config.precision, "num_threads": plan.torch_threads,
            "tta": config.tta}


def probe_model(config: IngestConfig, plan: ResourcePlan) -> ModelDescription:
    """The actors' model identity (dim, input size, model id), where the actors will run.

    On a local Ray with CPU actors that is this machine: the driver loads the model once itself (torch is imported
    here already), where a task would start a worker process and import torch again only to describe it (~3 core-s
    of a run's start-up, docs/benchmarks.md "Where the CPU goes"). On a cluster, or for GPU actors (a CUDA context
    in the driver would stay for the whole run), one task with an actor's resources describes it on an actor's node.
    """
    if config.ray_address is None and config.device == "cpu":
        # No num_threads: describing runs no forward pass, and the driver keeps its own torch thread count.
        return describe_model(**{**_model_options(config, plan), "num_threads": None})
    options: dict[str, Any] = {"num_cpus": plan.actor_cpus}
    if plan.actor_gpus:
        options["num_gpus"] = plan.actor_gpus
    task = ray.remote(describe_model).options(**options)
    try:
        return ray.get(task.remote(**_model_options(config, plan)))
    except ray.exceptions.RayTaskError as error:
        # Surface WeightsError / ValueError with their own message (it says what to pass instead).
        raise error.as_instanceof_cause() from None


class RayEmbedder(Embedder):
    """The Embedder as a Ray actor: each output row also says which node and actor embedded it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.actor_id = context.get_actor_id() or ""

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = super().__call__(batch)
        out = out.append_column(NODE_ID, pa.array([self.node_id] * out.num_rows, pa.string()))
        return out.append_column(ACTOR_ID, pa.array([self.actor_id] * out.num_rows, pa.string()))


def listing_block_rows(count: int, batch_size: int, chunk_items: int) -> int:
    """Listed items per Ray input block: whole batches, at most `chunk_items`, at most ~MAX_LISTING_BLOCKS blocks.

    A function of the item count and the config only, so a rerun cuts the same blocks (block i holds items
    i*B ... (i+1)*B - 1 of the listing's order).
    """
    rows = max(batch_size, math.ceil(count / MAX_LISTING_BLOCKS))
    rows = math.ceil(rows / batch_size) * batch_size
    return max(1, min(rows, chunk_items))


def listing_dataset(blocks: Iterable[pa.Table]) -> ray.data.Dataset | None:
    """The listed items (reader.ITEM_SCHEMA tables, in the listing's order) as a Dataset of one block each.

    Each block is put in the object store as it comes: the driver holds one block of items at a time plus one
    ref per block. from_arrow_refs keeps the refs' order, so every run reads the same blocks in the same order.
    None when there is nothing to read.
    """
    refs, items = [], 0
    for block in blocks:
        if block.num_rows:
            refs.append(ray.put(block))
            items += block.num_rows
    log.info("listing: %d items in %d Ray blocks", items, len(refs))
    return ray.data.from_arrow_refs(refs) if refs else None


def read_stage(dataset: ray.data.Dataset, existing_ids: np.ndarray, config: IngestConfig,
               plan: ResourcePlan, input_size: int) -> ray.data.Dataset:
    """Read + decode + resize tasks over the listed items; ids in `existing_ids` come out as present, not decoded.

    Only input_size^2 images in their compact dtype (uint8 for 8-bit sources) leave these tasks.
    """
    ids_ref = ray.put(existing_ids)
    return _map_batches(
        dataset, read_task, {"max_retries": READ_TASK_RETRIES},
        batch_format="pyarrow",
        batch_size=config.batch_size,
        fn_kwargs={"existing_ids": [ids_ref], "id_salt": config.id_salt, "input_size": input_size,
                   "pacs_credentials": config.pacs_credentials},
        num_cpus=plan.read_cpus,
    )


def _map_batches(dataset: ray.data.Dataset, fn: Any, retry_bounds: dict[str, int], **kwargs: Any) -> ray.data.Dataset:
    """dataset.map_batches(fn, **kwargs) with Ray core's retry bounds (max_retries, max_restarts, max_task_retries).

    Ray 2.60 deprecates remote args passed as **ray_remote_args but names no parameter for these bounds, and Ray
    Data's own defaults are -1 (unbounded): a batch that kills every worker would be retried forever. So they go
    the deprecated way with that one warning silenced here; tests/ingestion/test_ray_start.py pins that Ray Data
    still takes them (it fails when Ray drops the path, e.g. 2.64).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", category=RayDeprecationWarning)
        return dataset.map_batches(fn, **kwargs, **retry_bounds)


def embedded_batches(blocks: Iterable[pa.Table], existing_ids: np.ndarray, config: IngestConfig,
                     plan: ResourcePlan, input_size: int) -> Iterator[pa.Table]:
    """Stream the embedded rows (no pixels) back to the driver, one Arrow table per batch, in no fixed order."""
    counted = [0]

    def counting(source: Iterable[pa.Table]) -> Iterator[pa.Table]:
        for block in source:
            counted[0] += block.num_rows
            yield block

    listed = listing_dataset(counting(blocks))
    if listed is None:
        return
    dataset = read_stage(listed, existing_ids, config, plan, input_size)
    # No more actors than batches: an actor that can get no batch only loads a model (and Ray warns about it).
    actors = max(1, min(config.actors, math.ceil(counted[0] / config.batch_size)))
    with actors_spread_over_nodes(plan, actors) as placement:
        dataset = _map_batches(
            dataset, RayEmbedder,
            {"max_restarts": ACTOR_MAX_RESTARTS, "max_task_retries": ACTOR_MAX_TASK_RETRIES, **placement},
            fn_constructor_kwargs={**_model_options(config, plan), "descriptor": config.rerank_descriptor,
                                   "batch_size": config.batch_size},
            batch_format="pyarrow",
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=plan.actor_cpus,
            num_gpus=plan.actor_gpus or None,
        )
        log.info("ray plan: read tasks %.2f CPU, %d actors x %.2f CPU / %.2f GPU, %d torch threads",
                 plan.read_cpus, actors, plan.actor_cpus, plan.actor_gpus, plan.torch_threads)
        yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)


def actor_hosts(plan: ResourcePlan, per_node: int = 1) -> list[str]:
    """Ids of the alive nodes that can host `per_node` embedding actors (their CPUs and GPUs; a KubeRay head
    started with num-cpus 0 hosts none)."""
    return [node["NodeID"] for node in ray.nodes() if node.get("Alive")
            and node["Resources"].get("CPU", 0.0) >= per_node * plan.actor_cpus
            and node["Resources"].get("GPU", 0.0) >= per_node * plan.actor_gpus]


@contextlib.contextmanager
def actors_spread_over_nodes(plan: ResourcePlan, actors: int,
                             wait_s: float = PLACEMENT_WAIT_SECONDS) -> Iterator[dict[str, Any]]:
    """Remote args that place the `actors` embedding actors evenly over the nodes: {} on one node.

    Ray Data already schedules actors "SPREAD", and a placement group can be "SPREAD" too, but both are
    preferences: on a cold two-node cluster both actors started on the head node (40 rows / 0, issue 21), and a
    SPREAD group of two bundles was seen on one node of two free ones. So the group is STRICT_SPREAD, one bundle
    per node, each bundle the resources of ceil(actors / nodes) actors; each actor takes room in any bundle
    (bundle index -1). The bundles hold exactly the actors but for at most one actor's room, so each node used
    gets ceil(actors / nodes) of them, one node maybe one fewer. When the cluster cannot reserve the group within
    `wait_s` (nodes busy or too small), the actors are scheduled as Ray Data would, with a warning: spreading is
    for speed.
    The group is removed on the way out, also on an error.
    """
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    nodes = len(actor_hosts(plan))
    per_node = math.ceil(actors / max(1, min(nodes, actors)))
    hosts = actor_hosts(plan, per_node)
    if actors < 2 or len(hosts) < 2:
        yield {}
        return
    # per_node actors a node; as few nodes as that needs, so every bundle but at most one is full (4 actors on 3
    # nodes: 2 + 2, not 2 + 1 + 1 with a bundle's room unused or 2 + 2 + 0 with a whole bundle unused).
    per_node = math.ceil(actors / min(len(hosts), actors))
    bundles = math.ceil(actors / per_node)
    bundle = {"CPU": round(per_node * plan.actor_cpus, 4)}
    if plan.actor_gpus:
        bundle["GPU"] = round(per_node * plan.actor_gpus, 4)
    group = placement_group([dict(bundle) for _ in range(bundles)], strategy="STRICT_SPREAD")
    try:
        try:
            ray.get(group.ready(), timeout=wait_s)
        except ray.exceptions.GetTimeoutError:
            log.warning("the Ray cluster did not reserve %d bundles of %s on distinct nodes within %.0f s: the "
                        "embedding actors are placed as Ray schedules them, maybe several on one node", bundles,
                        bundle, wait_s)
            yield {}
            return
        log.info("placement: %d actors over %d nodes, up to %d per node (placement group, STRICT_SPREAD)",
                 actors, bundles, per_node)
        with batches_to_the_least_busy_actor():
            yield {"scheduling_strategy": PlacementGroupSchedulingStrategy(group)}
    finally:
        remove_placement_group(group)


@contextlib.contextmanager
def batches_to_the_least_busy_actor() -> Iterator[None]:
    """Ray Data's actor locality off while the block is open: each batch goes to the least busy actor.

    With locality on, a batch goes to an actor on the node that holds its block whenever that actor has room,
    and the read tasks' blocks mostly sit on the head node: on a loaded two-node cluster all 8 batches went to the
    head's actor and the worker's idled (issue 21). A read block is 224² uint8 pixels, so moving it costs less
    than an idle node. Ray 2.60 deprecates the switch ("Ray Data manages actor locality internally") but still
    honours it; the warning is silenced here and tests/ingestion/test_cluster_address.py pins that it still
    exists."""
    options = ray.data.DataContext.get_current().execution_options
    before = options.actor_locality_enabled
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*actor_locality_enabled.*", category=RayDeprecationWarning)
        options.actor_locality_enabled = False
        try:
            yield
        finally:
            options.actor_locality_enabled = before
