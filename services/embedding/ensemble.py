"""Seed 001's concatenated ensemble: several `cbmir train` checkpoints as one model (weights "A.pt+B.pt")."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ENSEMBLE_SEPARATOR = "+"
ENSEMBLE_PREFIX = "ensemble"


def ensemble_members(weights: str | None) -> list[str]:
    """The checkpoint paths of an ensemble weights string ("runs/a/best.pt+runs/b/best.pt"), or [] for one file.

    An existing file is always one model, so a path that happens to hold a "+" still loads as itself.
    """
    if not weights or ENSEMBLE_SEPARATOR not in weights or Path(weights).is_file():
        return []
    members = [part.strip() for part in weights.split(ENSEMBLE_SEPARATOR)]
    if len(members) < 2 or any(not m for m in members):
        raise ValueError(f"ensemble weights {weights!r} must name two or more checkpoints joined by "
                         f"'{ENSEMBLE_SEPARATOR}', e.g. runs/brain-ce/best.pt+runs/brain-metric/best.pt")
    return members


def ensemble_architecture(member_architectures: list[str]) -> str:
    """e.g. ensemble[efficientnet_lite0+ce1280|efficientnet_lite0+metric512]."""
    return f"{ENSEMBLE_PREFIX}[{'|'.join(member_architectures)}]"


def ensemble_digest(member_digests: list[str]) -> str:
    """One weights digest for the identity: order matters (it fixes which part of the vector is whose)."""
    return hashlib.sha256(":".join(member_digests).encode("ascii")).hexdigest()


class ConcatEnsemble(nn.Module):
    """forward(x) -> (concatenated unit embeddings / sqrt(members), log of the mean class probabilities).

    Each member's embedding is L2-normalised before concatenation so each weighs the same in a cosine or L2
    search whatever its dim; the 1/sqrt(n) keeps the whole vector unit length. Returning the log of the averaged
    probabilities as logits means a softmax downstream gives back exactly that average (probability averaging,
    not logit averaging, so one over-confident member cannot dominate).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.scale = 1.0 / math.sqrt(len(members))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, probabilities = [], []
        for member in self.members:
            embedding, logits = member(x)
            embeddings.append(F.normalize(embedding.float(), dim=1))
            probabilities.append(torch.softmax(logits.float(), dim=1))
        mean_probability = torch.stack(probabilities).mean(0)
        return torch.cat(embeddings, dim=1) * self.scale, torch.log(mean_probability.clamp_min(1e-12))


def check_compatible(checkpoints: list[Any]) -> None:
    """Members must see the same pixels and predict the same classes in the same order."""
    first = checkpoints[0]
    for other in checkpoints[1:]:
        for what in ("backbone", "input_size", "classes"):
            if getattr(other, what) != getattr(first, what):
                raise ValueError(f"ensemble members disagree on {what}: {first.path} has {getattr(first, what)!r}, "
                                 f"{other.path} has {getattr(other, what)!r} (train them on the same data with the "
                                 "same --backbone and --input-size)")
