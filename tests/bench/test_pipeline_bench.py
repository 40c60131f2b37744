"""The end-to-end benchmarks on a tiny real archive: they run the real paths and report every stage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbmir.bench.cpu_accounting import ProcessCpu, process_name, role_of
from cbmir.bench.pipeline import (
    GpuUtilisation,
    IngestBenchConfig,
    QueryBenchConfig,
    bare_model_rate_processes,
    ingest_plot,
    ingest_table,
    marginal_rate,
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
                               limit=24, marginal_from=8, bare_images=16, decode_images=8)
    record = run_ingest_bench(config, progress=lambda _: None)
    (run,) = record["runs"]
    assert run["images"] == 24 and run["bare_model_img_s"] > 0
    assert run["ratio_pipeline_to_bare"] == pytest.approx(run["pipeline_img_s"] / run["bare_model_img_s"])
    # The same configuration ran on the first 8 images too, into a collection of its own.
    base = run["marginal"]["base_run"]
    assert (base["images"], run["marginal"]["from_images"], run["marginal"]["to_images"]) == (8, 8, 24)
    assert base["actors"] == 1 and base["pipeline_seconds"] > 0


def test_marginal_rate_is_the_rate_of_the_extra_images_and_the_rest_is_start_up() -> None:
    base = {"images": 100, "pipeline_seconds": 20.0, "cpu_seconds": {"read": 10.0, "embed": 6.0}}
    run = {"images": 300, "pipeline_seconds": 40.0, "bare_model_img_s": 40.0,
           "cpu_seconds": {"read": 30.0, "embed": 14.0}}

    marginal = marginal_rate(base, run, limit=12.5)

    assert marginal["img_s"] == pytest.approx(10.0)  # 200 more images in 20 more seconds
    assert marginal["ratio_to_limit"] == pytest.approx(0.8) and marginal["ratio_to_bare"] == pytest.approx(0.25)
    assert marginal["fixed_start_up_s"] == pytest.approx(10.0)  # 40 s for 300 images at 10 img/s: 10 s fixed
    assert marginal["cpu_ms_per_extra_image"] == {"read": 100.0, "embed": 40.0}  # 20 s and 8 s over 200 images
    record = {"runs": [{**run, "actors": 2, "batch_size": 16, "read_cpus": 0.5, "end_to_end_img_s": 7.0,
                        "pipeline_img_s": 7.5, "bare_decode_img_s": 20.0, "limit_img_s": 12.5,
                        "ratio_to_limit": 0.6, "ratio_pipeline_to_bare": 0.19, "speedup_vs_1_actor": 1.0,
                        "stage_seconds": {}, "marginal": marginal}]}
    assert "start-up taken out (images 100 -> 300): 10.0 img/s = 0.80x the limit" in ingest_table(record)
    # A longer run that was not slower says nothing: no rate rather than a negative or infinite one.
    assert marginal_rate(base, {**run, "pipeline_seconds": 19.0}, limit=12.5)["img_s"] is None
    with pytest.raises(ValueError, match="must be below --limit"):
        run_ingest_bench(IngestBenchConfig(source="unused", split=None, limit=100, marginal_from=100))


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
    # Ray's share is also split by process: the child here is a python program with no script.
    assert sum(summary["ray_cpu_seconds_by_process"].values()) == pytest.approx(summary["cpu_seconds"]["ray"],
                                                                                 abs=0.05)


def test_ray_s_processes_are_named_by_title_program_or_script() -> None:
    assert process_name("ray::IDLE") == "ray::IDLE"
    assert process_name("ray::_StatsActor.update") == "ray::_StatsActor.update"
    assert process_name("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node-id=1") == "raylet"
    assert process_name("/venv/bin/python -u /venv/lib/ray/dashboard/agent.py --node-ip-address=127.0.0.1") == \
        "dashboard/agent.py"
    assert process_name("") == "?"


def test_bare_model_in_single_thread_processes_leaves_no_process_behind() -> None:
    import multiprocessing

    import numpy as np

    images = [np.full((224, 224, 3), shade, dtype=np.uint8) for shade in range(0, 240, 30)]
    assert bare_model_rate_processes(images, batch_size=4, processes=2) > 0
    assert multiprocessing.active_children() == []
