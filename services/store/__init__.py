"""Milvus store: schema, connection (Lite file or server URI), upsert, search, index choice."""

from services.store.filters import InvalidFilterError, build_filter_expression
from services.store.index import INDEX_TYPES, METRICS, IndexConfig, choose_index
from services.store.milvus import (
    DEFAULT_COLLECTION,
    DEFAULT_URI,
    CollectionInfo,
    CollectionNotFoundError,
    Hit,
    MilvusStore,
    ModelMismatchError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
    is_server_uri,
)

__all__ = [
    "DEFAULT_COLLECTION", "DEFAULT_URI", "INDEX_TYPES", "METRICS", "CollectionInfo", "CollectionNotFoundError",
    "Hit", "IndexConfig", "InvalidFilterError", "MilvusStore", "ModelMismatchError", "StoreBusyError", "StoreError",
    "StoreUnavailableError", "build_filter_expression", "choose_index", "is_server_uri",
]
