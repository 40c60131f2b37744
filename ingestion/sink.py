"""MilvusSink: embedded rows → Arrow RecordBatches in the store's schema → batched, idempotent upserts."""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from cbmir.ingestion.batches import DESCRIPTOR, ID, NAME, PATIENT_HASH, SOURCE, STUDY_HASH, record_batch_schema
from cbmir.ingestion.source_field import stored_sources
from cbmir.services.store import MilvusStore

log = logging.getLogger(__name__)

ERASURE_FIELDS = (PATIENT_HASH, STUDY_HASH)

DEFAULT_FLUSH_ROWS = 512  # rows per upsert: large enough to amortise a round trip, small enough to lose little


class MilvusSink:
    """Buffers rows and upserts them; what was upserted stays, so a rerun after a crash continues from there."""

    def __init__(self, store: MilvusStore, collection: str, dim: int,
                 flush_rows: int = DEFAULT_FLUSH_ROWS, descriptor: str = "", source_field: str = "auto",
                 id_salt: str = "") -> None:
        self.store = store
        self.source_field = source_field
        self._id_salt = id_salt
        self.collection = collection
        self.descriptor = descriptor
        self._pending_descriptors: list[pa.Table] = []
        self.schema = record_batch_schema(dim)
        self.flush_rows = flush_rows
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows_written = 0
        self.seconds = 0.0

    def to_record_batch(self, rows: pa.Table) -> pa.RecordBatch:
        """Embedded rows (reader + embedder columns) → the store's columns; `source` is derived from the item's
        name (its path relative to the ingest root) as `source_field` says."""
        columns: list[pa.Array] = []
        for field in self.schema:
            if field.name in ERASURE_FIELDS and field.name not in rows.column_names:
                columns.append(pa.array([""] * rows.num_rows, pa.string()))  # rows of no DICOM reader: no keys
                continue
            column = rows.column(NAME if field.name == SOURCE else field.name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if field.name == SOURCE:
                column = stored_sources(column, self.source_field, self._id_salt)
            columns.append(column.cast(field.type))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def write(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        self._pending.append(self.to_record_batch(rows))
        if self.descriptor:
            self._pending_descriptors.append(rows.select([ID, DESCRIPTOR]))
        self._pending_rows += rows.num_rows
        if self._pending_rows >= self.flush_rows:
            self.upsert_pending()

    def upsert_pending(self) -> None:
        """Upsert what is buffered now (no flush): the DICOM node writes each drained batch at once."""
        if not self._pending:
            return
        started = time.perf_counter()
        table = pa.Table.from_batches(self._pending, schema=self.schema).combine_chunks()
        for batch in table.to_batches():
            self.rows_written += self.store.upsert(self.collection, batch)
        # Descriptors after vectors: a crash in between leaves a row without its descriptor, which a re-rank
        # treats as "no HOG" (ranked last), never a descriptor without its row.
        for part in self._pending_descriptors:
            vectors = part.column(DESCRIPTOR).combine_chunks()
            dim = vectors.type.list_size
            self.store.upsert_descriptors(self.collection, self.descriptor, part.column(ID).to_pylist(),
                                          vectors.values.to_numpy(zero_copy_only=False).reshape(-1, dim))
        written = self._pending_rows
        self._pending, self._pending_rows, self._pending_descriptors = [], 0, []
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        log.debug("upserted %d rows in %.3f s (%d so far) into %s", written, elapsed, self.rows_written,
                  self.collection)

    def close(self) -> None:
        """Write what is buffered and flush, so the rows are durable and counted."""
        self.upsert_pending()
        started = time.perf_counter()
        self.store.flush(self.collection)
        self.seconds += time.perf_counter() - started
