"""`cbmir bench migrate`: rows/s of `cbmir migrate` from a Milvus Lite file to a real Milvus server, and of its
re-run (which must copy nothing)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cbmir.bench import vectors
from cbmir.bench.engines import label_name

FILL_BATCH = 2000


@dataclass
class MigrateBenchConfig:
    sizes: tuple[int, ...] = (20_000,)
    dim: int = 1280
    batch_rows: int = 1000
    seed: int = 0
    workdir: str = ""
    server_uri: str = ""  # migrate into this Milvus server instead of starting one


def run_migrate_bench(config: MigrateBenchConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from cbmir.services.store import MilvusStore, choose_index
    from cbmir.services.store import schema as store_schema
    from cbmir.services.store.migrate import migrate
    from cbmir.services.store.milvus_server import MilvusServer

    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = None if config.server_uri else MilvusServer(data_dir=workdir / "milvus-server").start()
    target_uri = config.server_uri or server.uri  # type: ignore[union-attr]
    record: dict[str, Any] = {"config": asdict(config), "runs": []}
    try:
        for n in config.sizes:
            name = f"bench_migrate_{n}"
            data, labels = vectors.synthetic("cnn", n, config.dim, config.seed)
            data = vectors.normalize(data)
            source = MilvusStore(str(workdir / f"lite-{n}.db"))
            identity = json.dumps({"architecture": "bench", "weights_sha256": "-", "dim": config.dim,
                                   "preprocessing": {}})
            if source.has_collection(name):
                source.drop_collection(name)
            source.ensure_collection(name, identity, config.dim, choose_index("HNSW", "COSINE", expected_rows=n))
            empty = {field: "" for field in store_schema.SCALAR_FIELDS}
            started = time.perf_counter()
            for start in range(0, n, FILL_BATCH):
                source.upsert(name, [{**empty, "id": f"{i:08d}", "embedding": data[i].tolist(),
                                      "label": label_name(labels[i]), "source": f"bench/{i}.png"}
                                     for i in range(start, min(n, start + FILL_BATCH))])
            source.flush(name)
            fill_s = time.perf_counter() - started
            target = MilvusStore(target_uri)
            if target.has_collection(name):
                target.drop_collection(name)
            first = migrate(source, target, name, batch_rows=config.batch_rows, progress=False).collections[0]
            progress(f"N={n}: migrated {first.copied} rows in {first.seconds:.1f} s = {first.rows_per_s:.0f} rows/s,"
                     f" missing after: {first.missing_after}")
            again = migrate(source, target, name, batch_rows=config.batch_rows, progress=False).collections[0]
            progress(f"N={n}: re-run copied {again.copied} in {again.seconds:.1f} s = {again.rows_per_s:.0f} rows/s")
            record["runs"].append({
                "n": n, "dim": config.dim, "batch_rows": config.batch_rows, "lite_fill_s": round(fill_s, 3),
                "seconds": first.seconds, "rows_per_s": first.rows_per_s,
                "mb_per_s": round(n * config.dim * 4 / 1e6 / first.seconds, 2) if first.seconds else 0.0,
                "copied": first.copied, "target_rows_after": first.target_rows_after,
                "missing_after": first.missing_after, "verified": first.complete,
                "rerun_seconds": again.seconds, "rerun_rows_per_s": again.rows_per_s, "rerun_copied": again.copied,
                "rerun_target_rows_after": again.target_rows_after,
            })
            target.drop_collection(name)
            target.close()
            source.drop_collection(name)
    finally:
        if server is not None:
            server.stop()
    return record


def migrate_table(record: dict[str, Any]) -> str:
    header = (f"{'N':>8s} {'dim':>5s} {'batch':>6s} {'seconds':>8s} {'rows/s':>8s} {'MB/s':>6s} {'verified':>8s} "
              f"{'re-run s':>9s} {'re-run copied':>13s}")
    lines = [header, "-" * len(header)]
    for r in record["runs"]:
        lines.append(f"{r['n']:>8d} {r['dim']:>5d} {r['batch_rows']:>6d} {r['seconds']:>8.1f} {r['rows_per_s']:>8.0f} "
                     f"{r['mb_per_s']:>6.1f} {str(r['verified']):>8s} {r['rerun_seconds']:>9.1f} "
                     f"{r['rerun_copied']:>13d}")
    return "\n".join(lines)


def migrate_plot(record: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    labels = [f"{r['n']:,}" for r in runs]
    x = range(len(runs))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([i - 0.2 for i in x], [r["rows_per_s"] for r in runs], width=0.4, label="first run (copies every row)")
    ax.bar([i + 0.2 for i in x], [r["rerun_rows_per_s"] for r in runs], width=0.4, label="re-run (copies nothing)")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("rows in the Milvus Lite collection")
    ax.set_ylabel("rows/s")
    ax.set_title(f"cbmir migrate, Milvus Lite -> Milvus server, dim {runs[0]['dim'] if runs else '?'}")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "migrate.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
