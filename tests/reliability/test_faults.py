"""Faults lose nothing: `cbmir ingest` SIGKILLed mid-run and rerun, and a Ray actor dying mid-batch.

Each run is a real `cbmir ingest` subprocess (its own local Ray, Milvus Lite file), as an operator runs it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import record_figures

from cbmir.ingestion.embedder import FAULT_EXIT_ONCE_ENV
from cbmir.services.embedding import decode_image, image_id
from cbmir.services.embedding.id_salt import read_default_salt
from cbmir.services.store import MilvusStore

COLLECTION = "faults"
LIMIT = 40
BATCH = 8
ROOT = Path(__file__).resolve().parents[2]


def _command(source: Path, uri: str, report: Path) -> list[str]:
    return [sys.executable, "-m", "cbmir.cli", "ingest", str(source), "--milvus-uri", uri,
            "--collection", COLLECTION, "--split", "train", "--limit", str(LIMIT), "--actors", "1",
            "--batch-size", str(BATCH), "--flush-rows", str(BATCH), "--no-progress", "--log-level", "DEBUG",
            "--report", str(report)]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **extra}


def _run_and_kill_after(command: list[str], upserts: int, log: Path) -> int:
    """Start the ingest; SIGKILL it right after its `upserts`-th upsert was logged. Returns the upserts seen."""
    seen = 0
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=_env(), cwd=ROOT, start_new_session=True)
        assert process.stderr is not None
        for line in process.stderr:
            out.write(line)
            if "upserted" in line and "rows" in line:
                seen += 1
                if seen >= upserts:
                    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray it started, no goodbye
                    break
        process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, f"ingest ended by itself before {upserts} upserts; see {log}"
    return seen


def _run(command: list[str], log: Path, **env: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=_env(**env), cwd=ROOT, timeout=900)
    log.write_text(result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]


def _expected_ids(source: Path) -> set[str]:
    import csv

    with open(source / "labels.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "train"][:LIMIT]
    salt = read_default_salt()  # the ingest subprocess keyed its ids with this deployment's salt ($CBMIR_HOME)
    return {image_id(decode_image((source / r["image"]).read_bytes()).content_key, salt) for r in rows}


def _stored_ids(uri: str) -> list[str]:
    store = MilvusStore(uri)
    store.load(COLLECTION)
    ids = list(store.iter_ids(COLLECTION))
    assert store.count(COLLECTION) == len(ids)
    return ids


def test_sigkill_mid_ingest_then_rerun_with_a_dying_actor_stores_each_image_once(breastmnist_png_archive: Path,
                                                                                tmp_path: Path) -> None:
    uri = str(tmp_path / "cbmir.db")
    command = _command(breastmnist_png_archive, uri, tmp_path / "report.json")
    started = time.monotonic()
    _run_and_kill_after(command, upserts=1, log=tmp_path / "run1.log")
    marker = tmp_path / "actor-died"
    _run(command, tmp_path / "run2.log", **{FAULT_EXIT_ONCE_ENV: str(marker)})
    assert marker.exists(), "the fault was not injected: no embedder actor died"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failed"] == 0
    assert report["skipped_present"] >= BATCH  # the killed run's upsert survived and was skipped, not redone
    ids = _stored_ids(uri)
    assert len(ids) == len(set(ids)) == len(_expected_ids(breastmnist_png_archive))  # 0 duplicated
    assert set(ids) == _expected_ids(breastmnist_png_archive)  # 0 lost
    record_figures("sigkill_and_actor_death", {"images": LIMIT, "kill_after_upserts": 1, "actor_deaths": 1,
                                               "stored": len(ids), "lost": 0, "duplicated": 0,
                                               "skipped_on_rerun": report["skipped_present"],
                                               "seconds": round(time.monotonic() - started, 1)})


@pytest.mark.slow
def test_sigkill_at_several_random_points_loses_and_duplicates_nothing(breastmnist_png_archive: Path,
                                                                      tmp_path: Path) -> None:
    uri = str(tmp_path / "cbmir.db")
    command = _command(breastmnist_png_archive, uri, tmp_path / "report.json")
    rng = random.Random(int(os.environ.get("CBMIR_FAULT_SEED", "5")))
    points = []
    for round_ in range(3):
        upserts = rng.randint(1, 2)
        points.append(upserts)
        _run_and_kill_after(command, upserts=upserts, log=tmp_path / f"kill{round_}.log")
    _run(command, tmp_path / "final.log")
    ids = _stored_ids(uri)
    expected = _expected_ids(breastmnist_png_archive)
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected
    record_figures("sigkill_random_points", {"kill_after_upserts": points, "stored": len(ids), "lost": 0,
                                             "duplicated": 0})
