"""A tiny end-to-end `cbmir bench search`: FAISS and Milvus Lite, one index, JSON + PNG + table written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbmir.cli import main


def test_bench_search_writes_json_plots_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "search", "--sizes", "2000", "--dim", "32", "--engines", "faiss,lite",
                 "--index-types", "HNSW", "--queries", "40", "--budget", "0.5", "--clients", "1,4",
                 "--qps-seconds", "0.2", "--out", str(tmp_path)])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    record = json.loads((run_dir / "search.json").read_text())
    assert {"machine", "versions", "config", "builds", "measurements"} <= set(record)
    assert record["machine"]["cores"] >= 1 and record["versions"]["faiss-cpu"] != "absent"
    engines = {m["engine"] for m in record["measurements"]}
    assert engines == {"faiss", "lite"}
    for m in record["measurements"]:
        assert 0.9 <= m["recall"] <= 1.0          # HNSW on 2000 vectors is near exact
        assert m["latency"]["p50_ms"] <= m["latency"]["p99_ms"]
    swept = [m["search_params"]["ef"] for m in record["measurements"] if m["engine"] == "faiss" and not m["filtered"]]
    assert swept == [16, 32, 64, 96, 128, 256]
    assert any(m["filtered"] for m in record["measurements"])
    assert [q["clients"] for m in record["measurements"] for q in m["qps"] if m["engine"] == "lite"] == [1, 4]
    for png in ("latency_vs_n.png", "recall_vs_qps.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / "work").exists()
    builds = {b["engine"]: b for b in record["builds"]}
    assert builds["faiss"]["segments"] is None and isinstance(builds["lite"]["segments"], dict)
    out = capsys.readouterr().out
    assert "recall@10" in out and "lite" in out and "faiss" in out
    sweep_lines = [line for line in out.splitlines() if line.startswith("faiss") and "ef=" in line]
    assert {line.split()[3] for line in sweep_lines} >= {f"ef={ef}" for ef in (16, 32, 64, 96, 128, 256)}


def test_bench_sizes_above_the_lite_cap_skip_lite_and_say_so(tmp_path: Path) -> None:
    from cbmir.bench.search import SearchBenchConfig, run

    config = SearchBenchConfig(sizes=(600,), dim=8, engines=("lite",), index_types=("FLAT",), queries=10,
                               budget_s=0.1, clients=(1,), qps_seconds=0.1, lite_max_rows=500,
                               workdir=str(tmp_path))
    record = run(config, progress=lambda line: None)
    assert record["measurements"] == [] and "lite-max-rows" in record["skipped"][0]


def test_real_embeddings_file_is_used_and_too_small_a_file_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from cbmir.bench.search import SearchBenchConfig, dataset

    path = tmp_path / "real.npz"
    np.savez(path, embeddings=np.random.default_rng(0).random((300, 16), dtype=np.float32),
             labels=np.array(["a", "b", "c"] * 100))
    config = SearchBenchConfig(vectors=str(path), dim=16, queries=50)
    base, labels, queries, _ = dataset(config, 250)
    assert base.shape == (250, 16) and queries.shape == (50, 16) and set(labels) == {0, 1, 2}
    assert np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="holds 300 vectors"):
        dataset(config, 251)


def test_reuse_times_the_searches_again_without_reinserting_or_rebuilding(tmp_path: Path, milvus_server,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.bench.search import SearchBenchConfig, run

    config = SearchBenchConfig(sizes=(1500,), dim=16, engines=("server",), index_types=("HNSW",), queries=20,
                               budget_s=0.2, clients=(1,), qps_seconds=0.1, with_filter=False,
                               workdir=str(tmp_path / "w"), server_uri=milvus_server.uri, reuse=True)
    first = run(config, progress=lambda line: None)
    second = run(config, progress=lambda line: None)
    assert not first["builds"][0]["reused"] and first["builds"][0]["insert_s"] > 0
    assert second["builds"][0]["reused"] and second["builds"][0]["insert_s"] == 0
    assert second["builds"][0]["segments"]["count"] >= 1
    # Same vectors, same index: the same answers.
    assert [m["recall"] for m in second["measurements"]] == [m["recall"] for m in first["measurements"]]
    _tail_reads_the_clients_slow_calls_beside_the_servers_own(tmp_path / "tail", milvus_server, capsys)
    other = run(SearchBenchConfig(**{**config.__dict__, "seed": 1}), progress=lambda line: None)
    assert not other["builds"][0]["reused"]  # other vectors: the collection is rebuilt, never mixed


def test_server_breakdown_times_every_part_and_reads_the_server_stages(tmp_path: Path, milvus_server,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    metrics_url = milvus_server.healthz_url.replace("/healthz", "/metrics")
    code = main(["bench", "server-breakdown", "--server-uri", milvus_server.uri, "--metrics-url", metrics_url,
                 "--sizes", "600", "--dim", "16", "--rounds", "4", "--out", str(tmp_path)])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    (run,) = json.loads((run_dir / "server_breakdown.json").read_text())["runs"]
    parts = {p["name"]: p["latency"] for p in run["parts"]}
    assert {"encode_bytes", "rpc_get_version", "stub_search", "search_strong", "search_bounded",
            "search_label_filter", "one_partition", "store_search"} <= set(parts)
    assert all(lat["n"] >= 4 and lat["p50_ms"] > 0 for lat in parts.values())
    assert run["segments_one_partition"]["count"] >= 1
    bounded = run["server_stages_ms_per_search"]["search_bounded"]
    assert bounded["proxy_sq_latency"]["per_search"] == pytest.approx(1.0)
    assert (run_dir / "server_breakdown_600.png").read_bytes()[:4] == b"\x89PNG"
    assert "stub_search" in capsys.readouterr().out


def test_reuse_reads_the_faiss_index_back_and_answers_alike(tmp_path: Path) -> None:
    from cbmir.bench.search import SearchBenchConfig, run

    config = SearchBenchConfig(sizes=(1500,), dim=16, engines=("faiss",), index_types=("HNSW",), queries=20,
                               budget_s=0.2, clients=(1,), qps_seconds=0.1, with_filter=False,
                               workdir=str(tmp_path / "w"), reuse=True, faiss_cache=str(tmp_path / "cache"))
    first = run(config, progress=lambda line: None)
    second = run(config, progress=lambda line: None)
    assert not first["builds"][0]["reused"] and first["builds"][0]["index_build_s"] > 0
    assert second["builds"][0]["reused"] and second["builds"][0]["index_build_s"] == 0
    assert len(list((tmp_path / "cache").glob("HNSW-1500-*.faiss"))) == 1
    assert [m["recall"] for m in second["measurements"]] == [m["recall"] for m in first["measurements"]]
    other = run(SearchBenchConfig(**{**config.__dict__, "seed": 1}), progress=lambda line: None)
    assert not other["builds"][0]["reused"]  # other vectors: another index, never the cached one
    assert len(list((tmp_path / "cache").glob("HNSW-1500-*.faiss"))) == 2


def test_faiss_index_size_is_its_serialised_size_with_or_without_a_cache(tmp_path: Path) -> None:
    import faiss
    import numpy as np

    from cbmir.bench.engines import FaissEngine, index_config

    vectors = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    labels = np.zeros(600, dtype=np.int64)
    for cache_dir in (None, tmp_path / "cache"):
        engine = FaissEngine(cache_dir=cache_dir)
        engine.load(vectors, labels)
        engine.build(index_config("HNSW", len(vectors)))
        assert engine.memory_bytes() == len(faiss.serialize_index(engine.index)) > 600 * 16 * 4
    engine.drop_index()
    assert engine.memory_bytes() == 0


def test_filter_sweep_and_passes_name_the_cheapest_setting_at_the_recall(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "search", "--sizes", "3000", "--dim", "32", "--engines", "faiss", "--index-types", "HNSW",
                 "--queries", "30", "--budget", "5", "--clients", "1", "--qps-seconds", "0.1", "--filter-sweep",
                 "--passes", "3", "--target-recall", "0.9", "--out", str(tmp_path)])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    record = json.loads((run_dir / "search.json").read_text())
    filtered = [m for m in record["measurements"] if m["filtered"]]
    plain = [m for m in record["measurements"] if not m["filtered"]]
    # The filtered search is timed at every ef of the sweep, each setting over 3 passes of the 30 queries.
    assert [m["search_params"]["ef"] for m in filtered] == [m["search_params"]["ef"] for m in plain]
    assert all(m["latency"]["n"] == 90 for m in record["measurements"])
    assert sum(m["default_params"] for m in filtered) == sum(m["default_params"] for m in plain) == 1
    rows = {r["filtered"]: r for r in record["cheapest_at_recall"]["rows"]}
    for is_filtered, ms in ((False, plain), (True, filtered)):
        reaching = [m for m in ms if m["recall"] >= 0.9]
        assert rows[is_filtered]["reached"] == bool(reaching)
        if reaching:  # the lowest p50 among the settings that reach the recall
            assert rows[is_filtered]["p50_ms"] == min(m["latency"]["p50_ms"] for m in reaching)
    out = capsys.readouterr().out
    assert "cheapest setting with recall@10 >= 0.9" in out
    assert (run_dir / "filter_sweep.png").read_bytes()[:4] == b"\x89PNG"
    # The summary table keeps one filtered row (the default), the sweep table shows them all.
    summary = out.split("\n\n")[1]
    assert sum(" label " in line for line in summary.splitlines()) == 1


def test_passes_below_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "search", "--passes", "0"])
    assert "must be at least 1" in capsys.readouterr().err



def _tail_reads_the_clients_slow_calls_beside_the_servers_own(out: Path, milvus_server,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`bench tail` on the collection `bench search --reuse` kept: 3 passes of its 20 queries, label-filtered."""
    metrics_url = milvus_server.healthz_url.replace("/healthz", "/metrics")
    code = main(["bench", "tail", "--server-uri", milvus_server.uri, "--metrics-url", metrics_url, "--size", "1500",
                 "--dim", "16", "--queries", "20", "--passes", "3", "--ef", "32", "--filter", "--out", str(out)])
    assert code == 0
    record = json.loads(next(out.glob("*/tail.json")).read_text())
    assert record["client"]["n"] == record["client_calls_over_ms"]["calls"] == 60
    assert record["config"]["filtered"] and 0 <= record["distinct_queries_among_slow_calls"] <= 20
    # The server counted exactly these 60 searches, and no view has more slow calls at a higher bound.
    for view in (record["client_calls_over_ms"], *record["server_calls_over_ms"].values()):
        assert view["calls"] == 60
        over = [view[f">{b}"] for b in (1, 2, 4, 8, 16, 32, 64)]
        assert over == sorted(over, reverse=True) and over[0] <= 60
    assert set(record["server_calls_over_ms"]) == {"proxy", "query_node"}
    assert "server query_node" in capsys.readouterr().out
