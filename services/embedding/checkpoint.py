"""The cbmir training checkpoint: one torch.save dict that EmbeddingModel.load(weights=PATH) turns into a model.

    {"format": "cbmir-checkpoint/1", "backbone": "efficientnet_lite0", "input_size": 192,
     "state_dict": {...RetrievalNet...}, "embedding": {"kind": "backbone"|"projection", "dim": 1280|512},
     "frozen_blocks": 3, "classes": ["glioma_tumor", ...],
     "training": {"config": {...}, "seed": 0, "epochs": 7, "best_epoch": 5, "metrics": {...}, "history": [...],
                  "data": {"digest": sha256, ...}},
     "resume": {...optimizer, scheduler, epoch...}}        # only in last.pt, what --resume needs

Everything in it is tensors, numbers, strings, lists and dicts, so it loads with torch.load(weights_only=True):
a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cbmir.services.embedding.backbones import BackboneSpec
from cbmir.services.embedding.heads import EMBEDDING_KINDS, RetrievalNet

CHECKPOINT_FORMAT = "cbmir-checkpoint/1"
_FORMAT_PREFIX = "cbmir-checkpoint/"


class CheckpointError(ValueError):
    """Not a readable cbmir checkpoint (model.py re-raises it as WeightsError)."""


@dataclass(frozen=True)
class TrainedCheckpoint:
    """The parts of a checkpoint a model needs; `raw` keeps the rest (training record, resume state)."""

    path: str
    backbone: str
    input_size: int
    kind: str
    dim: int
    classes: list[str]
    frozen_blocks: int
    state_dict: dict[str, torch.Tensor]
    raw: dict[str, Any]

    @property
    def architecture(self) -> str:
        """e.g. efficientnet_lite0+metric512 (projection head) or efficientnet_lite0+ce1280 (fine-tuned pool)."""
        return f"{self.backbone}+{'metric' if self.kind == 'projection' else 'ce'}{self.dim}"


def checkpoint_dict(net: RetrievalNet, backbone: str, input_size: int, classes: list[str],
                    training: Mapping[str, Any], resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "backbone": backbone, "input_size": int(input_size),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "embedding": {"kind": net.kind, "dim": int(net.dim)}, "frozen_blocks": int(net.frozen_blocks),
        "classes": list(classes), "training": dict(training),
    }
    if resume is not None:
        out["resume"] = dict(resume)
    return out


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a truncated best.pt behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(checkpoint), tmp)
    os.replace(tmp, path)


def read_raw(path: str | Path) -> Any:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def is_checkpoint_object(obj: Any) -> bool:
    return isinstance(obj, Mapping) and str(obj.get("format", "")).startswith(_FORMAT_PREFIX)


def parse_checkpoint(obj: Mapping[str, Any], path: str) -> TrainedCheckpoint:
    fmt = obj.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {fmt!r}; this cbmir reads {CHECKPOINT_FORMAT} "
                              "(retrain with this version's `cbmir train`)")
    try:
        embedding = obj["embedding"]
        kind, dim = str(embedding["kind"]), int(embedding["dim"])
        ckpt = TrainedCheckpoint(
            path=path, backbone=str(obj["backbone"]), input_size=int(obj["input_size"]), kind=kind, dim=dim,
            classes=[str(c) for c in obj["classes"]], frozen_blocks=int(obj.get("frozen_blocks", 0)),
            state_dict=dict(obj["state_dict"]), raw=dict(obj))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete: {type(exc).__name__}: {exc}") from exc
    if kind not in EMBEDDING_KINDS:
        raise CheckpointError(f"checkpoint {path} has embedding kind {kind!r}; known: {', '.join(EMBEDDING_KINDS)}")
    if not ckpt.classes:
        raise CheckpointError(f"checkpoint {path} names no classes")
    return ckpt


def build_net(spec: BackboneSpec, num_classes: int, kind: str, dim: int, frozen_blocks: int) -> RetrievalNet:
    """An untrained RetrievalNet on a freshly built backbone (seeded, so every process builds the same)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = spec.build()
        return RetrievalNet(backbone, spec.dim, num_classes, kind=kind, dim=dim, frozen_blocks=frozen_blocks)


def net_from_checkpoint(ckpt: TrainedCheckpoint, spec: BackboneSpec) -> RetrievalNet:
    net = build_net(spec, len(ckpt.classes), ckpt.kind, ckpt.dim, ckpt.frozen_blocks)
    try:
        net.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit {spec.name}: {' '.join(first)}") from exc
    if net.dim != ckpt.dim:
        raise CheckpointError(f"checkpoint {ckpt.path} says dim {ckpt.dim} but its head gives {net.dim}")
    return net
