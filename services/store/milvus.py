"""MilvusStore: one class over pymilvus for Milvus Lite (a local .db path) and a Milvus server (http://host:port)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from services.store import schema
from services.store.filters import build_filter_expression, ids_expression
from services.store.index import IndexConfig, choose_index, search_params_for

log = logging.getLogger(__name__)

DEFAULT_URI = "./cbmir.db"
DEFAULT_COLLECTION = "cbmir_images"
# Milvus caps `id in [...]` lists and messages; keep each request well under both.
ID_QUERY_CHUNK = 1000
UPSERT_RETRIES = 5


class StoreError(Exception):
    """Base of the store's errors; each message says what to do."""


class StoreUnavailableError(StoreError):
    """Milvus cannot be reached (server down, wrong URI, or a Milvus Lite file held by another process)."""


class CollectionNotFoundError(StoreError):
    pass


class ModelMismatchError(StoreError):
    """The collection was filled by a different embedding model than the one offered."""


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    score: float
    fields: dict[str, str]


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model_identity_json: str
    dim: int
    metric: str
    index_type: str
    index_params: dict[str, Any]
    row_count: int
    filter_fields: tuple[str, ...] = field(default=schema.FILTER_FIELDS)


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def _unavailable(uri: str, error: Exception) -> StoreUnavailableError:
    if is_server_uri(uri):
        hint = "is the Milvus server running and reachable?"
    else:
        hint = (
            "is another cbmir process (serve or ingest) holding this Milvus Lite file? Milvus Lite allows one "
            "process per file; stop it, or use a Milvus server (--milvus-uri http://host:19530) for both"
        )
    return StoreUnavailableError(f"cannot use Milvus at {uri}: {_reason(error)} ({hint})")


def _reason(error: Exception) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


_lite_clients: dict[str, MilvusClient] = {}
_lite_lock = threading.Lock()


def _lite_client(path: str) -> MilvusClient:
    """One client per Milvus Lite file per process.

    Milvus Lite serves a file from an in-process gRPC server; reconnecting to it after a client closed can be
    refused ("too_many_pings" GOAWAY from the earlier connection's keepalives), so connections are reused.
    """
    key = str(Path(path).resolve())
    with _lite_lock:
        if key not in _lite_clients:
            _lite_clients[key] = MilvusClient(uri=key)
        return _lite_clients[key]


class MilvusStore:
    """Collections of image embeddings with their labels; the only code that talks to Milvus."""

    def __init__(self, uri: str = DEFAULT_URI, token: str = "", timeout: float = 10.0) -> None:
        self.uri = uri
        self.timeout = timeout
        if not is_server_uri(uri):
            path = Path(uri)
            if path.suffix != ".db":
                raise StoreUnavailableError(
                    f"Milvus Lite path must end in .db: {uri} (or pass a server URI such as http://127.0.0.1:19530)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = _lite_client(uri) if not is_server_uri(uri) else MilvusClient(uri=uri, token=token,
                                                                                       timeout=timeout)
        except MilvusException as error:
            raise _unavailable(uri, error) from None
        self._index_cache: dict[str, IndexConfig] = {}

    def close(self) -> None:
        if is_server_uri(self.uri):  # Lite clients are shared for the life of the process, see _lite_client
            with contextlib.suppress(MilvusException):
                self.client.close()

    # -- collections -------------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a pymilvus call, turning connection failures into StoreUnavailableError."""
        try:
            return fn(*args, **kwargs)
        except MilvusException as error:
            text = _reason(error).lower()
            if any(s in text for s in ("unavailable", "connect", "deadline", "timeout", "closed", "fail to")):
                raise _unavailable(self.uri, error) from None
            raise

    def has_collection(self, name: str) -> bool:
        return bool(self._call(self.client.has_collection, name))

    def list_collections(self) -> list[str]:
        return list(self._call(self.client.list_collections))

    def create_collection(self, name: str, model_identity_json: str, dim: int, index: IndexConfig) -> None:
        index_params = self.client.prepare_index_params()
        index_params.add_index(
            field_name=schema.EMBEDDING,
            index_type=index.index_type,
            metric_type=index.metric,
            params=index.build_params,
        )
        self._call(
            self.client.create_collection,
            collection_name=name,
            schema=schema.build_schema(dim),
            index_params=index_params,
            consistency_level="Strong",
            properties={
                schema.PROPERTY_MODEL_IDENTITY: model_identity_json,
                schema.PROPERTY_SCHEMA_VERSION: schema.SCHEMA_VERSION,
            },
        )
        log.info(
            "created collection",
            extra={"collection": name, "dim": dim, "index": index.index_type, "metric": index.metric,
                   "build_params": index.build_params, "search_params": index.search_params},
        )

    def ensure_collection(
        self, name: str, model_identity_json: str, dim: int, index: IndexConfig | None = None
    ) -> None:
        """Create the collection for this model, or check that an existing one belongs to the same model."""
        if self.has_collection(name):
            self.check_model(name, model_identity_json)
            self.load(name)
            return
        self.create_collection(name, model_identity_json, dim, index or choose_index())

    def check_model(self, name: str, model_identity_json: str) -> None:
        stored = self.model_identity_json(name)
        if not stored:
            raise ModelMismatchError(f"collection {name!r} was not created by cbmir (no model identity recorded)")
        if json.loads(stored) != json.loads(model_identity_json):
            stored_id = json.loads(stored)
            offered = json.loads(model_identity_json)
            raise ModelMismatchError(
                f"collection {name!r} holds vectors of model {stored_id.get('architecture')} "
                f"(weights {str(stored_id.get('weights_sha256'))[:12]}, dim {stored_id.get('dim')}), not of "
                f"{offered.get('architecture')} (weights {str(offered.get('weights_sha256'))[:12]}, dim "
                f"{offered.get('dim')}); use that model, or another --collection for this one"
            )

    def _describe(self, name: str) -> dict[str, Any]:
        if not self.has_collection(name):
            raise CollectionNotFoundError(
                f"collection {name!r} not found at {self.uri}; existing: {', '.join(self.list_collections()) or 'none'}"
            )
        return self._call(self.client.describe_collection, name)

    def model_identity_json(self, name: str) -> str:
        return self._describe(name).get("properties", {}).get(schema.PROPERTY_MODEL_IDENTITY, "")

    def index_config(self, name: str) -> IndexConfig:
        if name not in self._index_cache:
            self._describe(name)
            described = self._call(self.client.describe_index, name, schema.EMBEDDING)
            build = {k: _number(v) for k, v in described.items()
                     if k not in ("index_type", "metric_type", "field_name", "index_name", "total_rows",
                                  "indexed_rows", "pending_index_rows", "state", "params")}
            if isinstance(described.get("params"), dict):
                build.update({k: _number(v) for k, v in described["params"].items()})
            chosen = choose_index(described["index_type"], described["metric_type"], expected_rows=1)
            search = chosen.search_params
            if "nlist" in build:
                search = {"nprobe": max(8, int(build["nlist"]) // 16)}
            self._index_cache[name] = IndexConfig(described["index_type"], described["metric_type"], build, search)
        return self._index_cache[name]

    def describe(self, name: str) -> CollectionInfo:
        described = self._describe(name)
        dim = next(int(f["params"]["dim"]) for f in described["fields"] if f["name"] == schema.EMBEDDING)
        index = self.index_config(name)
        return CollectionInfo(
            name=name,
            model_identity_json=described.get("properties", {}).get(schema.PROPERTY_MODEL_IDENTITY, ""),
            dim=dim,
            metric=index.metric,
            index_type=index.index_type,
            index_params={"build": index.build_params, "search": index.search_params},
            row_count=self.count(name),
        )

    def load(self, name: str) -> None:
        """A Milvus server searches only loaded collections (Lite always is)."""
        self._call(self.client.load_collection, name)

    def count(self, name: str) -> int:
        result = self._call(self.client.query, name, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def flush(self, name: str) -> None:
        self._call(self.client.flush, name)

    # -- writes --------------------------------------------------------------------------------------

    def upsert(self, name: str, batch: pa.RecordBatch | pa.Table | Sequence[Mapping[str, Any]]) -> int:
        """Insert-or-replace by id: writing the same image twice leaves one row. Retries transient errors."""
        rows = rows_from_arrow(batch) if isinstance(batch, pa.RecordBatch | pa.Table) else list(batch)
        if not rows:
            return 0
        delay = 0.5
        for attempt in range(1, UPSERT_RETRIES + 1):
            try:
                self._call(self.client.upsert, name, rows)
                return len(rows)
            except (StoreUnavailableError, MilvusException) as error:
                if attempt == UPSERT_RETRIES:
                    raise
                log.warning("upsert failed, retrying", extra={"attempt": attempt, "error": _reason(error)})
                time.sleep(delay)
                delay *= 2
        return 0

    # -- re-ranking descriptors (a companion collection per descriptor kind) ---------------------------

    def ensure_descriptor_collection(self, name: str, kind: str, dim: int) -> str:
        """Create `<name>__<kind>`; it is only ever read by id, so a FLAT index is all it needs."""
        companion = schema.descriptor_collection_name(name, kind)
        if not self.has_collection(companion):
            index_params = self.client.prepare_index_params()
            index_params.add_index(field_name=schema.DESCRIPTOR, index_type="FLAT", metric_type="L2", params={})
            self._call(self.client.create_collection, collection_name=companion,
                       schema=schema.build_descriptor_schema(dim), index_params=index_params,
                       consistency_level="Strong", properties={schema.PROPERTY_DESCRIPTOR_KIND: kind})
        else:
            self.load(companion)
        return companion

    def has_descriptors(self, name: str, kind: str) -> bool:
        return self.has_collection(schema.descriptor_collection_name(name, kind))

    def upsert_descriptors(self, name: str, kind: str, ids: Sequence[str], vectors: np.ndarray) -> int:
        rows = [{schema.ID: i, schema.DESCRIPTOR: v} for i, v in zip(ids, np.asarray(vectors).tolist(), strict=True)]
        return self.upsert(schema.descriptor_collection_name(name, kind), rows)

    def get_descriptors(self, name: str, kind: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        result = self._call(self.client.query, schema.descriptor_collection_name(name, kind),
                            filter=ids_expression(list(ids)), output_fields=[schema.ID, schema.DESCRIPTOR])
        return {r[schema.ID]: np.asarray(r[schema.DESCRIPTOR], dtype=np.float32) for r in result}

    def drop_collection(self, name: str) -> None:
        """Drop a collection and its descriptor companions."""
        for other in self.list_collections():
            if other.startswith(f"{name}__"):
                self._call(self.client.drop_collection, other)
        self._call(self.client.drop_collection, name)
        self._index_cache.pop(name, None)

    # -- reads ---------------------------------------------------------------------------------------

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(ids))
        for start in range(0, len(unique), ID_QUERY_CHUNK):
            chunk = unique[start:start + ID_QUERY_CHUNK]
            result = self._call(self.client.query, name, filter=ids_expression(chunk), output_fields=[schema.ID])
            found.update(r[schema.ID] for r in result)
        return found

    def iter_ids(self, name: str, batch_size: int = 10_000) -> Iterator[str]:
        iterator = self._call(self.client.query_iterator, name, batch_size=batch_size, filter="",
                              output_fields=[schema.ID])
        try:
            while True:
                page = iterator.next()
                if not page:
                    return
                for row in page:
                    yield row[schema.ID]
        finally:
            iterator.close()

    def get_rows(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> dict[str, dict[str, Any]]:
        self._describe(name)
        fields = [schema.ID, *schema.OUTPUT_FIELDS] + ([schema.EMBEDDING] if with_vectors else [])
        result = self._call(self.client.query, name, filter=ids_expression(list(ids)), output_fields=fields)
        return {r[schema.ID]: dict(r) for r in result}

    def search(
        self,
        name: str,
        vectors: np.ndarray,
        top_k: int,
        filters: Mapping[str, str] | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[list[Hit]]:
        """Top-k per query vector, closest first, with equality filters AND-ed; filters never become syntax."""
        index = self.index_config(name)
        expression = build_filter_expression(filters or {})
        if exclude_ids:
            not_ids = f"not ({ids_expression(list(exclude_ids))})"
            expression = f"{expression} and {not_ids}" if expression else not_ids
        result = self._call(
            self.client.search,
            name,
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            limit=top_k,
            filter=expression,
            output_fields=list(schema.OUTPUT_FIELDS),
            search_params={"metric_type": index.metric, "params": search_params_for(index, top_k)},
            anns_field=schema.EMBEDDING,
        )
        higher_is_closer = index.higher_is_closer()
        return [
            [
                Hit(
                    id=str(h["id"]),
                    distance=float(h["distance"]),
                    score=float(h["distance"]) if higher_is_closer else -float(h["distance"]),
                    fields={k: str(v) for k, v in h.get("entity", {}).items()},
                )
                for h in hits
            ]
            for hits in result
        ]


def rows_from_arrow(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Arrow columns → the row dicts pymilvus writes; the embedding column is a fixed-size list of float32."""
    columns = batch.column_names
    embeddings = batch.column(schema.EMBEDDING)
    if isinstance(embeddings, pa.ChunkedArray):
        embeddings = embeddings.combine_chunks()
    vectors = embeddings.values.to_numpy(zero_copy_only=False).reshape(len(batch), -1).tolist()
    scalars = {c: batch.column(c).to_pylist() for c in columns if c in schema.SCALAR_FIELDS or c == schema.ID}
    rows = []
    for i, vector in enumerate(vectors):
        row: dict[str, Any] = {schema.ID: scalars[schema.ID][i], schema.EMBEDDING: vector}
        for name, max_length in schema.SCALAR_FIELDS.items():
            value = scalars[name][i] if name in scalars else ""
            row[name] = (value or "")[:max_length]
        rows.append(row)
    return rows


def _number(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value
