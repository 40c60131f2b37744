"""The soft class prefilter: search every class the classifier finds plausible, rank hits by p(label) + similarity.

A hard prefilter searches only the predicted class, so a wrong prediction leaves no right answer in the list and
mAP@k is capped at the classifier's accuracy. Here each class with p >= SOFT_MIN_PROBABILITY is searched (the label
is the partition key: one partition per class), and a hit ranks by

    p(query is of the hit's label) + SOFT_SIMILARITY_WEIGHT * its similarity, scaled so that the closest candidate
    of all is 1 and the SOFT_REFERENCE_RANK-th closest is 0

so a confident prediction still puts its class first, while an unsure one lets the closest images of the runner-up
class in among them. The scaling makes the rule the same for every metric (COSINE, IP, L2), and the same for any
top_k: each class offers at least SOFT_REFERENCE_RANK candidates, so a shorter list is a prefix of a longer one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the store's modules import pymilvus; `cbmir eval`'s parser reads the constants below
    from cbmir.services.store import Hit

# Classes under this probability are not searched: a class that unlikely has its images ranked under the whole
# top 10 of a likelier one anyway, unless the weight below is over ~1.
SOFT_MIN_PROBABILITY = 0.05
# How much the similarity counts beside the class probability; chosen once across the four shared sets, never per
# set (docs/quality.md, "The soft prefilter's weight"): weights 0 and 0.25 are within 0.6 points of mAP@10 on every
# set (leave-one-set-out picks 0 three times, 0.25 once), larger ones cost up to 6 points. 0.25 is the smallest
# weight that still lets a far closer image of an unsure runner-up class into the first ten, the soft prefilter's
# point; at 0 the predicted class always comes first, the others after it.
SOFT_SIMILARITY_WEIGHT = 0.25
# Never more partitions than this per query, whatever the head's spread: each is one more search.
SOFT_MAX_CLASSES = 3
# The similarity scale: 1 at the closest candidate, 0 at this rank (the usual length of a result list).
SOFT_REFERENCE_RANK = 10


def plausible_classes(probabilities: np.ndarray, classes: Sequence[str],
                      min_probability: float = SOFT_MIN_PROBABILITY,
                      max_classes: int = SOFT_MAX_CLASSES) -> dict[str, float]:
    """The classes to search, most probable first: the predicted one always, others at >= min_probability."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")[:max_classes]
    chosen = {classes[int(i)]: float(probabilities[int(i)]) for i in order
              if int(i) == int(order[0]) or probabilities[int(i)] >= min_probability}
    return chosen


def fuse(hits_per_class: Mapping[str, Sequence[Hit]], probability_of: Mapping[str, float],
         weight: float = SOFT_SIMILARITY_WEIGHT, reference_rank: int = SOFT_REFERENCE_RANK) -> list[Hit]:
    """The candidates of every searched class in one list, best fused score first (ties: higher similarity).

    Each class's list must hold its best `reference_rank` hits (or all it has) for the scale to be the same
    whatever the length of the lists."""
    from cbmir.services.store.schema import LABEL

    candidates: dict[str, Hit] = {}
    for hits in hits_per_class.values():
        for hit in hits:
            candidates.setdefault(hit.id, hit)
    if not candidates:
        return []
    hits = list(candidates.values())
    scores = np.array([h.score for h in hits], dtype=np.float64)
    ranked = np.sort(scores)[::-1]
    best, reference = ranked[0], ranked[min(reference_rank, len(ranked)) - 1]
    similarity = (scores - reference) / (best - reference) if best > reference else np.ones_like(scores)
    prior = np.array([probability_of.get(h.fields.get(LABEL, ""), 0.0) for h in hits], dtype=np.float64)
    fused = prior + weight * similarity
    order = np.lexsort((-scores, -fused))  # last key first: fused score, then similarity
    return [hits[i] for i in order]
