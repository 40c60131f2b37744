"""Sources: list a directory tree, a CSV manifest or a MedMNIST .npz as SourceItems, streamed (no pixels read)."""

from __future__ import annotations

import csv
import functools
import itertools
import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbmir.ingestion.config import LISTING_CHUNK_ITEMS, IngestConfig

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


@dataclass(frozen=True)
class SourceScan:
    """What a first pass over a source learned (kind, root, dataset, item count); lists the items on demand.

    Each `iter_items` / `iter_chunks` is a fresh pass in the same order, holding one chunk at a time, so an
    archive of 10^7 files is never a list in memory. The source must not change while it is being ingested.
    """

    root: Path | str  # a folder, or the DICOMweb root URL of a PACS
    kind: str  # "directory" | "manifest" | "npz" | "dicomweb"
    dataset: str
    count: int  # items after the split filter and the limit
    items: Callable[[], Iterator[SourceItem]] = field(repr=False)

    def iter_items(self) -> Iterator[SourceItem]:
        listed = 0
        for item in itertools.islice(self.items(), self.count):
            listed += 1
            yield item
        if listed != self.count:
            # Files deleted between the counting pass and this one: the run goes on with what is there.
            log.warning("listed %d items of the %d counted in %s: did the source change?", listed, self.count,
                        self.root)

    def iter_chunks(self, chunk_size: int = LISTING_CHUNK_ITEMS) -> Iterator[list[SourceItem]]:
        """The items in consecutive chunks of `chunk_size` (the last may be shorter): chunk i = items i*B..(i+1)*B."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        items = self.iter_items()
        while chunk := list(itertools.islice(items, chunk_size)):
            yield chunk


def scan_source(config: IngestConfig) -> SourceScan:
    """Check and count `config.source` (split filter and limit applied) without holding its items."""
    from cbmir.ingestion.dicomweb import is_dicomweb_source, scan_dicomweb

    if is_dicomweb_source(config.source):
        return scan_dicomweb(config)
    if config.study or config.since or config.modality:
        raise SourceError("--study, --since and --modality select instances on a PACS: the source must be "
                          "dicomweb+http://host:port/dicom-web")
    path = Path(config.source).expanduser()
    if not path.exists():
        raise SourceError(f"source not found: {config.source} (pass a directory of images, a CSV manifest, or "
                          f"a MedMNIST .npz)")
    manifest = Path(config.manifest).expanduser() if config.manifest else None
    items: Callable[[], Iterator[SourceItem]]
    if path.is_file() and path.suffix.lower() == ".npz":
        kind, root, dataset = "npz", path.parent, path.stem
        layout = _npz_layout(path, config.split)  # raises on a file that is not MedMNIST-shaped
        count = sum(layout.values())
        items = functools.partial(iter_npz, path, config.split)
    elif path.is_file() and path.suffix.lower() == ".csv":
        kind, root, dataset = "manifest", path.parent, path.parent.resolve().name
        items = functools.partial(iter_manifest, path, config.image_column, config.label_column, config.split)
        count = _count(items(), config.limit)
    elif path.is_dir():
        root, dataset = path, path.resolve().name
        if manifest is None and (path / DEFAULT_MANIFEST).is_file():
            manifest = path / DEFAULT_MANIFEST
        if manifest is not None:
            kind = "manifest"
            items = functools.partial(iter_manifest, manifest, config.image_column, config.label_column,
                                      config.split, root=path)
            count = _count(items(), config.limit)
        else:
            if config.split is not None:
                raise SourceError(f"--split {config.split} needs a manifest with a '{SPLIT_COLUMN}' column; "
                                  f"{path} has no {DEFAULT_MANIFEST} (pass --manifest)")
            kind = "directory"
            # The class folder depends on the whole tree, so the first pass walks all of it (counting, no paths).
            count, class_depth, dicom = scan_directory(path)
            if class_depth is not None and dicom and config.folder_labels == "auto":
                log.info("%s holds DICOM: its folders are taken for patients or studies, not classes, so rows "
                         "carry no label (label them with --manifest, or pass --folder-labels on)", path)
            if config.folder_labels == "off" or (dicom and config.folder_labels == "auto"):
                class_depth = None
            items = functools.partial(iter_directory, path, class_depth)
    else:
        raise SourceError(f"cannot ingest {config.source}: not a directory, a .csv manifest or an .npz file")
    if not count:
        wanted = f" in split {config.split!r}" if config.split is not None else ""
        raise SourceError(f"no images found{wanted} in {config.source} (looked for "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))} files and extensionless DICOM)")
    if config.limit is not None:
        count = min(count, config.limit)
    log.info("counted %d items in %s (%s)", count, config.source, kind)
    return SourceScan(root=root.resolve(), kind=kind, dataset=config.dataset or dataset, count=count, items=items)


def iter_source_chunks(config: IngestConfig, chunk_size: int | None = None) -> Iterator[list[SourceItem]]:
    """Every item of `config.source` in chunks of `chunk_size` (default `config.listing_chunk`), in order."""
    return scan_source(config).iter_chunks(chunk_size or config.listing_chunk)


def list_source(config: IngestConfig) -> SourceListing:
    """List every item of `config.source`, after the split filter and the limit (for callers that need them all)."""
    scan = scan_source(config)
    return SourceListing(root=scan.root, kind=scan.kind, dataset=scan.dataset, items=list(scan.iter_items()))


def _count(items: Iterator[SourceItem], limit: int | None) -> int:
    # Stops at the limit, but counts one item even with limit 0: an empty source is an error either way.
    stop = None if limit is None else max(limit, 1)
    return sum(1 for _ in itertools.islice(items, stop))


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


def _walk_images(root: Path) -> Iterator[tuple[Path, tuple[str, ...], list[str]]]:
    """(folder, its path parts below `root`, its image file names sorted) for each folder holding images, sorted.

    Holds one folder's names at a time (os.walk lists a folder whole): a flat folder of 10^7 files is ~1 GB.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        images = [f for f in sorted(filenames) if is_image_file(folder / f)]
        if images:
            yield folder, folder.relative_to(root).parts, images


def scan_directory(root: Path) -> tuple[int, int | None, bool]:
    """The number of images under `root`, the index of the class folder in their paths (None: no labels), and
    whether any of them is DICOM.

    Folder-per-class means: after the leading folders every file shares (e.g. `images/`), each file sits
    directly in one more folder, its class. Deeper trees (patient/study/series/file.dcm) carry no label.
    Found incrementally: the folders' common prefix and whether they all sit at the same depth.
    """
    count = 0
    common: tuple[str, ...] | None = None
    depth: int | None = None  # depth of every folder holding images; -1 once two differ
    dicom = False
    for _, parts, images in _walk_images(root):
        count += len(images)
        # Extensionless files are listed only with the DICOM preamble.
        dicom = dicom or any(Path(name).suffix.lower() in ("", ".dcm") for name in images)
        if common is None:
            common, depth = parts, len(parts)
            continue
        shared = 0
        while shared < min(len(common), len(parts)) and common[shared] == parts[shared]:
            shared += 1
        common = common[:shared]
        if depth != len(parts):
            depth = -1
    if common is None or depth is None or depth < 1:
        return count, None, dicom
    # Every image is at <common>/<class>/<file>: one folder below the shared ones.
    return count, (len(common) if len(common) == depth - 1 else None), dicom


def iter_directory(root: Path, class_depth: int | None = None) -> Iterator[SourceItem]:
    """Every image under `root`, sorted; label = the folder at `class_depth` (from `scan_directory`), else ""."""
    for folder, parts, images in _walk_images(root):
        label = parts[class_depth] if class_depth is not None else ""
        prefix = "/".join(parts)
        for name in images:
            yield SourceItem(uri=str((folder / name).resolve()), label=label,
                             name=f"{prefix}/{name}" if prefix else name)


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
    counts = _npz_layout(path, split)
    with np.load(path) as data:
        labels = {s: data[f"{s}_labels"] if f"{s}_labels" in data.files else None for s in counts}
    uri = str(path.resolve())
    for s, count in counts.items():
        for i in range(count):
            label = _npz_label(labels[s][i]) if labels[s] is not None else ""
            yield SourceItem(uri=uri, label=label, split=s, array_index=i, name=f"{path.name}#{s}/{i}")


def _npz_layout(path: Path, split: str | None) -> dict[str, int]:
    """Rows of each `{split}_images` array, sorted by split, read from the .npy headers (pixels stay packed)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise SourceError(f"cannot open {path} as an .npz (a zip of .npy arrays): {error}") from None
    with archive:
        arrays = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        splits = sorted(k[: -len("_images")] for k in arrays if k.endswith("_images"))
        if not splits:
            raise SourceError(f"{path} is not in MedMNIST layout: no '<split>_images' arrays "
                              f"(it holds {', '.join(arrays)})")
        if split is not None:
            if split not in splits:
                raise SourceError(f"{path} has no split {split!r} (it has {', '.join(splits)})")
            splits = [split]
        return {s: _npy_rows(archive, f"{s}_images.npy") for s in splits}


def _npy_rows(archive: zipfile.ZipFile, member: str) -> int:
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape = np.lib.format.read_array_header_1_0(handle)[0]
        elif version == (2, 0):
            shape = np.lib.format.read_array_header_2_0(handle)[0]
        else:  # no public header reader for this format version: load the array once
            handle.seek(0)
            shape = np.load(handle).shape
    return int(shape[0])


def _npz_label(value: np.ndarray | np.generic) -> str:
    """MedMNIST stores labels as (N,) or (N, 1) ints, multi-label sets as (N, k) 0/1 rows."""
    flat = np.asarray(value).reshape(-1)
    if flat.size == 1:
        return str(flat[0].item())
    return ",".join(str(v.item()) for v in flat)
