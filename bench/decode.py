"""`cbmir bench decode`: decoder candidates side by side per format (ms/image, images/s with one process per core)
and how close each fast candidate's embeddings stay to the full decode + resize that ingest does today."""

from __future__ import annotations

import csv
import io
import os
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = "cbmir"  # services.embedding.decode.decode_image (full size) + the resize of preprocess.py
INGEST = "cbmir-ingest"  # preprocess.decode_resized: what ingestion's read tasks and the query service run
INPUT_SIZE = 224


# -- the resize every candidate ends with --------------------------------------------------------------------


def resize_like_ingest(pixels: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The resize ingest applies (preprocess.to_batch_tensor, antialiased bilinear), without the normalisation:
    float32 size x size (grey) or size x size x 3 in [0, 1]."""
    from cbmir.services.embedding.preprocess import Preprocessing, to_batch_tensor

    identity = Preprocessing(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    chw = to_batch_tensor([pixels], identity)[0].numpy()
    grey = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 1)
    return np.ascontiguousarray(chw[0] if grey else chw.transpose(1, 2, 0))


def _unit(arr: np.ndarray) -> np.ndarray:
    """Integer pixels to [0, 1] as cbmir does: 8-bit / 255, wider by the bit depth actually used."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    bits = max(8, int(arr.max()).bit_length()) if arr.size else 8
    return arr.astype(np.float32) / float((1 << bits) - 1)


def _pillow_resize(im: Any, size: int = INPUT_SIZE) -> np.ndarray:
    """A Pillow image -> size x size float32 in [0, 1], resized by Pillow (antialiased bilinear)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        peak_bits = max(8, int(np.asarray(im).max()).bit_length())
        small = im.convert("F").resize((size, size), Image.Resampling.BILINEAR)
        return np.array(small, dtype=np.float32) / float((1 << peak_bits) - 1)
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _array_resize(arr: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    from PIL import Image

    unit = _unit(arr)
    if unit.ndim == 3 and unit.shape[2] == 1:
        unit = unit[:, :, 0]
    if unit.ndim == 2:
        return np.array(Image.fromarray(unit, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    rgb = Image.fromarray(np.rint(unit * 255).astype(np.uint8))
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


# -- candidates ---------------------------------------------------------------------------------------------


def _cbmir(data: bytes) -> np.ndarray:
    from cbmir.services.embedding import decode_image

    return resize_like_ingest(decode_image(data).pixels)


def _cbmir_ingest(data: bytes) -> np.ndarray:
    from cbmir.services.embedding.resize import decode_resized

    return resize_like_ingest(decode_resized(data, INPUT_SIZE).pixels)


def _pillow_open(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data))


def _pillow(data: bytes) -> np.ndarray:
    im = _pillow_open(data)
    im.load()
    return _pillow_resize(im)


def _pillow_draft(data: bytes) -> np.ndarray:
    im = _pillow_open(data)
    im.draft(im.mode, (INPUT_SIZE, INPUT_SIZE))  # JPEG: DCT scaling by 1/2, 1/4 or 1/8, never below the request
    im.load()
    return _pillow_resize(im)


def _reduce_factor(width: int, height: int) -> int:
    return max(1, min(width, height) // INPUT_SIZE)


def _pillow_reduce(data: bytes) -> np.ndarray:
    im = _pillow_open(data)
    if im.format == "JPEG2000":
        im.reduce = max(0, _reduce_factor(*im.size).bit_length() - 1)  # resolution levels: decoded at 1 / 2^n
        im.load()
        return _pillow_resize(im)
    im.load()
    factor = _reduce_factor(*im.size)
    if im.mode.startswith("I;16"):
        im = im.convert("I")  # Image.reduce takes 8-bit and 32-bit modes
    return _pillow_resize(im.reduce(factor) if factor > 1 else im)


def _simplejpeg(data: bytes) -> np.ndarray:
    import simplejpeg

    _, _, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if colourspace == "Gray" else "RGB",
                                 min_width=INPUT_SIZE, min_height=INPUT_SIZE)
    return _array_resize(arr)


def _dicom_dataset(data: bytes) -> Any:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def _first_fragment(data: bytes) -> bytes:
    from pydicom.encaps import generate_frames

    ds = _dicom_dataset(data)
    return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


def _pydicom(plugin: str = "") -> Callable[[bytes], np.ndarray]:
    def decode(data: bytes) -> np.ndarray:
        ds = _dicom_dataset(data)
        if plugin:
            ds.pixel_array_options(decoding_plugin=plugin)
        return _array_resize(np.asarray(ds.pixel_array))
    return decode


def _on_fragment(inner: Callable[[bytes], np.ndarray]) -> Callable[[bytes], np.ndarray]:
    """A JPEG / JPEG 2000 decoder applied to the first frame of an encapsulated DICOM."""
    return lambda data: inner(_first_fragment(data))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def candidates(fmt: str) -> dict[str, Callable[[bytes], np.ndarray]]:
    """{name: bytes -> INPUT_SIZE^2 float pixels} the installed libraries offer for one corpus format."""
    out: dict[str, Callable[[bytes], np.ndarray]] = {REFERENCE: _cbmir, INGEST: _cbmir_ingest}
    if fmt == "jpeg":
        out |= {"pillow": _pillow, "pillow-draft": _pillow_draft, "pillow-reduce": _pillow_reduce}
        if _has("simplejpeg"):
            out["simplejpeg"] = _simplejpeg
    elif fmt == "png16":
        out |= {"pillow": _pillow, "pillow-reduce": _pillow_reduce}
    elif fmt.startswith("dicom"):
        out["pydicom"] = _pydicom()
        syntax = {"dicom-jpeg-baseline": "1.2.840.10008.1.2.4.50", "dicom-jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
                  "dicom-j2k-lossless": "1.2.840.10008.1.2.4.90"}.get(fmt)
        if syntax:
            from pydicom.pixels import get_decoder

            plugins = sorted(get_decoder(syntax).available_plugins)
            if len(plugins) > 1:
                out |= {f"pydicom[{p}]": _pydicom(p) for p in plugins}
        if fmt == "dicom-jpeg-baseline":
            out["fragment+pillow-draft"] = _on_fragment(_pillow_draft)
            if _has("simplejpeg"):
                out["fragment+simplejpeg"] = _on_fragment(_simplejpeg)
        if fmt == "dicom-j2k-lossless":
            out["fragment+pillow-reduce"] = _on_fragment(_pillow_reduce)
    return out


# -- one process per core ----------------------------------------------------------------------------------


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # one process per core: no process may spread over the others' cores
    import torch

    torch.set_num_threads(1)


def _decode_task(task: tuple[str, str, str]) -> bool:
    fmt, path, name = task
    candidates(fmt)[name](Path(path).read_bytes())
    return True


def parallel_rate(tasks: list[tuple[str, str, str]], processes: int | None = None, pool: Any = None) -> float:
    """Images/s of (format, path, candidate) tasks over one process per core, start-up excluded."""
    processes = processes or os.cpu_count() or 1
    own = pool is None
    if own:
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)
    try:
        list(pool.map(_decode_task, tasks[:processes] * 2))  # warm-up: imports, first-call allocations
        started = time.perf_counter()
        done = sum(pool.map(_decode_task, tasks))
        return done / (time.perf_counter() - started)
    finally:
        if own:
            pool.shutdown()


def bare_decode_rate(paths: list[str], processes: int | None = None) -> float:
    """The decoder ingest uses (decode_resized: reduced decode + the one resize) alone, one process per core."""
    return parallel_rate([("any", p, INGEST) for p in paths], processes)


# -- the benchmark -----------------------------------------------------------------------------------------


@dataclass
class DecodeBenchConfig:
    source: str
    images_per_format: int = 12
    agreement_per_format: int = 5
    processes: int = 0
    backbone: str = "efficientnet_lite0"
    parallel_all: bool = False


def _corpus_files(source: Path) -> dict[str, list[Path]]:
    """{format: files} from the corpus manifest (format column), else by file suffix."""
    manifest = source / "manifest.csv" if source.is_dir() else source
    root = manifest.parent
    by_format: dict[str, list[Path]] = {}
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                by_format.setdefault(row["format"], []).append(root / row["path"])
        return by_format
    for path in sorted(source.rglob("*")):
        fmt = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".dcm": "dicom"}.get(path.suffix.lower())
        if fmt:
            by_format.setdefault(fmt, []).append(path)
    return by_format


def run_decode_bench(config: DecodeBenchConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    import multiprocessing

    import torch

    from cbmir.services.embedding import EmbeddingModel

    files = _corpus_files(Path(config.source))
    if not files:
        raise ValueError(f"no images in {config.source} (build one with `cbmir bench corpus --out DIR`)")
    processes = config.processes or os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str], list[np.ndarray]] = {}
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-image timings: one core, as each process of the pool has
    try:
        for fmt, paths in sorted(files.items()):
            paths = paths[: config.images_per_format]
            blobs = [p.read_bytes() for p in paths]
            size = _size_of(blobs[0])
            mine = []
            for name, decode in candidates(fmt).items():
                decode(blobs[0])  # warm-up
                ms = []
                for i, data in enumerate(blobs):
                    started = time.perf_counter()
                    out = decode(data)
                    ms.append((time.perf_counter() - started) * 1000.0)
                    if i < config.agreement_per_format:
                        outputs.setdefault((fmt, name), []).append(out)
                mine.append({"format": fmt, "candidate": name, "images": len(blobs), "width": size[0],
                             "height": size[1], "median_ms": statistics.median(ms), "min_ms": min(ms),
                             "parallel_img_s": None, "processes": processes})
                progress(f"{fmt:24s} {name:24s} {statistics.median(ms):8.1f} ms/img")
            # One process per core for cbmir's decoder and the fastest candidate (all of them with --parallel-all):
            # on a shared machine each pool run costs as much as the single-thread timings of every candidate.
            fastest = min(mine, key=lambda r: r["median_ms"])
            for row in mine:
                if config.parallel_all or row["candidate"] in (REFERENCE, INGEST) or row is fastest:
                    row["parallel_img_s"] = parallel_rate([(fmt, str(p), row["candidate"]) for p in paths],
                                                          processes, pool)
                    progress(f"{fmt:24s} {row['candidate']:24s} {row['parallel_img_s']:8.1f} img/s "
                             f"({processes} processes)")
            rows += mine
    finally:
        pool.shutdown()
        torch.set_num_threads(threads)
    for row in rows:
        ref = next(r for r in rows if r["format"] == row["format"] and r["candidate"] == REFERENCE)
        row["speedup_vs_cbmir"] = ref["median_ms"] / row["median_ms"] if row["median_ms"] else 0.0
    model = EmbeddingModel.load(config.backbone, precision="auto")
    agreement = _agreement(model, outputs)
    for row in rows:
        row.update(agreement.get((row["format"], row["candidate"]), {}))
    progress("embedding agreement with the cbmir full decode + resize: "
             + ", ".join(f"{f}/{c} median {a['cosine_median']:.4f}" for (f, c), a in agreement.items()
                         if c != REFERENCE))
    return {"config": asdict(config) | {"processes": processes}, "model_id": model.model_id,
            "precision": model.precision, "input_size": INPUT_SIZE, "rows": rows}


def _size_of(data: bytes) -> tuple[int, int]:
    from cbmir.services.embedding import decode_image

    h, w = decode_image(data).pixels.shape[:2]
    return int(w), int(h)


def _agreement(model: Any, outputs: dict[tuple[str, str], list[np.ndarray]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Median / min cosine of each candidate's embeddings to the reference's, image by image."""
    def unit(images: list[np.ndarray]) -> np.ndarray:
        e = model.embed(images)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    out = {}
    references = {fmt: unit(images) for (fmt, name), images in outputs.items() if name == REFERENCE}
    for (fmt, name), images in outputs.items():
        if fmt not in references:
            continue
        cos = (references[fmt] * unit(images)).sum(axis=1)
        out[(fmt, name)] = {"cosine_median": float(np.median(cos)), "cosine_min": float(cos.min()),
                            "agreement_images": len(cos)}
    return out


def decode_table(record: dict[str, Any]) -> str:
    header = (f"{'format':24s} {'candidate':24s} {'size':>9s} {'ms/img':>8s} {'x cbmir':>7s} "
              f"{'img/s':>7s} {'cos med':>8s} {'cos min':>8s}")
    lines = [header, "-" * len(header)]
    for r in record["rows"]:
        cos_med = f"{r['cosine_median']:.4f}" if "cosine_median" in r else "-"
        cos_min = f"{r['cosine_min']:.4f}" if "cosine_min" in r else "-"
        lines.append(f"{r['format']:24s} {r['candidate']:24s} {r['width']:>4d}x{r['height']:<4d} "
                     f"{r['median_ms']:8.1f} {r['speedup_vs_cbmir']:7.2f} {_rate(r['parallel_img_s']):>7s} "
                     f"{cos_med:>8s} {cos_min:>8s}")
    lines.append(f"\nms/img: median, one thread; img/s: {record['config']['processes']} processes (one per core); "
                 f"cos: embeddings ({record['model_id'][:24]}) vs cbmir's full decode + resize")
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def decode_plot(record: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = sorted({r["format"] for r in record["rows"]})
    fig, axes = plt.subplots(len(formats), 1, figsize=(8, 1.1 + 1.0 * len(formats) + 0.25 * len(record["rows"])),
                             squeeze=False)
    for ax, fmt in zip(axes[:, 0], formats, strict=True):
        rows = [r for r in record["rows"] if r["format"] == fmt]
        names = [r["candidate"] for r in rows]
        values = [r["median_ms"] for r in rows]
        bars = ax.barh(names, values, color=["tab:grey" if n == REFERENCE else "tab:blue" for n in names])
        ax.bar_label(bars, labels=[f"{v:.0f} ms" for v in values], fontsize=7, padding=2)
        ax.set_title(f"{fmt} ({rows[0]['width']}x{rows[0]['height']})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.25)
    axes[-1, 0].set_xlabel("ms / image to a 224 x 224 input (median, one thread)")
    fig.tight_layout()
    path = out_dir / "decode_candidates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
