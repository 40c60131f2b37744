"""Cross-fitted leave-one-patient-out: fold i's model (trained without fold i's patients) answers only them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbmir.bench.quality.config import EvalConfig
from cbmir.bench.quality.crossfit import CrossFitError, load_folds, resolve_paths
from cbmir.bench.quality.datasets import LEAVE_ONE_PATIENT_OUT, DatasetSpec
from cbmir.bench.quality.runner import run_eval
from cbmir.training.trainer import TrainConfig, train

FOLDS = 2


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, patient_archive_writer) -> Path:
    """24 BreastMNIST images as PNGs, two per 'patient' (12), MIAS-like manifest (image, patient_id, tissue)."""
    # both images of a patient share the label, as both breasts of a woman share her density
    return patient_archive_writer(tmp_path_factory.mktemp("xfit-archive"), lambda i, _: f"class{(i // 2) % 2}",
                                 patient_prefix="p")


@pytest.fixture(scope="module")
def fold_runs(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cbmir train --split '' --group-column patient_id --folds 2 --fold i`, tiny (64 px, 1 epoch)."""
    runs = tmp_path_factory.mktemp("xfit-runs")
    for fold in range(FOLDS):
        train(TrainConfig(source=str(archive), out_dir=str(runs / f"tissue-f{fold}"), split=None,
                          label_column="tissue", group_column="patient_id", folds=FOLDS, fold=fold, input_size=64,
                          epochs=1, batch_size=4, views=1, val_fraction=0.2, precision="fp32", seed=1),
              progress=False)
    return runs


def _spec(archive: Path, label: str = "tissue") -> DatasetSpec:
    return DatasetSpec("xfit", str(archive), label, LEAVE_ONE_PATIENT_OUT, None, None, "patient_id")


def test_fold_checkpoints_are_checked_against_the_dataset(archive: Path, fold_runs: Path) -> None:
    spec = _spec(archive)
    patients = spec.groups()
    sources = sorted(patients)
    pattern = str(fold_runs / "tissue-f{fold}" / "best.pt")
    assert resolve_paths(pattern) == sorted(resolve_paths(str(fold_runs / "tissue-f*" / "best.pt")))
    folds = load_folds(pattern, spec, patients, sources)
    assert [f.fold for f in folds] == [0, 1]
    assert folds[0].heldout.isdisjoint(folds[1].heldout)
    assert folds[0].heldout | folds[1].heldout == {f"p{i}" for i in range(12)}
    with pytest.raises(CrossFitError, match="exactly once"):
        load_folds(str(fold_runs / "tissue-f1" / "best.pt"), spec, patients, sources)
    with pytest.raises(CrossFitError, match="trained on label 'tissue'"):
        load_folds(pattern, _spec(archive, "severity"), patients, sources)
    with pytest.raises(CrossFitError, match="no checkpoint"):
        load_folds(str(fold_runs / "nothing-*" / "best.pt"), spec, patients, sources)
    split_spec = DatasetSpec("xfit", str(archive), "tissue", "split", "train", "test")
    with pytest.raises(CrossFitError, match="leave-one-patient-out"):
        load_folds(pattern, split_spec, patients, sources)


def test_cross_fitted_eval_queries_each_image_once_with_the_model_that_never_saw_its_patient(
        ray_local: None, milvus_uri: str, tmp_path: Path, archive: Path, fold_runs: Path) -> None:
    spec = _spec(archive)
    pattern = str(fold_runs / "tissue-f{fold}" / "best.pt")
    patient = {f"images/img{i:02d}.png": f"p{i // 2}" for i in range(24)}
    for prefilter in ("off", "predicted"):
        record = run_eval(spec, EvalConfig(metric="COSINE", index="FLAT", cross_fit=pattern, prefilter=prefilter),
                          out_root=tmp_path, milvus_uri=milvus_uri, ks=[1, 5, 10], resamples=200, actors=1,
                          progress=False, tsne=False)
        assert record["queries"] == 24 and record["index_size"] == 24 and record["bootstrap"]["unit"] == "patient"
        assert record["config_name"].startswith("efficientnet_lite0-xfit2-tissue-")
        assert record["method"] == ("S3 cross-fit" if prefilter == "off" else "S3 cross-fit +prefilter")
        folds = record["cross_fit"]["folds"]
        assert len({f["collection"] for f in folds}) == FOLDS and len({f["model_id"] for f in folds}) == FOLDS
        assert sum(f["queries"] for f in folds) == 24
        assert all(f["queries"] == 2 * f["heldout_patients"] for f in folds)  # both images of each held-out woman
        per_query = record["per_query"]
        assert sorted(per_query["query"]) == sorted(patient)  # every image queries exactly once
        for query, sources in zip(per_query["query"], per_query["top10_sources"], strict=True):
            assert sources and all(patient[s] != patient[query] for s in sources)
    summary = record["prefilter"]
    assert summary["queries"] == 24 and summary["applied_fraction"] == 1.0  # stored ids: class from cbmir.ingestion
    assert set(per_query["predicted_class"]) <= {"class0", "class1"} and all(per_query["prefilter_applied"])
    # with the prefilter every hit of a query has the class its fold's model predicted for it
    labels = {f"images/img{i:02d}.png": f"class{(i // 2) % 2}" for i in range(24)}
    for sources, predicted in zip(per_query["top10_sources"], per_query["predicted_class"], strict=True):
        assert {labels[s] for s in sources} == {predicted}


def test_train_fold_all_trains_every_fold_and_prints_the_eval_that_scores_them(
        archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.cli import build_parser

    argv = ["train", str(archive), "--out", str(tmp_path / "xfit"), "--split", "", "--label-column", "tissue",
            "--group-column", "patient_id", "--folds", str(FOLDS), "--fold", "all", "--input-size", "64",
            "--epochs", "1", "--batch-size", "4", "--views", "1", "--val-fraction", "0.2", "--precision", "fp32",
            "--seed", "1", "--no-progress"]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0

    printed = capsys.readouterr().out
    pattern = str(tmp_path / "xfit" / "f{fold}" / "best.pt")
    assert f"--protocol leave-one-patient-out --label-column tissue --group-column patient_id " \
           f"--cross-fit '{pattern}'" in printed
    spec = _spec(archive)
    patients = spec.groups()
    folds = load_folds(pattern, spec, patients, sorted(patients))
    assert [f.fold for f in folds] == list(range(FOLDS))

    without_folds = build_parser().parse_args(["train", str(archive), "--out", str(tmp_path / "x"), "--fold", "all"])
    with pytest.raises(SystemExit, match="--folds K"):
        without_folds.func(without_folds)
