"""How long a Milvus server's files hold erased rows: erase a patient, then search every file of the server's data
directory for the erased ids' and vectors' bytes until none holds them (docs/pacs.md "Erasure")."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    held = []
    for path in root.rglob("*"):
        if not path.is_file() or "logs" in path.relative_to(root).parts or "etcd" in path.relative_to(root).parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if any(needle in data for needle in needles):
            held.append(str(path.relative_to(root)))
    return held


def run(rows: int, settings: dict[str, str], watch_s: float, workdir: Path) -> None:
    from cbmir.services.store import MilvusStore, choose_index
    from cbmir.services.store.erase import erase_collection
    from cbmir.services.store.milvus_server import MilvusServer
    from cbmir.services.store.schema import ERASURE_FIELDS, SCALAR_FIELDS

    with MilvusServer(data_dir=workdir / "milvus", settings=settings) as server:
        store = MilvusStore(server.uri)
        identity = json.dumps({"architecture": "bench", "weights_sha256": "-", "dim": 8, "preprocessing": {}})
        store.ensure_collection("erase_gc", identity, 8, choose_index("HNSW", "COSINE"))
        rng = np.random.default_rng(3)
        empty = dict.fromkeys((*SCALAR_FIELDS, *ERASURE_FIELDS), "")
        data = [{**empty, "id": f"row-{i:06d}", "embedding": rng.random(8).astype(np.float32).tolist(), "label": "x",
                 "patient_hash": "erase-me" if i % 5 == 0 else "keep"} for i in range(rows)]
        store.upsert("erase_gc", data)
        store.flush("erase_gc")
        erased = [r for r in data if r["patient_hash"] == "erase-me"]
        needles = [np.asarray(r["embedding"], np.float32).tobytes() for r in erased] + [r["id"].encode()
                                                                                          for r in erased]
        root = Path(server.data_dir)
        print(f"before: {files_holding(root, needles)}", flush=True)
        started = time.perf_counter()
        result = erase_collection(store, "erase_gc", "patient", "erase-me")
        print(f"erased {result.rows_erased} rows, {result.compaction}, proved {result.proved} in {result.seconds} s",
              flush=True)
        while True:
            held = files_holding(root, needles)
            print(f"{time.perf_counter() - started:.0f} s: {held}", flush=True)
            if not held or time.perf_counter() - started > watch_s:
                break
            time.sleep(15)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--watch-s", type=float, default=400)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a milvus.yaml setting")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory() as workdir:
        run(args.rows, settings, args.watch_s, Path(workdir))


if __name__ == "__main__":
    main()
