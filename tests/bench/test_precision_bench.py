"""`cbmir bench precision` on a tiny real archive: every (archive, query) precision pair scored, paired to its own."""

from __future__ import annotations

import pytest

from cbmir.bench.quality.datasets import PRESETS
from cbmir.bench.quality.precision import precision_grid, precision_markdown, precision_table


def test_every_precision_pair_is_scored_with_a_paired_difference() -> None:
    record = precision_grid(PRESETS["breastmnist-subset"], limit=24, resamples=200, progress=False)
    cells = {(c["archive"], c["queries"]): c for c in record["cells"]}
    assert set(cells) == {(a, q) for a in ("fp32", "bf16", "fp16") for q in ("fp32", "bf16", "fp16")}
    for (archive, queries), cell in cells.items():
        assert 0.0 <= cell["mAP@10"]["ci_low"] <= cell["mAP@10"]["mean"] <= cell["mAP@10"]["ci_high"] <= 1.0
        if archive == queries:
            assert cell["delta_mAP@10_vs_same"]["mean"] == 0.0 and cell["queries_changed"] == 0
    # CPU autocast really runs: fp16 vectors are close to fp32 but not the same, bf16 further away.
    fp16, bf16 = record["cosine_to_fp32"]["fp16"], record["cosine_to_fp32"]["bf16"]
    assert fp16["min"] > 0.999 and fp16["mean"] < 1.0
    assert bf16["mean"] < fp16["mean"]
    assert "fp16" in precision_table(record)
    assert precision_markdown({"datasets": [record]}).count("| breastmnist-subset") == 9


def test_unknown_data_set_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.cli import main

    with pytest.raises(SystemExit, match="unknown data set nope"):
        main(["bench", "precision", "nope"])
