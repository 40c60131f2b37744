"""Peak driver RSS of ingestion's listing + Ray read stage (model left out) over 10^5 tiny generated PNGs."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODES = ("stream", "list")  # stream: chunks -> ray.put -> from_arrow_refs; list: the held list -> from_items
MIB = 2**20


def proc_status_kib(key: str) -> int:
    """A VmHWM / VmRSS / RssShmem line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def write_pngs(root: Path, files: int, classes: int = 2) -> None:
    """`files` distinct 8x8 greyscale PNGs in `classes` class folders (distinct pixels: distinct image ids)."""
    import numpy as np
    from PIL import Image

    folders = [root / f"class_{c}" for c in range(classes)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    for i in range(files):
        pixels = noise.copy()
        pixels.flat[:4] = np.frombuffer(i.to_bytes(4, "little"), dtype=np.uint8)  # the index makes it unique
        Image.fromarray(pixels).save(folders[i % classes] / f"img_{i:07d}.png")


class Stages:
    """Wall time and the process's peak (VmHWM) / current (VmRSS) memory after each stage."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = step()
        self.rows.append({"stage": name, "seconds": round(time.perf_counter() - started, 2),
                          "peak_rss_mib": round(proc_status_kib("VmHWM") / 1024, 1),
                          "rss_mib": round(proc_status_kib("VmRSS") / 1024, 1),
                          "shmem_mib": round(proc_status_kib("RssShmem") / 1024, 1)})
        return value


def measure(mode: str, source: str, batch_size: int, num_cpus: int, stored_ids: int) -> dict[str, Any]:
    """One mode in this process (peak RSS is per process, so the orchestrator runs each mode in its own)."""
    stages = Stages()

    def imports() -> None:
        import pymilvus  # noqa: F401
        import torch  # noqa: F401

        import cbmir.ingestion.pipeline  # noqa: F401  (ray, ray.data, pyarrow)

    stages.run("imports (torch, Ray, pymilvus, pyarrow)", imports)
    import ray
    import ray.data

    from cbmir.ingestion.batches import STATUS, item_row, items_table
    from cbmir.ingestion.config import IngestConfig
    from cbmir.ingestion.pipeline import listing_block_rows, listing_dataset, plan_resources, ray_session, read_stage
    from cbmir.ingestion.reader import sorted_id_array
    from cbmir.ingestion.sources import list_source, scan_source

    config = IngestConfig(source=source, batch_size=batch_size, progress=False, report_path=None)
    figures: dict[str, Any] = {}
    with contextlib.ExitStack() as ray_stack:
        stages.run("ray.init", lambda: ray_stack.enter_context(ray_session(num_cpus=num_cpus)))
        if mode == "stream":
            scan = stages.run("scan_source (count, class folder)", lambda: scan_source(config))
            count = scan.count
            block_rows = listing_block_rows(count, batch_size, config.listing_chunk)
            listed_bytes = [0]

            def blocks() -> Any:
                for chunk in scan.iter_chunks(block_rows):
                    table = items_table(chunk, scan.dataset)
                    listed_bytes[0] += table.nbytes
                    yield table

            dataset = stages.run(f"listing -> ray.put blocks of {block_rows} -> from_arrow_refs",
                                 lambda: listing_dataset(blocks()))
            figures["object_store_listing_mib"] = round(listed_bytes[0] / MIB, 1)
        else:
            listing = stages.run("list_source (items held)", lambda: list_source(config))
            count = len(listing.items)
            rows = stages.run("rows for Ray (dicts)", lambda: [item_row(i, listing.dataset) for i in listing.items])
            blocks = max(1, math.ceil(count / batch_size))
            dataset = stages.run(f"from_items ({blocks} blocks)",
                                 lambda: ray.data.from_items(rows, override_num_blocks=blocks))
        figures["blocks"] = dataset.num_blocks()
        # Made-up stored ids, as a resumed run loads them from Milvus (a generator: no Python set of them).
        fake_ids = (f"{i:064x}" for i in range(stored_ids))
        existing = stages.run(f"stored ids array ({stored_ids} ids)", lambda: sorted_id_array(fake_ids))
        plan = plan_resources(float(num_cpus), 1, "cpu", 1.0)
        statuses: dict[str, int] = {}

        def read_back() -> None:
            for batch in read_stage(dataset, existing, config, plan).iter_batches(batch_format="pyarrow",
                                                                                   batch_size=None):
                for status in batch.column(STATUS).to_pylist():
                    statuses[status] = statuses.get(status, 0) + 1

        stages.run(f"read stage, {count} rows streamed back", read_back)
    base = stages.rows[0]["peak_rss_mib"]
    peak = stages.rows[-1]["peak_rss_mib"]
    return {"mode": mode, "files": count, "statuses": statuses, "stages": stages.rows, **figures,
            "peak_rss_mib": peak, "growth_over_imports_mib": round(peak - base, 1),
            "growth_per_file_bytes": round((peak - base) * MIB / max(count, 1), 1)}


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        lines.append(f"mode {result['mode']}: {result['files']} files, {result['blocks']} Ray blocks, peak driver RSS "
                     f"{result['peak_rss_mib']:.0f} MiB (+{result['growth_over_imports_mib']:.0f} MiB over the "
                     f"imports, {result['growth_per_file_bytes']:.0f} B per file), statuses {result['statuses']}")
        lines.append(f"  {'stage':58s} {'seconds':>8s} {'peak MiB':>9s} {'RSS MiB':>8s} {'shmem MiB':>9s}")
        for row in result["stages"]:
            lines.append(f"  {row['stage']:58s} {row['seconds']:8.2f} {row['peak_rss_mib']:9.1f} "
                         f"{row['rss_mib']:8.1f} {row['shmem_mib']:9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Peak driver RSS (VmHWM) of listing N generated 8x8 PNGs (two class folders) and streaming "
                    "them through Ray's read stage, model left out. Each mode runs in a fresh process; the "
                    "files are deleted afterwards.")
    parser.add_argument("--files", type=int, default=100_000, help="PNGs to generate (default 10^5)")
    parser.add_argument("--classes", type=int, default=2,
                        help="class folders they are spread over (default 2; the listing holds one folder's "
                             "names at a time)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated: stream (the streamed listing) and/or list (the held list + "
                             "from_items, the pre-streaming path); default both")
    parser.add_argument("--batch-size", type=int, default=32, help="read batch size, as `cbmir ingest` (32)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--stored-ids", type=int, default=0,
                        help="made-up ids 'already stored' to build the resume array from (default 0)")
    parser.add_argument("--dir", default=None, help="where to write the PNGs (default a new temp dir)")
    parser.add_argument("--out", default=None, help="write the JSON record here")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)  # the per-mode child process
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.source, args.batch_size, args.num_cpus, args.stored_ids)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
    root = Path(tempfile.mkdtemp(prefix="cbmir-listing-", dir=args.dir))
    results = []
    try:
        started = time.perf_counter()
        write_pngs(root / "archive", args.files, args.classes)
        print(f"wrote {args.files} PNGs in {time.perf_counter() - started:.1f} s under {root}", file=sys.stderr)
        for mode in modes:
            child = subprocess.run(
                [sys.executable, "-m", "cbmir.bench.listing_memory", "--measure", mode,
                 "--source", str(root / "archive"), "--batch-size", str(args.batch_size),
                 "--num-cpus", str(args.num_cpus), "--stored-ids", str(args.stored_ids)],
                capture_output=True, text=True)
            if child.returncode:
                print(child.stderr, file=sys.stderr)
                raise SystemExit(f"measuring mode {mode} failed (exit {child.returncode}), its stderr is above")
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 10^5 files must not outlive the measurement
    from cbmir.bench.run_record import machine, versions

    record = {"benchmark": "listing_memory", "machine": machine(),
              "versions": versions(),
              "config": {k: v for k, v in vars(args).items() if k not in ("measure", "source")},
              "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
