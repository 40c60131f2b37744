"""Seed 001's concatenated ensemble: two trained checkpoints load as one model, and disagreeing ones are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cbmir.services.embedding import BACKBONES, EmbeddingModel, WeightsError
from cbmir.services.embedding.checkpoint import build_net, checkpoint_dict, save_checkpoint
from cbmir.services.embedding.ensemble import ensemble_members

IMAGES = [np.full((40, 50), v, dtype=np.float32) for v in (0.1, 0.5, 0.9)]


def _checkpoint(directory: Path, kind: str, dim: int, classes: list[str], input_size: int = 64,
                seed: int = 0) -> Path:
    net = build_net(BACKBONES["efficientnet_lite0"], num_classes=len(classes), kind=kind, dim=dim, frozen_blocks=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # heads differ between members, as after two trainings
        for p in net.head_parameters():
            torch.nn.init.normal_(p, std=0.5)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "best.pt"
    save_checkpoint(path, checkpoint_dict(net, "efficientnet_lite0", input_size, classes, {"seed": seed}))
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    ce = _checkpoint(root / "ce", "backbone", 1280, ["a", "b", "c"], seed=1)
    metric = _checkpoint(root / "metric", "projection", 32, ["a", "b", "c"], seed=2)
    return ce, metric


def test_ensemble_concatenates_unit_embeddings_and_averages_probabilities(members: tuple[Path, Path]) -> None:
    ce_path, metric_path = members
    ce = EmbeddingModel.load(weights=str(ce_path), precision="fp32")
    metric = EmbeddingModel.load(weights=str(metric_path), precision="fp32")
    ensemble = EmbeddingModel.load(weights=f"{ce_path}+{metric_path}", precision="fp32")

    assert ensemble.dim == 1280 + 32 and ensemble.classes == ["a", "b", "c"]
    assert ensemble.identity.architecture == "ensemble[efficientnet_lite0+ce1280|efficientnet_lite0+metric32]"
    vectors, probabilities = ensemble.embed_and_predict(IMAGES)
    ce_vectors, ce_probabilities = ce.embed_and_predict(IMAGES)
    metric_vectors, metric_probabilities = metric.embed_and_predict(IMAGES)

    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    unit_ce = ce_vectors / np.linalg.norm(ce_vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors[:, :1280] * np.sqrt(2), unit_ce, atol=1e-5)
    np.testing.assert_allclose(vectors[:, 1280:] * np.sqrt(2), metric_vectors, atol=1e-5)
    np.testing.assert_allclose(probabilities, (ce_probabilities + metric_probabilities) / 2, atol=1e-5)
    assert not np.allclose(ce_probabilities, metric_probabilities, atol=1e-3)  # the average is not trivial


def test_member_order_is_part_of_the_identity(members: tuple[Path, Path]) -> None:
    a, b = members
    forward = EmbeddingModel.load(weights=f"{a}+{b}", precision="fp32")
    backward = EmbeddingModel.load(weights=f"{b}+{a}", precision="fp32")
    single = EmbeddingModel.load(weights=str(a), precision="fp32")
    assert len({forward.model_id, backward.model_id, single.model_id}) == 3


def test_members_with_other_classes_or_input_size_are_refused(members: tuple[Path, Path], tmp_path: Path) -> None:
    ce, _ = members
    other_classes = _checkpoint(tmp_path / "classes", "backbone", 1280, ["a", "b", "z"])
    other_size = _checkpoint(tmp_path / "size", "backbone", 1280, ["a", "b", "c"], input_size=96)
    with pytest.raises(WeightsError, match="disagree on classes"):
        EmbeddingModel.load(weights=f"{ce}+{other_classes}")
    with pytest.raises(WeightsError, match="disagree on input_size"):
        EmbeddingModel.load(weights=f"{ce}+{other_size}")


def test_a_plain_state_dict_or_a_missing_file_is_not_an_ensemble_member(members: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    ce, _ = members
    plain = tmp_path / "plain.pt"
    torch.save(BACKBONES["efficientnet_lite0"].build().state_dict(), plain)
    with pytest.raises(WeightsError, match="not a `cbmir train` checkpoint"):
        EmbeddingModel.load(weights=f"{ce}+{plain}")
    with pytest.raises(WeightsError, match="ensemble member not found"):
        EmbeddingModel.load(weights=f"{ce}+{tmp_path / 'missing.pt'}")


def test_ensemble_strings_parse_and_an_existing_file_with_a_plus_stays_one_model(tmp_path: Path) -> None:
    assert ensemble_members(None) == [] and ensemble_members("runs/a/best.pt") == []
    assert ensemble_members("runs/a/best.pt+runs/b/best.pt") == ["runs/a/best.pt", "runs/b/best.pt"]
    with pytest.raises(ValueError, match="two or more checkpoints"):
        ensemble_members("runs/a/best.pt+")
    odd = tmp_path / "a+b.pt"
    odd.write_bytes(b"x")
    assert ensemble_members(str(odd)) == []
