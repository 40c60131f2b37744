"""Cross-fitting: score leave-one-patient-out with trained models that never saw the query's patient.

`cbmir train --folds K --fold i --group-column patient_id` holds fold i's patients out of training (and records
them as `heldout_groups` in the checkpoint). Fold i's model embeds every image into its own collection, but only
fold i's held-out patients query it; the queries of all K folds are pooled for the figures and the
patient-resampled bootstrap. Every patient is then a query exactly once, answered by a model that was trained
without them — the only honest leave-one-patient-out figure for a model trained on the same archive.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from cbmir.bench.quality.datasets import LEAVE_ONE_PATIENT_OUT, DatasetSpec

FOLD_FIELD = "{fold}"


class CrossFitError(ValueError):
    """The fold checkpoints do not make a valid cross-fit for this dataset; the message says why."""


@dataclass(frozen=True)
class FoldModel:
    path: str
    fold: int
    folds: int
    heldout: frozenset[str]  # patient ids (manifest values) this model never trained or validated on
    label_column: str
    group_column: str
    source: str
    loss: str


def resolve_paths(pattern: str) -> list[str]:
    """A path with "{fold}" (filled with 0, 1, … while the file exists) or a glob, sorted."""
    if FOLD_FIELD in pattern:
        paths = []
        fold = 0
        while Path(pattern.replace(FOLD_FIELD, str(fold))).is_file():
            paths.append(pattern.replace(FOLD_FIELD, str(fold)))
            fold += 1
        return paths
    return sorted(glob.glob(pattern))


def read_fold(path: str) -> FoldModel:
    from cbmir.services.embedding.checkpoint import is_checkpoint_object, read_raw

    try:
        raw = read_raw(path)
    except Exception as error:  # torch.load raises many types on junk
        raise CrossFitError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not is_checkpoint_object(raw):
        raise CrossFitError(f"{path} is not a `cbmir train` checkpoint")
    training = raw.get("training") or {}
    config = training.get("config") or {}
    folds = int(config.get("folds") or 0)
    if folds < 2:
        raise CrossFitError(f"{path} was not trained with --folds K (K >= 2): it holds no patients out, so it "
                            "cannot score leave-one-patient-out honestly")
    heldout = (training.get("data") or {}).get("heldout_groups") or []
    return FoldModel(path=path, fold=int(config.get("fold", 0)), folds=folds,
                     heldout=frozenset(str(g).strip() for g in heldout),
                     label_column=str(config.get("label_column", "")), group_column=str(config.get("group_column")
                                                                                       or ""),
                     source=str(config.get("source", "")), loss=str(config.get("loss", "")))


def load_folds(pattern: str, spec: DatasetSpec, patients: dict[str, str], sources: list[str]) -> list[FoldModel]:
    """The fold models of `pattern`, checked against the dataset: one per fold 0..K-1, trained on this archive
    with this label and patient column, held-out patients disjoint and covering every image of the dataset.

    patients: image source -> patient id (the manifest); sources: every image the dataset queries with.
    """
    if spec.protocol != LEAVE_ONE_PATIENT_OUT:
        raise CrossFitError("cross-fitting scores the leave-one-patient-out protocol (the split protocol already "
                            "keeps the query split out of training)")
    paths = resolve_paths(pattern)
    if not paths:
        raise CrossFitError(f"no checkpoint matches {pattern!r} (a glob, or a path with {FOLD_FIELD})")
    models = sorted((read_fold(p) for p in paths), key=lambda m: m.fold)
    folds = {m.folds for m in models}
    if len(folds) != 1:
        raise CrossFitError(f"the checkpoints of {pattern!r} come from different --folds: {sorted(folds)}")
    k = folds.pop()
    found = [m.fold for m in models]
    if found != list(range(k)):
        raise CrossFitError(f"{pattern!r} gives folds {found}; a cross-fit needs each of 0..{k - 1} exactly once")
    for m in models:
        if m.label_column != spec.label_column:
            raise CrossFitError(f"{m.path} was trained on label {m.label_column!r}, this dataset scores "
                                f"{spec.label_column!r}")
        if m.group_column != spec.group_column:
            raise CrossFitError(f"{m.path} held out groups of column {m.group_column!r}, this dataset's patients "
                                f"are {spec.group_column!r}")
        if Path(m.source).resolve() != Path(spec.source).resolve():
            raise CrossFitError(f"{m.path} was trained on {m.source}, not on {spec.source}")
    seen: dict[str, int] = {}
    for m in models:
        for group in m.heldout:
            if group in seen:
                raise CrossFitError(f"patient {group!r} is held out by folds {seen[group]} and {m.fold}")
            seen[group] = m.fold
    uncovered = sorted({patient_of(s, patients) for s in sources} - set(seen))
    if uncovered:
        raise CrossFitError(f"{len(uncovered)} patients of the dataset are held out by no fold (e.g. "
                            f"{uncovered[:5]}): were the folds trained on this manifest?")
    return models


def patient_of(source: str, patients: dict[str, str]) -> str:
    """The group `cbmir train` used for an image: its manifest patient value, the image's own name if unlisted."""
    return patients[source].strip() if source in patients else source
