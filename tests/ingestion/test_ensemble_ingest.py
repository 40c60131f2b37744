"""A concatenated ensemble goes through the Ray pipeline like any model: its vectors land in Milvus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import BACKBONES, EmbeddingModel, ModelIdentity, decode_image, image_id
from cbmir.services.embedding.checkpoint import build_net, checkpoint_dict, save_checkpoint
from cbmir.services.embedding.id_salt import read_default_salt
from cbmir.services.store import MilvusStore


def _checkpoint(path: Path, kind: str, dim: int) -> str:
    net = build_net(BACKBONES["efficientnet_lite0"], num_classes=2, kind=kind, dim=dim, frozen_blocks=6)
    save_checkpoint(path, checkpoint_dict(net, "efficientnet_lite0", 64, ["0", "1"], {"seed": 0}))
    return str(path)


def test_ensemble_ingest_stores_the_concatenated_vectors(ray_local: None, breastmnist_png_archive: Path,
                                                         tmp_path: Path) -> None:
    weights = "+".join([_checkpoint(tmp_path / "ce.pt", "backbone", 1280),
                        _checkpoint(tmp_path / "metric.pt", "projection", 16)])
    uri = str(tmp_path / "ens.db")
    report = run_ingestion(IngestConfig(source=str(breastmnist_png_archive), milvus_uri=uri, collection="ens",
                                        split="train", limit=6, batch_size=4, report_path=None, progress=False,
                                        weights=weights, precision="fp32"))
    assert report.ingested == 6 and report.failed == 0
    model = EmbeddingModel.load(weights=weights, precision="fp32")
    store = MilvusStore(uri)
    try:
        identity = ModelIdentity.from_json(store.model_identity_json("ens"))
        assert identity == model.identity and identity.dim == 1296
        image = sorted((breastmnist_png_archive / "images").glob("train_*.png"))[0]
        decoded = decode_image(image.read_bytes())
        key = image_id(decoded.content_key, read_default_salt())  # the deployment's salt keyed them
        stored = np.asarray(store.get_rows("ens", [key])[key]["embedding"], dtype=np.float32)
        np.testing.assert_allclose(stored, model.embed([decoded.pixels])[0], atol=1e-4)
    finally:
        store.close()
