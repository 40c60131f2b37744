"""The soft class prefilter: every plausible class searched, hits ranked by p(label) + similarity (issue 18, item 3).

End to end on real parts: a checkpoint whose classifier head gives every image the same, chosen probabilities
(zero weights, a set bias), ingested by Ray into Milvus Lite and queried through the engine and over gRPC.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import BACKBONES, EmbeddingModel
from cbmir.services.embedding.checkpoint import build_net, checkpoint_dict, save_checkpoint
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import Prefilter, QueryRejected, RetrievalEngine, SearchQuery
from cbmir.services.query.server import start_server
from cbmir.services.query.soft_prefilter import fuse, plausible_classes
from cbmir.services.store import Hit, MilvusStore

CLASSES = ["malignant", "normal_benign"]
COLLECTION = "soft"


def _hit(image_id: str, score: float, label: str) -> Hit:
    return Hit(image_id, 1.0 - score, score, {"label": label})


def test_plausible_classes_keep_the_predicted_one_and_those_over_the_floor() -> None:
    classes = ["a", "b", "c", "d"]
    assert plausible_classes(np.array([0.02, 0.9, 0.06, 0.02]), classes) == pytest.approx({"b": 0.9, "c": 0.06})
    assert list(plausible_classes(np.array([0.3, 0.3, 0.2, 0.2]), classes, max_classes=3)) == ["a", "b", "c"]
    assert plausible_classes(np.array([0.01, 0.01, 0.01, 0.97]), classes) == pytest.approx({"d": 0.97})


def test_fuse_lets_the_closest_images_of_an_unsure_runner_up_in_and_keeps_a_sure_class_first() -> None:
    hits = {"a": [_hit("a1", 0.70, "a"), _hit("a2", 0.60, "a")], "b": [_hit("b1", 0.95, "b"), _hit("b2", 0.61, "b")]}

    unsure = [h.id for h in fuse(hits, {"a": 0.55, "b": 0.45}, weight=1.0)]
    sure = [h.id for h in fuse(hits, {"a": 0.95, "b": 0.05}, weight=1.0)]

    assert unsure == ["b1", "a1", "a2", "b2"]  # b1 is by far the closest: it leads although "a" is predicted
    assert sure == ["a1", "b1", "a2", "b2"]   # a confident "a" outweighs all but b1's whole similarity range
    assert [h.id for h in fuse(hits, {"a": 1.0}, weight=0.0)][:2] == ["a1", "a2"]  # weight 0: the hard prefilter
    assert fuse({}, {"a": 1.0}) == []


def _constant_head_checkpoint(directory: Path, probabilities: list[float]) -> Path:
    net = build_net(BACKBONES["efficientnet_lite0"], num_classes=len(CLASSES), kind="backbone", dim=1280,
                    frozen_blocks=6)
    weight, bias = [p for p in net.classifier.parameters()]
    with torch.no_grad():
        weight.zero_()
        bias.copy_(torch.log(torch.tensor(probabilities)))  # softmax(log p) = p, for every image
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "best.pt"
    save_checkpoint(path, checkpoint_dict(net, "efficientnet_lite0", 64, CLASSES, {"seed": 0}))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_local: None, breastmnist_png_archive: Path):
    """60 ultrasound images ingested with an unsure head (0.55 / 0.45); engines over it with unsure and sure heads."""
    root = tmp_path_factory.mktemp("soft")
    unsure = _constant_head_checkpoint(root / "unsure", [0.55, 0.45])
    sure = _constant_head_checkpoint(root / "sure", [0.98, 0.02])
    uri = str(root / "soft.db")
    heads = {"unsure": unsure, "sure": sure}
    for name, path in heads.items():  # a collection per model: an engine refuses another model's vectors
        report = run_ingestion(IngestConfig(source=str(breastmnist_png_archive), milvus_uri=uri,
                                            collection=f"{COLLECTION}_{name}", weights=str(path), actors=1,
                                            batch_size=16, split="train", limit=60, progress=False, precision="fp32",
                                            report_path=str(root / f"report-{name}.json")))
        assert report.ingested == 60
    store = MilvusStore(uri)
    engines = {name: RetrievalEngine(store, EmbeddingModel.load(weights=str(path), precision="fp32"),
                                     f"{COLLECTION}_{name}") for name, path in heads.items()}
    running = start_server(engines["unsure"], host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    yield engines, client, sorted((breastmnist_png_archive / "images").glob("train_*.png"))
    client.close()
    running.stop()
    store.close()


def _labels(result) -> set[str]:
    return {h.fields["label"] for h in result.hits}


def test_an_unsure_prediction_searches_both_classes_where_the_hard_prefilter_searches_one(served) -> None:
    engines, _, images = served
    image = images[0].read_bytes()

    soft = engines["unsure"].search(SearchQuery(image=image, top_k=20, prefilter=Prefilter.SOFT, soft_weight=1.0))
    hard = engines["unsure"].search(SearchQuery(image=image, top_k=20, prefilter=Prefilter.PREDICTED))

    assert _labels(hard) == {"malignant"}
    assert _labels(soft) == set(CLASSES)
    assert soft.prefilter_applied and soft.predicted_class == "malignant"
    assert soft.predicted_probability == pytest.approx(0.55, abs=1e-3)
    assert "'malignant' (0.55)" in soft.prefilter_note and "'normal_benign' (0.45)" in soft.prefilter_note
    # The image itself is stored: whatever its label, it is the closest of all and leads the soft list.
    assert soft.hits[0].score == pytest.approx(max(h.score for h in soft.hits))


def test_soft_weight_zero_orders_by_class_probability_alone_and_a_bad_weight_is_refused(served) -> None:
    engines, _, images = served
    image = images[0].read_bytes()
    by_prior = engines["unsure"].search(SearchQuery(image=image, top_k=60, prefilter=Prefilter.SOFT, soft_weight=0.0))

    labels = [h.fields["label"] for h in by_prior.hits]
    assert labels == sorted(labels, key=lambda label: label != "malignant") and len(set(labels)) == 2
    for bad in (-1.0, float("nan")):
        with pytest.raises(QueryRejected, match="soft_weight"):
            engines["unsure"].search(SearchQuery(image=image, prefilter=Prefilter.SOFT, soft_weight=bad))


def test_a_sure_prediction_under_the_floor_searches_only_its_class(served) -> None:
    engines, _, images = served
    soft = engines["sure"].search(SearchQuery(image=images[1].read_bytes(), top_k=10, prefilter=Prefilter.SOFT))

    assert _labels(soft) == {"malignant"}
    assert "normal_benign" not in soft.prefilter_note


def test_soft_over_grpc_and_its_refusals(served) -> None:
    engines, client, images = served
    reply = client.search(image=images[2].read_bytes(), top_k=10, prefilter="soft")
    assert reply.prefilter_applied and reply.prefilter_note.startswith("soft: searched labels")

    stored_id = reply.hits[0].id
    for query, message in ((SearchQuery(id=stored_id, prefilter=Prefilter.SOFT), "needs the image"),
                           (SearchQuery(vector=np.ones(1280, np.float32), prefilter=Prefilter.SOFT), "not a vector"),
                           (SearchQuery(image=images[2].read_bytes(), prefilter=Prefilter.SOFT,
                                        filters={"label": "malignant"}), "drop the label filter")):
        with pytest.raises(QueryRejected, match=message):
            engines["unsure"].search(query)
    with pytest.raises(grpc.RpcError) as caught:
        client.search(id=stored_id, top_k=5, prefilter="soft")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # soft_weight on the wire: 0 (set, not unset) ranks the predicted class first; a negative one is refused
    by_prior = client.search(image=images[2].read_bytes(), top_k=60, prefilter="soft", soft_weight=0.0)
    labels = [h.label for h in by_prior.hits]
    assert labels == sorted(labels, key=lambda label: label != "malignant") and len(set(labels)) == 2
    with pytest.raises(grpc.RpcError) as caught:
        client.search(image=images[2].read_bytes(), top_k=5, prefilter="soft", soft_weight=-0.5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "soft_weight" in caught.value.details()

