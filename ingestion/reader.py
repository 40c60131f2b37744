"""Reader: a batch of listed items → ids, statuses and decoded pixels; never raises, bad files become reasons."""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from cbmir.ingestion.batches import (
    ARRAY_INDEX,
    DECODE_SECONDS,
    DECODED_META,
    ID,
    ID_MAX_LENGTH,
    META_FIELDS,
    NAME,
    PIXELS,
    READ_SCHEMA,
    REASON,
    SHAPE,
    SPLIT,
    STATUS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PRESENT,
    URI,
)
from cbmir.services.embedding import ImageDecodeError, decode_array, decode_image, image_id

log = logging.getLogger(__name__)

# Ids per step when building the array of stored ids: bounds the Python strings alive at once.
ID_ARRAY_STEP = 8_192


def read_batch(batch: pa.Table, existing_ids: np.ndarray | None = None, id_salt: str = "") -> pa.Table:
    """Read and decode every item of `batch`; `existing_ids` is a sorted bytes array of ids already stored.

    `id_salt` keys the ids (HMAC-SHA256 of the content key): without the salt nobody can recompute an id from a
    DICOM SOPInstanceUID or link it to another archive.
    """
    started = time.perf_counter()
    columns = batch.to_pydict()
    out: dict[str, list[Any]] = {name: [] for name in READ_SCHEMA.names}
    for i in range(batch.num_rows):
        item = {key: values[i] for key, values in columns.items()}
        row = read_item(item, existing_ids, id_salt)
        for name in READ_SCHEMA.names:
            if name != DECODE_SECONDS:
                out[name].append(row.get(name))
    elapsed = time.perf_counter() - started
    out[DECODE_SECONDS] = [elapsed / max(batch.num_rows, 1)] * batch.num_rows
    return pa.Table.from_pydict(out, schema=READ_SCHEMA)


def read_item(item: dict[str, Any], existing_ids: np.ndarray | None, id_salt: str = "") -> dict[str, Any]:
    """One item → its output row; every failure is caught here and becomes a reason."""
    row: dict[str, Any] = {NAME: item[NAME], **{f: item.get(f) or "" for f in META_FIELDS},
                           ID: "", STATUS: STATUS_FAILED, REASON: "", PIXELS: b"", SHAPE: []}
    try:
        if item[ARRAY_INDEX] >= 0:
            decoded = decode_array(_npz_image(item[URI], item[ARRAY_INDEX], item[SPLIT]))
        else:
            with open(item[URI], "rb") as handle:
                data = handle.read()
            decoded = decode_image(data)
    except FileNotFoundError:
        row[REASON] = "file not found"
        return row
    except OSError as error:
        row[REASON] = f"cannot read file: {error.strerror or error}"
        return row
    except ImageDecodeError as error:
        row[REASON] = str(error) or "cannot decode image"
        return row
    except Exception as error:  # a decoder bug on one odd file must not end a run of millions
        log.warning("unexpected error decoding %s", item[NAME], exc_info=True)
        row[REASON] = f"{type(error).__name__}: {error}"
        return row
    row[ID] = image_id(decoded.content_key, salt=id_salt)
    for key in DECODED_META:
        if not row[key]:
            row[key] = str(decoded.metadata.get(key) or "")
    if existing_ids is not None and _contains(existing_ids, row[ID]):
        row[STATUS] = STATUS_PRESENT
        return row
    pixels = np.ascontiguousarray(decoded.pixels, dtype=np.float32)
    row[STATUS] = STATUS_OK
    row[PIXELS] = pixels.tobytes()
    row[SHAPE] = list(pixels.shape)
    return row


def unpack_pixels(data: bytes, shape: list[int]) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def sorted_id_array(ids: Iterable[str]) -> np.ndarray:
    """Ids as a sorted, distinct fixed-width bytes array: compact, zero-copy through Ray, binary-searchable.

    Filled in steps straight from the iterable, so no Python set of every id is built: 64 B per id held, twice
    that for the moment the steps are joined, sorted and deduplicated.
    """
    dtype = f"S{ID_MAX_LENGTH}"
    iterator = iter(ids)
    steps = []
    while step := list(itertools.islice(iterator, ID_ARRAY_STEP)):
        steps.append(np.array(step, dtype=dtype))
    if not steps:
        return np.zeros(0, dtype=dtype)
    joined = np.concatenate(steps)
    steps.clear()
    # Sorted in place and deduplicated with a mask: np.unique would copy the array once more.
    joined.sort()
    keep = np.ones(joined.size, dtype=bool)
    np.not_equal(joined[1:], joined[:-1], out=keep[1:])
    return joined[keep]


def _contains(sorted_ids: np.ndarray, value: str) -> bool:
    if sorted_ids.size == 0:
        return False
    key = value.encode()
    position = int(np.searchsorted(sorted_ids, key))
    return position < sorted_ids.size and sorted_ids[position] == key


@functools.lru_cache(maxsize=8)
def _npz_split(path: str, split: str) -> np.ndarray:
    """A worker loads each npz split once, not once per row."""
    with np.load(path) as data:
        return data[f"{split}_images"]


def _npz_image(path: str, index: int, split: str) -> np.ndarray:
    return _npz_split(path, split)[index]
