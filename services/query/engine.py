"""The query path without transport: validate → decode → embed → (prefilter) → search; used by gRPC and eval."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import numpy as np

from cbmir.services.embedding import EmbeddingModel, ImageDecodeError
from cbmir.services.embedding.declared import DeclaredSizeError, declared_size
from cbmir.services.embedding.descriptors import DESCRIPTORS, hog_descriptor, l1_distances
from cbmir.services.embedding.precision import query_precision_tolerance
from cbmir.services.embedding.resize import decode_resized
from cbmir.services.query.admission import DEFAULT_DECODE_BUDGET_BYTES, BudgetExceeded, DecodeBudget
from cbmir.services.query.expansion import MAX_QUERY_EXPANSION, expanded_query
from cbmir.services.query.kreciprocal import DEFAULT_SHORTLIST, k_reciprocal_order
from cbmir.services.query.soft_prefilter import SOFT_REFERENCE_RANK, SOFT_SIMILARITY_WEIGHT, fuse, plausible_classes
from cbmir.services.query.vector_only import StoredVectorsModel
from cbmir.services.quoting import shown
from cbmir.services.store import (
    CollectionInfo,
    CollectionNotFoundError,
    Hit,
    InvalidFilterError,
    MilvusStore,
    ModelMismatchError,
    StoreUnavailableError,
)
from cbmir.services.store.filters import build_filter_expression
from cbmir.services.store.milvus import describe_differences
from cbmir.services.store.schema import EMBEDDING, LABEL, OUTPUT_FIELDS, PREDICTED_LABEL, SOURCE, THUMBNAIL

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_TOP_K = 1000
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024  # a 4096^2 16-bit DICOM is 32 MiB; a full-field mammogram ~27 MiB
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 8192^2 per frame: above any clinical radiograph or mammogram
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_K_PREP = 10  # seed 003's k_prep
RERANK_DESCRIPTORS = tuple(DESCRIPTORS)
K_RECIPROCAL = "kreciprocal"  # label-free: re-ranks the hits by their stored vectors (kreciprocal.py)
RERANKS = (*RERANK_DESCRIPTORS, K_RECIPROCAL)


class Rejection(Enum):
    INVALID = "invalid argument"
    RESOURCE = "resource exhausted"
    NOT_FOUND = "not found"
    PRECONDITION = "failed precondition"
    UNAVAILABLE = "unavailable"
    PERMISSION = "permission denied"  # an authenticated caller without the admin token (Erase)


class QueryRejected(Exception):
    def __init__(self, kind: Rejection, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Prefilter(Enum):
    OFF = "off"
    PREDICTED = "predicted"
    EXPLICIT = "explicit"
    SOFT = "soft"  # every plausible class searched, hits ranked by p(label) + similarity (soft_prefilter.py)


@dataclass
class SearchQuery:
    image: bytes | None = None
    vector: np.ndarray | None = None
    id: str | None = None
    top_k: int = 10
    collection: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    prefilter: Prefilter = Prefilter.OFF
    prefilter_class: str = ""
    exclude_query_id: bool = False
    exclude_ids: tuple[str, ...] = ()  # stored ids never to return (in-process callers: eval leaves a patient out)
    min_confidence: float = 0.0  # 0: the engine's default
    rerank: str = ""  # "" or a descriptor kind ("hog")
    k_prep: int = 0  # candidates to re-rank; 0: max(DEFAULT_K_PREP, top_k)
    thumbnails: bool = False  # also return each hit's stored thumbnail (base64 JPEG in fields["thumbnail"])
    query_expansion: int = 0  # αQE: search again with the query averaged into its top n hits (0: off)
    soft_weight: float | None = None  # SOFT: the similarity's weight beside p(label); None: SOFT_SIMILARITY_WEIGHT


@dataclass
class SearchResult:
    hits: list[Hit]
    collection: str
    model_id: str
    timings_ms: dict[str, float]
    predicted_class: str = ""
    predicted_probability: float = 0.0
    prefilter_applied: bool = False
    prefilter_note: str = ""
    reranked: bool = False


class RetrievalEngine:
    """Searches collections of one store with one embedding model; refuses collections of other models."""

    def __init__(
        self,
        store: MilvusStore,
        model: EmbeddingModel | StoredVectorsModel,
        default_collection: str,
        max_top_k: int = DEFAULT_MAX_TOP_K,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        return_source: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES,
    ) -> None:
        self.store = store
        self.model = model
        self.default_collection = default_collection
        self.max_top_k = max_top_k
        self.max_image_bytes = max_image_bytes
        self.min_confidence = min_confidence
        # A hit's `source` (where the image came from) is the operator's to reveal: paths can name patients.
        self.return_source = return_source
        self.max_image_pixels = max_image_pixels
        self.decode_budget = DecodeBudget(decode_budget_bytes)
        self.classes: list[str] | None = getattr(model, "classes", None)
        self.vectors_only = isinstance(model, StoredVectorsModel)  # cbmir serve --vectors-only: no CNN loaded
        self._model_json = model.identity_json if isinstance(model, StoredVectorsModel) else model.identity.to_json()
        self._checked: dict[str, int] = {}  # collection → dim, for collections of this model
        self._lock = threading.Lock()

    # -- validation ------------------------------------------------------------------------------------

    def warm_up(self) -> float:
        """Run the query paths of the model once on a grey image, so the first real query is not the one that
        pays for lazy initialisation (oneDNN kernels, autocast caches: ~5x a warm embed). Returns the ms spent."""
        started = time.perf_counter()
        if self.vectors_only:
            return 0.0
        size = self.model.preprocessing.input_size
        grey = np.full((size, size), 0.5, dtype=np.float32)
        self.model.embed([grey])
        if self.classes is not None:
            self.model.embed_and_predict([grey])
        return _ms(started)

    def collection_dim(self, name: str) -> int:
        """The collection's dim after checking it exists and holds this model's vectors (cached)."""
        with self._lock:
            if name in self._checked:
                return self._checked[name]
        try:
            differences = self.store.check_model(name, self._model_json, tolerated=("precision",),
                                                 offered_as="service")
            if "precision" in differences:
                self._accept_precision(name, *differences["precision"])
            dim = self.store.describe(name).dim
        except CollectionNotFoundError:
            raise QueryRejected(Rejection.NOT_FOUND, f"collection {shown(name)} not found") from None
        except ModelMismatchError as error:
            raise QueryRejected(Rejection.PRECONDITION, str(error)) from None
        except StoreUnavailableError as error:
            raise _unavailable(error) from None
        with self._lock:
            self._checked[name] = dim
        return dim

    def _accept_precision(self, name: str, stored: str, serving: str) -> None:
        """Queries embedded at another precision than the collection's: accepted within the measured tolerance
        (logged once per collection), refused otherwise with the flag that matches."""
        why = query_precision_tolerance(stored, serving)
        if why is None:
            raise ModelMismatchError(
                f"collection {name!r} holds vectors of another model than service: "
                f"{describe_differences({'precision': (stored, serving)}, 'service')}, a pair with no measured "
                f"tolerance; start the service with --precision {stored} (or auto)")
        log.warning("collection %s holds %s vectors, this service embeds queries at %s: accepted (%s)",
                    name, stored, serving, why,
                    extra={"collection": name, "collection_precision": stored, "query_precision": serving})

    def _validate(self, query: SearchQuery) -> str:
        given = [query.image is not None, query.vector is not None, bool(query.id)]
        if sum(given) != 1:
            raise QueryRejected(Rejection.INVALID, "give exactly one of: image bytes, vector, or id")
        if not 1 <= query.top_k <= self.max_top_k:
            raise QueryRejected(Rejection.INVALID, f"top_k must be between 1 and {self.max_top_k}, got {query.top_k}")
        if query.image is not None:
            if self.vectors_only:
                raise QueryRejected(Rejection.PRECONDITION, "this server answers vector and id queries only "
                                                            "(cbmir serve --vectors-only: no model loaded)")
            if not query.image:
                raise QueryRejected(Rejection.INVALID, "image is empty")
            if len(query.image) > self.max_image_bytes:
                raise QueryRejected(
                    Rejection.INVALID,
                    f"image is {len(query.image)} bytes, over the limit of {self.max_image_bytes}",
                )
        try:
            build_filter_expression(query.filters)
        except InvalidFilterError as error:
            raise QueryRejected(Rejection.INVALID, str(error)) from None
        if query.prefilter is Prefilter.EXPLICIT and not query.prefilter_class:
            raise QueryRejected(Rejection.INVALID, "prefilter EXPLICIT needs prefilter_class")
        if query.prefilter in (Prefilter.PREDICTED, Prefilter.SOFT):
            mode = query.prefilter.name
            if not self.classes:
                raise QueryRejected(
                    Rejection.PRECONDITION,
                    f"prefilter {mode} needs a model with a classifier head (a `cbmir train` checkpoint); this "
                    "server's model has none (use PREFILTER_MODE_EXPLICIT with a class, or OFF)",
                )
            if query.vector is not None:
                raise QueryRejected(Rejection.INVALID, f"prefilter {mode} needs an image or a stored id, not a vector")
        if query.soft_weight is not None and not (math.isfinite(query.soft_weight) and query.soft_weight >= 0):
            raise QueryRejected(Rejection.INVALID, f"soft_weight must be a finite number >= 0, got {query.soft_weight}")
        if query.prefilter is Prefilter.SOFT:
            if query.image is None:  # a stored row keeps its predicted class, not the probabilities soft needs
                raise QueryRejected(Rejection.INVALID, "prefilter SOFT needs the image: class probabilities are not "
                                                       "stored (use PREDICTED for a stored id)")
            if LABEL in query.filters:
                raise QueryRejected(Rejection.INVALID, "prefilter SOFT chooses the labels to search itself: drop the "
                                                       "label filter, or use PREFILTER_MODE_EXPLICIT")
        if not 0 <= query.query_expansion <= MAX_QUERY_EXPANSION:
            raise QueryRejected(Rejection.INVALID, f"query_expansion must be between 0 and {MAX_QUERY_EXPANSION}, "
                                                   f"got {query.query_expansion}")
        if not 0.0 <= query.min_confidence <= 1.0 or not math.isfinite(query.min_confidence):
            raise QueryRejected(Rejection.INVALID, f"min_confidence must be in [0, 1], got {query.min_confidence}")
        collection = query.collection or self.default_collection
        self.collection_dim(collection)
        if query.rerank:
            if query.rerank not in RERANKS:
                raise QueryRejected(Rejection.INVALID, f"unknown rerank {shown(query.rerank)}: choose one of "
                                                       f"{', '.join(RERANKS)} (or empty for none)")
            if query.vector is not None and query.rerank != K_RECIPROCAL:
                raise QueryRejected(Rejection.INVALID, "rerank needs an image or a stored id, not a vector")
            k_prep = self.k_prep(query)
            if not query.top_k <= k_prep <= self.max_top_k:
                raise QueryRejected(Rejection.INVALID,
                                    f"k_prep must be between top_k ({query.top_k}) and {self.max_top_k}, got {k_prep}")
            if query.rerank != K_RECIPROCAL and not self._call_store(self.store.has_descriptors, collection,
                                                                      query.rerank):
                raise QueryRejected(Rejection.PRECONDITION,
                                    f"collection {shown(collection)} has no {query.rerank} descriptors: ingest it with "
                                    f"--rerank-descriptor {query.rerank} to re-rank")
        return collection

    def k_prep(self, query: SearchQuery) -> int:
        # k-reciprocal neighbourhoods need a shortlist a few times their k; a descriptor re-orders seed 003's 10.
        # A default never exceeds what this server lets a request ask for; an explicit k_prep is validated.
        default = DEFAULT_SHORTLIST if query.rerank == K_RECIPROCAL else DEFAULT_K_PREP
        return query.k_prep or max(min(default, self.max_top_k), query.top_k)

    @staticmethod
    def _call_store(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call whose failures become the rejections a client can act on."""
        try:
            return fn(*args, **kwargs)
        except StoreUnavailableError as error:
            raise _unavailable(error) from None
        except InvalidFilterError as error:
            raise QueryRejected(Rejection.INVALID, str(error)) from None

    # -- the path --------------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        """request → validate → decode → embed (+classify) → prefilter → search → re-rank → result."""
        started = time.perf_counter()
        collection = self._validate(query)
        dim = self.collection_dim(collection)
        timings = {"decode": 0.0, "embed": 0.0, "search": 0.0, "rerank": 0.0}
        result = SearchResult(hits=[], collection=collection, model_id=self.model.identity.model_id,
                              timings_ms=timings)
        pixels: np.ndarray | None = None
        probabilities: np.ndarray | None = None
        stored: dict | None = None

        if query.image is not None:
            t = time.perf_counter()
            size = self.model.preprocessing.input_size
            try:
                with self._admitted(query.image, size):
                    # The read tasks' own call: same downscale, same resize, same quantisation as the stored vector.
                    pixels = decode_resized(query.image, size, max_pixels=self.max_image_pixels).pixels
            except ImageDecodeError as error:
                raise QueryRejected(Rejection.INVALID, f"cannot decode image: {error}") from None
            timings["decode"] = _ms(t)
            t = time.perf_counter()
            if query.prefilter in (Prefilter.PREDICTED, Prefilter.SOFT):
                vectors, probs = self.model.embed_and_predict([pixels])
                vector, probabilities = vectors[0], probs[0]
            else:
                vector = self.model.embed([pixels])[0]
            timings["embed"] = _ms(t)
        elif query.vector is not None:
            vector = np.asarray(query.vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != dim:
                raise QueryRejected(
                    Rejection.INVALID, f"vector has dim {vector.shape[0]}, collection {shown(collection)} has dim {dim}"
                )
            if not np.all(np.isfinite(vector)):
                raise QueryRejected(Rejection.INVALID, "vector contains NaN or infinite values")
            # Cosine and IP divide by, or scale with, the norm: zero gives every score 0, an overflowing one NaN.
            norm = float(np.linalg.norm(vector.astype(np.float64)))
            if not norm > 0.0:
                raise QueryRejected(Rejection.INVALID, "vector is all zeros: it has no direction to search by")
            if not norm ** 2 < float(np.finfo(np.float32).max):  # the store sums squares in float32
                raise QueryRejected(Rejection.INVALID, f"vector norm overflows float32 (values up to "
                                                       f"{float(np.abs(vector).max()):.3g}): scale it down")
        else:
            stored = self._stored_row(collection, str(query.id))
            vector = np.asarray(stored[EMBEDDING], dtype=np.float32)

        filters = dict(query.filters)
        soft_classes = (self._soft_classes(result, probabilities) if query.prefilter is Prefilter.SOFT
                        else self._apply_prefilter(query, filters, result, probabilities, stored))

        exclude = [*query.exclude_ids, *([str(query.id)] if query.id and query.exclude_query_id else [])]
        wanted = self.k_prep(query) if query.rerank else query.top_k
        t = time.perf_counter()
        # Thumbnails only when asked, and only from collections that store them (older ones lack the field).
        fields = (*OUTPUT_FIELDS, THUMBNAIL) if query.thumbnails and self._call_store(
            self.store.has_field, collection, THUMBNAIL) else None
        if query.query_expansion:
            first = self._search_hits(collection, vector, max(wanted, query.query_expansion), filters, exclude,
                                      fields, soft_classes, result, query.soft_weight)
            vector = self._expanded(collection, vector, first[: query.query_expansion])
        hits = self._search_hits(collection, vector, wanted, filters, exclude, fields, soft_classes, result,
                                 query.soft_weight)
        timings["search"] = _ms(t)

        if query.rerank:
            t = time.perf_counter()
            hits = (self._rerank_k_reciprocal(collection, vector, hits) if query.rerank == K_RECIPROCAL
                    else self._rerank(collection, query, hits, pixels))
            result.reranked = True
            timings["rerank"] = _ms(t)
        result.hits = hits[: query.top_k]
        if not self.return_source:
            result.hits = [Hit(h.id, h.distance, h.score, {k: v for k, v in h.fields.items() if k != SOURCE})
                           for h in result.hits]
        timings["total"] = _ms(started)
        return result

    def _search_hits(self, collection: str, vector: np.ndarray, wanted: int, filters: dict[str, str],
                     exclude: list[str], fields: tuple[str, ...] | None, soft_classes: dict[str, float] | None,
                     result: SearchResult, soft_weight: float | None = None) -> list[Hit]:
        """One search, or with a SOFT prefilter one per plausible class (its partition) fused into one list."""
        if not soft_classes:
            return self._call_store(self.store.search, collection, vector[None, :], wanted, filters,
                                    exclude_ids=exclude, output_fields=fields)[0]
        per_class = {label: self._call_store(self.store.search, collection, vector[None, :],
                                             max(wanted, SOFT_REFERENCE_RANK), {**filters, LABEL: label},
                                             exclude_ids=exclude, output_fields=fields)[0]
                     for label in soft_classes}
        weight = SOFT_SIMILARITY_WEIGHT if soft_weight is None else soft_weight
        hits = fuse(per_class, soft_classes, weight)[:wanted]
        if hits:
            return hits
        # No labelled row in any plausible class: what the whole collection holds beats nothing.
        result.prefilter_applied = False
        result.prefilter_note = "soft: no labelled image in the plausible classes: searched everything"
        return self._search_hits(collection, vector, wanted, filters, exclude, fields, None, result)

    def _expanded(self, collection: str, vector: np.ndarray, neighbours: list[Hit]) -> np.ndarray:
        """The αQE query from the stored vectors of the first hits, closest first."""
        rows = self._call_store(self.store.get_rows, collection, [h.id for h in neighbours])
        stored = [np.asarray(rows[h.id][EMBEDDING], dtype=np.float32) for h in neighbours if h.id in rows]
        return expanded_query(vector, stored)

    def _soft_classes(self, result: SearchResult, probabilities: np.ndarray | None) -> dict[str, float]:
        """The labels a SOFT prefilter searches, with the query's probability of each."""
        assert self.classes is not None and probabilities is not None  # _validate: a model with a head, an image
        chosen = plausible_classes(probabilities, self.classes)
        result.predicted_class, result.predicted_probability = next(iter(chosen.items()))
        result.prefilter_applied = True
        shown_classes = ", ".join(f"{shown(label)} ({p:.2f})" for label, p in chosen.items())
        result.prefilter_note = f"soft: searched labels {shown_classes}; hits ranked by p(label) + similarity"
        return chosen

    def _apply_prefilter(self, query: SearchQuery, filters: dict[str, str], result: SearchResult,
                         probabilities: np.ndarray | None, stored: dict | None) -> None:
        """Restrict `filters` to one class (the label is the partition key, so Milvus searches one partition)."""
        if query.prefilter is Prefilter.EXPLICIT:
            chosen, note = query.prefilter_class, "explicit class"
        elif query.prefilter is Prefilter.PREDICTED:
            assert self.classes is not None
            threshold = query.min_confidence or self.min_confidence
            if probabilities is not None:
                best = int(np.argmax(probabilities))
                result.predicted_class = self.classes[best]
                result.predicted_probability = float(probabilities[best])
            else:  # a stored image: its class was predicted at ingestion
                result.predicted_class = str((stored or {}).get(PREDICTED_LABEL, ""))
                result.predicted_probability = 1.0 if result.predicted_class else 0.0
            if not result.predicted_class:
                result.prefilter_note = "no predicted class stored for this image: searched the whole collection"
                return
            if result.predicted_probability < threshold:
                result.prefilter_note = (f"predicted {result.predicted_class} with probability "
                                         f"{result.predicted_probability:.2f} < {threshold:.2f}: searched the whole "
                                         f"collection")
                return
            chosen, note = result.predicted_class, "predicted class"
        else:
            return
        if LABEL in filters and filters[LABEL] != chosen:
            raise QueryRejected(Rejection.INVALID, f"filter label={shown(filters[LABEL])} contradicts the prefilter "
                                                   f"class {shown(chosen)}")
        filters[LABEL] = chosen
        result.prefilter_applied = True
        result.prefilter_note = f"searched only label {shown(chosen)} ({note})"

    @contextlib.contextmanager
    def _admitted(self, image: bytes, size: int) -> Iterator[None]:
        """Refuse from the header what is over the pixel limit, then hold its decode cost in the budget."""
        try:
            declared = declared_size(image, max_pixels=self.max_image_pixels, min_size=2 * size)
        except DeclaredSizeError as error:
            raise QueryRejected(Rejection.INVALID, f"cannot decode image: {error}") from None
        if declared is None:  # not a format we can size from a header: the decoder refuses it
            yield
            return
        if declared.pixels > self.max_image_pixels:
            raise QueryRejected(Rejection.INVALID, f"image is {declared.width}x{declared.height} pixels, over the "
                                                   f"limit of {self.max_image_pixels} pixels per image")
        if declared.decode_bytes > self.decode_budget.max_bytes:
            raise QueryRejected(Rejection.INVALID, f"decoding this image needs ~{declared.decode_bytes / 2**20:.0f} "
                                                   f"MiB, over the server's whole decode budget of "
                                                   f"{self.decode_budget.max_bytes / 2**20:.0f} MiB")
        try:
            self.decode_budget.acquire(declared.decode_bytes)
        except BudgetExceeded as error:
            raise QueryRejected(Rejection.RESOURCE, str(error)) from None
        try:
            yield
        finally:
            self.decode_budget.release(declared.decode_bytes)

    def _rerank(self, collection: str, query: SearchQuery, hits: list[Hit], pixels: np.ndarray | None) -> list[Hit]:
        """Re-order CNN candidates by descriptor L1 distance (seed 003); candidates without one go last."""
        ids = [h.id for h in hits]
        if pixels is not None:
            query_descriptor = hog_descriptor(pixels)
        else:
            own = self._call_store(self.store.get_descriptors, collection, query.rerank, [str(query.id)])
            if str(query.id) not in own:
                raise QueryRejected(Rejection.PRECONDITION, f"image {shown(query.id)} has no {query.rerank} descriptor")
            query_descriptor = own[str(query.id)]
        found = self._call_store(self.store.get_descriptors, collection, query.rerank, ids)
        have = [h for h in hits if h.id in found]
        missing = [h for h in hits if h.id not in found]
        if not have:
            return missing
        distances = l1_distances(query_descriptor, np.stack([found[h.id] for h in have]))
        order = np.argsort(distances, kind="stable")
        return [have[i] for i in order] + missing

    def _rerank_k_reciprocal(self, collection: str, vector: np.ndarray, hits: list[Hit]) -> list[Hit]:
        """Re-order the hits by k-reciprocal neighbourhoods computed among the query and the hits' stored vectors."""
        rows = self._call_store(self.store.get_rows, collection, [h.id for h in hits])
        have = [h for h in hits if h.id in rows]
        missing = [h for h in hits if h.id not in rows]  # deleted since the search: kept, last
        if len(have) < 2:
            return have + missing
        stored = np.stack([np.asarray(rows[h.id][EMBEDDING], dtype=np.float32) for h in have])
        return [have[i] for i in k_reciprocal_order(vector, stored)] + missing

    def _stored_row(self, collection: str, image_id: str) -> dict:
        try:
            rows = self.store.get_rows(collection, [image_id])
        except InvalidFilterError:
            raise QueryRejected(Rejection.INVALID, f"malformed id {shown(image_id)}") from None
        except StoreUnavailableError as error:
            raise _unavailable(error) from None
        if image_id not in rows:
            raise QueryRejected(Rejection.NOT_FOUND, f"no image with id {shown(image_id)} in collection "
                                                     f"{shown(collection)}")
        return rows[image_id]

    def describe(self, collection: str = "") -> CollectionInfo:
        name = collection or self.default_collection
        try:
            return self.store.describe(name)
        except CollectionNotFoundError:
            raise QueryRejected(Rejection.NOT_FOUND, f"collection {shown(name)} not found") from None
        except StoreUnavailableError as error:
            raise _unavailable(error) from None


def _unavailable(error: StoreUnavailableError) -> QueryRejected:
    """The client learns that the store is down, not where it lives: the address and the cause go to the log."""
    log.warning("vector store unavailable: %s", error)
    return QueryRejected(Rejection.UNAVAILABLE, "the vector store is unavailable (the cause is in the server log): "
                                                "retry later")


def _ms(since: float) -> float:
    value = (time.perf_counter() - since) * 1000.0
    return value if math.isfinite(value) else 0.0
