"""Test-time augmentation end to end: `ingest --tta` stores mirrored-and-averaged vectors, serve follows it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import EmbeddingModel, ModelIdentity, decode_image, image_id
from cbmir.services.embedding.id_salt import read_default_salt
from cbmir.services.embedding.model import TTA_SUFFIX
from cbmir.services.flags import load_model_for
from cbmir.services.store import MilvusStore

COLLECTION = "tta"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_tta_ingest_stores_the_vectors_a_tta_model_computes_and_serve_picks_tta(
        ray_local: None, breastmnist_png_archive: Path, tmp_path: Path) -> None:
    uri = str(tmp_path / "tta.db")
    report = run_ingestion(IngestConfig(source=str(breastmnist_png_archive), milvus_uri=uri, collection=COLLECTION,
                                        split="train", limit=8, batch_size=4, report_path=None, progress=False,
                                        tta=True))
    assert report.ingested == 8
    store = MilvusStore(uri)
    try:
        identity = ModelIdentity.from_json(store.model_identity_json(COLLECTION))
        assert identity.architecture.endswith(TTA_SUFFIX)

        # serve/search load the model from the flags; a TTA collection turns TTA on without --tta.
        flags = argparse.Namespace(backbone="efficientnet_lite0", weights=None, random_init=False, device="cpu",
                                   precision="auto", tta=False)
        served = load_model_for(flags, store, COLLECTION)
        assert served.tta and served.model_id == identity.model_id

        plain = EmbeddingModel.load("efficientnet_lite0")
        image = sorted((breastmnist_png_archive / "images").glob("train_*.png"))[0]
        decoded = decode_image(image.read_bytes())
        key = image_id(decoded.content_key, read_default_salt())  # the deployment's salt keyed them
        stored = np.asarray(store.get_rows(COLLECTION, [key])[key]["embedding"], dtype=np.float32)
        with_tta = served.embed([decoded.pixels])[0]
        mirrored = plain.embed([decoded.pixels[:, ::-1].copy()])[0]
        assert _cosine(stored, with_tta) > 0.999
        # The stored vector is the mean of the image's and its mirror's, not the plain one.
        expected = (plain.embed([decoded.pixels])[0] + mirrored) / 2
        assert _cosine(stored, expected) > 0.999
        assert _cosine(stored, plain.embed([decoded.pixels])[0]) < _cosine(stored, expected)
    finally:
        store.close()
