"""Erasure with proof: delete a patient's (or a study's) rows by their salted hash, compact, and check they are gone.

Milvus deletes are logical (a delete log masks the rows) until compaction rewrites the segments; a search must read
with consistency Strong to see the delete. On a server, `compact()` + `get_compaction_state()` rewrite the sealed
segments; the old segment files stay in object storage until garbage collection (dataCoord.gc.interval, then
dataCoord.gc.dropTolerance) and the inserted rows stay in the message queue's log until its retention ends
(docs/pacs.md "Erasure"). Milvus Lite 3.2.2's compaction reports success and does nothing, so there the collection
is rewritten without the erased rows, and the proof reads Lite's own files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.services.store import schema
from cbmir.services.store.defaults import is_server_uri
from cbmir.services.store.filters import ids_expression
from cbmir.services.store.milvus import MilvusStore, StoreError

log = logging.getLogger(__name__)

KIND_FIELDS = {"patient": schema.PATIENT_HASH, "study": schema.STUDY_HASH}
REWRITE_PREFIX = "cbmir_erase_rewrite_"  # not `<name>__…`: that is a descriptor companion of <name>
MAX_ROWS = 16_384  # Milvus caps a query's result window; a patient with more images is erased in several rounds
COMPACTION_TIMEOUT_S = 600.0


class ErasureError(StoreError):
    """The erasure could not be done or proved; the message says what is left and what to do."""


@dataclass
class CollectionErasure:
    collection: str
    rows_erased: int = 0
    companion_rows_erased: int = 0
    compaction: str = ""  # "server job N: Completed" | "lite: collection rewritten"
    remaining_by_hash: int = 0  # Strong query by the hash after the erasure
    returned_by_search: int = 0  # erased rows a search with their own vector still returns
    files_holding_erased: int = 0  # Lite only: files of the collection still holding an erased id or vector
    seconds: float = 0.0
    skipped: str = ""  # why the collection could not be searched for the subject (schema version 1)

    @property
    def proved(self) -> bool:
        return not self.skipped and not (self.remaining_by_hash or self.returned_by_search or self.files_holding_erased)


@dataclass
class ErasureReport:
    kind: str
    subject_hashes: dict[str, str] = field(default_factory=dict)  # collection -> the salted hash erased by
    collections: list[CollectionErasure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_erased(self) -> int:
        return sum(c.rows_erased for c in self.collections)

    @property
    def proved(self) -> bool:
        return all(c.proved for c in self.collections)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows_erased": self.rows_erased, "proved": self.proved,
                "seconds": round(self.seconds, 3), "subject_hashes": self.subject_hashes,
                "collections": [asdict(c) for c in self.collections]}


def data_collections(store: MilvusStore) -> list[str]:
    """The collections that hold images (not descriptor companions, not an interrupted rewrite)."""
    return sorted(n for n in store.list_collections() if "__" not in n and not n.startswith(REWRITE_PREFIX))


def erase_collection(store: MilvusStore, name: str, kind: str, subject: str) -> CollectionErasure:
    """Delete every row of `name` whose `kind` hash is `subject`, from it and its companions; compact; prove."""
    started = time.perf_counter()
    result = CollectionErasure(collection=name)
    _finish_interrupted_rewrite(store, name)
    if not store.has_erasure_fields(name):
        result.skipped = ("schema version 1: no patient_hash/study_hash, so a patient's rows cannot be found; "
                          "re-ingest into a new collection and drop this one")
        log.error("cannot erase from %s: %s", name, result.skipped)
        return result
    hash_filter = f'{KIND_FIELDS[kind]} == "{subject}"'
    erased: dict[str, np.ndarray] = {}
    while True:  # rounds of MAX_ROWS: the query window is capped
        rows = store._call_loaded(name, store.client.query, name, filter=hash_filter, limit=MAX_ROWS,
                                  output_fields=[schema.ID, schema.EMBEDDING], consistency_level="Strong")
        if not rows:
            break
        ids = [r[schema.ID] for r in rows]
        erased.update({r[schema.ID]: np.asarray(r[schema.EMBEDDING], dtype=np.float32) for r in rows})
        store._call(store.client.delete, name, filter=ids_expression(ids))
        for companion in _companions(store, name):
            found = store.existing_ids(companion, ids, consistency_level="Strong")
            if found:
                store._call(store.client.delete, companion, filter=ids_expression(sorted(found)))
                result.companion_rows_erased += len(found)
    result.rows_erased = len(erased)
    for target in [name, *_companions(store, name)]:
        store.flush(target)
        result.compaction = _compact(store, target) if erased else "nothing to compact"
    # The proof: nothing answers to the hash, no search returns an erased row, and (Lite) no file holds one.
    result.remaining_by_hash = len(store._call_loaded(name, store.client.query, name, filter=hash_filter,
                                                      output_fields=[schema.ID], consistency_level="Strong"))
    if erased:
        hits = store.search(name, np.stack(list(erased.values())), top_k=min(16, max(1, len(erased))),
                            consistency_level="Strong", output_fields=())
        result.returned_by_search = len({h.id for per_query in hits for h in per_query} & set(erased))
        if not is_server_uri(store.uri):
            result.files_holding_erased = len(lite_files_holding(store.uri, [name, *_companions(store, name)],
                                                                  list(erased), list(erased.values())))
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("erased %d rows from %s (proved: %s)", result.rows_erased, name, result.proved)
    return result


def _companions(store: MilvusStore, name: str) -> list[str]:
    return sorted(n for n in store.list_collections() if n.startswith(f"{name}__"))


def _compact(store: MilvusStore, name: str) -> str:
    if not is_server_uri(store.uri):
        rewrite_lite_collection(store, name)
        return "lite: collection rewritten"
    job = store._call(store.client.compact, name)
    deadline = time.monotonic() + COMPACTION_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        state = str(store._call(store.client.get_compaction_state, job))
        if state.lower().endswith("completed"):
            return f"server job {job}: {state}"
        time.sleep(0.5)
    raise ErasureError(f"compaction job {job} of {name} still {state!r} after {COMPACTION_TIMEOUT_S:.0f} s: the rows "
                       "are deleted (invisible to every read) but still in segment files; run cbmir erase again")


def rewrite_lite_collection(store: MilvusStore, name: str) -> None:
    """Copy the surviving rows into a new collection like `name`, drop `name`, rename the copy to `name`.

    Milvus Lite keeps deleted rows in its parquet files behind a delete mask and its compaction is a no-op; only a
    dropped collection's directory is removed. A crash part-way leaves the copy, finished by the next erase.
    """
    from cbmir.services.store.migrate import _create_like, _index_params, _pages, _plain, _vector_field

    temporary = REWRITE_PREFIX + name
    if store.has_collection(temporary):
        store._call(store.client.drop_collection, temporary)
    described = store._call(store.client.describe_collection, name)
    vector_field, _ = _vector_field(described)
    rows = store.count(name)
    _create_like(store, temporary, described, _index_params(store, name, vector_field, rows))
    fields = [f["name"] for f in described["fields"]]
    copied = 0
    for page in _pages(store, name, fields, 1000):
        copied += store.upsert(temporary, [_plain(row, fields) for row in page], absent=True)
    store.flush(temporary)
    if store.count(temporary) != rows:
        store._call(store.client.drop_collection, temporary)
        raise ErasureError(f"rewriting {name} copied {copied} of {rows} rows: nothing dropped, run cbmir erase again")
    store._call(store.client.drop_collection, name)
    store._call(store.client.rename_collection, temporary, name)
    store._index_cache.pop(name, None)
    store.load(name)


def _finish_interrupted_rewrite(store: MilvusStore, name: str) -> None:
    temporary = REWRITE_PREFIX + name
    if not store.has_collection(temporary):
        return
    if store.has_collection(name):
        store._call(store.client.drop_collection, temporary)  # the original still stands: redo the rewrite
    else:
        log.warning("finishing an interrupted erasure rewrite of %s", name)
        store._call(store.client.rename_collection, temporary, name)


def lite_files_holding(uri: str, collections: list[str], ids: list[str], vectors: list[np.ndarray]) -> list[Path]:
    """Files of Milvus Lite's `collections` (under the .db directory) that still hold an erased id or vector's bytes.

    Raw bytes, plus the decoded id column of every parquet file (in case a page is compressed).
    """
    import pyarrow.parquet as pq

    needles = [i.encode() for i in ids] + [np.asarray(v, dtype=np.float32).tobytes() for v in vectors]
    wanted = set(ids)
    holding = []
    for collection in collections:
        root = Path(uri) / "collections" / collection
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found = any(needle in data for needle in needles)
            if not found and path.suffix == ".parquet":
                table = pq.read_table(path)
                if schema.ID in table.column_names:
                    found = bool(wanted & set(table.column(schema.ID).to_pylist()))
            if found:
                holding.append(path)
    return holding


def erase_subject(store: MilvusStore, kind: str, value: str, collection: str = "", id_salt: str = "") -> ErasureReport:
    """Erase the patient (`kind` "patient", a DICOM PatientID) or study ("study", a StudyInstanceUID) from
    `collection`, or from every data collection; each hashed with the salt that collection's ids are keyed with.
    The one path of `cbmir erase` and of the Erase RPC."""
    from cbmir.services.embedding import subject_hash
    from cbmir.services.embedding.id_salt import resolve_id_salt

    if kind not in KIND_FIELDS:
        raise ValueError(f"erase by one of {', '.join(KIND_FIELDS)}, got {kind!r}")
    if not value.strip():
        raise ValueError(f"the {kind} id is empty: nothing to erase by")
    started = time.perf_counter()
    report = ErasureReport(kind=kind)
    try:
        for name in [collection] if collection else data_collections(store):
            salt = resolve_id_salt(id_salt, store.id_salt_digest(name), name)
            report.subject_hashes[name] = subject_hash(kind, value, salt)
            report.collections.append(erase_collection(store, name, kind, report.subject_hashes[name]))
    finally:
        report.seconds = time.perf_counter() - started
    return report
