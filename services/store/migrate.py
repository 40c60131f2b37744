"""`cbmir migrate`: copy a collection (schema, index, properties, every row) from one Milvus to another.

Made for moving a Milvus Lite file to a server once it outgrows Lite (services/store/lite_limit.py), but any store
to any store works. Rows are read in primary-key pages with a query iterator and written in batches; ids already
in the target are skipped, so a re-run adds nothing and an interrupted run resumes where it stopped. The end
checks that every source id is in the target and says so.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pymilvus import DataType, MilvusClient

from cbmir.services.store import schema
from cbmir.services.store.defaults import is_server_uri
from cbmir.services.store.index import choose_index
from cbmir.services.store.milvus import CollectionNotFoundError, MilvusStore, StoreError

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 1000  # rows per page read and per write: ~5 MB of 1280-d float32 vectors, under gRPC's limits
_VECTOR_TYPES = {DataType.FLOAT_VECTOR, DataType.BINARY_VECTOR, DataType.FLOAT16_VECTOR, DataType.BFLOAT16_VECTOR}
# describe_index keys that describe the index's state, not how it was built
_INDEX_STATE_KEYS = ("index_type", "metric_type", "field_name", "index_name", "total_rows", "indexed_rows",
                     "pending_index_rows", "state", "params")


class MigrationError(StoreError):
    """The migration cannot start or did not complete; the message says what to do."""


@dataclass
class CollectionMigration:
    """What happened to one collection."""

    name: str
    source_rows: int = 0
    target_rows_before: int = 0
    target_rows_after: int = 0
    copied: int = 0
    skipped_present: int = 0
    missing_after: int = 0
    created_target: bool = False
    index: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    rows_per_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.missing_after == 0


@dataclass
class MigrationReport:
    source: str
    target: str
    collections: list[CollectionMigration] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return all(c.complete for c in self.collections)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "seconds": self.seconds, "complete": self.complete,
                "collections": [asdict(c) for c in self.collections]}

    def summary(self) -> str:
        lines = []
        for c in self.collections:
            verdict = (f"verified: all {c.source_rows} source ids are in the target ({c.target_rows_after} rows)"
                       if c.complete else f"INCOMPLETE: {c.missing_after} of {c.source_rows} source ids are missing "
                                          f"in the target (run the same command again to resume)")
            lines.append(f"{c.name}: copied {c.copied}, already there {c.skipped_present}, "
                         f"{c.rows_per_s:.0f} rows/s in {c.seconds:.1f} s; {verdict}")
        return "\n".join(lines)


def open_store(uri: str, token: str = "", must_exist: bool = False) -> MilvusStore:
    """A store on `uri`; a source Lite file must already exist (opening one creates it)."""
    if must_exist and not is_server_uri(uri) and not Path(uri).exists():
        raise MigrationError(f"no Milvus Lite file at {uri} (give the .db path `cbmir ingest --milvus-uri` wrote, "
                             f"or a server URI such as http://127.0.0.1:19530)")
    return MilvusStore(uri, token=token)


def migrate(source: MilvusStore, target: MilvusStore, collection: str, *, batch_rows: int = DEFAULT_BATCH_ROWS,
            companions: bool = True, overwrite: bool = False, progress: bool = True) -> MigrationReport:
    """Copy `collection` (and its `<collection>__<kind>` re-ranking companions) from `source` to `target`.

    Ids already in the target are skipped (`overwrite` rewrites them instead), so the call is idempotent and
    resumes an interrupted copy. Raises MigrationError when the collections do not fit each other.
    """
    if _same_place(source.uri, target.uri):
        raise MigrationError(f"source and target are the same store ({source.uri}): give another --to")
    if not source.has_collection(collection):
        raise CollectionNotFoundError(
            f"collection {collection!r} not found at {source.uri}; existing: "
            f"{', '.join(source.list_collections()) or 'none'} (pass --collection NAME)")
    names = [collection]
    if companions:
        names += sorted(n for n in source.list_collections() if n.startswith(f"{collection}__"))
    report = MigrationReport(source=source.uri, target=target.uri)
    started = time.perf_counter()
    for name in names:
        report.collections.append(_migrate_one(source, target, name, batch_rows, overwrite, progress))
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _migrate_one(source: MilvusStore, target: MilvusStore, name: str, batch_rows: int, overwrite: bool,
                 progress: bool) -> CollectionMigration:
    from tqdm import tqdm

    described = source._call(source.client.describe_collection, name)
    source.load(name)  # a Lite file reopened by a new process holds its collections released
    result = CollectionMigration(name=name, source_rows=source.count(name))
    vector_field, dim = _vector_field(described)
    index = _index_params(source, name, vector_field, result.source_rows)
    result.index = index
    if target.has_collection(name):
        _check_compatible(target, name, described, vector_field, dim)
        target.load(name)
        result.target_rows_before = target.count(name)
    else:
        _create_like(target, name, described, index)
        result.created_target = True
    log.info("migrating collection", extra={"collection": name, "source": source.uri, "target": target.uri,
                                            "rows": result.source_rows, "dim": dim,
                                            "created_target": result.created_target})
    fields = [f["name"] for f in described["fields"]]
    seen: list[str] = []  # every source id, checked against the target at the end (no second pass over Lite)
    started = time.perf_counter()
    with tqdm(total=result.source_rows, unit="row", file=sys.stderr, disable=not progress,
              desc=f"migrate {name}") as bar:
        for page in _pages(source, name, fields, batch_rows):
            seen.extend(row[schema.ID] for row in page)
            rows = page
            if not overwrite:
                present = target.existing_ids(name, [row[schema.ID] for row in page], consistency_level="Session")
                rows = [row for row in page if row[schema.ID] not in present]
                result.skipped_present += len(page) - len(rows)
            if rows:
                result.copied += target.upsert(name, [_plain(row, fields) for row in rows], absent=not overwrite)
            bar.update(len(page))
            bar.set_postfix(copied=result.copied, present=result.skipped_present, refresh=False)
    target.flush(name)
    result.seconds = round(time.perf_counter() - started, 3)
    result.rows_per_s = round(result.source_rows / result.seconds, 1) if result.seconds else 0.0
    result.target_rows_after = target.count(name)
    result.missing_after = _missing_ids(target, name, seen) + max(0, result.source_rows - len(seen))
    log.info("migrated collection" if result.complete else "migration incomplete",
             extra={"collection" if k == "name" else k: v for k, v in asdict(result).items() if k != "index"})
    return result


def _pages(store: MilvusStore, name: str, fields: list[str], batch_rows: int) -> Iterator[list[dict[str, Any]]]:
    """Every row of `name` in primary-key order, `batch_rows` at a time, with all its fields and its vector."""
    iterator = store._call_loaded(name, store.client.query_iterator, name, batch_size=batch_rows, filter="",
                                  output_fields=fields)
    try:
        while True:
            page = iterator.next()
            if not page:
                return
            yield list(page)
    finally:
        iterator.close()


def _missing_ids(target: MilvusStore, name: str, ids: list[str]) -> int:
    """How many of `ids` the target lacks (read at the collection's own consistency: Strong for cbmir's)."""
    return len(set(ids)) - len(target.existing_ids(name, ids))


def _plain(row: Any, fields: list[str]) -> dict[str, Any]:
    """A row as the dict upsert takes: only schema fields, vectors as lists of floats."""
    out = {}
    for name in fields:
        value = row[name]
        out[name] = [float(x) for x in value] if isinstance(value, list | tuple) else value
    return out


def _vector_field(described: dict[str, Any]) -> tuple[str, int]:
    for f in described["fields"]:
        if f["type"] in _VECTOR_TYPES:
            return f["name"], int(f["params"]["dim"])
    raise MigrationError(f"collection {described['collection_name']!r} has no vector field: nothing to migrate")


def _index_params(source: MilvusStore, name: str, vector_field: str, rows: int) -> dict[str, Any]:
    """The source's index (type, metric, build params). Milvus Lite does not report build params, so for the
    types cbmir creates they are what `choose_index` picks for the collection's size."""
    described = source._call(source.client.describe_index, name, vector_field)
    build = {k: v for k, v in described.items() if k not in _INDEX_STATE_KEYS}
    if isinstance(described.get("params"), dict):
        build.update(described["params"])
    build = {k: _number(v) for k, v in build.items()}
    index_type, metric = described["index_type"], described["metric_type"]
    if not build and index_type in ("HNSW", "IVF_FLAT", "IVF_SQ8"):
        build = choose_index(index_type, metric, expected_rows=max(rows, 1)).build_params
    return {"index_type": index_type, "metric_type": metric, "params": build, "field_name": vector_field}


def _create_like(target: MilvusStore, name: str, described: dict[str, Any], index: dict[str, Any]) -> None:
    """Create `name` on the target with the source's fields (primary key, partition key, lengths, dim),
    properties (model identity, search params, id salt digest), consistency level and index."""
    new_schema = MilvusClient.create_schema(auto_id=bool(described.get("auto_id")),
                                            enable_dynamic_field=bool(described.get("enable_dynamic_field")))
    for f in described["fields"]:
        new_schema.add_field(f["name"], f["type"], is_primary=bool(f.get("is_primary")),
                             is_partition_key=bool(f.get("is_partition_key")), **f.get("params", {}))
    index_params = target.client.prepare_index_params()
    index_params.add_index(field_name=index["field_name"], index_type=index["index_type"],
                           metric_type=index["metric_type"], params=index["params"])
    target.add_filter_indexes(index_params, fields=[f["name"] for f in described["fields"]
                                                    if f["type"] == DataType.VARCHAR])
    has_partition_key = any(f.get("is_partition_key") for f in described["fields"])
    extra = {"num_partitions": int(described["num_partitions"])} if has_partition_key and described.get(
        "num_partitions") else {}
    target._call(target.client.create_collection, collection_name=name, schema=new_schema,
                 index_params=index_params, consistency_level=described.get("consistency_level_name") or "Strong",
                 properties=dict(described.get("properties") or {}), **extra)


def _check_compatible(target: MilvusStore, name: str, described: dict[str, Any], vector_field: str,
                      dim: int) -> None:
    """An existing target collection must hold the same vectors: same field, dim and (cbmir) model."""
    theirs = target._call(target.client.describe_collection, name)
    their_fields = {f["name"]: f for f in theirs["fields"]}
    their_vector = their_fields.get(vector_field)
    if their_vector is None or int(their_vector["params"].get("dim", -1)) != dim:
        their_dim = their_vector["params"].get("dim") if their_vector else "no such field"
        raise MigrationError(
            f"collection {name!r} at {target.uri} has {vector_field} dim {their_dim}, the source's has dim {dim}: "
            f"its vectors come from another model; migrate into another --collection, or drop it first")
    missing = [f["name"] for f in described["fields"] if f["name"] not in their_fields]
    if missing:
        raise MigrationError(f"collection {name!r} at {target.uri} lacks the source's fields {missing}: "
                             f"migrate into another --collection, or drop it first")
    ours = (described.get("properties") or {}).get(schema.PROPERTY_MODEL_IDENTITY)
    if ours:
        target.check_model(name, ours)


def _same_place(a: str, b: str) -> bool:
    if is_server_uri(a) or is_server_uri(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _number(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def report_json(report: MigrationReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
