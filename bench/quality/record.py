"""The JSON record of one run (config, model, versions, machine, figures) and the table printed from records."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = "cbmir.quality/1"
RECORD_FILE = "record.json"
TABLE_FIGURES = ("P@1", "P@5", "P@10", "mAP@10", "NDCG@10", "R@10", "mAP")


def write_record(record: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RECORD_FILE
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return path


def load_records(root: Path) -> list[dict]:
    records = []
    for path in sorted(root.glob(f"*/*/{RECORD_FILE}")):
        record = json.loads(path.read_text())
        if record.get("schema") == SCHEMA:
            record["_path"] = str(path)
            records.append(record)
    return records


ARCHIVED_PER_QUERY = ("query", "label", "predicted_class", "mAP@10")


def archive_records(records: list[dict], archive_root: Path) -> None:
    """Copy records, without their per-query lists, to a tracked folder: results/ is machine-local, and a
    report regenerated on another machine must still hold every figure measured so far."""
    for record in records:
        slim = {k: v for k, v in record.items() if k not in ("per_query", "_path")}
        per_query = record.get("per_query", {})
        if record.get("config", {}).get("prefilter") not in (None, "off") and per_query.get("label"):
            # what the prefilter-cap table re-scores (bench/quality/prefilter_cap.py): a few numbers per query
            slim["per_query"] = {k: per_query[k] for k in ARCHIVED_PER_QUERY if k in per_query}
        path = archive_root / record["dataset"]["name"] / f"{record['config_name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(slim, indent=1, sort_keys=False) + "\n")


def load_archived(archive_root: Path) -> list[dict]:
    records = []
    for path in sorted(archive_root.glob("*/*.json")):
        record = json.loads(path.read_text())
        if record.get("schema") == SCHEMA:
            record["_path"] = str(path)
            records.append(record)
    return records


def newest_per_config(records: list[dict]) -> list[dict]:
    """One record per (dataset, configuration): the newest, so a re-run replaces its archived figures."""
    newest: dict[tuple[str, str], dict] = {}
    for record in records:
        key = (record["dataset"]["name"], record["config_name"])
        if key not in newest or record.get("created", "") >= newest[key].get("created", ""):
            newest[key] = record
    return sorted(newest.values(), key=lambda r: (r["dataset"]["name"], r["config_name"]))


def cell(estimate: dict | None, ci: bool = True) -> str:
    if not estimate or estimate.get("mean") is None or estimate["mean"] != estimate["mean"]:
        return "–"
    text = f"{estimate['mean']:.3f}"
    if ci:
        text += f" [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"
    return text


def table_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        f = r["figures"]
        recall = r.get("index_recall_at_10_vs_exact")
        rows.append([r["dataset"]["name"], r["method"], r["config_name"], str(r["queries"]), str(r["index_size"]),
                     *(cell(f.get(name), ci=name in ("P@10", "mAP@10")) for name in TABLE_FIGURES),
                     "–" if recall is None else f"{recall:.3f}"])
    return rows


HEADER = ["dataset", "method", "config", "queries", "index", *TABLE_FIGURES, "ANN recall@10"]


def format_table(records: list[dict]) -> str:
    """A fixed-width table for the terminal."""
    rows = [HEADER, *table_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(records: list[dict]) -> str:
    rows = table_rows(records)
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)
