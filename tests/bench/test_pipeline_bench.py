"""The end-to-end benchmarks on a tiny real archive: they run the real paths and report every stage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbmir.bench.cpu_accounting import ProcessCpu, role_of
from cbmir.bench.pipeline import (
    GpuUtilisation,
    IngestBenchConfig,
    QueryBenchConfig,
    bare_model_rate_processes,
    ingest_plot,
    ingest_table,
    query_plot,
    query_table,
    run_ingest_bench,
    run_query_bench,
)


def test_query_bench_times_every_stage_of_real_grpc_queries(ray_local, breastmnist_png_archive: Path,
                                                             tmp_path: Path) -> None:
    config = QueryBenchConfig(source=str(breastmnist_png_archive), split="train", queries=6, clients=(1,),
                              qps_seconds=0.5, milvus_uri=str(tmp_path / "q.db"))
    record = run_query_bench(config)
    assert record["queries"] == 6 and record["index_rows"] == 120
    stages = record["stages"]
    assert stages["embed_ms"]["p50_ms"] > 0 and stages["search_ms"]["p50_ms"] > 0
    # the round trip contains every stage, so what is left for transport and the service is never negative
    assert all(r["service_overhead_ms"] > 0 for r in record["per_query"])
    assert record["qps"][0]["qps"] > 0
    json.dumps(record, default=float)
    assert "embed_ms" in query_table(record) and query_plot(record, tmp_path).exists()


def test_ingest_bench_compares_the_pipeline_with_the_bare_model(ray_local, breastmnist_png_archive: Path,
                                                                tmp_path: Path) -> None:
    config = IngestBenchConfig(source=str(breastmnist_png_archive), split="train", actors=(1,), batch_sizes=(8,),
                               limit=24, bare_images=16, decode_images=8)
    record = run_ingest_bench(config, progress=lambda _: None)
    (run,) = record["runs"]
    assert run["images"] == 24 and run["bare_model_img_s"] > 0
    assert run["ratio_pipeline_to_bare"] == pytest.approx(run["pipeline_img_s"] / run["bare_model_img_s"])


def test_ingest_bench_puts_the_pipeline_beside_the_limit_of_decode_plus_model(ray_local,
                                                                              breastmnist_png_archive: Path,
                                                                              tmp_path: Path) -> None:
    config = IngestBenchConfig(source=str(breastmnist_png_archive), split="train", actors=(1,), batch_sizes=(8,),
                               limit=16, bare_images=8, decode_images=8)
    record = run_ingest_bench(config, progress=lambda _: None)
    (run,) = record["runs"]
    assert run["bare_decode_img_s"] > 0 and run["bare_decode_img_s"] == record["bare_decode_img_s"]
    # sharing the cores, one image costs the decode's time plus the model's: the limit is below both
    assert run["limit_img_s"] == pytest.approx(1 / (1 / run["bare_decode_img_s"] + 1 / run["bare_model_img_s"]))
    assert run["limit_img_s"] < min(run["bare_decode_img_s"], run["bare_model_img_s"])
    # The limit takes the model at its best: one process with every core's threads, or one 1-thread copy per core.
    assert run["bare_model_threads_img_s"] > 0 and run["bare_model_processes_img_s"] > 0
    assert run["bare_model_img_s"] == max(run["bare_model_threads_img_s"], run["bare_model_processes_img_s"])
    assert run["ratio_to_limit"] == pytest.approx(run["pipeline_img_s"] / run["limit_img_s"])
    # Start-up inside the pipeline (first batch back) and the rate after it, against the same limit.
    assert 0 < run["first_batch_s"] < 16 / run["pipeline_img_s"]
    assert run["steady_ratio_to_limit"] == pytest.approx(run["steady_img_s"] / run["limit_img_s"])
    table = ingest_table(record)
    assert "first batch back" in table
    assert "bare decode" in table and "to limit" in table and ingest_plot(record, tmp_path).exists()
    # Where the CPU went: the embedding actor is a process of its own for the whole run, the driver wrote the rows.
    assert run["cpu_seconds"]["embed"] > 0 and run["cpu_seconds"]["driver"] > 0
    assert "CPU ms per image" in table


def test_ingest_bench_reads_a_manifest_with_other_column_names(ray_local, patient_archive_writer,
                                                               tmp_path: Path) -> None:
    # A MIAS-like manifest: image,patient_id,tissue (no `label` column), read with ingest's own flags.
    archive = patient_archive_writer(tmp_path / "mias-like", lambda i, labels: ["fatty", "dense"][i % 2], count=12)
    config = IngestBenchConfig(source=str(archive), split=None, actors=(1,), batch_sizes=(4,), limit=12,
                               bare_images=8, decode_images=4, label_column="tissue", read_cpus=(0.25,))
    record = run_ingest_bench(config, progress=lambda _: None)
    (run,) = record["runs"]
    assert run["images"] == 12 and run["bare_model_img_s"] > 0
    assert record["config"]["label_column"] == "tissue"
    # the read tasks asked Ray for what was given, and the run says so
    assert run["read_cpus"] == run["ray_plan"]["read_cpus"] == 0.25 and run["ray_plan"]["actor_cpus"] > 0
    assert " 0.25 " in ingest_table(record)


def test_gpu_utilisation_without_a_gpu_records_nothing_and_says_so() -> None:
    with GpuUtilisation("cpu", interval_s=0.01) as sampler:
        time.sleep(0.05)
    assert sampler.summary() == {"gpu_util_mean": None, "gpu_util_max": None, "gpu_util_samples": 0,
                                 "gpu_util_note": "no GPU"}


def test_bench_ingest_takes_the_gpu_flags() -> None:
    from cbmir.cli import build_parser

    args = build_parser().parse_args(["bench", "ingest", "--device", "cuda", "--gpus-per-actor", "0.5",
                                      "--batch-sizes", "128"])
    assert (args.device, args.precision, args.gpus_per_actor, args.batch_sizes) == ("cuda", "auto", 0.5, "128")


def test_cpu_roles_follow_ray_worker_titles() -> None:
    assert role_of("ray::MapBatches(_read_task)") == "read"
    assert role_of("ray::MapWorker(MapBatches(RayEmbedder))") == "embed"
    assert role_of("ray::describe_model") == "setup"
    assert role_of("ray::IDLE", previous="read") == "read"  # between two read tasks
    assert role_of("", previous="embed") == "embed"  # exiting
    assert role_of("/venv/bin/raylet --node-id=…") == "ray"


def test_process_cpu_counts_children_born_during_the_run_and_the_driver() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(0.6)"
    with ProcessCpu(interval_s=0.1) as sampler:
        subprocess.run([sys.executable, "-c", burn], check=True)
        sum(range(3_000_000))
    summary = sampler.summary(images=10)

    assert summary["cpu_seconds"]["ray"] >= 0.5  # the child's 0.6 s, titled like no Ray worker
    assert summary["cpu_seconds"]["driver"] > 0
    assert summary["cpu_ms_per_image"]["ray"] == pytest.approx(100 * summary["cpu_seconds"]["ray"], abs=0.6)


def test_bare_model_in_single_thread_processes_leaves_no_process_behind() -> None:
    import multiprocessing

    import numpy as np

    images = [np.full((224, 224, 3), shade, dtype=np.uint8) for shade in range(0, 240, 30)]
    assert bare_model_rate_processes(images, batch_size=4, processes=2) > 0
    assert multiprocessing.active_children() == []
