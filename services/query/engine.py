"""The query path without transport: validate → decode → embed → (prefilter) → search; used by gRPC and eval."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from services.embedding import EmbeddingModel, ImageDecodeError, decode_image
from services.store import (
    CollectionInfo,
    CollectionNotFoundError,
    Hit,
    InvalidFilterError,
    MilvusStore,
    ModelMismatchError,
    StoreUnavailableError,
)
from services.store.filters import build_filter_expression
from services.store.schema import EMBEDDING, LABEL

log = logging.getLogger(__name__)

DEFAULT_MAX_TOP_K = 1000
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024  # a full-field mammogram DICOM is ~50-100 MB


class Rejection(Enum):
    INVALID = "invalid argument"
    NOT_FOUND = "not found"
    PRECONDITION = "failed precondition"
    UNAVAILABLE = "unavailable"


class QueryRejected(Exception):
    def __init__(self, kind: Rejection, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Prefilter(Enum):
    OFF = "off"
    PREDICTED = "predicted"
    EXPLICIT = "explicit"


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


@dataclass
class SearchResult:
    hits: list[Hit]
    collection: str
    model_id: str
    timings_ms: dict[str, float]
    predicted_class: str = ""
    predicted_probability: float = 0.0
    prefilter_applied: bool = False


class RetrievalEngine:
    """Searches collections of one store with one embedding model; refuses collections of other models."""

    def __init__(
        self,
        store: MilvusStore,
        model: EmbeddingModel,
        default_collection: str,
        max_top_k: int = DEFAULT_MAX_TOP_K,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        self.store = store
        self.model = model
        self.default_collection = default_collection
        self.max_top_k = max_top_k
        self.max_image_bytes = max_image_bytes
        self._model_json = model.identity.to_json()
        self._checked: dict[str, int] = {}  # collection → dim, for collections of this model
        self._lock = threading.Lock()

    # -- validation ------------------------------------------------------------------------------------

    def collection_dim(self, name: str) -> int:
        """The collection's dim after checking it exists and holds this model's vectors (cached)."""
        with self._lock:
            if name in self._checked:
                return self._checked[name]
        try:
            self.store.check_model(name, self._model_json)
            dim = self.store.describe(name).dim
        except CollectionNotFoundError as error:
            raise QueryRejected(Rejection.NOT_FOUND, str(error)) from None
        except ModelMismatchError as error:
            raise QueryRejected(Rejection.PRECONDITION, str(error)) from None
        except StoreUnavailableError as error:
            raise QueryRejected(Rejection.UNAVAILABLE, str(error)) from None
        with self._lock:
            self._checked[name] = dim
        return dim

    def _validate(self, query: SearchQuery) -> str:
        given = [query.image is not None, query.vector is not None, bool(query.id)]
        if sum(given) != 1:
            raise QueryRejected(Rejection.INVALID, "give exactly one of: image bytes, vector, or id")
        if not 1 <= query.top_k <= self.max_top_k:
            raise QueryRejected(Rejection.INVALID, f"top_k must be between 1 and {self.max_top_k}, got {query.top_k}")
        if query.image is not None:
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
        if query.prefilter is Prefilter.PREDICTED:
            raise QueryRejected(
                Rejection.PRECONDITION,
                "prefilter PREDICTED needs a model with a classifier head; this server's model has none "
                "(use PREFILTER_MODE_EXPLICIT with a class, or OFF)",
            )
        collection = query.collection or self.default_collection
        self.collection_dim(collection)
        return collection

    # -- the path --------------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        started = time.perf_counter()
        collection = self._validate(query)
        dim = self.collection_dim(collection)
        timings = {"decode": 0.0, "embed": 0.0, "search": 0.0, "rerank": 0.0}

        if query.image is not None:
            t = time.perf_counter()
            try:
                decoded = decode_image(query.image)
            except ImageDecodeError as error:
                raise QueryRejected(Rejection.INVALID, f"cannot decode image: {error}") from None
            timings["decode"] = _ms(t)
            t = time.perf_counter()
            vector = self.model.embed([decoded.pixels])[0]
            timings["embed"] = _ms(t)
        elif query.vector is not None:
            vector = np.asarray(query.vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != dim:
                raise QueryRejected(
                    Rejection.INVALID, f"vector has dim {vector.shape[0]}, collection {collection!r} has dim {dim}"
                )
            if not np.all(np.isfinite(vector)):
                raise QueryRejected(Rejection.INVALID, "vector contains NaN or infinite values")
        else:
            vector = self._stored_vector(collection, str(query.id))

        filters = dict(query.filters)
        prefilter_applied = False
        if query.prefilter is Prefilter.EXPLICIT:
            if LABEL in filters and filters[LABEL] != query.prefilter_class:
                raise QueryRejected(Rejection.INVALID, "filter label and prefilter_class disagree")
            filters[LABEL] = query.prefilter_class
            prefilter_applied = True

        exclude = [str(query.id)] if query.id and query.exclude_query_id else []
        t = time.perf_counter()
        try:
            hits = self.store.search(collection, vector[None, :], query.top_k, filters, exclude_ids=exclude)[0]
        except StoreUnavailableError as error:
            raise QueryRejected(Rejection.UNAVAILABLE, str(error)) from None
        except InvalidFilterError as error:
            raise QueryRejected(Rejection.INVALID, str(error)) from None
        timings["search"] = _ms(t)
        timings["total"] = _ms(started)
        return SearchResult(
            hits=hits,
            collection=collection,
            model_id=self.model.identity.model_id,
            timings_ms=timings,
            prefilter_applied=prefilter_applied,
        )

    def _stored_vector(self, collection: str, image_id: str) -> np.ndarray:
        try:
            rows = self.store.get_rows(collection, [image_id])
        except InvalidFilterError:
            raise QueryRejected(Rejection.INVALID, f"malformed id {image_id!r}") from None
        except StoreUnavailableError as error:
            raise QueryRejected(Rejection.UNAVAILABLE, str(error)) from None
        if image_id not in rows:
            raise QueryRejected(Rejection.NOT_FOUND, f"no image with id {image_id!r} in collection {collection!r}")
        return np.asarray(rows[image_id][EMBEDDING], dtype=np.float32)

    def describe(self, collection: str = "") -> CollectionInfo:
        name = collection or self.default_collection
        try:
            return self.store.describe(name)
        except CollectionNotFoundError as error:
            raise QueryRejected(Rejection.NOT_FOUND, str(error)) from None
        except StoreUnavailableError as error:
            raise QueryRejected(Rejection.UNAVAILABLE, str(error)) from None


def _ms(since: float) -> float:
    value = (time.perf_counter() - since) * 1000.0
    return value if math.isfinite(value) else 0.0
