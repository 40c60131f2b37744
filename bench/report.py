"""Search benchmark outputs: the JSON record, a printed table, PNG plots (machine and versions: run_record)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(record: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "search.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


def table(record: dict[str, Any]) -> str:
    """One row per (engine, N, index) at its default search parameters, unfiltered and with the label filter."""
    builds = {(b["engine"], b["n"], b["index_type"]): b for b in record["builds"]}
    # Records before the filtered sweep held one filtered row per index, at its default parameters.
    defaults = [m for m in record["measurements"] if m["qps"] or (m["filtered"] and m.get("default_params", True))]
    header = (f"{'engine':7s} {'N':>8s} {'index':9s} {'params':14s} {'filter':6s} {'recall@10':>9s} {'p50 ms':>7s} "
              f"{'p95 ms':>7s} {'p99 ms':>7s} {'QPS@1':>7s} {'QPS@4':>7s} {'QPS@16':>7s} {'insert/s':>9s} "
              f"{'build s':>8s}")
    lines = [header, "-" * len(header)]
    for m in sorted(defaults, key=lambda m: (m["n"], m["index_type"], m["engine"], m["filtered"])):
        b = builds.get((m["engine"], m["n"], m["index_type"]), {})
        qps = {q["clients"]: q["qps"] for q in m["qps"]}
        params = ",".join(f"{k}={v}" for k, v in m["search_params"].items()) or "-"
        insert = b.get("insert_rows_per_s", float("nan"))
        lines.append(
            f"{m['engine']:7s} {m['n']:>8d} {m['index_type']:9s} {params:14s} {'label' if m['filtered'] else '-':6s} "
            f"{m['recall']:>9.3f} {m['latency']['p50_ms']:>7.2f} {m['latency']['p95_ms']:>7.2f} "
            f"{m['latency']['p99_ms']:>7.2f} {_q(qps, 1)} {_q(qps, 4)} {_q(qps, 16)} "
            f"{'-' if insert != insert else f'{insert:.0f}':>9s} "
            f"{'reused' if b.get('reused') else format(b.get('index_build_s', float('nan')), '.1f'):>8s}")
    return "\n".join(lines)


def sweep_table(record: dict[str, Any]) -> str:
    """Every search parameter tried: the recall/latency trade-off the defaults were picked from, with each build's
    segment count (a server searches every segment); label-filtered rows too where the run swept them."""
    builds = {(b["engine"], b["n"], b["index_type"]): b for b in record["builds"]}
    header = (f"{'engine':7s} {'N':>8s} {'index':9s} {'params':14s} {'filter':6s} {'recall@10':>9s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'segments':>8s}")
    lines = [header, "-" * len(header)]
    for m in sorted(record["measurements"], key=lambda m: (m["n"], m["index_type"], m["engine"], m["filtered"],
                                                           sorted(m["search_params"].items()))):
        segments = (builds.get((m["engine"], m["n"], m["index_type"]), {}).get("segments") or {}).get("count", "-")
        params = ",".join(f"{k}={v}" for k, v in m["search_params"].items()) or "-"
        lines.append(f"{m['engine']:7s} {m['n']:>8d} {m['index_type']:9s} {params:14s} "
                     f"{'label' if m['filtered'] else '-':6s} {m['recall']:>9.3f} "
                     f"{m['latency']['p50_ms']:>7.2f} {m['latency']['p99_ms']:>7.2f} {segments!s:>8s}")
    return "\n".join(lines)


def cheapest_at_recall(record: dict[str, Any], recall: float = 0.95) -> list[dict[str, Any]]:
    """Per (engine, N, index, filter): the setting with the lowest p50 among those reaching `recall`, or the most
    accurate one tried (marked reached=False) where none does."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for m in record["measurements"]:
        groups.setdefault((m["engine"], m["n"], m["index_type"], m["filtered"]), []).append(m)
    rows = []
    for (engine, n, index_type, filtered), ms in sorted(groups.items()):
        reaching = [m for m in ms if m["recall"] >= recall]
        best = (min(reaching, key=lambda m: m["latency"]["p50_ms"]) if reaching
                else max(ms, key=lambda m: m["recall"]))
        rows.append({"engine": engine, "n": n, "index_type": index_type, "filtered": filtered,
                     "search_params": best["search_params"], "recall": best["recall"], "reached": bool(reaching),
                     "p50_ms": best["latency"]["p50_ms"], "p99_ms": best["latency"]["p99_ms"],
                     "calls": best["latency"].get("n")})
    return rows


def cheapest_table(record: dict[str, Any], recall: float = 0.95) -> str:
    header = (f"{'engine':7s} {'N':>8s} {'index':9s} {'filter':6s} {'params':14s} {'recall@10':>9s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'calls':>6s}")
    lines = [f"cheapest setting with recall@10 >= {recall} (* = none reached it: the most accurate one tried)",
             header, "-" * len(header)]
    for r in cheapest_at_recall(record, recall):
        params = ",".join(f"{k}={v}" for k, v in r["search_params"].items()) or "-"
        lines.append(f"{r['engine']:7s} {r['n']:>8d} {r['index_type']:9s} {'label' if r['filtered'] else '-':6s} "
                     f"{params + ('' if r['reached'] else '*'):14s} {r['recall']:>9.3f} {r['p50_ms']:>7.2f} "
                     f"{r['p99_ms']:>7.2f} {r['calls'] if r['calls'] is not None else '-'!s:>6s}")
    return "\n".join(lines)


def _q(qps: dict[int, float], clients: int) -> str:
    return f"{qps[clients]:>7.0f}" if clients in qps else f"{'-':>7s}"


def plots(record: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = record["measurements"]
    written = []
    index_types = sorted({m["index_type"] for m in ms})
    # Latency vs N, one panel per index, one line per engine (default params, unfiltered).
    fig, axes = plt.subplots(1, len(index_types), figsize=(4 * len(index_types), 3.6), squeeze=False)
    for ax, index_type in zip(axes[0], index_types, strict=True):
        for engine in sorted({m["engine"] for m in ms}):
            points = sorted((m["n"], m["latency"]["p50_ms"], m["latency"]["p99_ms"]) for m in ms
                            if m["engine"] == engine and m["index_type"] == index_type and m["qps"]
                            and not m["filtered"])
            if points:
                n, p50, p99 = zip(*points, strict=True)
                line, = ax.plot(n, p50, marker="o", label=f"{engine} p50")
                ax.plot(n, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{engine} p99")
        ax.set(xscale="log", yscale="log", title=index_type, xlabel="vectors (N)", ylabel="latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "latency_vs_n.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    # Recall vs QPS (1 client, from serial latency), one panel per N, one curve per engine+index over the sweep.
    sizes = sorted({m["n"] for m in ms})
    colours = {t: f"C{i}" for i, t in enumerate(index_types)}
    styles = {"faiss": ("-", "o"), "lite": (":", "s"), "server": ("--", "^")}
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for engine in sorted({m["engine"] for m in ms}):
            for index_type in index_types:
                # in sweep order (ef / nprobe rising), so each curve is one index's speed-recall trade
                curve = [(1000.0 / m["latency"]["mean_ms"], m["recall"]) for m in ms
                         if m["n"] == n and m["engine"] == engine and m["index_type"] == index_type
                         and not m["filtered"]]
                if curve:
                    qps, recall = zip(*curve, strict=True)
                    linestyle, marker = styles.get(engine, ("-", "."))
                    ax.plot(qps, recall, linestyle=linestyle, marker=marker, markersize=4,
                            color=colours[index_type], label=f"{engine} {index_type}")
        ax.set(xscale="log", title=f"N = {n:,}", xlabel="QPS, 1 client (1 / mean latency)", ylabel="recall@10")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "recall_vs_qps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    swept = filter_sweep_plot(record, out_dir / "filter_sweep.png")
    return [*written, swept] if swept else written


def filter_sweep_plot(record: dict[str, Any], path: Path, title: str = "") -> Path | None:
    """p50 and p99 against recall@10, the label-filtered search beside the unfiltered one, per engine and index
    (a run with --filter-sweep); None when the run timed the filter at one setting only."""
    ms = record["measurements"]
    if sum(m["filtered"] for m in ms) <= len({(m["engine"], m["n"], m["index_type"]) for m in ms}):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups = sorted({(m["engine"], m["n"], m["index_type"], m["filtered"]) for m in ms})
    for i, (engine, n, index_type, filtered) in enumerate(groups):
        curve = sorted((m["recall"], m["latency"]["p50_ms"], m["latency"]["p99_ms"]) for m in ms
                       if (m["engine"], m["n"], m["index_type"], m["filtered"]) == (engine, n, index_type, filtered))
        recall, p50, p99 = zip(*curve, strict=True)
        label = f"{engine} N={n:,} {index_type} {'label ==' if filtered else 'unfiltered'}"
        style = {"marker": "o" if filtered else "^", "linestyle": "-" if filtered else "--", "color": f"C{i}"}
        axes[0].plot(recall, p50, label=label, **style)
        axes[1].plot(recall, p99, label=label, **style)
    for ax, what in zip(axes, ("p50", "p99"), strict=True):
        ax.set(xlabel="recall@10", ylabel=f"{what} latency (ms), 1 client", title=f"{title} {what}".strip())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
