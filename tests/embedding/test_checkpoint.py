"""The cbmir checkpoint format: what EmbeddingModel.load accepts, refuses, and how identity follows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cbmir.services.embedding import BACKBONES, EmbeddingModel, WeightsError
from cbmir.services.embedding.checkpoint import CHECKPOINT_FORMAT, build_net, checkpoint_dict, save_checkpoint


@pytest.fixture(scope="module")
def metric_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained projection-head checkpoint: the format without the cost of training."""
    net = build_net(BACKBONES["efficientnet_lite0"], num_classes=3, kind="projection", dim=32, frozen_blocks=6)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, checkpoint_dict(net, "efficientnet_lite0", 64, ["a", "b", "c"], {"seed": 0}))
    return path


def test_projection_checkpoint_loads_with_unit_norm_embeddings_and_classes(metric_checkpoint: Path) -> None:
    model = EmbeddingModel.load("efficientnet_lite0", weights=str(metric_checkpoint), precision="fp32")
    assert model.classes == ["a", "b", "c"] and model.dim == 32
    assert model.identity.architecture == "efficientnet_lite0+metric32"
    images = [np.full((40, 50), v, dtype=np.float32) for v in (0.1, 0.5, 0.9)]
    embedding, probabilities = model.embed_and_predict(images)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    assert probabilities.shape == (3, 3)


def test_tta_is_part_of_the_identity(metric_checkpoint: Path) -> None:
    plain = EmbeddingModel.load("efficientnet_lite0", weights=str(metric_checkpoint), precision="fp32")
    tta = EmbeddingModel.load("efficientnet_lite0", weights=str(metric_checkpoint), precision="fp32", tta=True)
    assert tta.identity.architecture.endswith("+tta-hflip") and tta.model_id != plain.model_id
    image = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (48, 1))
    mirrored = image[:, ::-1].copy()
    np.testing.assert_allclose(tta.embed([image]), tta.embed([mirrored]), atol=1e-5)


def test_plain_backbone_has_no_classes_and_predict_says_how_to_get_them() -> None:
    model = EmbeddingModel.load("resnet18", random_init=True, precision="fp32")
    assert model.classes is None
    with pytest.raises(ValueError, match="cbmir train"):
        model.predict([np.zeros((8, 8), dtype=np.float32)])


def test_unknown_format_version_is_refused(metric_checkpoint: Path, tmp_path: Path) -> None:
    obj = torch.load(metric_checkpoint, weights_only=True)
    obj["format"] = "cbmir-checkpoint/99"
    path = tmp_path / "future.pt"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match=f"this cbmir reads {CHECKPOINT_FORMAT}"):
        EmbeddingModel.load("efficientnet_lite0", weights=str(path))


def test_checkpoint_whose_weights_do_not_fit_is_refused(metric_checkpoint: Path, tmp_path: Path) -> None:
    obj = torch.load(metric_checkpoint, weights_only=True)
    obj["classes"] = ["a", "b"]  # the classifier has 3 outputs
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match="does not fit efficientnet_lite0"):
        EmbeddingModel.load("efficientnet_lite0", weights=str(path))
