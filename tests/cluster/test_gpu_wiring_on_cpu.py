"""The GPU path's wiring, checked on this CPU-only machine: the plan gives GPU actors a GPU share and decoding to
CPUs, the actors get the GPU share, device, precision and --batch-size, CUDA means fp16 autocast, and the model's
batching (one forward pass per --batch-size batch, NHWC, double-buffered transfers) runs here on CPU. No GPU runs
in these tests: the GPU itself is measured by `cbmir bench ingest --device cuda` on a GPU node (docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

import cbmir.ingestion.pipeline as pipeline
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.embedder import Embedder
from cbmir.ingestion.pipeline import plan_resources
from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.model import resolve_precision
from cbmir.services.embedding.preprocess import to_batch_tensor


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
    assert embed["fn_constructor_kwargs"]["batch_size"] == config.batch_size == embed["batch_size"]

    calls.clear()
    list(pipeline.embedded_batches([pa.table({"uri": ["a"]})], np.zeros(0, "S64"), config, plan, 224))
    assert calls[1]["compute"].min_size == calls[1]["compute"].max_size == 1  # one row: one actor, not four


def test_cuda_resolves_to_fp16_autocast_and_cpu_auto_never_does() -> None:
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    assert resolve_precision("fp16", "cpu") == "fp16"  # asked for: CPU autocast runs float16 in this torch
    model = object.__new__(EmbeddingModel)
    model.precision, model._torch_device = "fp16", torch.device("cuda")
    with pytest.warns(UserWarning):  # no CUDA here: torch disables it, but the choice is what we check
        autocast = model._autocast()
    assert autocast.device == "cuda" and autocast.fast_dtype == torch.float16


def test_cuda_without_a_gpu_fails_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        EmbeddingModel.load("efficientnet_lite0", device="cuda")


def _light_embedder(batch_size: int) -> Embedder:
    return Embedder("squeezenet1_1", None, True, "cpu", "fp32", 1, batch_size=batch_size)  # light: plumbing only


def _images(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).random((32, 32), dtype=np.float32) for i in range(n)]


def _forward_inputs(model: EmbeddingModel) -> tuple[list[torch.Tensor], Any]:
    seen: list[torch.Tensor] = []
    hook = model.module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    return seen, hook


@pytest.mark.parametrize(("batch_size", "passes"), [(128, [12]), (5, [5, 5, 2])])
def test_the_models_inner_batch_is_the_pipelines_batch_size(batch_size: int, passes: list[int]) -> None:
    embedder = _light_embedder(batch_size)
    seen, hook = _forward_inputs(embedder.model)
    vectors, labels = embedder._vectors(_images(12))
    hook.remove()
    assert [x.shape[0] for x in seen] == passes  # was: a fixed 64 per pass, whatever --batch-size said
    assert vectors.shape == (12, embedder.dim) and labels == [""] * 12


def test_weights_and_batches_are_channels_last() -> None:
    model = _light_embedder(4).model
    seen, hook = _forward_inputs(model)
    model.embed(_images(2))
    hook.remove()
    convs = [p for p in model.module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_batches_are_double_buffered_and_come_back_in_order() -> None:
    model = _light_embedder(2).model
    batches = [to_batch_tensor(_images(12)[i:i + 2], model.preprocessing) for i in range(0, 12, 2)]
    pulled: list[int] = []

    def feed() -> Any:
        for i, batch in enumerate(batches):
            pulled.append(i)
            yield batch

    results = model.embed_and_predict_batches(feed())
    first, _ = next(results)
    # Batch 1 was handed to the device before batch 0's results were waited for: the overlap on a GPU.
    assert pulled == [0, 1, 2]
    rest = [embedding for embedding, _ in results]
    one_by_one = [model.embed_tensor(batch) for batch in batches]
    for got, want in zip([first, *rest], one_by_one, strict=True):
        torch.testing.assert_close(got, want)
