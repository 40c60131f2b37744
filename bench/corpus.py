"""`cbmir bench corpus`: a clinical-size SPEED corpus (JPEG, 16-bit PNG, DICOM in four transfer syntaxes) built
from the real images on disk, upscaled; for timing decoders and ingestion, never for retrieval quality."""

from __future__ import annotations

import csv
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "format", "width", "height", "bits", "source")
# (width, height): chest radiographs and mammograms; every long side >= 2048 px, a quarter at 3328 x 4096
# (full-field digital mammography).
SIZES: tuple[tuple[int, int], ...] = ((2400, 3000), (3000, 2400), (2560, 3072), (3328, 4096))
NOISE_SIGMA = 0.001  # of full scale: detector-like grain, so the codecs do not see unrealistically smooth upscales
_JPEG_QUALITY = 90
# Whose turn it is for item i: i mod 5. Coprime with the 6 formats, so every dataset lands in every format.
DATASET_TURNS = ("mias", "brain-mri", "mias", "brain-mri", "pydicom")
_NOT_IMAGES = ("SEG", "RTDOSE", "RTSTRUCT", "RTPLAN")  # masks and dose grids: not pictures a radiologist reads


@dataclass(frozen=True)
class CorpusFormat:
    name: str
    suffix: str
    bits: int
    transfer_syntax: str = ""  # DICOM only


FORMATS: tuple[CorpusFormat, ...] = (
    CorpusFormat("jpeg", ".jpg", 8),
    CorpusFormat("png16", ".png", 16),
    CorpusFormat("dicom-explicit-le", ".dcm", 12, "1.2.840.10008.1.2.1"),
    CorpusFormat("dicom-jpeg-baseline", ".dcm", 8, "1.2.840.10008.1.2.4.50"),
    CorpusFormat("dicom-jpeg-ls-lossless", ".dcm", 12, "1.2.840.10008.1.2.4.80"),
    CorpusFormat("dicom-j2k-lossless", ".dcm", 12, "1.2.840.10008.1.2.4.90"),
)
FORMAT_NAMES = tuple(f.name for f in FORMATS)


@dataclass(frozen=True)
class SourceImage:
    """One real image the corpus upscales: where it is, its label, its dataset and the DICOM modality to claim."""

    path: str
    label: str
    dataset: str
    modality: str


@dataclass(frozen=True)
class CorpusItem:
    index: int
    relpath: str
    fmt: CorpusFormat
    width: int
    height: int
    source: SourceImage

    def manifest_row(self) -> dict[str, Any]:
        return {"path": self.relpath, "label": self.source.label, "format": self.fmt.name, "width": self.width,
                "height": self.height, "bits": self.fmt.bits,
                "source": f"{self.source.dataset}:{Path(self.source.path).name}"}


# -- what can be written here -----------------------------------------------------------------------------


def unavailable_formats() -> dict[str, str]:
    """{format name: why it cannot be written here} for DICOM syntaxes no installed encoder writes."""
    from pydicom.pixels import get_encoder

    out = {}
    for fmt in FORMATS:
        if fmt.name in ("jpeg", "png16", "dicom-explicit-le", "dicom-jpeg-baseline"):
            continue  # Pillow writes JPEG and PNG; uncompressed and encapsulated-JPEG DICOM need pydicom only
        encoder = get_encoder(fmt.transfer_syntax)
        if not encoder.is_available:
            missing = "; ".join(f"{k}: {', '.join(v)}" for k, v in encoder.missing_dependencies.items())
            out[fmt.name] = f"no installed pydicom encoder for {fmt.transfer_syntax} ({missing or 'none known'})"
    return out


# -- sources ------------------------------------------------------------------------------------------------


def list_sources(data: Path) -> list[SourceImage]:
    """MIAS mammograms (label: tissue), brain MRI (label), and the greyscale DICOM test files of pydicom
    (and of pydicom-data when installed; label: modality)."""
    sources: list[SourceImage] = []
    for dataset, column, modality in (("mias", "tissue", "MG"), ("brain-mri", "label", "MR")):
        labels = data / dataset / "labels.csv"
        if not labels.is_file():
            continue
        with open(labels, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                sources.append(SourceImage(str(data / dataset / row["image"]), row[column], dataset, modality))
    sources += _dicom_sources()
    return sources


def _dicom_files() -> list[Path]:
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:  # pydicom-data, when installed, holds more (and larger) real files
        import pydicom_data  # type: ignore[import-not-found]

        roots.append(Path(pydicom_data.__file__).parent)
    except ImportError:
        pass
    return sorted(p for root in roots for p in root.rglob("*.dcm"))


def _dicom_sources(min_side: int = 256) -> list[SourceImage]:
    """Single-sample DICOM test files of at least min_side a side whose pixels decode here (the test files
    include broken ones on purpose: their log lines and codec messages are silenced while we try them)."""
    import logging

    pydicom_log = logging.getLogger("pydicom")
    level, stderr_fd = pydicom_log.level, os.dup(2)
    pydicom_log.setLevel(logging.CRITICAL)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)  # openjpeg prints straight to fd 2
        try:
            return _try_dicom_sources(min_side)
        finally:
            os.dup2(stderr_fd, 2)
            os.close(stderr_fd)
            pydicom_log.setLevel(level)


def _try_dicom_sources(min_side: int) -> list[SourceImage]:
    import pydicom

    out = []
    for path in _dicom_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                if (int(ds.get("SamplesPerPixel", 1)) != 1 or min(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
                        < min_side or str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1",
                                                                                          "MONOCHROME2")):
                    continue
                _load_grey(str(path))
        except Exception:  # noqa: BLE001 - a test file this install cannot decode is simply not a source
            continue
        modality = str(ds.get("Modality", "") or "OT")
        if modality in _NOT_IMAGES:
            continue
        out.append(SourceImage(str(path), modality, "pydicom", modality))
    return out


def _load_grey(path: str) -> np.ndarray:
    """A source image as float32 greyscale in [0, 1] (first frame)."""
    if path.endswith(".dcm"):
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[0]
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


# -- the plan ----------------------------------------------------------------------------------------------


def plan(sources: list[SourceImage], count: int, seed: int, formats: tuple[CorpusFormat, ...] = FORMATS,
         ) -> list[CorpusItem]:
    """Item i: format i mod F, size (i div F) mod S, a source from the datasets in turn (DATASET_TURNS), each
    shuffled by the seed: any prefix covers every format and size, and the same seed gives the same files."""
    if not sources:
        raise ValueError("no source images found (pass --data DIR with mias/ or brain-mri/, or install pydicom)")
    rng = np.random.default_rng(seed)
    by_dataset: dict[str, list[SourceImage]] = {}
    for s in sources:
        by_dataset.setdefault(s.dataset, []).append(s)
    orders = {name: [items[j] for j in rng.permutation(len(items))] for name, items in sorted(by_dataset.items())}
    names = [name for name in DATASET_TURNS if name in orders] + sorted(set(orders) - set(DATASET_TURNS))
    items = []
    used = dict.fromkeys(names, 0)
    for i in range(count):
        fmt = formats[i % len(formats)]
        width, height = SIZES[(i // len(formats)) % len(SIZES)]
        dataset = names[i % len(names)]
        pool = orders[dataset]
        source = pool[used[dataset] % len(pool)]
        used[dataset] += 1
        items.append(CorpusItem(i, f"images/{i:05d}-{fmt.name}{fmt.suffix}", fmt, width, height, source))
    return items


# -- encoding ----------------------------------------------------------------------------------------------


def _pixels(item: CorpusItem, seed: int) -> np.ndarray:
    """The source upscaled (bicubic) to the item's size with seeded grain, float32 in [0, 1]."""
    from PIL import Image

    grey = _load_grey(item.source.path)
    big = np.asarray(Image.fromarray(grey, mode="F").resize((item.width, item.height), Image.Resampling.BICUBIC))
    # A seeded noise tile, shifted per item: cheap grain (drawing 13 M normals per image would cost more than
    # encoding it) that still makes neighbouring pixels differ as a detector's do.
    rng = np.random.default_rng([seed, item.index])
    tile = np.random.default_rng(seed).standard_normal((512, 512), dtype=np.float32) * NOISE_SIGMA
    tile = np.roll(tile, (int(rng.integers(512)), int(rng.integers(512))), axis=(0, 1))
    reps = (-(-item.height // 512), -(-item.width // 512))
    out = big + np.tile(tile, reps)[: item.height, : item.width]
    return np.clip(out, 0.0, 1.0, out=out)


def _quantise(pixels: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.rint(pixels * top).astype(np.uint8 if bits == 8 else np.uint16)


def encode_item(item: CorpusItem, seed: int) -> bytes:
    """The bytes of one corpus file."""
    from PIL import Image

    pixels = _quantise(_pixels(item, seed), item.fmt.bits)
    if item.fmt.name == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=_JPEG_QUALITY)
        return buf.getvalue()
    if item.fmt.name == "png16":
        buf = io.BytesIO()
        # compress_level 1: building stays fast; inflate speed barely depends on the level the file was written at
        Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    return _dicom_bytes(item, pixels, seed)


def _dicom_bytes(item: CorpusItem, pixels: np.ndarray, seed: int) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    def uid(kind: str) -> UID:
        return generate_uid(entropy_srcs=["cbmir-speed-corpus", str(seed), str(item.index), kind])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture: the pixels are derived, not acquired
    ds.SOPInstanceUID = uid("sop")
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = item.source.modality
    ds.PatientID = f"speed-{item.index:05d}"
    ds.SeriesDescription = "cbmir speed corpus (upscaled, not for quality)"
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = item.height, item.width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.BitsAllocated = 8 if item.fmt.bits == 8 else 16
    ds.BitsStored = item.fmt.bits
    ds.HighBit = item.fmt.bits - 1
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    syntax = UID(item.fmt.transfer_syntax)
    if syntax == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    elif item.fmt.name == "dicom-jpeg-baseline":
        # pydicom has no JPEG baseline encoder; the DICOM syntax is a baseline JPEG stream in a fragment, which
        # Pillow (libjpeg-turbo) writes.
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=_JPEG_QUALITY)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    else:
        ds.compress(syntax, pixels, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _write_item(item: CorpusItem, out: str, seed: int) -> str:
    path = Path(out) / item.relpath
    part = path.with_name(path.name + ".part")
    part.write_bytes(encode_item(item, seed))
    os.replace(part, path)  # a killed build leaves a .part, never a truncated file a resume would skip
    return item.relpath


# -- the command -------------------------------------------------------------------------------------------


@dataclass
class CorpusReport:
    out: Path
    written: int
    skipped: int
    items: list[CorpusItem]
    unavailable: dict[str, str]


def build_corpus(out: Path, count: int = 500, seed: int = 0, data: Path = SHARED_DATA, workers: int | None = None,
                 formats: tuple[str, ...] = FORMAT_NAMES, progress: bool = True,
                 say: Callable[[str], None] = print) -> CorpusReport:
    """Write the corpus into out (images/, manifest.csv, README.md); files already there are kept (resumable)."""
    from tqdm import tqdm

    unknown = set(formats) - set(FORMAT_NAMES)
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(sorted(unknown))}; known: {', '.join(FORMAT_NAMES)}")
    unavailable = {k: v for k, v in unavailable_formats().items() if k in formats}
    for name, reason in unavailable.items():
        say(f"skipping {name}: {reason}")
    chosen = tuple(f for f in FORMATS if f.name in formats and f.name not in unavailable)
    items = plan(list_sources(data), count, seed, chosen)
    (out / "images").mkdir(parents=True, exist_ok=True)
    todo = [item for item in items if not (out / item.relpath).is_file()]
    workers = workers or os.cpu_count() or 1
    with tqdm(total=len(items), initial=len(items) - len(todo), unit="img", desc="speed corpus", file=sys.stderr,
              disable=not progress) as bar:
        if workers == 1:
            for item in todo:
                _write_item(item, str(out), seed)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for future in as_completed([pool.submit(_write_item, item, str(out), seed) for item in todo]):
                    future.result()
                    bar.update(1)
    _write_manifest(out / MANIFEST, items)
    _write_readme(out / "README.md", items, seed, unavailable)
    return CorpusReport(out, len(todo), len(items) - len(todo), items, unavailable)


def _write_manifest(path: Path, items: list[CorpusItem]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(item.manifest_row() for item in items)


def _counts(values: Iterator[str]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))


def _write_readme(path: Path, items: list[CorpusItem], seed: int, unavailable: dict[str, str]) -> None:
    skipped = "".join(f"- not written: {name} ({reason})\n" for name, reason in unavailable.items())
    path.write_text(f"""# cbmir speed corpus: for SPEED, not for quality

Built by `cbmir bench corpus` (seed {seed}, {len(items)} images). Every image is a real public image (MIAS
mammograms, brain MRI, pydicom's DICOM test files) **upscaled** (bicubic) to a clinical size with a little seeded
grain, then re-encoded. The pixels carry no more information than the small originals, and the labels are
inherited from the source images (`source` column), so this corpus says how fast a decoder or the ingestion runs
on clinical-size files; it says nothing about retrieval quality. Never report mAP on it.

- formats: {_counts(i.fmt.name for i in items)}
- sizes (width x height): {_counts(f"{i.width}x{i.height}" for i in items)}
- sources: {_counts(i.source.dataset for i in items)}
- JPEG and DICOM JPEG baseline: 8-bit, quality {_JPEG_QUALITY} (Pillow / libjpeg-turbo; the DICOM one is the same
  stream encapsulated by pydicom). PNG: 16-bit greyscale. DICOM explicit VR little endian, JPEG-LS lossless and
  JPEG 2000 lossless: 12 bits stored in 16 (as mammograms), the last two encoded by pydicom's `compress()`.
{skipped}
`manifest.csv`: path,label,format,width,height,bits,source. Ingest it with
`cbmir ingest --source {path.parent}/manifest.csv --image-column path` (or `cbmir bench ingest` with the same flags).
Re-running the command with the same seed skips the files already written.
""")
