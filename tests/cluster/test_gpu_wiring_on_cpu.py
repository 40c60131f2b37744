"""The GPU path, checked without a GPU: fractional GPUs per actor reach Ray, CUDA means fp16 autocast, and
batches are pinned before the host-to-device copy (docs/scaling.md). Running it needs a CUDA machine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

import cbmir.ingestion.embedder as embedder_module
import cbmir.ingestion.pipeline as pipeline
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.embedder import Embedder
from cbmir.ingestion.pipeline import plan_resources
from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.model import resolve_precision


@pytest.mark.parametrize(("gpus_per_actor", "actors"), [(0.5, 4), (0.25, 8), (1.0, 2)])
def test_cuda_actors_reserve_a_fraction_of_a_gpu_and_at_most_one_cpu(gpus_per_actor: float, actors: int) -> None:
    plan = plan_resources(16, actors, "cuda", gpus_per_actor, node_cpus=[8, 8])

    assert plan.actor_gpus == gpus_per_actor
    assert 0 < plan.actor_cpus <= 1  # a GPU actor only feeds its GPU; reads get the rest
    assert plan.read_cpus > 0


def test_cpu_actors_reserve_no_gpu() -> None:
    assert plan_resources(16, 4, "cpu", 0.5).actor_gpus == 0


def test_config_refuses_a_non_positive_gpu_share() -> None:
    with pytest.raises(ValueError, match="gpus_per_actor"):
        IngestConfig(source="x", device="cuda", gpus_per_actor=0)


def test_two_one_cpu_nodes_leave_each_read_task_room() -> None:
    # The local two-node test cluster: a whole-CPU read task would never fit next to a 0.5-CPU actor.
    plan = plan_resources(2, 2, "cpu", 1.0, node_cpus=[1, 1])

    assert plan.read_cpus + plan.actor_cpus <= 1


class _FakeDataset:
    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls

    def map_batches(self, fn: Any, **kwargs: Any) -> _FakeDataset:
        self.calls.append({"fn": fn, **kwargs})
        return self

    def iter_batches(self, **_: Any) -> list[Any]:
        return []


def test_embedding_actors_are_created_with_the_gpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(pipeline.ray, "put", lambda value: value)
    monkeypatch.setattr(pipeline.ray.data, "from_arrow_refs", lambda refs, **_: _FakeDataset(calls))
    config = IngestConfig(source="x", device="cuda", gpus_per_actor=0.5, actors=4)
    plan = plan_resources(16, 4, "cuda", 0.5, node_cpus=[8, 8])

    # 4 batches' worth of rows: the pool is never larger than the batches there are.
    rows = pa.table({"uri": ["a"] * (4 * config.batch_size)})
    list(pipeline.embedded_batches([rows], np.zeros(0, "S64"), config, plan, 224))

    read, embed = calls
    assert "num_gpus" not in read and read["num_cpus"] == plan.read_cpus  # decoding stays on CPUs
    assert embed["fn"] is pipeline.RayEmbedder
    assert embed["num_gpus"] == 0.5 and embed["num_cpus"] == plan.actor_cpus
    assert embed["compute"].min_size == embed["compute"].max_size == 4
    assert embed["fn_constructor_kwargs"]["device"] == "cuda"
    assert embed["fn_constructor_kwargs"]["precision"] == "auto"

    calls.clear()
    list(pipeline.embedded_batches([pa.table({"uri": ["a"]})], np.zeros(0, "S64"), config, plan, 224))
    assert calls[1]["compute"].min_size == calls[1]["compute"].max_size == 1  # one row: one actor, not four


def test_cuda_resolves_to_fp16_autocast_and_cpu_never_does() -> None:
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        resolve_precision("fp16", "cpu")
    model = object.__new__(EmbeddingModel)
    model.precision, model._torch_device = "fp16", torch.device("cuda")
    with pytest.warns(UserWarning):  # no CUDA here: torch disables it, but the choice is what we check
        autocast = model._autocast()
    assert autocast.device == "cuda" and autocast.fast_dtype == torch.float16


def test_cuda_without_a_gpu_fails_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        EmbeddingModel.load("efficientnet_lite0", device="cuda")


def test_cuda_embedder_pins_each_batch_before_the_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    model = EmbeddingModel.load("squeezenet1_1", random_init=True, precision="fp32")  # light: plumbing only
    embedder = object.__new__(Embedder)
    embedder.model, embedder.dim, embedder.classes, embedder.pin_memory = model, model.dim, None, True
    model.batch_size = 2
    pinned: list[tuple[int, ...]] = []

    def fake_pin(batch: torch.Tensor) -> torch.Tensor:  # the real one needs a CUDA driver
        pinned.append(tuple(batch.shape))
        return batch

    monkeypatch.setattr(embedder_module, "pin", fake_pin)
    images = [np.random.default_rng(i).random((32, 32), dtype=np.float32) for i in range(3)]

    vectors, labels = embedder._vectors(images)

    size = model.preprocessing.input_size
    assert pinned == [(2, 3, size, size), (1, 3, size, size)]
    np.testing.assert_allclose(vectors, model.embed(images), rtol=1e-4, atol=1e-4)  # same vectors as unpinned
    assert labels == ["", "", ""]
