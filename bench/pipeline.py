"""End-to-end benchmarks of the real paths: gRPC query latency per stage, and ingestion throughput vs actors."""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.bench.cpu_accounting import ProcessCpu
from cbmir.bench.metrics import throughput

SHARED_BRAIN_MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-mri"


def default_source() -> tuple[str, str | None]:
    """brain-mri when ../shared/data is here (index train, query test); else the shipped DICOM sample."""
    if (SHARED_BRAIN_MRI / "labels.csv").exists():
        return str(SHARED_BRAIN_MRI), "train"
    from cbmir.ingestion.samples import build_dicom_archive

    return str(build_dicom_archive(Path(tempfile.mkdtemp(prefix="cbmir-bench-")) / "dicom")), None


@dataclass
class BenchSource:
    """A benchmark's archive and how to read it (the flags of `cbmir ingest`)."""

    source: str
    split: str | None
    manifest: str | None = None
    image_column: str = "image"
    label_column: str = "label"

    def ingest_config(self, **overrides: Any) -> Any:
        from cbmir.ingestion import IngestConfig

        return IngestConfig(source=self.source, split=self.split, manifest=self.manifest,
                            image_column=self.image_column, label_column=self.label_column, **overrides)


def query_images(options: BenchSource, count: int) -> list[bytes]:
    """Query files: another split than the index's when the listing has splits, else the source's own files.
    Listed by ingestion's own listing, so any manifest and column names `cbmir ingest` takes work here."""
    return [Path(path).read_bytes() for path in query_paths(options, count)]


def query_paths(options: BenchSource, count: int) -> list[str]:
    """The files of query_images, as paths."""
    from cbmir.ingestion import list_source

    listing = list_source(replace(options, split=None).ingest_config(report_path=None, progress=False))
    files = [item for item in listing.items if item.array_index is None]
    others = [item for item in files if options.split is not None and item.split not in (None, "", options.split)]
    return [item.uri for item in (others or files)[:count]]


# -- gRPC query latency ------------------------------------------------------------------------------------


@dataclass
class QueryBenchConfig(BenchSource):
    queries: int = 100
    top_k: int = 10
    clients: tuple[int, ...] = (1, 4)
    qps_seconds: float = 10.0
    milvus_uri: str = ""
    collection: str = "bench_query"
    index_type: str = "HNSW"
    actors: int = 2


def run_query_bench(config: QueryBenchConfig) -> dict[str, Any]:
    """Ingest (skipped when already there), serve over real gRPC on 127.0.0.1, time each stage of each query."""
    from cbmir.ingestion import run_ingestion
    from cbmir.services.embedding import EmbeddingModel, ImageDecodeError, decode_image
    from cbmir.services.query.client import RetrievalClient
    from cbmir.services.query.engine import RetrievalEngine
    from cbmir.services.query.server import start_server
    from cbmir.services.store import MilvusStore

    uri = config.milvus_uri or str(Path(tempfile.mkdtemp(prefix="cbmir-bench-")) / "bench.db")
    report = run_ingestion(config.ingest_config(milvus_uri=uri, collection=config.collection,
                                                          actors=config.actors, index_type=config.index_type,
                                                          report_path=None, progress=False))
    images = []
    for data in query_images(config, config.queries * 2):
        try:
            decode_image(data)
            images.append(data)
        except ImageDecodeError:
            continue
    images = images[: config.queries]
    store = MilvusStore(uri)
    model = EmbeddingModel.load(precision="auto")
    engine = RetrievalEngine(store, model, config.collection)
    running = start_server(engine, host="127.0.0.1", port=0)
    try:
        with RetrievalClient(f"127.0.0.1:{running.port}", timeout=120) as client:
            client.search(image=images[0], top_k=config.top_k)  # warm-up: index load, first-call allocations
            rows = []
            for data in images:
                started = time.perf_counter()
                reply = client.search(image=data, top_k=config.top_k)
                round_trip = (time.perf_counter() - started) * 1000.0
                t = reply.timings
                rows.append({"round_trip_ms": round_trip, "decode_ms": t.decode_ms, "embed_ms": t.embed_ms,
                             "search_ms": t.search_ms, "server_total_ms": t.total_ms,
                             "service_overhead_ms": round_trip - t.decode_ms - t.embed_ms - t.search_ms
                             - t.rerank_ms})
            qps = [throughput(lambda i: client.search(image=images[i % len(images)], top_k=config.top_k), c,
                              config.qps_seconds, len(images)) for c in config.clients]
    finally:
        running.stop()
    stages = {name: _summary([r[name] for r in rows]) for name in rows[0]}
    return {"config": asdict(config) | {"milvus_uri": uri}, "index_rows": report.row_count_after,
            "model_id": model.identity.model_id, "precision": model.precision, "stages": stages, "qps": qps,
            "queries": len(rows), "per_query": rows}


def _summary(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values, dtype=np.float64)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def query_table(record: dict[str, Any]) -> str:
    lines = [f"{'stage':22s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}", "-" * 49]
    for name, s in record["stages"].items():
        lines.append(f"{name:22s} {s['p50_ms']:8.2f} {s['p95_ms']:8.2f} {s['p99_ms']:8.2f}")
    lines.append("")
    lines += [f"QPS with {q['clients']} client(s): {q['qps']:.1f}" for q in record["qps"]]
    return "\n".join(lines)


def query_plot(record: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["decode_ms", "embed_ms", "search_ms", "service_overhead_ms"]
    medians = [record["stages"][s]["p50_ms"] for s in stages]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    bottom = 0.0
    for stage, value in zip(stages, medians, strict=True):
        left.bar(["median query"], [value], bottom=bottom, label=f"{stage[:-3]} {value:.1f} ms")
        bottom += value
    left.set(ylabel="ms", title=f"gRPC query, {record['index_rows']} rows")
    left.legend(fontsize=8)
    right.hist([r["round_trip_ms"] for r in record["per_query"]], bins=30)
    right.set(xlabel="round trip (ms)", ylabel="queries", title="round-trip distribution")
    fig.tight_layout()
    path = out_dir / "query_stages.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- ingestion throughput -----------------------------------------------------------------------------------


@dataclass
class IngestBenchConfig(BenchSource):
    actors: tuple[int, ...] = (1, 2)
    batch_sizes: tuple[int, ...] = (16, 32)
    read_cpus: tuple[float | None, ...] = (None,)  # CPUs per read task to compare; None: the plan's own
    limit: int | None = 400
    # Also run each configuration on this many images first: the difference between the two runs is the rate
    # with start-up taken out (marginal_rate). 0: one run per configuration.
    marginal_from: int = 0
    bare_images: int = 128
    decode_images: int = 64
    device: str = "cpu"  # cuda: the actors (and the bare model) on the GPU, decode on the CPUs feeding them
    precision: str = "auto"
    gpus_per_actor: float = 1.0


def bare_model_rate(images: list[np.ndarray], batch_size: int, device: str = "cpu", precision: str = "auto") -> float:
    """The model's own images/s on `device` (all CPU threads), no Ray, no I/O, on images already decoded and
    resized to its input size (the decoder's share, resize included, is bare_decode_img_s)."""
    from cbmir.services.embedding import EmbeddingModel

    model = EmbeddingModel.load(device=device, precision=precision, batch_size=batch_size)
    model.embed(images[:batch_size])  # warm-up (and cuDNN's autotuning on a GPU)
    started = time.perf_counter()
    model.embed(images)  # batch_size per forward pass, the next batch's copy overlapping this one's
    return len(images) / (time.perf_counter() - started)


def _embed_in_one_process(images: list[np.ndarray], batch_size: int, precision: str, ready: Any, go: Any,
                          out: Any) -> None:
    """One single-threaded model in a spawned process: loads, warms up, then embeds `images` when `go` is set."""
    from cbmir.services.embedding import EmbeddingModel

    model = EmbeddingModel.load(device="cpu", precision=precision, num_threads=1, batch_size=batch_size)
    model.embed(images[:batch_size])
    ready.set()
    go.wait()
    started = time.perf_counter()
    model.embed(images)
    out.put((started, time.perf_counter()))


def bare_model_rate_processes(images: list[np.ndarray], batch_size: int, processes: int,
                              precision: str = "auto") -> float:
    """The model's images/s as `processes` single-threaded copies, one per core, each embedding all `images`
    (the embedding actors' layout: 2 actors on 2 cores run 1 torch thread each). From the first start to the last
    end, model loading and warm-up out. On some CPUs this beats one process with every core's threads: torch's
    intra-op parallelism over EfficientNet's depthwise layers scales poorly."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a parent holding torch's thread pools
    go, out = context.Event(), context.Queue()
    readies = [context.Event() for _ in range(processes)]
    workers = [context.Process(target=_embed_in_one_process, args=(images, batch_size, precision, ready, go, out),
                               daemon=True) for ready in readies]
    for worker in workers:
        worker.start()
    try:
        for ready in readies:
            if not ready.wait(timeout=300):
                raise RuntimeError("a bare-model process did not load its model within 300 s")
        go.set()
        spans = [out.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    return processes * len(images) / (max(end for _, end in spans) - min(start for start, _ in spans))


class GpuUtilisation:
    """Samples GPU utilisation (%) in a thread while a stage runs: torch.cuda.utilization (NVML, needs pynvml),
    else `nvidia-smi`. It reads the whole device, so it sees the Ray actors' work from the driver process when the
    benchmark runs on the GPU node. Without a GPU (or either reader) it records nothing and says so."""

    def __init__(self, device: str, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.reader = self._reader() if device.startswith("cuda") else None
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reader() -> Any:
        import shutil
        import subprocess

        import torch

        try:
            torch.cuda.utilization()
            return lambda: float(torch.cuda.utilization())
        except Exception:  # no pynvml, or no NVML: fall back to the driver's command line tool
            pass
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return None
        query = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"]
        return lambda: float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split()[0])

    def __enter__(self) -> GpuUtilisation:
        if self.reader is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(self.reader())
            except Exception:  # a failed read is a missing sample, not a failed benchmark
                continue

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_util_samples": 0,
                    "gpu_util_note": "no GPU" if self.reader is None else "no sample read"}
        return {"gpu_util_mean": round(statistics.fmean(self.samples), 1), "gpu_util_max": max(self.samples),
                "gpu_util_samples": len(self.samples)}


def limit_rate(bare_decode_img_s: float, bare_model_img_s: float) -> float:
    """What the hardware allows when decode and model share the cores: one image costs both stages' time."""
    if bare_decode_img_s <= 0 or bare_model_img_s <= 0:
        return 0.0
    return 1.0 / (1.0 / bare_decode_img_s + 1.0 / bare_model_img_s)


def pipeline_run(config: IngestBenchConfig, baseline: dict[str, Any], *, images: int | None, actors: int,
                 batch_size: int, read_cpus: float | None) -> dict[str, Any]:
    """One `run_ingestion` of `images` into a fresh collection, beside the bare figures of `baseline`."""
    from cbmir.ingestion import run_ingestion

    uri = str(Path(tempfile.mkdtemp(prefix="cbmir-bench-")) / "ingest.db")  # fresh: nothing skipped
    with GpuUtilisation(config.device) as pipeline_gpu, ProcessCpu() as pipeline_cpu:
        report = run_ingestion(config.ingest_config(
            milvus_uri=uri, collection="bench_ingest", actors=actors, batch_size=batch_size, limit=images,
            report_path=None, progress=False, device=config.device, precision=config.precision,
            gpus_per_actor=config.gpus_per_actor, read_cpus=read_cpus))
    # pipeline_seconds runs from the first read to the last write: Ray start-up is out, the actors' model loading
    # is in. "steady" (after the first batch returns) over-counts when actors ran ahead.
    rate = report.read / report.pipeline_seconds if report.pipeline_seconds else 0.0
    bare, limit = baseline["bare_model_img_s"], baseline["limit_img_s"]
    return {"actors": actors, "batch_size": batch_size, "images": report.read,
            "read_cpus": report.ray_plan.get("read_cpus"), "ray_plan": dict(report.ray_plan),
            "end_to_end_img_s": report.images_per_second, "pipeline_img_s": rate,
            "pipeline_seconds": report.pipeline_seconds, "steady_img_s": report.steady_images_per_second,
            "first_batch_s": report.first_batch_seconds,
            # The per-image rate a long run settles at, against the same limit (start-up left out).
            "steady_ratio_to_limit": report.steady_images_per_second / limit if limit else 0.0,
            "ratio_pipeline_to_bare": rate / bare if bare else 0.0,
            "ratio_to_limit": rate / limit if limit else 0.0, **baseline,
            "stage_seconds": dict(report.stage_seconds), "seconds": report.seconds, "device": config.device,
            "pipeline_gpu": pipeline_gpu.summary(), **pipeline_cpu.summary(report.read)}


def marginal_rate(base: dict[str, Any], run: dict[str, Any], limit: float) -> dict[str, Any]:
    """The rate of the images `run` ingests past the `base` run's (the same configuration on fewer images): what
    each image costs once start-up is paid, which is what an archive of millions runs at. The fixed start-up is
    what is left of the longer run's time: its seconds minus its images at that rate. The rate is None when the
    longer run was not the slower one (too few extra images to tell from the noise)."""
    extra = run["images"] - base["images"]
    seconds = run["pipeline_seconds"] - base["pipeline_seconds"]
    measured = {"from_images": base["images"], "to_images": run["images"], "base_run": base}
    if extra <= 0 or seconds <= 0:
        return {**measured, "img_s": None}
    rate = extra / seconds
    # Where each extra image's CPU went, by role (bench/cpu_accounting.py), start-up cancelled out.
    cpu = {role: round(1000 * (spent - base.get("cpu_seconds", {}).get(role, 0.0)) / extra, 1)
           for role, spent in run.get("cpu_seconds", {}).items()}
    return {**measured, "img_s": rate, "ratio_to_limit": rate / limit if limit else 0.0,
            "ratio_to_bare": rate / run["bare_model_img_s"] if run["bare_model_img_s"] else 0.0,
            "fixed_start_up_s": run["pipeline_seconds"] - run["images"] / rate, "cpu_ms_per_extra_image": cpu}


def run_ingest_bench(config: IngestBenchConfig, progress: Any = print) -> dict[str, Any]:
    from cbmir.bench.decode import INPUT_SIZE, bare_decode_rate
    from cbmir.services.embedding import ImageDecodeError
    from cbmir.services.embedding.resize import decode_resized

    if config.marginal_from and config.limit and config.marginal_from >= config.limit:
        raise ValueError(f"--marginal-from ({config.marginal_from}) must be below --limit ({config.limit}): the "
                         f"marginal rate is that of the images the longer run adds")
    paths = query_paths(replace(config, split=None), max(config.bare_images, config.decode_images) * 2)
    decoded, good = [], []
    for path in paths:
        try:
            # What the read tasks hand the model: decoded and resized once (the resize is the decoder's share,
            # in bare_decode_img_s); full-size clinical images would not fit in memory by the hundred.
            decoded.append(decode_resized(Path(path).read_bytes(), INPUT_SIZE).pixels)
            good.append(path)
        except ImageDecodeError:
            continue
        if len(good) >= max(config.bare_images, config.decode_images):
            break
    decoded = decoded[: config.bare_images]
    bare_decode = bare_decode_rate(good[: config.decode_images])
    progress(f"bare decode (decode_resized, as the read tasks run it, one process per core): {bare_decode:.1f} img/s")
    runs = []
    for batch_size in config.batch_sizes:
        with GpuUtilisation(config.device) as bare_gpu:
            bare_threads = bare_model_rate(decoded, batch_size, config.device, config.precision)
        bare_processes, cores = 0.0, os.cpu_count() or 1  # as many processes as bare decode uses
        if not config.device.startswith("cuda") and cores > 1:
            bare_processes = bare_model_rate_processes(decoded, batch_size, cores, config.precision)
        # The limit takes the model at its best on these cores: whichever layout embeds faster.
        bare = max(bare_threads, bare_processes)
        progress(f"bare model on {config.device}, batch {batch_size}: {bare_threads:.1f} img/s in one process"
                 + (f", {bare_processes:.1f} img/s as {cores} single-thread processes" if bare_processes
                    else ""))
        gpu = config.device.startswith("cuda")
        # On a GPU the model does not take the decoders' cores: the slower of the two stages bounds the run.
        limit = min(bare_decode, bare) if gpu else limit_rate(bare_decode, bare)
        baseline = {"bare_model_img_s": bare, "bare_model_threads_img_s": bare_threads,
                    "bare_model_processes_img_s": bare_processes, "bare_decode_img_s": bare_decode,
                    "limit_img_s": limit,
                    "limit_basis": "decode on the CPUs, model on the GPU: min(bare_decode, bare_model)" if gpu
                                   else "decode and model share the cores: 1 / (1/bare_decode + 1/bare_model)",
                    "bare_gpu": bare_gpu.summary()}
        for actors, read_cpus in itertools.product(config.actors, config.read_cpus):
            shape = {"actors": actors, "batch_size": batch_size, "read_cpus": read_cpus}
            base = pipeline_run(config, baseline, images=config.marginal_from, **shape) if config.marginal_from \
                else None
            run = pipeline_run(config, baseline, images=config.limit, **shape)
            if base is not None:
                run["marginal"] = marginal_rate(base, run, limit)
            runs.append(run)
            progress(f"{actors} actor(s), batch {batch_size}, read tasks {run['read_cpus']} CPU: "
                     f"{run['pipeline_img_s']:.1f} img/s in the pipeline "
                     f"({run['ratio_pipeline_to_bare']:.2f}x bare, {run['ratio_to_limit']:.2f}x the limit "
                     f"{limit:.1f}), {run['end_to_end_img_s']:.1f} end to end"
                     + (f"; past the first {base['images']} images {run['marginal']['img_s']:.1f} img/s = "
                        f"{run['marginal']['ratio_to_limit']:.2f}x the limit"
                        if run.get("marginal", {}).get("img_s") else ""))
    for run in runs:
        one = next((r for r in runs if r["actors"] == 1 and r["batch_size"] == run["batch_size"]
                    and r["read_cpus"] == run["read_cpus"]), None)
        run["speedup_vs_1_actor"] = (run["pipeline_img_s"] / one["pipeline_img_s"]
                                     if one and one["pipeline_img_s"] else 0.0)
    return {"config": asdict(config), "runs": runs, "bare_decode_img_s": bare_decode,
            "median_ratio_pipeline_to_bare": statistics.median(r["ratio_pipeline_to_bare"] for r in runs),
            "median_ratio_to_limit": statistics.median(r["ratio_to_limit"] for r in runs)}


def ingest_table(record: dict[str, Any]) -> str:
    lines = [f"{'actors':>6s} {'batch':>5s} {'read CPU':>8s} {'images':>6s} {'pipeline img/s':>14s} {'e2e img/s':>9s} "
             f"{'bare model':>10s} {'bare decode':>11s} {'limit':>6s} {'to limit':>8s} {'to model':>8s} "
             f"{'vs 1 actor':>10s}  stage seconds (summed over workers)", "-" * 150]
    for r in record["runs"]:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items())
        read_cpus = r.get("read_cpus")
        lines.append(f"{r['actors']:6d} {r['batch_size']:5d} {read_cpus if read_cpus is not None else '-':>8} "
                     f"{r['images']:6d} {r['pipeline_img_s']:14.1f} "
                     f"{r['end_to_end_img_s']:9.1f} {r['bare_model_img_s']:10.1f} "
                     f"{r.get('bare_decode_img_s', 0):11.1f} "
                     f"{r.get('limit_img_s', 0):6.1f} {r.get('ratio_to_limit', 0):8.2f} "
                     f"{r['ratio_pipeline_to_bare']:8.2f} {r['speedup_vs_1_actor']:10.2f}  {stages}")
        if r.get("cpu_ms_per_image"):
            per_image = ", ".join(f"{role} {ms}" for role, ms in r["cpu_ms_per_image"].items())
            lines.append(f"{'':6s} CPU ms per image (start-up included): {per_image}; cores busy "
                         f"{100 * r['cpu_busy_fraction']:.0f}% of {r['cpu_wall_seconds']:.0f} s")
        if r.get("ray_cpu_seconds_by_process"):
            top = ", ".join(f"{name} {sec}" for name, sec in list(r["ray_cpu_seconds_by_process"].items())[:6])
            lines.append(f"{'':6s} Ray's share, core-s: {top}")
        if r.get("marginal", {}).get("img_s"):
            m = r["marginal"]
            lines.append(f"{'':6s} start-up taken out (images {m['from_images']} -> {m['to_images']}): "
                         f"{m['img_s']:.1f} img/s = {m['ratio_to_limit']:.2f}x the limit, {m['ratio_to_bare']:.2f}x "
                         f"bare; fixed start-up {m['fixed_start_up_s']:.1f} s of the {r['images']}-image run")
            if m.get("cpu_ms_per_extra_image"):
                lines.append(f"{'':6s} CPU ms per extra image: "
                             + ", ".join(f"{role} {ms}" for role, ms in m["cpu_ms_per_extra_image"].items()))
        if r.get("steady_img_s"):
            lines.append(f"{'':6s} first batch back {r.get('first_batch_s', 0):.1f} s after the first read; then "
                         f"{r['steady_img_s']:.1f} img/s = {r.get('steady_ratio_to_limit', 0):.2f}x the limit")
        if r.get("device", "cpu") != "cpu":
            bare_gpu, pipe_gpu = r["bare_gpu"], r["pipeline_gpu"]
            lines.append(f"{'':6s} GPU utilisation %: bare model mean {bare_gpu['gpu_util_mean']} max "
                         f"{bare_gpu['gpu_util_max']}; pipeline mean {pipe_gpu['gpu_util_mean']} max "
                         f"{pipe_gpu['gpu_util_max']} ({pipe_gpu['gpu_util_samples']} samples)")
    lines.append("\nimages/s; limit = 1 / (1/bare decode + 1/bare model): decode (one process per core) and model "
                 "share the cores")
    return "\n".join(lines)


def ingest_plot(record: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    sweeps_read_cpus = len({r.get("read_cpus") for r in record["runs"]}) > 1
    for batch_size in sorted({r["batch_size"] for r in record["runs"]}):
        of_batch = [r for r in record["runs"] if r["batch_size"] == batch_size]
        for read_cpus in sorted({r.get("read_cpus") or 0 for r in of_batch}, reverse=True):
            runs = sorted((r for r in of_batch if (r.get("read_cpus") or 0) == read_cpus), key=lambda r: r["actors"])
            label = f"pipeline, batch {batch_size}" + (f", read tasks {read_cpus} CPU" if sweeps_read_cpus else "")
            line, = ax.plot([r["actors"] for r in runs], [r["pipeline_img_s"] for r in runs], marker="o",
                            label=label)
            marginal = [r for r in runs if r.get("marginal", {}).get("img_s")]
            if marginal:  # per image once start-up is paid: what an archive of millions runs at
                ax.plot([r["actors"] for r in marginal], [r["marginal"]["img_s"] for r in marginal], marker="^",
                        linestyle=(0, (8, 3)), linewidth=1, color=line.get_color(),
                        label=label + f", past the first {marginal[0]['marginal']['from_images']} images")
            steady = [r for r in runs if r.get("steady_img_s")]
            if steady:  # the rate once the first batch is back: start-up is what separates it from the line above
                ax.plot([r["actors"] for r in steady], [r["steady_img_s"] for r in steady], marker="s",
                        linestyle=":", color=line.get_color(), label=label + ", after the first batch")
        ax.axhline(of_batch[0]["bare_model_img_s"], linestyle="--", color=line.get_color(),
                   label=f"bare model at its best, batch {batch_size}")
        if of_batch[0].get("limit_img_s"):
            ax.axhline(of_batch[0]["limit_img_s"], linestyle="-.", color="grey",
                       label=f"limit of decode + model ({of_batch[0]['limit_img_s']:.1f})")
    ax.set(xlabel="Ray embedding actors", ylabel="images / s", title="ingestion throughput")
    ax.set_xticks(sorted({r["actors"] for r in record["runs"]}))
    # From 0, so the gaps read as ratios; room above the bare-model line for the legend.
    ax.set_ylim(0, 1.45 * max(r["bare_model_img_s"] for r in record["runs"]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    path = out_dir / "ingest_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
