"""`cbmir bench features` on a tiny real archive: every pooling / size variant scored beside the default."""

from __future__ import annotations

import numpy as np
import pytest

from cbmir.bench.quality.datasets import PRESETS
from cbmir.bench.quality.features import embed_variants, feature_grid, feature_table


def test_every_variant_is_scored_with_a_paired_difference_to_the_default() -> None:
    record = feature_grid(PRESETS["breastmnist-subset"], sizes=(224, 256), limit=24, resamples=200, progress=False)
    cells = {c["variant"]: c for c in record["cells"]}
    assert set(cells) == {"avg224", "gem224", "avg256", "gem256", "multiscale-avg", "multiscale-gem", "clahe-avg224",
                          "padded-avg224", "dba3-avg224", "dba5-avg224"}
    assert record["default"] == "avg224"
    default = cells["avg224"]["delta_mAP@10_vs_default"]
    assert default["mean"] == 0.0 and default["ci_low"] == 0.0 == default["ci_high"]
    for cell in cells.values():
        assert 0.0 <= cell["mAP@10"]["ci_low"] <= cell["mAP@10"]["mean"] <= cell["mAP@10"]["ci_high"] <= 1.0
    assert "multiscale-gem" in feature_table(record)


def test_average_pooling_at_the_input_size_is_the_vector_ingest_stores() -> None:
    """The default variant must be what `cbmir ingest` stores, or every difference is measured against the wrong
    baseline; GeM and a larger input give other vectors."""
    from cbmir.bench.quality.datasets import decode_item
    from cbmir.services.embedding import EmbeddingModel

    items = PRESETS["breastmnist-subset"].listing("train").items[:6]
    vectors, size = embed_variants(items, sizes=(224, 288), progress=False)
    stored = EmbeddingModel.load("efficientnet_lite0").embed([decode_item(item, size) for item in items])
    cosine = np.sum(vectors["avg224"] * stored, 1) / (np.linalg.norm(vectors["avg224"], axis=1) *
                                                       np.linalg.norm(stored, axis=1))
    assert cosine.min() > 0.9999
    assert np.abs(vectors["gem224"] - vectors["avg224"]).max() > 1e-3
    assert np.abs(vectors["avg288"] - vectors["avg224"]).max() > 1e-3


def test_bad_sizes_and_unknown_data_sets_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.cli import main

    with pytest.raises(SystemExit, match="unknown data set nope"):
        main(["bench", "features", "nope"])
    with pytest.raises(SystemExit):
        main(["bench", "features", "breastmnist-subset", "--sizes", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_padding_keeps_the_aspect_and_clahe_stays_in_range() -> None:
    from cbmir.bench.quality.features import clahe, padded_square

    wide = np.full((2, 4), 255, dtype=np.uint8)
    square = padded_square(wide)
    assert square.shape == (4, 4) and square.dtype == np.float32
    assert square[1:3].min() == 1.0 and square[0].max() == 0.0 and square[3].max() == 0.0
    rgb = padded_square(np.zeros((6, 3, 3), dtype=np.uint8))
    assert rgb.shape == (6, 6, 3)
    ramp = np.tile(np.linspace(0, 60, 64, dtype=np.uint8), (64, 1))  # a dark, low-contrast image
    equalised = clahe(ramp)
    assert equalised.shape == ramp.shape and equalised.min() >= 0.0 and equalised.max() <= 1.0
    assert np.ptp(equalised) > np.ptp(ramp) / 255  # contrast stretched


def test_database_side_augmentation_pulls_each_vector_towards_its_neighbours() -> None:
    from cbmir.bench.quality.dba import augmented

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    x = np.concatenate([centres[0] + 0.3 * rng.normal(size=(5, 16)), centres[1] + 0.3 * rng.normal(size=(5, 16))])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(augmented(x, k=1), unit)  # only itself: unchanged
    out = augmented(x, k=5)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    centre = centres[0] / np.linalg.norm(centres[0])
    assert (out[:5] @ centre).mean() > (unit[:5] @ centre).mean()  # closer to its cluster than before


def test_excluded_rows_are_nobodys_neighbour() -> None:
    """Under leave-one-patient-out the query's patient is excluded: no indexed vector may carry its vectors."""
    from cbmir.bench.quality.dba import augmented

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6))
    excluded = np.zeros(8, dtype=bool)
    excluded[[2, 5]] = True
    with_query = augmented(x, k=3, excluded=excluded)
    moved = x.copy()
    moved[[2, 5]] = rng.normal(size=(2, 6)) * 100  # whatever the query's vectors are, the rest does not change
    assert np.allclose(augmented(moved, k=3, excluded=excluded)[~excluded], with_query[~excluded])
    assert np.allclose(with_query[excluded], x[excluded] / np.linalg.norm(x[excluded], axis=1, keepdims=True))
    assert not np.allclose(augmented(moved, k=3)[~excluded], augmented(x, k=3)[~excluded])  # the guard matters


def test_leave_one_patient_out_ranks_every_query_in_order_without_its_patient() -> None:
    from cbmir.bench.quality.dba import dba_rankings
    from cbmir.bench.quality.precision import exact_protocol

    protocol = exact_protocol(PRESETS["mias-tissue"], limit=30)
    vectors = np.random.default_rng(2).normal(size=(len(protocol.items), 8))
    rankings = dba_rankings(protocol, vectors, k=3)
    assert [r.query for r in rankings] == protocol.queries
    group_of = {i: protocol.index.by_id[i].group for i in protocol.ids}
    for ranking in rankings:
        assert ranking.hits[10] and all(group_of[h] != ranking.query.group for h in ranking.hits[10])
