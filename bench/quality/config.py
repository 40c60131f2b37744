"""One evaluated configuration: model, metric, index, prefilter, re-ranking; its name and its collection's name."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cbmir.services.query.soft_prefilter import SOFT_SIMILARITY_WEIGHT
from cbmir.services.store import INDEX_TYPES, METRICS

DEFAULT_OUT = Path("results/quality")
DEFAULT_DB = "results/quality/quality.db"
HOG = "hog"  # backbone name of the seed-003 HOG-alone baseline (brute-force L1, no Milvus)
PREFILTERS = ("off", "predicted", "soft")
K_RECIPROCAL = "kreciprocal"  # label-free re-ranking of the hits by their stored vectors
RERANKS = ("", HOG, K_RECIPROCAL)


@dataclass(frozen=True)
class EvalConfig:
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # a state_dict or a `cbmir train` checkpoint
    metric: str = "COSINE"
    index: str = "HNSW"
    prefilter: str = "off"  # "predicted": restrict to the class the model's head predicts (S3); "soft": rank
    # the plausible classes' hits by p(label) + similarity (services/query/soft_prefilter.py)
    rerank: str = ""  # "hog": retrieve k_prep by CNN, re-order by HOG L1 (S4); "kreciprocal": by neighbourhoods
    k_prep: int = 10
    method: str = ""  # the seed method this reproduces (S1, S3, S4 …); derived when empty
    # Cross-fitting (leave-one-patient-out with trained models): a glob or a path with "{fold}" naming one
    # `cbmir train --folds K --fold i` checkpoint per fold; each fold's model only answers its held-out patients.
    cross_fit: str = ""
    loss: str = ""  # the checkpoint's training loss ("ce" -> S3, "metric" -> S2), filled in by the runner
    tta: bool = False  # index and queries embedded over the image and its mirror (seed 001's test-time augmentation)
    query_expansion: int = 0  # αQE over the first n hits (label-free; services/query/expansion.py), 0: off
    # prefilter "soft": the similarity's weight beside p(label); None becomes the engine's default, so a record
    # always names the weight it ran with
    soft_weight: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.index not in INDEX_TYPES:
            raise ValueError(f"unknown index {self.index!r}: choose one of {', '.join(INDEX_TYPES)}")
        if self.prefilter not in PREFILTERS:
            raise ValueError(f"unknown prefilter {self.prefilter!r}: choose one of {', '.join(PREFILTERS)}")
        if self.rerank not in RERANKS:
            raise ValueError(f"unknown rerank {self.rerank!r}: choose one of {', '.join(map(repr, RERANKS))}")
        if self.k_prep < 1:
            raise ValueError(f"k_prep must be >= 1, got {self.k_prep}")
        if self.is_hog_alone and (self.prefilter != "off" or self.rerank):
            raise ValueError("the HOG-alone baseline takes no prefilter and no re-ranking")
        if self.query_expansion < 0 or (self.is_hog_alone and self.query_expansion):
            raise ValueError("query_expansion is a number of CNN hits >= 0 (not for the HOG-alone baseline)")
        if self.soft_weight is not None and self.prefilter != "soft":
            raise ValueError("soft_weight is the soft prefilter's: pass it with prefilter 'soft'")
        if self.prefilter == "soft" and self.soft_weight is None:
            object.__setattr__(self, "soft_weight", SOFT_SIMILARITY_WEIGHT)  # frozen: set once, here
        if self.cross_fit and self.weights:
            raise ValueError("pass either weights (one model) or cross_fit (one model per fold), not both")

    @property
    def is_hog_alone(self) -> bool:
        return self.backbone == HOG

    def method_label(self) -> str:
        if self.method:
            return self.method
        if self.is_hog_alone:
            return "S4 HOG"
        trained = bool(self.weights or self.cross_fit)
        if trained:
            # seed 001's concatenated ensemble is part of S2's recipe
            seed = {"ce": "S3", "metric": "S2", "ensemble": "S2 ensemble"}.get(self.loss, "trained")
            parts = [seed + (" cross-fit" if self.cross_fit else "")]
            if self.prefilter == "predicted":
                parts.append("+prefilter")
            elif self.prefilter == "soft":
                parts.append("+soft prefilter")
            if self.rerank:
                parts.append(self._rerank_label())
            if self.tta:
                parts.append("+TTA")
            return " ".join(parts) + self._qe_label()
        if self.rerank == K_RECIPROCAL:
            return "S1 " + self._rerank_label() + (" +TTA" if self.tta else "") + self._qe_label()
        if self.rerank:
            return "S4 CNN+HOG" + (" +TTA" if self.tta else "") + self._qe_label()
        return "S1" + (" +TTA" if self.tta else "") + self._qe_label()

    def _rerank_label(self) -> str:
        return f"+k-reciprocal{self.k_prep}" if self.rerank == K_RECIPROCAL else "+HOG"

    def _qe_label(self) -> str:
        return f" +αQE{self.query_expansion}" if self.query_expansion else ""

    def name(self, weights_tag: str = "") -> str:
        """Directory name under results/quality/<dataset>/: readable and unique per configuration."""
        if self.is_hog_alone:
            return "hog-l1-bruteforce"
        trained = self.weights or self.cross_fit
        parts = [self.backbone, weights_tag or ("imagenet" if not trained else "weights"),
                 self.metric.lower(), self.index.lower()]
        if self.prefilter != "off":
            parts.append(f"prefilter-{self.prefilter}")
        if self.rerank:
            parts.append(f"rerank-{self.rerank}-k{self.k_prep}")
        if self.tta:
            parts.append("tta")
        if self.soft_weight is not None:
            parts.append(f"w{self.soft_weight:g}")
        if self.query_expansion:
            parts.append(f"qe{self.query_expansion}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def collection_name(dataset: str, label_column: str, split: str | None, model_id: str, metric: str,
                    index: str) -> str:
    """One collection per (dataset, label, split, model, metric, index): runs are cached and never mixed."""
    raw = f"q_{dataset}_{label_column}_{split or 'all'}_{model_id}_{metric}_{index}".lower()
    return re.sub(r"[^a-z0-9_]", "_", raw)
