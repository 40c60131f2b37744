"""Reliability fixtures: a small real collection (real model, real Milvus Lite) and a throwaway PKI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pki import Pki, make_pki  # tests/reliability is on sys.path (pytest's rootdir-less "prepend" import mode)

from cbmir.services.embedding import EmbeddingModel, decode_array, image_id
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.store import MilvusStore, choose_index

COLLECTION = "reliability"
FIGURES_ENV = "CBMIR_RELIABILITY_FIGURES"  # a directory: tests write their measured figures there as JSON
ROWS = 40


@dataclass
class Corpus:
    store: MilvusStore
    model: EmbeddingModel
    ids: list[str]
    images: list[np.ndarray]  # uint8 HxW, the stored images

    def engine(self, **kwargs) -> RetrievalEngine:
        return RetrievalEngine(self.store, self.model, COLLECTION, **kwargs)


def build_collection(uri: str, model: EmbeddingModel, rows: int = ROWS) -> tuple[list[str], list[np.ndarray]]:
    """Embed `rows` real BreastMNIST images with the real model and upsert them (no Ray: the point is the service)."""
    from cbmir.ingestion.samples import BREASTMNIST_SUBSET

    data = np.load(BREASTMNIST_SUBSET)
    images = [data["train_images"][i] for i in range(rows)]
    labels = [["malignant", "normal_benign"][int(data["train_labels"][i].reshape(-1)[0])] for i in range(rows)]
    decoded = [decode_array(image) for image in images]
    vectors = model.embed([d.pixels for d in decoded])
    store = MilvusStore(uri)
    store.ensure_collection(COLLECTION, model.identity.to_json(), model.dim, choose_index("HNSW", "COSINE"))
    ids = [image_id(d.content_key) for d in decoded]
    empty = dict.fromkeys(("predicted_label", "modality", "body_part", "view", "model_id"), "")
    store.upsert(COLLECTION, [{**empty, "id": i, "embedding": v.tolist(), "label": label, "source": f"train/{n}.png",
                               "dataset": "breastmnist"}
                              for n, (i, v, label) in enumerate(zip(ids, vectors, labels, strict=True))])
    store.flush(COLLECTION)
    return ids, images


def record_figures(name: str, values: dict) -> None:
    """Print the figures a test measured, and keep them as JSON in $CBMIR_RELIABILITY_FIGURES when set."""
    print(f"\n{name}: {json.dumps(values)}")
    directory = os.environ.get(FIGURES_ENV)
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{name}.json").write_text(json.dumps(values, indent=2) + "\n")


@pytest.fixture(scope="session")
def reliability_model() -> EmbeddingModel:
    return EmbeddingModel.load("efficientnet_lite0")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, reliability_model: EmbeddingModel) -> Iterator[Corpus]:
    uri = str(tmp_path_factory.mktemp("reliability") / "cbmir.db")
    ids, images = build_collection(uri, reliability_model)
    store = MilvusStore(uri)
    yield Corpus(store, reliability_model, ids, images)
    store.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
