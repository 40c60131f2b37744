"""Evaluation datasets: where the images are, which column is the label, the protocol, and who is the patient."""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.sources import DEFAULT_MANIFEST, SourceItem, SourceListing, list_source

SPLIT = "split"
LEAVE_ONE_PATIENT_OUT = "leave-one-patient-out"
PROTOCOLS = (SPLIT, LEAVE_ONE_PATIENT_OUT)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SAMPLES = Path(__file__).resolve().parents[2] / "ingestion" / "samples"


UNLABELLED_VALUES: tuple[str, ...] = ("", "?", "unknown", "NA")


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled archive and how to score retrieval on it."""

    name: str  # results/quality/<name>/…, and part of every collection name
    source: str  # a directory with labels.csv, a CSV manifest, or a MedMNIST .npz
    label_column: str = "label"
    protocol: str = SPLIT
    index_split: str | None = "train"  # SPLIT: what is ingested; LOPO: None = every image
    query_split: str | None = "test"
    group_column: str = ""  # manifest column naming the patient; LOPO excludes the query's whole group
    # Label cells that say "no label" (compared case-insensitively; an empty cell always counts): such images
    # are indexed and may come back as hits, but are never a query and never relevant.
    unlabelled_values: tuple[str, ...] = UNLABELLED_VALUES

    def is_unlabelled(self, label: str) -> bool:
        marker = label.strip().casefold()
        return not marker or marker in {v.strip().casefold() for v in self.unlabelled_values}

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        if self.protocol == SPLIT and (not self.index_split or not self.query_split):
            raise ValueError("the split protocol needs an index split and a query split (--index-split, "
                             "--query-split)")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def ingest_split(self) -> str | None:
        return self.index_split if self.protocol == SPLIT else self.index_split or None

    def listing(self, split: str | None) -> SourceListing:
        return list_source(IngestConfig(source=self.source, label_column=self.label_column, split=split,
                                        report_path=None))

    def groups(self) -> dict[str, str]:
        """Store `source` (path relative to the archive root) → patient id; empty without a group column.

        Read here, from the manifest, and never written to Milvus: the store holds no patient identifiers.
        """
        if not self.group_column:
            return {}
        manifest = Path(self.source)
        if manifest.is_dir():
            manifest = manifest / DEFAULT_MANIFEST
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if self.group_column not in (reader.fieldnames or []):
                raise ValueError(f"manifest {manifest} has no column {self.group_column!r} "
                                 f"(columns: {', '.join(reader.fieldnames or [])}); pass --group-column")
            return {Path((row.get("image") or "").strip()).as_posix(): (row.get(self.group_column) or "").strip()
                    for row in reader if (row.get("image") or "").strip()}


PRESETS: dict[str, DatasetSpec] = {
    "brain-mri": DatasetSpec("brain-mri", str(SHARED_DATA / "brain-mri"), "label", SPLIT, "train", "test"),
    "mias-tissue": DatasetSpec("mias-tissue", str(SHARED_DATA / "mias"), "tissue", LEAVE_ONE_PATIENT_OUT,
                               None, None, "patient_id"),
    "mias-severity": DatasetSpec("mias-severity", str(SHARED_DATA / "mias"), "severity", LEAVE_ONE_PATIENT_OUT,
                                 None, None, "patient_id"),
    "breastmnist-subset": DatasetSpec("breastmnist-subset", str(SAMPLES / "breastmnist_subset.npz"), "label",
                                      SPLIT, "train", "test"),
    # The whole MedMNIST sets of shared/data (28x28): the official train split indexed, test queries it.
    "breastmnist": DatasetSpec("breastmnist", str(SHARED_DATA / "medmnist" / "breastmnist.npz"), "label", SPLIT,
                               "train", "test"),
    "pneumoniamnist": DatasetSpec("pneumoniamnist", str(SHARED_DATA / "medmnist" / "pneumoniamnist.npz"), "label",
                                  SPLIT, "train", "test"),
}


def image_bytes(item: SourceItem) -> bytes:
    """The bytes a client would send for this item: the file, or a lossless PNG of an npz row."""
    if item.array_index is None:
        return Path(item.uri).read_bytes()
    from PIL import Image

    pixels = _npz_split(item.uri, str(item.split))[item.array_index]
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_item(item: SourceItem, input_size: int = 0) -> np.ndarray:
    """Decoded pixels of an item by the same functions ingestion's reader uses; with `input_size`, already
    resized to it as the read tasks and the query service do (`decode_resized` / `presize`)."""
    from cbmir.services.embedding import decode_array, decode_image, decode_resized, presize

    if item.array_index is None:
        data = Path(item.uri).read_bytes()
        return decode_resized(data, input_size).pixels if input_size else decode_image(data).pixels
    decoded = decode_array(_npz_split(item.uri, str(item.split))[item.array_index])
    return presize(decoded.pixels, input_size, decoded.metadata["bits"]) if input_size else decoded.pixels


@functools.lru_cache(maxsize=8)
def _npz_split(path: str, split: str) -> np.ndarray:
    with np.load(path) as data:
        return data[f"{split}_images"]
