"""Milvus store: schema, connection (Lite file or server URI), upsert, search, index choice.

Index choice and the defaults import light; the Milvus-backed names load pymilvus on first use, so a command
that only parses flags or talks gRPC (`cbmir search`) never pays for it.
"""

from importlib import import_module

from cbmir.services.store.defaults import DEFAULT_COLLECTION, DEFAULT_URI, is_server_uri
from cbmir.services.store.index import INDEX_TYPES, METRICS, IndexConfig, choose_index

_LAZY = {
    "InvalidFilterError": "filters", "build_filter_expression": "filters",
    "CollectionInfo": "milvus", "CollectionNotFoundError": "milvus", "Hit": "milvus", "MilvusStore": "milvus",
    "ModelMismatchError": "milvus", "StoreBusyError": "milvus", "StoreError": "milvus",
    "StoreUnavailableError": "milvus",
}

__all__ = ["DEFAULT_COLLECTION", "DEFAULT_URI", "INDEX_TYPES", "METRICS", "IndexConfig", "choose_index",
           "is_server_uri", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(f"cbmir.services.store.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cbmir.services.store' has no attribute {name!r}")
