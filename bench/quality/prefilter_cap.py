"""Does the class prefilter cap mAP@10 at the classifier's accuracy? Hard beside soft, split by right/wrong class.

A hard prefilter searches only the predicted class: a query whose class is predicted wrongly gets no relevant hit
(mAP@10 0), so the mean is capped near the classifier's accuracy. The soft prefilter (services/query/
soft_prefilter.py) searches every plausible class. This module pairs, per dataset and trained model, the hard
and the soft record of the same configuration and scores them on the queries the classifier got right and wrong.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def _model_key(record: dict) -> tuple:
    config = record["config"]
    return (record["dataset"]["name"], config.get("weights"), config.get("cross_fit"), config.get("metric"),
            config.get("index"), config.get("rerank"), config.get("tta"), config.get("query_expansion", 0))


def _has_labels(record: dict) -> bool:
    per_query = record.get("per_query", {})
    return bool(per_query.get("label")) and bool(per_query.get("predicted_class"))


def cap_rows(records: list[dict], soft_weight: float) -> list[dict]:
    """One row per (dataset, trained model, configuration) with both a hard and a soft record (at `soft_weight`,
    the default) that carry the per-query label and predicted class (records from 2026-12-06 on)."""
    pairs: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for record in records:
        mode = record["config"].get("prefilter")
        if mode == "soft" and record["config"].get("soft_weight") != soft_weight:
            continue
        if mode in ("predicted", "soft") and _has_labels(record):
            pairs[_model_key(record)][mode] = record
    rows = []
    for key, found in sorted(pairs.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        if set(found) != {"predicted", "soft"}:
            continue
        hard, soft = found["predicted"], found["soft"]
        if hard["per_query"]["query"] != soft["per_query"]["query"]:
            continue  # not the same queries: nothing to pair
        labels = np.array(hard["per_query"]["label"])
        right = np.array(hard["per_query"]["predicted_class"]) == labels
        row = {"dataset": key[0], "method": soft["method"], "config": soft["config_name"], "queries": int(len(labels)),
               "accuracy": float(right.mean()), "wrong": int((~right).sum())}
        for name, record in (("hard", hard), ("soft", soft)):
            ap = np.array(record["per_query"]["mAP@10"], dtype=np.float64)
            row[name] = {"all": float(ap.mean()), "right": float(ap[right].mean()) if right.any() else None,
                         "wrong": float(ap[~right].mean()) if (~right).any() else None,
                         "ci": [record["figures"]["mAP@10"]["ci_low"], record["figures"]["mAP@10"]["ci_high"]]}
        rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def cap_lines(rows: list[dict], figure: str = "") -> list[str]:
    if not rows:
        return []
    lines = ["## The class prefilter against the classifier's accuracy\n",
             "Each trained model scored with the hard prefilter (search only the predicted class) and the soft one "
             "(every class with p ≥ 0.05 searched, hits ranked by p(label) + similarity scaled from 1 at the closest "
             "to 0 at the 10th; services/query/soft_prefilter.py). mAP@10 split by whether the classifier predicted "
             "the query's class: with the hard prefilter a wrong prediction scores ~0, the cap.\n",
             "| dataset | soft configuration | queries | classifier accuracy | hard mAP@10 [95% CI] | "
             "soft mAP@10 [95% CI] | hard / soft, right class | hard / soft, wrong class (n) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hard, soft = r["hard"], r["soft"]
        lines.append(f"| {r['dataset']} | `{r['config']}` | {r['queries']} | {r['accuracy']:.3f} | "
                     f"{hard['all']:.3f} [{hard['ci'][0]:.3f}, {hard['ci'][1]:.3f}] | "
                     f"{soft['all']:.3f} [{soft['ci'][0]:.3f}, {soft['ci'][1]:.3f}] | "
                     f"{_fmt(hard['right'])} / {_fmt(soft['right'])} | "
                     f"{_fmt(hard['wrong'])} / {_fmt(soft['wrong'])} ({r['wrong']}) |")
    lines.append("")
    if figure:
        lines += [f"![mAP@10 against classifier accuracy, hard and soft prefilter]({figure})", ""]
    return lines


def plot_cap(rows: list[dict], path: Path) -> Path | None:
    """Per row: accuracy beside hard and soft mAP@10, and both on the wrongly predicted queries."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['dataset']}\n{r['method']}" for r in rows]
    series = [("classifier accuracy", [r["accuracy"] for r in rows], "#999999"),
              ("hard mAP@10", [r["hard"]["all"] for r in rows], "#d62728"),
              ("soft mAP@10", [r["soft"]["all"] for r in rows], "#1f77b4"),
              ("hard, wrong class", [r["hard"]["wrong"] or 0.0 for r in rows], "#ff9896"),
              ("soft, wrong class", [r["soft"]["wrong"] or 0.0 for r in rows], "#aec7e8")]
    x = np.arange(len(rows))
    width = 0.16
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(rows)), 4.2))
    for i, (label, values, colour) in enumerate(series):
        ax.bar(x + (i - 2) * width, values, width, label=label, color=colour)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mAP@10 / accuracy")
    ax.set_title("Hard vs soft class prefilter: the accuracy cap (wrongly predicted queries on the right)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def soft_weight_table(records: list[dict]) -> dict[str, dict[float, dict]]:
    """dataset -> soft weight -> its newest soft-prefilter record (no αQE)."""
    table: dict[str, dict[float, dict]] = defaultdict(dict)
    for record in records:
        config = record["config"]
        if config.get("prefilter") != "soft" or config.get("query_expansion", 0):
            continue
        if config.get("soft_weight") is None:
            continue  # a record from before the weight was recorded
        weight = float(config["soft_weight"])
        seen = table[record["dataset"]["name"]].get(weight)
        if seen is None or record.get("created", "") >= seen.get("created", ""):
            table[record["dataset"]["name"]][weight] = record
    return table


def leave_one_set_out(records: list[dict]) -> list[dict]:
    """For each dataset, the soft weight that scores the best mean mAP@10 on the other datasets (only weights run
    on every dataset compete), and what that weight scores on the held-out one: the weight is never chosen on
    the set it is reported on."""
    table = soft_weight_table(records)
    common = set.intersection(*(set(w) for w in table.values())) if len(table) >= 2 else set()
    rows = []
    for held_out in sorted(table):
        others = [d for d in table if d != held_out]
        if not common or not others:
            continue
        mean_on_others = {w: float(np.mean([table[d][w]["figures"]["mAP@10"]["mean"] for d in others]))
                          for w in sorted(common)}
        chosen = max(mean_on_others, key=lambda w: (mean_on_others[w], -w))
        figure = table[held_out][chosen]["figures"]["mAP@10"]
        rows.append({"dataset": held_out, "chosen_weight": chosen, "mean_on_others": mean_on_others[chosen],
                     "map10": figure["mean"], "ci": [figure["ci_low"], figure["ci_high"]],
                     "by_weight": {w: table[held_out][w]["figures"]["mAP@10"]["mean"] for w in sorted(common)}})
    return rows


def leave_one_set_out_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    weights = sorted(rows[0]["by_weight"])
    lines = ["Soft weight chosen by leave-one-set-out: for each set, the weight with the best mean mAP@10 on the "
             "other sets, scored on the held-out one (the soft prefilter's default is a fixed constant, never "
             "tuned per set).\n",
             "| held-out set | weight chosen on the others | its mAP@10 on the held-out set [95% CI] | " +
             " | ".join(f"w = {w:g}" for w in weights) + " |",
             "|---|---|---|" + "---|" * len(weights)]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['chosen_weight']:g} | {r['map10']:.3f} [{r['ci'][0]:.3f}, "
                     f"{r['ci'][1]:.3f}] | " + " | ".join(f"{r['by_weight'][w]:.3f}" for w in weights) + " |")
    lines.append("")
    return lines
