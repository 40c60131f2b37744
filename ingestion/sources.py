"""Sources: turn a directory tree, a CSV manifest or a MedMNIST .npz into a list of SourceItems (no pixels read)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ingestion.config import IngestConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".tif", ".tiff", ".bmp", ".dcm"})
DEFAULT_MANIFEST = "labels.csv"
# Manifest columns copied into the store besides the label. Everything else (patient ids, dates, free text)
# stays out: the store holds no identifying data.
METADATA_COLUMNS: tuple[str, ...] = ("modality", "body_part", "view", "dataset")
SPLIT_COLUMN = "split"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


class SourceError(ValueError):
    """The source cannot be listed: missing, empty, or a manifest without the columns it needs."""


@dataclass(frozen=True)
class SourceItem:
    """One image to ingest: a file (uri) or one row of an array file (uri + array_index)."""

    uri: str  # absolute path of the file holding the image
    label: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # only METADATA_COLUMNS keys
    split: str | None = None
    array_index: int | None = None  # row in the npz array `{split}_images`
    name: str = ""  # what the store's `source` field says: path relative to the archive root, or npz#split/i


@dataclass(frozen=True)
class SourceListing:
    """The items of one source, with what the report and the store say about the source as a whole."""

    root: Path
    kind: str  # "directory" | "manifest" | "npz"
    dataset: str
    items: list[SourceItem]


def list_source(config: IngestConfig) -> SourceListing:
    """List every item of `config.source`, after the split filter and the limit."""
    path = Path(config.source).expanduser()
    if not path.exists():
        raise SourceError(f"source not found: {config.source} (pass a directory of images, a CSV manifest, or "
                          f"a MedMNIST .npz)")
    manifest = Path(config.manifest).expanduser() if config.manifest else None
    if path.is_file() and path.suffix.lower() == ".npz":
        kind, root, items = "npz", path.parent, list(iter_npz(path, config.split))
        dataset = path.stem
    elif path.is_file() and path.suffix.lower() == ".csv":
        kind, root = "manifest", path.parent
        items = list(iter_manifest(path, config.image_column, config.label_column, config.split))
        dataset = root.resolve().name
    elif path.is_dir():
        root = path
        if manifest is None and (path / DEFAULT_MANIFEST).is_file():
            manifest = path / DEFAULT_MANIFEST
        if manifest is not None:
            kind = "manifest"
            items = list(iter_manifest(manifest, config.image_column, config.label_column, config.split,
                                       root=path))
        else:
            if config.split is not None:
                raise SourceError(f"--split {config.split} needs a manifest with a '{SPLIT_COLUMN}' column; "
                                  f"{path} has no {DEFAULT_MANIFEST} (pass --manifest)")
            kind, items = "directory", list(iter_directory(path))
        dataset = path.resolve().name
    else:
        raise SourceError(f"cannot ingest {config.source}: not a directory, a .csv manifest or an .npz file")
    if not items:
        wanted = f" in split {config.split!r}" if config.split is not None else ""
        raise SourceError(f"no images found{wanted} in {config.source} (looked for "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))} files and extensionless DICOM)")
    if config.limit is not None:
        items = items[: config.limit]
    log.info("listed %d items from %s (%s)", len(items), config.source, kind)
    return SourceListing(root=root.resolve(), kind=kind, dataset=config.dataset or dataset, items=items)


def is_image_file(path: Path) -> bool:
    """A known image extension, or an extensionless file with the DICOM preamble ("DICM" at byte 128)."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def iter_directory(root: Path) -> Iterator[SourceItem]:
    """Every image under `root`, sorted; label = class folder when the tree is folder-per-class, else ""."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(Path(dirpath) / f))
    relative = [f.relative_to(root) for f in files]
    class_depth = _class_folder_depth(relative)
    for path, rel in zip(files, relative, strict=True):
        label = rel.parts[class_depth] if class_depth is not None else ""
        yield SourceItem(uri=str(path.resolve()), label=label, name=rel.as_posix())


def _class_folder_depth(relative: list[Path]) -> int | None:
    """Index of the class folder in each path, or None when the tree is not folder-per-class.

    Folder-per-class means: after the leading folders every file shares (e.g. `images/`), each file sits
    directly in one more folder, its class. Deeper trees (patient/study/series/file.dcm) carry no label.
    """
    if not relative:
        return None
    common = 0
    first = relative[0].parts[:-1]
    while common < len(first) and all(len(p.parts) > common + 1 and p.parts[common] == first[common]
                                      for p in relative):
        common += 1
    if all(len(p.parts) == common + 2 for p in relative):
        return common
    return None


def iter_manifest(manifest: Path, image_column: str, label_column: str, split: str | None,
                  root: Path | None = None) -> Iterator[SourceItem]:
    """Rows of a CSV manifest; image paths are relative to the manifest's directory (or `root`)."""
    root = root if root is not None else manifest.parent
    if not manifest.is_file():
        raise SourceError(f"manifest not found: {manifest}")
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for needed, option in ((image_column, "--image-column"), (label_column, "--label-column")):
            if needed not in columns:
                raise SourceError(f"manifest {manifest} has no column {needed!r} (columns: {', '.join(columns)}); "
                                  f"pass {option}")
        if split is not None and SPLIT_COLUMN not in columns:
            raise SourceError(f"--split {split} needs a '{SPLIT_COLUMN}' column, manifest {manifest} has "
                              f"{', '.join(columns)}")
        copied = [c for c in METADATA_COLUMNS if c in columns]
        for row in reader:
            row_split = (row.get(SPLIT_COLUMN) or "").strip() or None
            if split is not None and row_split != split:
                continue
            relative = (row.get(image_column) or "").strip()
            if not relative:
                continue
            path = (root / relative).resolve()
            metadata = {c: (row.get(c) or "").strip() for c in copied if (row.get(c) or "").strip()}
            yield SourceItem(uri=str(path), label=(row.get(label_column) or "").strip(), metadata=metadata,
                             split=row_split, name=Path(relative).as_posix())


def iter_npz(path: Path, split: str | None) -> Iterator[SourceItem]:
    """One item per row of `{split}_images` (MedMNIST layout); label = the class index as text."""
    with np.load(path) as data:
        splits = sorted(k[: -len("_images")] for k in data.files if k.endswith("_images"))
        if not splits:
            raise SourceError(f"{path} is not in MedMNIST layout: no '<split>_images' arrays "
                              f"(it holds {', '.join(data.files)})")
        if split is not None:
            if split not in splits:
                raise SourceError(f"{path} has no split {split!r} (it has {', '.join(splits)})")
            splits = [split]
        labels = {s: data[f"{s}_labels"] if f"{s}_labels" in data.files else None for s in splits}
        counts = {s: data[f"{s}_images"].shape[0] for s in splits}
    uri = str(path.resolve())
    for s in splits:
        for i in range(counts[s]):
            label = _npz_label(labels[s][i]) if labels[s] is not None else ""
            yield SourceItem(uri=uri, label=label, split=s, array_index=i, name=f"{path.name}#{s}/{i}")


def _npz_label(value: np.ndarray | np.generic) -> str:
    """MedMNIST stores labels as (N,) or (N, 1) ints, multi-label sets as (N, k) 0/1 rows."""
    flat = np.asarray(value).reshape(-1)
    if flat.size == 1:
        return str(flat[0].item())
    return ",".join(str(v.item()) for v in flat)
