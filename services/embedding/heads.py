"""Trained heads on a backbone (classifier, metric-learning projection) and the losses that train them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_KINDS: tuple[str, ...] = ("backbone", "projection")


class RetrievalNet(nn.Module):
    """Backbone + retrieval embedding + classifier; forward(x) -> (embedding, logits) in one pass.

    kind "backbone": the embedding is the backbone's pooled features (fine-tuned by cross-entropy) and the
    classifier sits on them. kind "projection": pooled features -> Linear -> BN -> ReLU -> Linear (seed 001's
    1024->512->512) gives `dim`-d vectors; the embedding is their L2-normalised form, the space the triplet and
    center losses shape, so COSINE, IP and L2 collections all rank them alike.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, kind: str = "backbone",
                 dim: int = 512, dropout: float = 0.2, frozen_blocks: int = 0) -> None:
        super().__init__()
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"unknown embedding kind {kind!r}; choose one of {', '.join(EMBEDDING_KINDS)}")
        if frozen_blocks and not is_blocked_efficientnet(backbone):
            raise ValueError("frozen blocks are for EfficientNet-style backbones (conv_stem, bn1, blocks); "
                             "use freeze_blocks=0 for this backbone")
        self.backbone = backbone
        self.kind = kind
        self.frozen_blocks = frozen_blocks
        self.feature_dim = feature_dim
        self.dim = feature_dim if kind == "backbone" else dim
        self.projection: nn.Module | None = None
        if kind == "projection":
            self.projection = nn.Sequential(nn.Linear(feature_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                            nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.dim, num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen first layers (identity when nothing is frozen): what training computes once and caches."""
        if not self.frozen_blocks:
            return x
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        for block in b.blocks[: self.frozen_blocks]:
            x = block(x)
        return x

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk output -> pooled features."""
        if not self.frozen_blocks:
            return self.backbone(x)
        b = self.backbone
        for block in b.blocks[self.frozen_blocks:]:
            x = block(x)
        return b.global_pool(b.bn2(b.conv_head(x)))

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features -> (embedding, logits)."""
        if self.projection is None:
            return features, self.classifier(self.dropout(features))
        z = self.projection(features)
        return F.normalize(z.float(), dim=1), self.classifier(self.dropout(z))

    def trainable_backbone_parameters(self) -> list[nn.Parameter]:
        if not self.frozen_blocks:
            return list(self.backbone.parameters())
        b = self.backbone
        frozen = {id(p) for m in (b.conv_stem, b.bn1, *b.blocks[: self.frozen_blocks]) for p in m.parameters()}
        return [p for p in b.parameters() if id(p) not in frozen]

    def head_parameters(self) -> list[nn.Parameter]:
        mods = [self.classifier] + ([self.projection] if self.projection is not None else [])
        return [p for m in mods for p in m.parameters()]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.tail(self.trunk(x)))


def is_blocked_efficientnet(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"))


# ---------------------------------------------------------------------------------------------- losses


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances; the clamp keeps the gradient finite on the zero diagonal (sqrt'(0) is inf)."""
    sq = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017): for each anchor its farthest positive and nearest negative
    within the batch; anchors without a positive or a negative in the batch are left out (0 if none is left)."""
    d = pairwise_distances(embeddings.float())
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    hardest_pos = d.masked_fill(~positive, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(same, float("inf")).amin(1)
    valid = positive.any(1) & (~same).any(1)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): half the mean squared distance of each embedding to its class center;
    the centers are parameters learnt with the head."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(num_classes, dim))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (embeddings.float() - self.centers[labels]).pow(2).sum(1).mean()
