"""cbmir train: losses on hand-made tensors, validation carving, seed determinism, resume, the checkpoint it writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cbmir.services.embedding.checkpoint import read_raw
from cbmir.services.embedding.heads import CenterLoss, batch_hard_triplet_loss
from cbmir.training.trainer import (
    TrainConfig,
    TrainResult,
    assign_groups,
    carve_validation,
    map_at_k,
    train,
)

SAMPLE = Path(__file__).resolve().parents[2] / "ingestion" / "samples" / "breastmnist_subset.npz"


def tiny_config(out: Path, **overrides: object) -> TrainConfig:
    """24 real BreastMNIST images at 64 px: seconds per run, still the real data path and backbone."""
    base = TrainConfig(source=str(SAMPLE), out_dir=str(out), split="test", limit=24, input_size=64, epochs=1,
                       batch_size=8, views=2, val_fraction=0.25, precision="fp32", seed=3)
    return replace(base, **overrides)


def test_batch_hard_triplet_picks_farthest_positive_and_nearest_negative() -> None:
    # 1-d points: class 0 at 0 and 1, class 1 at 1.5 and 4.
    e = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1, neg 1.5 -> 1-1.5+0.3=-0.2 -> 0; anchor 1: pos 1, neg .5 -> .8;
    # anchor 2: pos 2.5, neg .5 -> 2.3; anchor 3: pos 2.5, neg 3 -> -0.2 -> 0
    assert float(batch_hard_triplet_loss(e, y, margin=0.3)) == pytest.approx((0.8 + 2.3) / 4)


def test_batch_hard_triplet_is_zero_without_positives_and_has_finite_gradients() -> None:
    e = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    loss = batch_hard_triplet_loss(e, torch.tensor([0, 1]))
    assert float(loss.detach()) == 0.0
    e2 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)  # duplicate points: d = 0
    batch_hard_triplet_loss(e2, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(e2.grad).all()


def test_center_loss_is_half_mean_squared_distance_to_class_center() -> None:
    loss = CenterLoss(num_classes=2, dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    e = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert float(loss(e, torch.tensor([0, 1])).detach()) == pytest.approx(0.5 * (25.0 + 0.0) / 2)


def test_validation_map_at_k_is_the_reported_map_on_a_hand_computed_case() -> None:
    # The figure --select val_map10 picks by is `cbmir eval`'s mAP@10: the mean of P@1..P@k (seed 003).
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    # labels 0 0 1 1: every query's one relevant image is at rank 1 -> (1 + 1/2 + 1/3) / 3
    assert map_at_k(e, torch.tensor([0, 0, 1, 1]), k=3) == pytest.approx(11 / 18)
    # labels 0 1 0 1: queries 0 and 2 find theirs at rank 3 -> 1/9; queries 1 and 3 at rank 2 -> 5/18
    assert map_at_k(e, torch.tensor([0, 1, 0, 1]), k=3) == pytest.approx(7 / 36)


def test_validation_is_stratified_grouped_and_seed_fixed() -> None:
    labels = ["a"] * 20 + ["b"] * 20
    groups = [f"p{i // 2}" for i in range(40)]  # two images per patient
    mask = carve_validation(labels, groups, 0.2, seed=1)
    assert (mask == carve_validation(labels, groups, 0.2, seed=1)).all()
    assert mask[:20].sum() == mask[20:].sum() == 4
    assert all(mask[i] == mask[i + 1] for i in range(0, 40, 2))
    folds = assign_groups(labels, groups, 5, seed=0)
    assert sorted(set(folds.values())) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(tiny_config(tmp_path_factory.mktemp("ce") / "run"), progress=False)


def test_checkpoint_round_trip_through_embedding_model_load(ce_run: TrainResult, tmp_path: Path) -> None:
    from cbmir.services.embedding import EmbeddingModel

    result = ce_run
    assert result.epochs_run == 1 and result.best_path.is_file()
    model = EmbeddingModel.load("efficientnet_lite0", weights=str(result.best_path), precision="fp32")
    assert model.classes == ["0", "1"]
    assert model.identity.architecture == "efficientnet_lite0+ce1280" and model.dim == 1280
    assert model.preprocessing.input_size == 64
    images = [np.random.default_rng(i).random((28, 28), dtype=np.float32) for i in range(5)]
    embedding, probabilities = model.embed_and_predict(images)
    assert embedding.shape == (5, 1280) and probabilities.shape == (5, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embedding, model.embed(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities, model.predict(images), rtol=1e-5, atol=1e-6)
    calls = []
    model.module.register_forward_hook(lambda *_: calls.append(1))
    model.embed_and_predict(images)
    assert len(calls) == 1  # one pass gives both
    saved = read_raw(result.best_path)
    assert saved["format"] == "cbmir-checkpoint/1" and saved["training"]["data"]["train_images"] == 17
    assert "resume" not in saved  # best.pt is what is served: no optimizer state
    # The identity follows the file: another checkpoint (here, resaved with a changed record) -> another model_id.
    saved["training"]["note"] = "changed"
    other = tmp_path / "other.pt"
    torch.save(saved, other)
    assert EmbeddingModel.load("efficientnet_lite0", weights=str(other), precision="fp32").model_id != model.model_id


def test_wrong_backbone_checkpoint_is_refused_with_the_fix(ce_run: TrainResult) -> None:
    from cbmir.services.embedding import EmbeddingModel, WeightsError

    result = ce_run
    with pytest.raises(WeightsError, match=r"trained on backbone efficientnet_lite0, not resnet18: pass --backbone "
                                           r"efficientnet_lite0"):
        EmbeddingModel.load("resnet18", weights=str(result.best_path))


def test_same_seed_runs_are_identical_and_resume_continues_from_the_saved_epoch(tmp_path: Path) -> None:
    # Metric loss: also covers the projection head, center-loss state and triplet mining through a resume.
    straight = train(tiny_config(tmp_path / "straight", epochs=2, loss="metric", embedding_dim=16), progress=False)
    config = tiny_config(tmp_path / "interrupted", epochs=2, loss="metric", embedding_dim=16)
    first = train(config, progress=False, stop_after=1)
    assert [h["epoch"] for h in first.history] == [1]
    assert first.history[0]["train_loss"] == straight.history[0]["train_loss"]  # same seed, same epoch 1
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, progress=False)
    with pytest.raises(ValueError, match="lr_head"):
        train(replace(config, lr_head=0.5), resume=True, progress=False)
    resumed = train(config, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    s1 = read_raw(straight.out_dir / "last.pt")["state_dict"]
    s2 = read_raw(resumed.out_dir / "last.pt")["state_dict"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # bit-identical to the run that was never interrupted
