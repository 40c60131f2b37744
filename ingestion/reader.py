"""Reader: a batch of listed items → ids, statuses and pixels already resized to the model's input; never raises,
bad files become reasons. It runs in Ray read tasks, so only small compact images cross the object store.

Nothing here imports torch (decode and resize are torch-free; `cbmir.services.embedding` loads names lazily): a
read worker starts in ~1.4 core-seconds less than the embedding actor it feeds."""

from __future__ import annotations

import base64
import functools
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from cbmir.ingestion.batches import (
    ARRAY_INDEX,
    DECODE_SECONDS,
    DECODED_META,
    ID,
    ID_MAX_LENGTH,
    META_FIELDS,
    NAME,
    PATIENT_HASH,
    PIXEL_DTYPE,
    PIXELS,
    READ_SCHEMA,
    REASON,
    SHAPE,
    SPLIT,
    STATUS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PRESENT,
    STUDY_HASH,
    THUMBNAIL,
    URI,
)
from cbmir.ingestion.dicomweb import fetch_instance, is_dicomweb_source, split_instance_uri
from cbmir.ingestion.sources import SourceError
from cbmir.ingestion.wire import pack
from cbmir.services.embedding import DecodedImage, ImageDecodeError, decode_array, image_id, subject_hash
from cbmir.services.embedding.decode import FILE_KEY_PREFIX, dicom_content_key, stored_content_key
from cbmir.services.embedding.resize import decode_resized, presize
from cbmir.services.embedding.thumbnail import thumbnail_jpeg

log = logging.getLogger(__name__)

# Ids per step when building the array of stored ids: bounds the Python strings alive at once.
ID_ARRAY_STEP = 8_192


def read_task(batch: pa.Table, existing_ids: list[ray.ObjectRef], id_salt: str = "", *,
              input_size: int, pacs_credentials: str = "") -> pa.Table:
    """`read_batch` as the pipeline's Ray task: it lives here so a read worker unpickles it from this torch-free
    module, not from the pipeline's (which imports the embedder)."""
    # The ref travels inside a list so Ray does not resolve it per call; ray.get of a numpy array is zero-copy.
    return read_batch(batch, ray.get(existing_ids[0]), id_salt=id_salt, input_size=input_size,
                      pacs_credentials=pacs_credentials)


def read_batch(batch: pa.Table, existing_ids: np.ndarray | None = None, id_salt: str = "", *,
               input_size: int, pacs_credentials: str = "") -> pa.Table:
    """Read, decode and resize to `input_size` every item of `batch`; `existing_ids` is a sorted bytes array of
    ids already stored.

    `id_salt` keys the ids (HMAC-SHA256 of the content key): without the salt nobody can recompute an id from a
    DICOM SOPInstanceUID or link it to another archive.
    """
    started = time.perf_counter()
    columns = batch.to_pydict()
    out: dict[str, list[Any]] = {name: [] for name in READ_SCHEMA.names}
    for i in range(batch.num_rows):
        item = {key: values[i] for key, values in columns.items()}
        row = read_item(item, existing_ids, id_salt, input_size=input_size, pacs_credentials=pacs_credentials)
        for name in READ_SCHEMA.names:
            if name != DECODE_SECONDS:
                out[name].append(row.get(name))
    elapsed = time.perf_counter() - started
    out[DECODE_SECONDS] = [elapsed / max(batch.num_rows, 1)] * batch.num_rows
    return pa.Table.from_pydict(out, schema=READ_SCHEMA)


def read_item(item: dict[str, Any], existing_ids: np.ndarray | None, id_salt: str = "", *,
              input_size: int, pacs_credentials: str = "") -> dict[str, Any]:
    """One item → its output row, pixels resized to input_size x input_size (`decode_resized`, the same call the
    query service makes); every failure is caught here and becomes a reason.

    A file is read from its path; a PACS instance (dicomweb+http://.../instances/UID) is fetched over WADO-RS
    with `pacs_credentials`, unless its SOP Instance UID's id is already stored.
    """
    row: dict[str, Any] = {NAME: item[NAME], **{f: item.get(f) or "" for f in META_FIELDS},
                           ID: "", STATUS: STATUS_FAILED, REASON: "", PIXELS: b"", SHAPE: [], PIXEL_DTYPE: "",
                           PATIENT_HASH: "", STUDY_HASH: ""}
    try:
        if item[ARRAY_INDEX] >= 0:
            array = decode_array(_npz_image(item[URI], item[ARRAY_INDEX], item[SPLIT]))
            decoded = DecodedImage(
                pixels=presize(array.pixels, input_size, array.metadata.get("bits", "")),
                content_key=array.content_key, metadata=array.metadata, thumbnail=thumbnail_jpeg(array.pixels))
        elif is_dicomweb_source(item[URI]):
            # The listing knows the SOP Instance UID, so a stored instance is skipped before any network fetch.
            known_id = image_id(dicom_content_key(split_instance_uri(item[URI])[3]), salt=id_salt)
            if existing_ids is not None and _contains(existing_ids, known_id):
                row[ID], row[STATUS] = known_id, STATUS_PRESENT
                return row
            decoded = decode_resized(fetch_instance(item[URI], pacs_credentials), input_size, thumbnail=True)
        else:
            with open(item[URI], "rb") as handle:
                data = handle.read()
            # A file's id is the hash of its bytes, a DICOM file's that of its SOP Instance UID (read from the
            # header alone): a rerun skips a stored image before decoding it, and the bytes are hashed once.
            key = stored_content_key(data)
            known_id = image_id(key, salt=id_salt)
            if existing_ids is not None and _contains(existing_ids, known_id):
                row[ID], row[STATUS] = known_id, STATUS_PRESENT
                return row
            decoded = decode_resized(data, input_size, thumbnail=True,
                                     file_key=key if key.startswith(FILE_KEY_PREFIX) else "")
    except FileNotFoundError:
        row[REASON] = "file not found"
        return row
    except OSError as error:
        row[REASON] = f"cannot read file: {error.strerror or error}"
        return row
    except ImageDecodeError as error:
        row[REASON] = str(error) or "cannot decode image"
        return row
    except SourceError as error:  # the PACS refused or failed this one fetch
        row[REASON] = str(error)
        return row
    except Exception as error:  # a decoder bug on one odd file must not end a run of millions
        log.warning("unexpected error decoding %s", item[NAME], exc_info=True)
        row[REASON] = f"{type(error).__name__}: {error}"
        return row
    row[ID] = image_id(decoded.content_key, salt=id_salt)
    # Erasure keys (cbmir erase): salted like the id, so a stored row names no patient.
    row[PATIENT_HASH] = subject_hash("patient", decoded.patient_id, id_salt)
    row[STUDY_HASH] = subject_hash("study", decoded.study_uid, id_salt)
    for key in DECODED_META:
        if not row[key]:
            row[key] = str(decoded.metadata.get(key) or "")
    if existing_ids is not None and _contains(existing_ids, row[ID]):
        row[STATUS] = STATUS_PRESENT
        return row
    row[STATUS] = STATUS_OK
    row[PIXELS], row[SHAPE], row[PIXEL_DTYPE] = pack(decoded.pixels)
    # What a contact sheet shows for this row: pixels only, small (services/embedding/thumbnail.py).
    row[THUMBNAIL] = base64.b64encode(decoded.thumbnail).decode("ascii")
    return row


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
