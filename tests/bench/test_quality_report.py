"""docs/quality.md: the best-vs-seeds verdicts, method labels, and the hand-written notes that survive --report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from cbmir.bench.quality.config import EvalConfig
from cbmir.bench.quality.prefilter_cap import cap_rows
from cbmir.bench.quality.record import SCHEMA
from cbmir.bench.quality.report import NOTES_BEGIN, NOTES_END, best_vs_seeds, seed_method, write_report
from cbmir.bench.quality.runner import _loss_of, weights_label
from cbmir.services.query.soft_prefilter import SOFT_SIMILARITY_WEIGHT


def _record(dataset: str, method: str, name: str, mean: float, low: float, high: float) -> dict:
    figure = {"mean": mean, "ci_low": low, "ci_high": high, "n": 100}
    return {"schema": SCHEMA, "dataset": {"name": dataset, "label_column": "label"}, "protocol": "split",
            "method": method, "config_name": name, "config": {"metric": "COSINE", "index": "FLAT"},
            "queries": 100, "index_size": 400, "class_counts": {"index": {"a": 200, "b": 200}, "queries": {"a": 50,
                                                                                                          "b": 50}},
            "figures": {k: figure for k in ("P@1", "P@5", "P@10", "mAP@10", "NDCG@10", "R@10", "mAP")},
            "per_class": {}, "pngs": [], "notes": []}


def test_method_labels_name_the_seed_each_trained_configuration_reproduces() -> None:
    assert EvalConfig(weights="w.pt", loss="ce").method_label() == "S3"
    assert EvalConfig(weights="w.pt", loss="ce", prefilter="predicted").method_label() == "S3 +prefilter"
    assert EvalConfig(weights="w.pt", loss="metric", prefilter="predicted", rerank="hog").method_label() == \
        "S2 +prefilter +HOG"
    assert EvalConfig(cross_fit="r/f{fold}/best.pt", loss="ce").method_label() == "S3 cross-fit"
    assert seed_method({"method": "S3 cross-fit +prefilter"}) == "S3 +prefilter"
    assert seed_method({"method": "S2 +prefilter +HOG"}) == ""  # a combination, not a seed baseline
    ensemble = EvalConfig(weights="runs/ce/best.pt+runs/metric/best.pt", loss="ensemble")
    assert ensemble.method_label() == "S2 ensemble" and seed_method({"method": "S2 ensemble"}) == "S2 ensemble"
    assert seed_method({"method": replace(ensemble, prefilter="predicted").method_label()}) == ""
    assert weights_label("runs/ce/best.pt+runs/metric/best.pt") == "ce+metric"
    assert _loss_of("ensemble[efficientnet_lite0+ce1280|efficientnet_lite0+metric512]") == "ensemble"


def test_best_vs_seeds_checks_margin_and_ci_overlap() -> None:
    records = [_record("d", "S1", "s1", 0.70, 0.68, 0.72), _record("d", "S4 HOG", "hog", 0.80, 0.78, 0.82),
               _record("d", "S2 +prefilter +HOG", "best", 0.84, 0.81, 0.87)]
    text = "\n".join(best_vs_seeds({"d": records}))
    assert "| S1 | `s1` | 0.700 [0.680, 0.720] | +14.0 | no | yes |" in text
    assert "| S4 HOG | `hog` | 0.800 [0.780, 0.820] | +4.0 | yes | **no** |" in text
    assert "beats 1 of 2 seed methods" in text


def test_report_keeps_the_hand_written_notes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for i, record in enumerate([_record("brain-mri", "S1", "s1", 0.7, 0.68, 0.72)]):
        (out / "brain-mri" / f"c{i}").mkdir(parents=True)
        (out / "brain-mri" / f"c{i}" / "record.json").write_text(json.dumps(record))
    docs = tmp_path / "quality.md"
    text = write_report(out, docs).read_text()
    assert "(no notes yet)" in text and "mAP@10 ≥ 0.90: **not met**" in text
    docs.write_text(text.replace("(no notes yet)", "- tried X: 0.81, did not help"))
    text = write_report(out, docs).read_text()
    assert f"{NOTES_BEGIN}\n- tried X: 0.81, did not help\n{NOTES_END}" in text


def test_report_regenerated_without_results_keeps_every_archived_figure(tmp_path: Path) -> None:
    out, docs = tmp_path / "results", tmp_path / "docs" / "quality.md"
    old = {**_record("brain-mri", "S1", "s1", 0.70, 0.68, 0.72), "created": "2026-01-01T00:00:00+00:00",
           "per_query": {"query": ["q1"]}}
    (out / "brain-mri" / "s1").mkdir(parents=True)
    (out / "brain-mri" / "s1" / "record.json").write_text(json.dumps(old))
    write_report(out, docs)
    archived = tmp_path / "docs" / "records" / "quality" / "brain-mri" / "s1.json"
    assert "per_query" not in json.loads(archived.read_text())  # slim: the per-query lists stay in results/

    # Another machine: no results/ at all, and one new record; both figures are on the page.
    other = tmp_path / "elsewhere"
    new = {**_record("brain-mri", "S2", "s2", 0.80, 0.78, 0.82), "created": "2026-02-01T00:00:00+00:00"}
    (other / "brain-mri" / "s2").mkdir(parents=True)
    (other / "brain-mri" / "s2" / "record.json").write_text(json.dumps(new))
    text = write_report(other, docs).read_text()
    assert "| brain-mri | S1 | s1 |" in text and "| brain-mri | S2 | s2 |" in text

    # A re-run of a configuration replaces its archived figures (the newest record wins).
    rerun = {**_record("brain-mri", "S1", "s1", 0.75, 0.73, 0.77), "created": "2026-03-01T00:00:00+00:00"}
    (other / "brain-mri" / "s1").mkdir(parents=True)
    (other / "brain-mri" / "s1" / "record.json").write_text(json.dumps(rerun))
    text = write_report(other, docs).read_text()
    assert "0.750 [0.730, 0.770]" in text and "0.700 [0.680, 0.720]" not in text
    assert json.loads(archived.read_text())["figures"]["mAP@10"]["mean"] == 0.75


def test_copied_figures_of_the_best_row_survive_a_report_on_a_machine_without_its_pngs(tmp_path: Path) -> None:
    from cbmir.bench.quality.report import FIGURES_OF, copy_best_figures

    png = tmp_path / "results" / "pr_curve.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG fake")
    best = {**_record("brain-mri", "S3", "best", 0.9, 0.88, 0.92), "pngs": [str(png)]}
    docs = tmp_path / "docs"
    copy_best_figures({"brain-mri": [best]}, docs)
    copied = docs / "figures" / "quality" / "brain-mri"
    assert (copied / "pr_curve.png").read_bytes() == b"\x89PNG fake"
    assert (copied / FIGURES_OF).read_text().strip() == "best"

    png.unlink()  # another machine: the record is archived, its PNGs are not there
    kept = copy_best_figures({"brain-mri": [best]}, docs)
    assert kept["brain-mri"] == [copied / "pr_curve.png"] and (copied / "pr_curve.png").is_file()

    # A new best row without PNGs: the old row's figures would mislabel it, so they go.
    other = {**_record("brain-mri", "S2", "better", 0.95, 0.93, 0.97), "pngs": []}
    assert copy_best_figures({"brain-mri": [best, other]}, docs)["brain-mri"] == []
    assert not (copied / "pr_curve.png").exists()
    assert (copied / FIGURES_OF).read_text().strip() == "better"


def test_a_prefilter_that_only_echoes_the_majority_class_is_flagged_and_never_the_best_row() -> None:
    from cbmir.bench.quality.report import best_row, majority_floor, observations

    def row(method: str, name: str, mean: float, low: float, high: float, prefilter: str = "off") -> dict:
        r = _record("mias-severity", method, name, mean, low, high)
        r["class_counts"]["queries"] = {"normal": 64, "benign": 20, "malignant": 16}
        r["config"]["prefilter"] = prefilter
        return r

    hog = row("S4 HOG", "hog", 0.48, 0.45, 0.51)
    echo = row("S3 +prefilter", "echo", 0.64, 0.60, 0.68, prefilter="predicted")  # CI reaches 0.64
    learned = row("S3 +prefilter", "learned", 0.75, 0.70, 0.80, prefilter="predicted")
    assert majority_floor(hog) == 0.64
    assert best_row([hog, echo]) is hog and best_row([hog, echo, learned]) is learned
    assert any("commonest class" in line and "`echo`" in line for line in observations([hog, echo, learned]))


def test_the_prefilter_cap_table_pairs_hard_and_soft_and_survives_the_archive(tmp_path: Path) -> None:
    queries = ["q1", "q2", "q3", "q4"]
    labels = ["a", "a", "b", "b"]
    predicted = ["a", "a", "b", "a"]  # q4 predicted wrongly: 3 of 4 right

    def prefilter_record(mode: str, name: str, per_query_map: list[float]) -> dict:
        r = _record("brain-mri", "S3 +prefilter" if mode == "predicted" else "S3 +soft prefilter", name,
                    float(np.mean(per_query_map)), 0.5, 0.99)
        r["config"].update(weights="runs/x/best.pt", prefilter=mode,
                           soft_weight=SOFT_SIMILARITY_WEIGHT if mode == "soft" else None)
        r["per_query"] = {"query": queries, "label": labels, "predicted_class": predicted, "mAP@10": per_query_map,
                          "P@10": per_query_map, "top10_sources": [[]] * 4}
        return r

    hard = prefilter_record("predicted", "hard", [1.0, 1.0, 1.0, 0.0])
    soft = prefilter_record("soft", "soft", [1.0, 0.9, 1.0, 0.4])
    unpaired = {**prefilter_record("soft", "lonely", [1.0] * 4)}
    unpaired["config"] = {**unpaired["config"], "weights": "runs/other/best.pt"}

    (row,) = cap_rows([hard, soft, unpaired], soft_weight=SOFT_SIMILARITY_WEIGHT)
    assert (row["accuracy"], row["wrong"]) == (0.75, 1)
    assert (row["hard"]["wrong"], row["soft"]["wrong"]) == (0.0, 0.4)
    assert row["hard"]["right"] == 1.0 and abs(row["soft"]["right"] - 2.9 / 3) < 1e-12

    out, docs = tmp_path / "results", tmp_path / "docs" / "quality.md"
    for r in (hard, soft):
        (out / "brain-mri" / r["config_name"]).mkdir(parents=True)
        (out / "brain-mri" / r["config_name"] / "record.json").write_text(json.dumps(r))
    write_report(out, docs)
    text = write_report(tmp_path / "nothing-here", docs).read_text()  # from the archive alone
    assert "| brain-mri | `soft` | 4 | 0.750 |" in text and "| 0.000 / 0.400 (1) |" in text
    assert (tmp_path / "docs" / "figures" / "quality" / "prefilter_cap.png").stat().st_size > 1000
    assert "](figures/quality/prefilter_cap.png)" in text


def test_the_soft_weight_is_chosen_on_the_other_sets_never_on_the_one_it_is_reported_on() -> None:
    from cbmir.bench.quality.prefilter_cap import leave_one_set_out

    scores = {"a": {0.5: 0.80, 1.0: 0.70}, "b": {0.5: 0.60, 1.0: 0.65}, "c": {0.5: 0.90, 1.0: 0.50, 2.0: 0.99}}
    records = []
    for dataset, by_weight in scores.items():
        for weight, value in by_weight.items():
            r = _record(dataset, "S3 +soft prefilter", f"{dataset}-{weight}", value, value - 0.05, value + 0.05)
            r["config"].update(prefilter="soft", soft_weight=weight)
            records.append(r)

    rows = {r["dataset"]: r for r in leave_one_set_out(records)}

    assert set(rows["a"]["by_weight"]) == {0.5, 1.0}  # 2.0 was not run on every set: it does not compete
    assert rows["a"]["chosen_weight"] == 0.5 and rows["a"]["map10"] == 0.80  # on b, c: 0.75 vs 0.575
    assert rows["b"]["chosen_weight"] == 0.5 and rows["b"]["map10"] == 0.60  # chosen on a, c although b prefers 1
    assert rows["c"]["chosen_weight"] == 0.5
