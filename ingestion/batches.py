"""The Arrow batch layout of every ingestion stage, in one place: listed items, decoded rows, embedded rows,
and the store's record batches. Stages name columns through here, never through the store's schema module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from cbmir.ingestion.sources import SourceItem
from cbmir.services.store import schema as store_schema

# Store fields the stages carry along (the store's schema is their one source of truth).
ID = store_schema.ID
ID_MAX_LENGTH = store_schema.ID_MAX_LENGTH
SOURCE = store_schema.SOURCE
THUMBNAIL = store_schema.THUMBNAIL  # base64 JPEG the reader makes; rides with the row to the store
PATIENT_HASH = store_schema.PATIENT_HASH  # the reader fills both for DICOM (erasure keys), "" otherwise
STUDY_HASH = store_schema.STUDY_HASH
# Columns the embedder adds.
EMBEDDING = store_schema.EMBEDDING
MODEL_ID = store_schema.MODEL_ID
PREDICTED_LABEL = store_schema.PREDICTED_LABEL
DESCRIPTOR = store_schema.DESCRIPTOR  # the re-ranking descriptor, with --rerank-descriptor
EMBED_SECONDS = "embed_seconds"  # the batch's embedding time, spread evenly over its rows

STATUS_OK = "ok"  # decoded, not in the collection yet: to embed and store
STATUS_PRESENT = "present"  # its id is already in the collection: skipped without embedding
STATUS_FAILED = "failed"  # unreadable or undecodable: reported with a reason

# Columns of a listed item (what the driver hands to Ray; strings only, so blocks stay small and typed).
NAME = "name"
URI = "uri"
ARRAY_INDEX = "array_index"  # -1 for files
SPLIT = "split"
META_FIELDS: tuple[str, ...] = (store_schema.LABEL, store_schema.MODALITY, store_schema.BODY_PART, store_schema.VIEW,
                                store_schema.DATASET)
# Columns the reader adds.
STATUS = "status"
REASON = "reason"
PIXELS = "pixels"  # the image already resized to the model's input, compact bytes in C order (ingestion/wire.py)
SHAPE = "shape"
PIXEL_DTYPE = "pixel_dtype"  # uint8, uint16 or float32 (preprocess.wire_dtype says which)
DECODE_SECONDS = "decode_seconds"  # the batch's decode time, spread evenly over its rows

READ_SCHEMA = pa.schema(
    [(store_schema.ID, pa.string()), (NAME, pa.string()), *((f, pa.string()) for f in META_FIELDS),
     (PATIENT_HASH, pa.string()), (STUDY_HASH, pa.string()),
     (STATUS, pa.string()), (REASON, pa.string()), (PIXELS, pa.large_binary()), (SHAPE, pa.list_(pa.int32())),
     (PIXEL_DTYPE, pa.string()), (THUMBNAIL, pa.string()), (DECODE_SECONDS, pa.float64())]
)
# Decoded metadata keys copied when the listing did not name them (a manifest value wins over a DICOM header).
DECODED_META: tuple[str, ...] = (store_schema.MODALITY, store_schema.BODY_PART, store_schema.VIEW)


# Those columns as one schema: the driver ships each block of listed items to Ray as one Arrow table.
ITEM_SCHEMA = pa.schema([(URI, pa.string()), (NAME, pa.string()), (SPLIT, pa.string()), (ARRAY_INDEX, pa.int64()),
                         *((f, pa.string()) for f in META_FIELDS)])


def items_table(items: Sequence[SourceItem], dataset: str) -> pa.Table:
    """A chunk of listed items as one Arrow table in ITEM_SCHEMA (the columns `item_row` gives one item)."""
    columns: dict[str, list[Any]] = {
        URI: [item.uri for item in items],
        NAME: [item.name for item in items],
        SPLIT: [item.split or "" for item in items],
        ARRAY_INDEX: [-1 if item.array_index is None else item.array_index for item in items],
        store_schema.LABEL: [item.label for item in items],
    }
    for key in (store_schema.MODALITY, store_schema.BODY_PART, store_schema.VIEW):
        columns[key] = [item.metadata.get(key, "") for item in items]
    columns[store_schema.DATASET] = [item.metadata.get(store_schema.DATASET) or dataset for item in items]
    return pa.Table.from_pydict(columns, schema=ITEM_SCHEMA)


def item_row(item: SourceItem, dataset: str) -> dict[str, Any]:
    """The flat row the driver ships to Ray for one SourceItem."""
    row: dict[str, Any] = {URI: item.uri, NAME: item.name, SPLIT: item.split or "",
                           ARRAY_INDEX: -1 if item.array_index is None else item.array_index,
                           store_schema.LABEL: item.label}
    for key in (store_schema.MODALITY, store_schema.BODY_PART, store_schema.VIEW):
        row[key] = item.metadata.get(key, "")
    row[store_schema.DATASET] = item.metadata.get(store_schema.DATASET) or dataset
    return row


def record_batch_schema(dim: int) -> pa.Schema:
    """The Arrow layout MilvusStore.upsert takes: id, the vector, then every VARCHAR field of the store."""
    return pa.schema([(store_schema.ID, pa.string()), (store_schema.EMBEDDING, pa.list_(pa.float32(), dim)),
                      *((name, pa.string()) for name in store_schema.SCALAR_FIELDS),
                      *((name, pa.string()) for name in store_schema.ERASURE_FIELDS)])
