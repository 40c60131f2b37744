"""Real embeddings for the bench: embed a labelled image folder (labels.csv: image,label[,split]) with a backbone."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def embed_folder(root: str | Path, out: str | Path, backbone: str = "efficientnet_lite0", limit: int = 500,
                 seed: int = 0, batch_size: int = 32) -> Path:
    """Embed up to `limit` images (a seeded sample across labels) and save `embeddings` + `labels` to an .npz."""
    from cbmir.services.embedding import EmbeddingModel, decode_image

    root = Path(root)
    manifest = root / "labels.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"no labels.csv in {root} (expected columns image,label)")
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), size=min(limit, len(rows)), replace=False))]
    model = EmbeddingModel.load(backbone)
    vectors, labels = [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        images = [decode_image((root / r["image"]).read_bytes()).pixels for r in batch]
        vectors.append(model.embed(images))
        labels += [r["label"] for r in batch]
        log.info("embedded %d/%d", start + len(batch), len(rows))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, embeddings=np.concatenate(vectors).astype(np.float32), labels=np.array(labels))
    return out
