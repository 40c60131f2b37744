"""run_ingestion: source → reader → embedder → sink, with the progress bar, the tally and the report."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from cbmir.ingestion.batches import (
    DECODE_SECONDS,
    EMBED_SECONDS,
    ID,
    MODEL_ID,
    NAME,
    REASON,
    STATUS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PRESENT,
    items_table,
)
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.pipeline import (
    ACTOR_ID,
    NODE_ID,
    cluster_cpus,
    embedded_batches,
    listing_block_rows,
    node_cpus,
    plan_resources,
    probe_model,
    ray_address,
    ray_session,
)
from cbmir.ingestion.reader import sorted_id_array
from cbmir.ingestion.report import IngestReport
from cbmir.ingestion.sink import MilvusSink
from cbmir.ingestion.sources import scan_source
from cbmir.services.embedding import id_salt_digest
from cbmir.services.embedding.descriptors import DESCRIPTORS
from cbmir.services.embedding.id_salt import resolve_id_salt
from cbmir.services.store import MilvusStore, ModelMismatchError, choose_index
from cbmir.services.store.lite_limit import warn_if_past_lite_limit

log = logging.getLogger(__name__)


def run_ingestion(config: IngestConfig) -> IngestReport:
    """Ingest `config.source` into the collection; rerunning adds only what is not stored yet."""
    started = time.perf_counter()
    # $RAY_ADDRESS attaches exactly as --ray-address does: recorded, spread, code shipped.
    config = replace(config, ray_address=ray_address(config.ray_address))
    # Counted and checked here, listed again chunk by chunk as Ray takes the blocks: never held whole.
    scan = scan_source(config)
    report = IngestReport(
        source=str(scan.root if scan.kind != "npz" else Path(config.source).resolve()),
        dataset=scan.dataset, split=config.split, actors=config.actors, batch_size=config.batch_size,
        device=config.device, backbone=config.backbone, collection=config.collection,
        milvus_uri=config.milvus_uri, ray_address=config.ray_address,
    )
    # Opened before Ray starts: an unreachable or locked store fails in a second, not after Ray's start-up.
    store = MilvusStore(config.milvus_uri, token=config.milvus_token)
    try:
        # The one place ingest decides its id salt, before Ray starts: the read tasks and the sink get this one.
        stored_digest = store.id_salt_digest(config.collection) if store.has_collection(config.collection) else None
        config = replace(config, id_salt=resolve_id_salt(config.id_salt, stored_digest, config.collection))
        with ray_session(config.ray_address):
            plan = plan_resources(cluster_cpus(), config.actors, config.device, config.gpus_per_actor,
                                  node_cpus=node_cpus(), read_cpus=config.read_cpus)
            report.ray_plan = {"read_cpus": plan.read_cpus, "actor_cpus": plan.actor_cpus,
                               "actor_gpus": plan.actor_gpus, "torch_threads": plan.torch_threads}
            model = probe_model(config, plan)
            report.model_id = model.model_id
            index = choose_index(config.index_type, config.metric, expected_rows=scan.count)
            store.ensure_collection(config.collection, model.identity_json, model.dim, index,
                                    id_salt_digest=id_salt_digest(config.id_salt), num_partitions=config.partitions)
            if config.rerank_descriptor:
                store.ensure_descriptor_collection(config.collection, config.rerank_descriptor,
                                                   DESCRIPTORS[config.rerank_descriptor])
            # Loaded once and shipped to the read tasks: they skip stored images before decoding costs pile up.
            stored = store.count(config.collection)
            # A fresh collection has nothing to skip; iterating it anyway makes Milvus Lite log a server error.
            existing = sorted_id_array(store.iter_ids(config.collection) if stored else ())
            log.info("%d ids already in %s", existing.size, config.collection)
            block_rows = listing_block_rows(scan.count, config.batch_size, config.listing_chunk)
            blocks = (items_table(chunk, scan.dataset) for chunk in scan.iter_chunks(block_rows))
            sink = MilvusSink(store, config.collection, model.dim, flush_rows=config.flush_rows,
                              descriptor=config.rerank_descriptor, source_field=config.source_field,
                              id_salt=config.id_salt)
            tally = Tally(report, model.model_id)
            pipeline_started = time.perf_counter()
            with tqdm(total=scan.count, unit="img", file=sys.stderr, disable=not config.progress,
                      desc="ingest") as bar:
                try:
                    for batch in embedded_batches(blocks, existing, config, plan, model.input_size):
                        if tally.first_batch_at is None:
                            tally.first_batch_at = time.perf_counter()
                        sink.write(tally.add(batch))
                        bar.update(batch.num_rows)
                        bar.set_postfix(ok=report.ingested, skip=report.skipped_present, fail=report.failed,
                                        refresh=False)
                except BaseException:
                    # Keep what was already embedded: the rerun starts from there. The original error wins.
                    with contextlib.suppress(Exception):
                        sink.close()
                    raise
                sink.close()
            finished = time.perf_counter()
        report.stage_seconds["write"] = round(sink.seconds, 3)
        report.row_count_after = store.count(config.collection)
        warn_if_past_lite_limit(store, config.collection, config.lite_max_serving_rows, rows=report.row_count_after)
    finally:
        store.close()
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_second = round(report.read / report.seconds, 2) if report.seconds else 0.0
    report.pipeline_seconds = round(finished - pipeline_started, 3)
    if tally.first_batch_at is not None:
        report.first_batch_seconds = round(tally.first_batch_at - pipeline_started, 3)
    if tally.first_batch_at is not None and finished > tally.first_batch_at:
        # Excludes Ray start-up and model loading: the rate a long run settles at.
        report.steady_images_per_second = round(tally.after_first / (finished - tally.first_batch_at), 2)
    for stage in ("decode", "embed"):
        report.stage_seconds[stage] = round(report.stage_seconds[stage], 3)
    if config.report_path:
        report.write(config.report_path)
    # The command prints report.summary() for people; the log gets one structured record, not a second copy.
    log.info("ingestion finished", extra={"ingested": report.ingested, "read": report.read,
                                          "skipped_present": report.skipped_present, "failed": report.failed,
                                          "collection": report.collection, "seconds": report.seconds})
    return report


@dataclass
class Tally:
    """Counts every row the pipeline returns and picks the ones to store (first of each id in this run)."""

    report: IngestReport
    model_id: str
    seen: dict[str, str] = field(default_factory=dict)  # id -> name of the first item with it in this run
    first_batch_at: float | None = None
    after_first: int = 0
    actors: dict[str, set[str]] = field(default_factory=dict)  # node id -> actor ids seen there

    def add(self, batch: pa.Table) -> pa.Table:
        report = self.report
        if batch.num_rows == 0:
            return batch
        if self.first_batch_at is not None and report.read:
            self.after_first += batch.num_rows
        models = set(batch.column(MODEL_ID).to_pylist())
        if models - {self.model_id}:
            raise ModelMismatchError(
                f"the Ray actors loaded model {', '.join(sorted(models))}, the driver {self.model_id}: do the "
                f"cluster's workers have the same weights and code as this machine?"
            )
        report.read += batch.num_rows
        if NODE_ID in batch.column_names:
            for node, actor in set(zip(batch.column(NODE_ID).to_pylist(), batch.column(ACTOR_ID).to_pylist(),
                                       strict=True)):
                self.actors.setdefault(node, set()).add(actor)
                report.actors_per_node[node] = len(self.actors[node])
            for node in batch.column(NODE_ID).to_pylist():
                report.rows_per_node[node] = report.rows_per_node.get(node, 0) + 1
        decode = float(pc.sum(batch.column(DECODE_SECONDS)).as_py() or 0.0)
        embed = float(pc.sum(batch.column(EMBED_SECONDS)).as_py() or 0.0)
        report.stage_seconds["decode"] += decode
        report.stage_seconds["embed"] += embed
        log.debug("batch of %d: read+decode %.3f s, embed %.3f s", batch.num_rows, decode, embed)
        keep = []
        ids = batch.column(ID).to_pylist()
        names = batch.column(NAME).to_pylist()
        reasons = batch.column(REASON).to_pylist()
        for image_id, name, status, reason in zip(ids, names, batch.column(STATUS).to_pylist(), reasons,
                                                  strict=True):
            if status == STATUS_FAILED:
                report.failed += 1
                report.failures.append({"source": name, "reason": reason or "unknown error"})
                keep.append(False)
                continue
            if image_id in self.seen:
                report.duplicates_in_run += 1
                report.duplicates.append({"source": name, "duplicate_of": self.seen[image_id]})
                keep.append(False)
                continue
            self.seen[image_id] = name
            if status == STATUS_PRESENT:
                report.skipped_present += 1
                keep.append(False)
            else:
                assert status == STATUS_OK, status
                report.ingested += 1
                keep.append(True)
        return batch.filter(pa.array(keep, pa.bool_()))
