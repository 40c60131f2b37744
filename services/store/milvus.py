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
from pymilvus.client import entity_helper as pymilvus_entity_helper
from pymilvus.exceptions import MilvusException

from cbmir.services.store import schema
from cbmir.services.store.defaults import DEFAULT_URI, is_server_uri
from cbmir.services.store.filters import build_filter_expression, ids_expression
from cbmir.services.store.index import IndexConfig, choose_index, search_params_for, with_overrides

log = logging.getLogger(__name__)


class _LiteIteratorTimestampNotice(logging.Filter):
    """Milvus Lite has no timestamp service, so every query iterator (iter_ids, migrate) warns that it "failed to
    get mvccTs" and falls back to the client's clock, which is right for one local file: not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_LiteIteratorTimestampNotice())

# pymilvus 3.0.2 checks each VARCHAR value of a row-based write by iterating over it as over a list of strings: one
# Python step per character, ~5 000 for a row's thumbnail, 0.35 ms of every row ingest writes (a third of a
# Milvus Lite upsert; docs/benchmarks.md "The write path"). Milvus Lite and the server check every length again,
# and `refuse_over_long_values` names the field of an over-long value in one len() a value, so the client's
# character loop is off (tests/store/test_store.py).
pymilvus_entity_helper.CHECK_STR_ARRAY = False

# Milvus caps `id in [...]` lists and messages; keep each request well under both.
ID_QUERY_CHUNK = 1000
UPSERT_RETRIES = 6  # waits 0.5 + 1 + 2 + 4 + 8 s: rides out a Milvus restart's first seconds or a write quota burst
DEFAULT_TIMEOUT = 10.0  # seconds per server call, retries included: a dead server fails fast, never hangs a caller
# What Milvus says when it is (or its network is) unreachable, or when it is shedding load.
_UNAVAILABLE_MARKERS = ("unavailable", "connect", "deadline", "timeout", "closed", "fail to", "not ready",
                        "no available", "shutting down", "stopping")
_BACKPRESSURE_MARKERS = ("rate limit", "ratelimit", "quota", "deny to write", "denied to write", "force deny",
                         "memory limit", "disk limit", "too many requests", "resource exhausted")
# Consistency of a search (Milvus: which writes it must wait to see). Strong waits for the next time tick
# (proxy.timeTickInterval, 200 ms) on every search; Session waits for this client's own last write (nothing for a
# process that never wrote); Bounded reads what the query node holds, at most common.gracefulTime (5 s) stale,
# without waiting; Eventually never waits. Measured (docs/benchmarks.md "Where a server query spends its time"):
# Strong ~190 ms of tsafe wait per search, the other three alike. Session is the default: a serving process,
# which never writes, waits for nothing, and a process that writes then searches still finds its own rows.
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
DEFAULT_SEARCH_CONSISTENCY = "Session"
_RATE_LIMIT_CODES = {8, 9}  # ErrorCode.RATE_LIMIT, FORCE_DENY (write quotas of Milvus 2.3)


class StoreError(Exception):
    """Base of the store's errors; each message says what to do."""


class StoreUnavailableError(StoreError):
    """Milvus cannot be reached (server down, wrong URI, or a Milvus Lite file held by another process)."""


class StoreBusyError(StoreUnavailableError):
    """Milvus refused the call to protect itself (rate limit, write quota, memory/disk limit): retry later."""


def is_backpressure(error: Exception) -> bool:
    """A quota / rate-limit refusal: transient by definition, so writes retry it with backoff."""
    code = getattr(error, "code", None)
    compatible = getattr(error, "compatible_code", None)
    if code in _RATE_LIMIT_CODES or compatible in _RATE_LIMIT_CODES:
        return True
    text = _reason(error).lower()
    return any(s in text for s in _BACKPRESSURE_MARKERS)


def is_unreachable(error: Exception) -> bool:
    text = _reason(error).lower()
    return any(s in text for s in _UNAVAILABLE_MARKERS)


class CollectionNotFoundError(StoreError):
    pass


class ModelMismatchError(StoreError):
    """The collection was filled by a different embedding model than the one offered."""


IDENTITY_FIELDS = ("architecture", "weights_sha256", "dim", "preprocessing", "precision")


def identity_differences(stored: Mapping[str, Any], offered: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (collection's value, offered value)} for each model-identity field that differs. A collection
    written before precision was recorded was fp32, as ModelIdentity.from_json reads it."""
    defaults = {"precision": "fp32"}
    differences = {}
    present = set(stored) | set(offered)
    for key in [*(k for k in IDENTITY_FIELDS if k in present), *sorted(present - set(IDENTITY_FIELDS))]:
        have, want = stored.get(key, defaults.get(key)), offered.get(key, defaults.get(key))
        if have != want:
            differences[key] = (have, want)
    return differences


def _shown(key: str, value: Any) -> str:
    if key == "weights_sha256" and isinstance(value, str):
        return value[:12]
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, dict) else str(value)


def describe_differences(differences: Mapping[str, tuple[Any, Any]], offered_as: str = "this model") -> str:
    """'precision: collection fp16, service bf16; dim: ...': only the fields that differ, both sides named."""
    parts = []
    for key, (have, want) in differences.items():
        if isinstance(have, dict) and isinstance(want, dict):  # preprocessing: name the sub-fields that differ
            keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            have = {k: have.get(k) for k in keys}
            want = {k: want.get(k) for k in keys}
        parts.append(f"{key}: collection {_shown(key, have)}, {offered_as} {_shown(key, want)}")
    return "; ".join(parts)


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


def _is_released(error: MilvusException) -> bool:
    text = _reason(error).lower()
    return "not loaded" in text or "released" in text


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

# gRPC keepalive that each peer accepts. pymilvus pings every 10 s, with or without a call in flight.
# - Milvus Lite serves from an in-process grpc.server with gRPC core's defaults: no pings without calls, none
#   closer than 5 min; the third early ping gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings". Lite is this very
#   process over loopback, with no NAT or proxy to keep a connection alive for: keepalive off.
# - A Milvus server's proxy enforces MinTime 5 s and PermitWithoutStream true (milvus-io/milvus
#   internal/distributed/proxy/service.go): pings every 10 s, also idle, detect a dead server or a dropped NAT
#   entry, and the server accepts them.
GRPC_KEEPALIVE_OFF_MS = 2**31 - 1  # gRPC core: INT_MAX keepalive time = no keepalive pings
LITE_GRPC_OPTIONS: dict[str, int] = {"grpc.keepalive_time_ms": GRPC_KEEPALIVE_OFF_MS,
                                     "grpc.keepalive_permit_without_calls": 0}
SERVER_GRPC_OPTIONS: dict[str, int] = {"grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 5_000,
                                       "grpc.keepalive_permit_without_calls": 1}


def _lite_client(path: str) -> MilvusClient:
    """One client per Milvus Lite file per process.

    Milvus Lite serves a file from an in-process gRPC server that a second connection to the same file cannot
    share, so connections are reused; they send no keepalive pings (LITE_GRPC_OPTIONS).
    """
    key = str(Path(path).resolve())
    with _lite_lock:
        if key not in _lite_clients:
            _lite_clients[key] = MilvusClient(uri=key, grpc_options=dict(LITE_GRPC_OPTIONS))
        return _lite_clients[key]


class MilvusStore:
    """Collections of image embeddings with their labels; the only code that talks to Milvus."""

    def __init__(self, uri: str = DEFAULT_URI, token: str = "", timeout: float = DEFAULT_TIMEOUT,
                 search_consistency: str = DEFAULT_SEARCH_CONSISTENCY,
                 search_overrides: dict[str, int] | None = None) -> None:
        if search_consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"unknown consistency level {search_consistency!r}: choose from "
                             f"{', '.join(CONSISTENCY_LEVELS)}")
        self.uri = uri
        self._load_lock = threading.Lock()
        self.timeout = timeout
        self.search_consistency = search_consistency
        # Search parameters that win over what each collection recorded at creation (e.g. {"ef": 128}): the
        # operator's recall / latency trade-off for a collection that grew past the size it was created for.
        self.search_overrides = dict(search_overrides or {})
        if not is_server_uri(uri):
            path = Path(uri)
            if path.suffix != ".db":
                raise StoreUnavailableError(
                    f"Milvus Lite path must end in .db: {uri} (or pass a server URI such as http://127.0.0.1:19530)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = _lite_client(uri) if not is_server_uri(uri) else MilvusClient(
                uri=uri, token=token, timeout=timeout, grpc_options=dict(SERVER_GRPC_OPTIONS))
        except MilvusException as error:
            raise _unavailable(uri, error) from None
        self._index_cache: dict[str, IndexConfig] = {}
        self._fields: dict[str, frozenset[str]] = {}  # collection -> its field names (has_field)
        self._erasure_fields_cache: dict[str, bool] = {}
        self._server_version: str | None = None

    def close(self) -> None:
        if is_server_uri(self.uri):  # Lite clients are shared for the life of the process, see _lite_client
            with contextlib.suppress(MilvusException):
                self.client.close()

    # -- collections -------------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a pymilvus call with a bounded deadline; unreachable → StoreUnavailableError, quota → StoreBusyError.

        pymilvus retries a failing call up to 75 times with backoff unless given a timeout; with one (all its
        retries included) a dead server fails in `self.timeout` seconds at most instead of minutes.
        """
        if is_server_uri(self.uri):
            kwargs.setdefault("timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except MilvusException as error:
            if is_backpressure(error):
                raise StoreBusyError(f"Milvus at {self.uri} is shedding load: {_reason(error)} (retry later, or "
                                     f"raise its quotas / add query nodes)") from None
            if is_unreachable(error):
                raise _unavailable(self.uri, error) from None
            raise

    def _call_loaded(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`_call` on collection `name`, loading it first if Milvus says it is released.

        A Milvus Lite file reopened by a new process, and a restarted Milvus server, hold their collections
        released until someone loads them; reads would fail until then.
        """
        try:
            return self._call(fn, *args, **kwargs)
        except MilvusException as error:
            if not _is_released(error):
                raise
        # One loader at a time: concurrent first queries of a server all meet "released" together.
        with self._load_lock:
            try:
                return self._call(fn, *args, **kwargs)  # another thread may have loaded it meanwhile
            except MilvusException as error:
                if not _is_released(error):
                    raise
            log.warning("collection %s is not loaded; loading it", name)
            self.load(name)
            return self._call(fn, *args, **kwargs)

    def has_collection(self, name: str) -> bool:
        return bool(self._call(self.client.has_collection, name))

    def list_collections(self) -> list[str]:
        return list(self._call(self.client.list_collections))

    def create_collection(self, name: str, model_identity_json: str, dim: int, index: IndexConfig,
                          id_salt_digest: str = "", num_partitions: int | None = None) -> None:
        """`num_partitions`: partitions the `label` partition key hashes into (Milvus default 16). Each holds its
        own segments, and an unfiltered search visits every segment: fewer partitions, fewer segments per search."""
        index_params = self.client.prepare_index_params()
        index_params.add_index(
            field_name=schema.EMBEDDING,
            index_type=index.index_type,
            metric_type=index.metric,
            params=index.build_params,
        )
        self.add_filter_indexes(index_params)
        self._call(
            self.client.create_collection,
            collection_name=name,
            schema=schema.build_schema(dim),
            index_params=index_params,
            consistency_level="Strong",
            **({"num_partitions": num_partitions} if num_partitions else {}),
            properties={
                schema.PROPERTY_MODEL_IDENTITY: model_identity_json,
                schema.PROPERTY_SCHEMA_VERSION: schema.SCHEMA_VERSION,
                schema.PROPERTY_SEARCH_PARAMS: json.dumps(index.search_params, sort_keys=True),
                **({schema.PROPERTY_ID_SALT_DIGEST: id_salt_digest} if id_salt_digest else {}),
            },
        )
        log.info(
            "created collection",
            extra={"collection": name, "dim": dim, "index": index.index_type, "metric": index.metric,
                   "build_params": index.build_params, "search_params": index.search_params},
        )

    def ensure_collection(
        self, name: str, model_identity_json: str, dim: int, index: IndexConfig | None = None,
        id_salt_digest: str = "", num_partitions: int | None = None,
    ) -> None:
        """Create the collection for this model, or check that an existing one belongs to the same model and ids."""
        if self.has_collection(name):
            self.check_model(name, model_identity_json)
            self.check_id_salt(name, id_salt_digest)
            self.add_missing_filter_indexes(name)
            self.load(name)
            return
        self.create_collection(name, model_identity_json, dim, index or choose_index(), id_salt_digest, num_partitions)

    def has_erasure_fields(self, name: str) -> bool:
        """Whether `name` has patient_hash/study_hash (schema version 2+); a version-1 collection is written without
        them (cbmir erase cannot find its rows by patient: re-ingest into a new collection)."""
        if name not in self._erasure_fields_cache:
            fields = {f["name"] for f in self._describe(name).get("fields", [])}
            self._erasure_fields_cache[name] = all(f in fields for f in schema.ERASURE_FIELDS)
        return self._erasure_fields_cache[name]

    def id_salt_digest(self, name: str) -> str:
        return self._describe(name).get("properties", {}).get(schema.PROPERTY_ID_SALT_DIGEST, "") or ""

    def check_id_salt(self, name: str, id_salt_digest: str) -> None:
        """Ids keyed with another salt would never match the stored ones: re-ingestion would duplicate every image."""
        stored = self.id_salt_digest(name)
        if stored != id_salt_digest:
            have = f"salt digest {stored}" if stored else "no salt"
            offered = f"salt digest {id_salt_digest}" if id_salt_digest else "no salt"
            raise ModelMismatchError(
                f"collection {name!r} keys its image ids with {have}, this run with {offered}: pass the same "
                f"--id-salt (or CBMIR_ID_SALT) as the run that created it, or use another --collection")

    def check_model(self, name: str, model_identity_json: str, tolerated: Sequence[str] = (),
                    offered_as: str = "this model") -> dict[str, tuple[Any, Any]]:
        """Refuse a model whose identity differs from the collection's in any field but the `tolerated` ones;
        -> the tolerated fields that differ, {field: (collection's value, offered value)}."""
        stored = self.model_identity_json(name)
        if not stored:
            raise ModelMismatchError(f"collection {name!r} was not created by cbmir (no model identity recorded)")
        differences = identity_differences(json.loads(stored), json.loads(model_identity_json))
        refused = {k: v for k, v in differences.items() if k not in tolerated}
        if refused:
            fix = (f"pass --precision {refused['precision'][0]}" if list(refused) == ["precision"]
                   else "use the collection's model")
            raise ModelMismatchError(
                f"collection {name!r} holds vectors of another model than {offered_as}: "
                f"{describe_differences(differences, offered_as)}; {fix}, or another --collection for this one")
        return differences

    def _describe(self, name: str) -> dict[str, Any]:
        if not self.has_collection(name):
            raise CollectionNotFoundError(
                f"collection {name!r} not found at {self.uri}; existing: {', '.join(self.list_collections()) or 'none'}"
            )
        return self._call(self.client.describe_collection, name)

    def has_field(self, name: str, field: str) -> bool:
        """Whether collection `name` has `field` (collections made before a field was added lack it)."""
        known = self._fields.get(name)
        if known is None:
            known = self._fields[name] = frozenset(f["name"] for f in self._describe(name).get("fields", []))
        return field in known

    def model_identity_json(self, name: str) -> str:
        return self._describe(name).get("properties", {}).get(schema.PROPERTY_MODEL_IDENTITY, "")

    def index_config(self, name: str) -> IndexConfig:
        if name not in self._index_cache:
            properties = self._describe(name).get("properties", {})
            described = self._call(self.client.describe_index, name, schema.EMBEDDING)
            build = {k: _number(v) for k, v in described.items()
                     if k not in ("index_type", "metric_type", "field_name", "index_name", "total_rows",
                                  "indexed_rows", "pending_index_rows", "state", "params")}
            if isinstance(described.get("params"), dict):
                build.update({k: _number(v) for k, v in described["params"].items()})
            if properties.get(schema.PROPERTY_SEARCH_PARAMS):
                search = json.loads(properties[schema.PROPERTY_SEARCH_PARAMS])
            else:  # a collection made before search parameters were recorded: choose for its size now
                chosen = choose_index(described["index_type"], described["metric_type"],
                                      expected_rows=max(self.count(name), int(build.get("nlist", 1)) ** 2 // 16))
                search = chosen.search_params
            search = with_overrides(described["index_type"], search, self.search_overrides)
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

    def ping(self, name: str) -> None:
        """Raise StoreUnavailableError unless `name` can be read now (loading it if a restart released it)."""
        try:
            self.count(name)
        except MilvusException as error:
            raise _unavailable(self.uri, error) from None

    def count(self, name: str) -> int:
        result = self._call_loaded(name, self.client.query, name, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def flush(self, name: str) -> None:
        self._call(self.client.flush, name)

    # -- writes --------------------------------------------------------------------------------------

    def upsert(self, name: str, batch: pa.RecordBatch | pa.Table | Sequence[Mapping[str, Any]],
               absent: bool = False) -> int:
        """Insert-or-replace by id: writing the same image twice leaves one row. Retries transient errors.

        `absent`: the caller has just checked that none of these ids is stored, so a plain insert does.
        """
        if isinstance(batch, pa.RecordBatch | pa.Table):
            rows = rows_from_arrow(batch)  # values cut to their field's length already
        else:
            rows = list(batch)
            refuse_over_long_values(rows)
        if not rows:
            return 0
        if not self.has_field(name, schema.THUMBNAIL):
            # A collection created before thumbnails (or a descriptor companion): it keeps its schema.
            rows = [{k: v for k, v in row.items() if k != schema.THUMBNAIL} for row in rows]
        elif any(schema.THUMBNAIL not in row for row in rows):
            rows = [{schema.THUMBNAIL: "", **row} for row in rows]  # written by a caller that makes none
        if self.has_erasure_fields(name):  # rows of a non-DICOM writer have no erasure keys: "" (nothing to erase by)
            rows = [row if all(k in row for k in schema.ERASURE_FIELDS)
                    else {**dict.fromkeys(schema.ERASURE_FIELDS, ""), **row} for row in rows]
        else:  # a schema-1 collection (or a descriptor companion) has no such fields
            rows = [{k: v for k, v in row.items() if k not in schema.ERASURE_FIELDS} for row in rows]
        delay = 0.5
        for attempt in range(1, UPSERT_RETRIES + 1):
            try:
                if absent:
                    self._call(self.client.insert, name, rows)
                else:
                    self._write(name, rows)
                return len(rows)
            except StoreUnavailableError as error:  # unreachable or busy (quota, rate limit): both pass
                if attempt == UPSERT_RETRIES:
                    raise
                log.warning("upsert failed, retrying", extra={"attempt": attempt, "retry_in_s": delay,
                                                               "busy": isinstance(error, StoreBusyError),
                                                               "error": str(error)})
                time.sleep(delay)
                delay *= 2
        return 0

    def _write(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Upsert; on Milvus servers older than 2.3.10 delete-then-insert, because their upsert files rows by
        the primary key's hash instead of the partition key, so a `label` filter would never find them
        (milvus-io/milvus#30607). Ingestion skips stored ids, so the delete usually has nothing to do."""
        if not self._upsert_misplaces_partition_key():
            self._call(self.client.upsert, name, rows)
            return
        ids = [str(row[schema.ID]) for row in rows]
        stale = self.existing_ids(name, ids)
        if stale:
            self._call(self.client.delete, name, filter=ids_expression(sorted(stale)))
        self._call(self.client.insert, name, rows)

    def server_version(self) -> str:
        """The Milvus server's version ("v2.3.5"), or "lite" for Milvus Lite; asked once per store."""
        if self._server_version is None:
            version = "lite"
            if is_server_uri(self.uri):
                version = str(self._call(self.client.get_server_version))
            self._server_version = version
        return self._server_version

    def _upsert_misplaces_partition_key(self) -> bool:
        version = self.server_version()
        return version != "lite" and _version_tuple(version) < (2, 3, 10)

    def add_missing_filter_indexes(self, name: str) -> list[str]:
        """Give a server collection made before its filter fields were indexed the indexes it lacks (the next
        ingest into it does this); Milvus builds them without releasing the collection. Returns the fields added."""
        if self.server_version() == "lite":
            return []
        present = set(self._call(self.client.list_indexes, name))
        fields = [f["name"] for f in self._describe(name).get("fields", []) if f["name"] not in present]
        index_params = self.client.prepare_index_params()
        self.add_filter_indexes(index_params, fields=fields)
        added = [index.field_name for index in index_params]
        if not added:
            return []
        try:
            self._call(self.client.create_index, name, index_params)
        except MilvusException as error:
            # Only speed is at stake (filters work without them): a user without index rights still ingests.
            log.warning("could not index the filter fields %s of %s: %s", added, name, error)
            return []
        log.info("indexed filter fields", extra={"collection": name, "fields": added})
        return added

    def add_filter_indexes(self, index_params: Any, fields: Sequence[str] = schema.FILTER_FIELDS) -> None:
        """A scalar index on every filterable field, on a server (docs/benchmarks.md "10^6 on 2026-12-06").

        Without one, a filter such as `label == "dense"` is evaluated row by row over the whole VARCHAR column on
        every search: ~3 ms per search at 10^6 rows on 2 cores, more than the HNSW search itself. Milvus 2.3 has a
        Trie (marisa) index for VARCHAR; 2.4+ also INVERTED, its recommended one. Milvus Lite takes only INVERTED
        and scans its rows in Python on every search anyway, so it gets none.
        """
        version = self.server_version()
        if version == "lite":
            return
        index_type = "INVERTED" if _version_tuple(version) >= (2, 4) else "Trie"
        for name in schema.FILTER_FIELDS:
            if name in fields:  # a collection made before a field existed (or migrated from elsewhere) lacks it
                index_params.add_index(field_name=name, index_type=index_type)

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
        companion = schema.descriptor_collection_name(name, kind)
        result = self._call_loaded(companion, self.client.query, companion,
                                   filter=ids_expression(list(ids)), output_fields=[schema.ID, schema.DESCRIPTOR])
        return {r[schema.ID]: np.asarray(r[schema.DESCRIPTOR], dtype=np.float32) for r in result}

    def drop_collection(self, name: str) -> None:
        """Drop a collection and its descriptor companions."""
        for other in self.list_collections():
            if other.startswith(f"{name}__"):
                self._call(self.client.drop_collection, other)
        self._call(self.client.drop_collection, name)
        self._index_cache.pop(name, None)
        self._fields.pop(name, None)
        self._erasure_fields_cache.pop(name, None)

    # -- reads ---------------------------------------------------------------------------------------

    def existing_ids(self, name: str, ids: Sequence[str], consistency_level: str | None = None) -> set[str]:
        """The ids of `ids` stored in `name`; "Session" skips a server's wait for the next time tick (~200 ms)
        and still sees this client's own writes."""
        found: set[str] = set()
        unique = sorted(set(ids))
        extra = {"consistency_level": consistency_level} if consistency_level else {}
        for start in range(0, len(unique), ID_QUERY_CHUNK):
            chunk = unique[start:start + ID_QUERY_CHUNK]
            result = self._call_loaded(name, self.client.query, name, filter=ids_expression(chunk),
                                       output_fields=[schema.ID], **extra)
            found.update(r[schema.ID] for r in result)
        return found

    def iter_ids(self, name: str, batch_size: int = 10_000) -> Iterator[str]:
        iterator = self._call_loaded(name, self.client.query_iterator, name, batch_size=batch_size, filter="",
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
        result = self._call_loaded(name, self.client.query, name, filter=ids_expression(list(ids)),
                                   output_fields=fields)
        return {r[schema.ID]: dict(r) for r in result}

    def search(
        self,
        name: str,
        vectors: np.ndarray,
        top_k: int,
        filters: Mapping[str, str] | None = None,
        exclude_ids: Sequence[str] = (),
        consistency_level: str | None = None,
        output_fields: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Top-k per query vector, closest first, with equality filters AND-ed; filters never become syntax.

        `consistency_level` (default: the store's `search_consistency`, Session) and `output_fields` (default: every
        scalar field, which the query service returns; `()` for ids and distances only) are per call.
        """
        level = consistency_level or self.search_consistency
        if level not in CONSISTENCY_LEVELS:
            raise ValueError(f"unknown consistency level {level!r}: choose from {', '.join(CONSISTENCY_LEVELS)}")
        index = self.index_config(name)
        expression = build_filter_expression(filters or {})
        if exclude_ids:
            not_ids = f"not ({ids_expression(list(exclude_ids))})"
            expression = f"{expression} and {not_ids}" if expression else not_ids
        result = self._call_loaded(
            name,
            self.client.search,
            name,
            data=_vector_bytes(vectors),
            limit=top_k,
            filter=expression,
            # ids only: ask for the primary key, since Milvus Lite answers an empty list with every field
            output_fields=list(schema.OUTPUT_FIELDS if output_fields is None else output_fields) or [schema.ID],
            search_params={"metric_type": index.metric, "params": search_params_for(index, top_k)},
            anns_field=schema.EMBEDDING,
            consistency_level=level,
        )
        higher_is_closer = index.higher_is_closer()
        return [
            [
                Hit(
                    id=str(h["id"]),
                    distance=float(h["distance"]),
                    score=float(h["distance"]) if higher_is_closer else -float(h["distance"]),
                    fields={k: str(v) for k, v in h.get("entity", {}).items() if k != schema.ID},
                )
                for h in hits
            ]
            for hits in result
        ]


def _vector_bytes(vectors: np.ndarray) -> list[bytes]:
    """Query vectors as raw float32 bytes, one per row: pymilvus sends bytes as they are (it learns the field's type
    from its cached schema), where a list or an ndarray row is packed float by float by `struct.pack(*row)`
    (~0.1-0.2 ms per 1024-d vector, see docs/benchmarks.md "Where a server query spends its time")."""
    rows = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    return [row.tobytes() for row in rows]


VARCHAR_LIMITS: dict[str, int] = {schema.ID: schema.ID_MAX_LENGTH, **schema.SCALAR_FIELDS, **schema.ERASURE_FIELDS}


def refuse_over_long_values(rows: Sequence[Mapping[str, Any]]) -> None:
    """ValueError naming the field of the first value longer than its VARCHAR allows: the check pymilvus no longer
    makes (CHECK_STR_ARRAY above) in one len() a value, where the server's own refusal would not name the field."""
    for row in rows:
        for name, limit in VARCHAR_LIMITS.items():
            value = row.get(name)
            if isinstance(value, str) and len(value) > limit:
                raise ValueError(f"field {name!r} holds {len(value)} characters, more than its {limit} (row id "
                                 f"{str(row.get(schema.ID, ''))[:64]!r}); nothing of this write was stored")


def rows_from_arrow(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Arrow columns → the row dicts pymilvus writes; the embedding column is a fixed-size list of float32."""
    columns = batch.column_names
    embeddings = batch.column(schema.EMBEDDING)
    if isinstance(embeddings, pa.ChunkedArray):
        embeddings = embeddings.combine_chunks()
    vectors = embeddings.values.to_numpy(zero_copy_only=False).reshape(len(batch), -1).tolist()
    scalars = {c: batch.column(c).to_pylist() for c in columns
               if c in schema.SCALAR_FIELDS or c in schema.ERASURE_FIELDS or c == schema.ID}
    rows = []
    for i, vector in enumerate(vectors):
        row: dict[str, Any] = {schema.ID: scalars[schema.ID][i], schema.EMBEDDING: vector}
        for name, max_length in (*schema.SCALAR_FIELDS.items(), *schema.ERASURE_FIELDS.items()):
            value = scalars[name][i] if name in scalars else ""
            row[name] = (value or "")[:max_length]
        rows.append(row)
    return rows


def _number(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _version_tuple(version: str) -> tuple[int, ...]:
    """"v2.3.5" / "2.3.5-dev" → (2, 3, 5); unparsable versions count as new."""
    digits = []
    for part in version.lstrip("vV").split("-")[0].split(".")[:3]:
        if not part.isdigit():
            return (99,)
        digits.append(int(part))
    return tuple(digits)
