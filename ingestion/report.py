"""IngestReport: what one run read, stored, skipped and could not use, as JSON and as a few human lines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The summary names this many failures one per line; the JSON report always holds all of them.
SUMMARY_MAX_FAILURES = 8


@dataclass
class IngestReport:
    """Counts satisfy read == ingested + skipped_present + duplicates_in_run + failed."""

    source: str = ""
    dataset: str = ""
    split: str | None = None
    read: int = 0
    ingested: int = 0
    skipped_present: int = 0
    duplicates_in_run: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {source, duplicate_of}
    seconds: float = 0.0
    images_per_second: float = 0.0  # read / seconds: end to end, Ray start-up and model loading included
    pipeline_seconds: float = 0.0  # first read to last write (Ray's start and the model description are before)
    first_batch_seconds: float = 0.0  # first read to the first embedded batch back: actor start-up, first decodes
    steady_images_per_second: float = 0.0  # after the first batch came back: the rate a long run settles at
    # Summed per-batch worker time of each stage (not wall time: stages overlap and run in parallel).
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "embed": 0.0, "write": 0.0})
    actors: int = 0
    batch_size: int = 0
    device: str = "cpu"
    backbone: str = ""
    model_id: str = ""
    collection: str = ""
    milvus_uri: str = ""
    ray_address: str | None = None
    row_count_after: int = 0
    # Ray node id -> distinct embedding actors that ran there / rows they embedded (the spread over a cluster).
    actors_per_node: dict[str, int] = field(default_factory=dict)
    rows_per_node: dict[str, int] = field(default_factory=dict)
    # What each stage asked Ray for: CPUs per read task and per actor, GPUs per actor, torch threads per actor.
    ray_plan: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        lines = [
            f"ingested {self.ingested} of {self.read} images read from {self.source} into "
            f"{self.collection} at {self.milvus_uri} ({self.row_count_after} rows now)",
            f"skipped (already present): {self.skipped_present}   duplicates in this run: {self.duplicates_in_run}"
            f"   failed: {self.failed}",
            f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s with {self.actors} actor(s), batch "
            f"{self.batch_size}, {self.backbone} on {self.device} (model {self.model_id})",
        ]
        if len(self.rows_per_node) > 1:  # a cluster: where the work ran (node ids shortened as `ray status` does)
            lines.append("per node: " + ", ".join(
                f"{node[:8]} {rows} rows ({self.actors_per_node.get(node, 0)} actor(s))"
                for node, rows in sorted(self.rows_per_node.items(), key=lambda item: -item[1])))
        for failure in self.failures[:SUMMARY_MAX_FAILURES]:
            lines.append(f"  failed: {failure['source']}: {failure['reason']}")
        if self.failed > SUMMARY_MAX_FAILURES:
            lines.append(f"  ... and {self.failed - SUMMARY_MAX_FAILURES} more failures (see the JSON report)")
        return "\n".join(lines)
