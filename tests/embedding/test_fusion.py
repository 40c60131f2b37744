"""Inference fusion: batch norms folded into their convolutions, with the backbone's outputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.backbones import build_timm_efficientnet_lite0
from cbmir.services.embedding.fusion import fuse_for_inference


def _with_running_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with the non-trivial statistics and affine terms a trained network has (a fresh one's are
    mean 0, variance 1, weight 1, bias 0, which folding would hardly change)."""
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
            bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return module.eval()


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_efficientnet_lite0_loses_every_batch_norm_and_keeps_its_outputs() -> None:
    original = _with_running_statistics(build_timm_efficientnet_lite0())
    assert _count(original, nn.BatchNorm2d) == 49

    fused = fuse_for_inference(original, 224)

    assert fused is not original
    assert _count(fused, nn.BatchNorm2d) == 0
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(original(x), fused(x), atol=1e-4, rtol=1e-3)
        # Any input size (feature maps at other scales): a fold does not depend on it.
        other = torch.randn(2, 3, 161, 190, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(original(other), fused(other), atol=1e-4, rtol=1e-3)
    assert _count(original, nn.BatchNorm2d) == 49  # the original is left as it was


def test_a_convolution_whose_output_also_feeds_a_residual_keeps_its_batch_norm() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # folding bn into conv would change the second use of y

    original = _with_running_statistics(Residual())

    fused = fuse_for_inference(original, 16)

    assert fused is original  # the fold changed the output: the module runs as it was
    assert isinstance(original.bn, nn.BatchNorm2d)


def test_a_batch_norm_before_its_convolution_is_not_folded() -> None:
    pre_activation = _with_running_statistics(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1)))

    assert fuse_for_inference(pre_activation, 8) is pre_activation
    parameterless = nn.Sequential(nn.ReLU())
    assert fuse_for_inference(parameterless, 8) is parameterless


def test_the_fp32_model_is_fused_and_embeds_as_the_unfused_backbone_does(monkeypatch: pytest.MonkeyPatch) -> None:
    images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(4)]
    model = EmbeddingModel.load(backbone="efficientnet_lite0", precision="fp32", num_threads=1)
    assert _count(model.module, nn.BatchNorm2d) == 0
    vectors = model.embed(images)

    monkeypatch.setattr("cbmir.services.embedding.model.fuse_for_inference", lambda module, _: module)
    unfused = EmbeddingModel.load(backbone="efficientnet_lite0", precision="fp32", num_threads=1)
    assert _count(unfused.module, nn.BatchNorm2d) == 49
    expected = unfused.embed(images)

    assert model.identity == unfused.identity  # the same model to the store: its vectors did not move
    cosine = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.99999
    assert np.allclose(vectors, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("precision", ["bf16"])
def test_reduced_precision_models_are_not_fused(precision: str) -> None:
    # Folding would move bf16/fp16 rounding, and with it the vectors of collections written at that precision.
    model = EmbeddingModel.load(backbone="efficientnet_lite0", precision=precision, num_threads=1)
    assert _count(model.module, nn.BatchNorm2d) == 49
