"""Load: concurrent clients against a real `cbmir serve` process on 127.0.0.1: 0 errors; QPS and p50/p99.

Default suite: 4 clients x 5 s. `-m slow`: 16 clients x 60 s (the figure in docs/reliability.md).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import COLLECTION, record_figures
from loadgen import run_load
from PIL import Image

from cbmir.services.query.client import RetrievalClient
from cbmir.services.store.milvus_server import free_ports

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """`cbmir serve` in its own process on a Milvus Lite file built by another process (one process per file)."""
    work = tmp_path_factory.mktemp("load")
    uri = str(work / "cbmir.db")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    build = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from conftest import build_collection; "
             f"from cbmir.services.embedding import EmbeddingModel; "
             f"build_collection({uri!r}, EmbeddingModel.load('efficientnet_lite0'))")
    subprocess.run([sys.executable, "-c", build], check=True, env=env, cwd=ROOT, timeout=600, capture_output=True)
    port = free_ports(1)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "cbmir.cli", "serve", "--milvus-uri", uri, "--collection", COLLECTION,
         "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))  # noqa: SIM115
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        with RetrievalClient(target, timeout=2) as client:
            while True:
                try:
                    if client.health() == "SERVING":
                        break
                except grpc.RpcError:
                    pass
                assert process.poll() is None, (work / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "cbmir serve did not come up"
                time.sleep(0.5)
        yield target
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _images() -> list[bytes]:
    from cbmir.ingestion.samples import BREASTMNIST_SUBSET

    data = np.load(BREASTMNIST_SUBSET)["test_images"]
    out = []
    for pixels in data[:16]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def test_four_clients_for_five_seconds_get_no_errors(served) -> None:
    figures = run_load(served, _images(), clients=4, seconds=5)
    record_figures("load_ci", figures)
    assert figures["errors"] == 0 and figures["requests"] > 0


@pytest.mark.slow
def test_sixteen_clients_for_sixty_seconds_get_no_errors(served) -> None:
    figures = run_load(served, _images(), clients=16, seconds=60)
    record_figures("load", figures)
    assert figures["errors"] == 0 and figures["requests"] > 0
