"""Ingestion submitted to a real two-node Ray cluster on 127.0.0.1 (`--ray-address`): actors run on both nodes.

The driver runs in a subprocess, as `cbmir ingest --ray-address` would: this test session may hold its own local
Ray (the `ray_local` fixture), and one process attaches to one Ray at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import LocalRayCluster

from cbmir.services.store import MilvusStore

LIMIT = 40
ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, sys
from cbmir.ingestion import IngestConfig, run_ingestion
report = run_ingestion(IngestConfig(source=sys.argv[1], milvus_uri=sys.argv[2], ray_address=sys.argv[3],
                                    actors=2, batch_size=2, limit=int(sys.argv[4]), progress=False,
                                    report_path=sys.argv[5]))
print(json.dumps({"ingested": report.ingested}))
"""


@pytest.fixture(scope="module")
def cluster() -> LocalRayCluster:
    with LocalRayCluster(head_cpus=1, worker_cpus=1) as running:
        yield running
    deadline = time.monotonic() + 15
    while running.leftover_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running.leftover_pids() == [], "Ray processes of the test cluster survived its teardown"


def test_cluster_has_two_nodes_with_their_own_resources(cluster: LocalRayCluster) -> None:
    nodes = cluster.nodes

    assert len(nodes) == 2
    assert sorted(k for n in nodes for k in n["resources"] if k in ("head", "worker_node")) == ["head", "worker_node"]
    assert all(n["resources"]["CPU"] == 1 for n in nodes)


def test_ingestion_on_the_cluster_spreads_actors_over_both_nodes(cluster: LocalRayCluster, tmp_path: Path,
                                                                 breastmnist_png_archive: Path) -> None:
    db, report_path = tmp_path / "cluster.db", tmp_path / "report.json"
    driver = subprocess.run(  # noqa: S603
        [sys.executable, "-c", DRIVER, str(breastmnist_png_archive), str(db), cluster.address, str(LIMIT),
         str(report_path)],
        cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300, check=False)
    assert driver.returncode == 0, f"driver failed:\n{driver.stderr[-4000:]}\n{cluster.log_tail()}"
    report = json.loads(report_path.read_text())
    node_ids = {n["id"] for n in cluster.nodes}

    assert report["ray_address"] == cluster.address
    assert report["read"] == LIMIT and report["failed"] == 0
    # Both nodes ran an embedding actor, and each embedded rows.
    assert set(report["actors_per_node"]) == node_ids, report["actors_per_node"]
    assert sum(report["actors_per_node"].values()) == 2
    assert set(report["rows_per_node"]) == node_ids and sum(report["rows_per_node"].values()) == LIMIT
    # The rows are in the driver's Milvus Lite file.
    store = MilvusStore(str(db))
    try:
        assert store.count("cbmir_images") == report["ingested"] == report["row_count_after"] > 0
    finally:
        store.close()
    print(f"\n2-node cluster: actors per node {sorted(report['actors_per_node'].values())}, rows per node "
          f"{sorted(report['rows_per_node'].values())}, {report['images_per_second']} img/s end to end, "
          f"{report['steady_images_per_second']} img/s steady, {report['seconds']} s")
