"""`cbmir bench service`: a real `cbmir serve --vectors-only` process, vector queries serial and under load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from cbmir.bench.service import ServiceBenchConfig, run_service_bench, service_plot, service_table


def _bench_collection(uri: str) -> None:
    """2,000 synthetic rows through the search benchmark's own engine, in a child (Lite holds its file)."""
    code = ("import numpy as np; from cbmir.bench.engines import MilvusEngine, index_config; "
            f"e = MilvusEngine('lite', {uri!r}, collection='bench_2000', reuse=True); "
            "rng = np.random.default_rng(0); v = rng.standard_normal((2000, 64)).astype('float32'); "
            "e.load(v, rng.integers(0, 4, 2000)); e.build(index_config('HNSW', 2000)); e.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True)


def test_service_bench_serves_vectors_only_and_measures_each_client_count(tmp_path: Path) -> None:
    uri = str(tmp_path / "bench.db")
    _bench_collection(uri)
    record = run_service_bench(ServiceBenchConfig(milvus_uri=uri, collection="bench_2000", clients=(1, 2),
                                                  queries=20, qps_seconds=1.0, search_params=("ef=32",)),
                               progress=lambda _: None)
    assert record["rows"] == 2000
    assert record["serial"]["round_trip"]["n"] == 20
    assert record["serial"]["milvus_search"]["p50_ms"] > 0
    assert [q["clients"] for q in record["load"]] == [1, 2]
    assert all(q["qps"] > 0 and q["p99_ms"] >= q["p50_ms"] > 0 for q in record["load"])
    assert "QPS" in service_table(record)
    assert service_plot(record, tmp_path).stat().st_size > 0
    assert np.isfinite(record["serial"]["service_overhead"]["p50_ms"])
