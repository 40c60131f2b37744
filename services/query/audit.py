"""Audit log: one JSON line per RPC (who, what kind, k, filters, result ids, latency, status); never pixels or PHI."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from cbmir.services.query.auth import Caller, RefusalHook, peer_subject
from cbmir.services.query.proto import retrieval_pb2

# The only request fields an audit record may carry. Image bytes are reduced to their size; a vector to its dim.
AUDIT_FIELDS: tuple[str, ...] = (
    "ts", "caller", "auth", "peer", "method", "kind", "collection", "k", "filters", "prefilter", "prefilter_class",
    "rerank", "query_id", "image_bytes", "vector_dim", "result_ids", "status", "reason", "latency_ms",
    "erasure",  # cbmir erase: per-collection counts, salted hashes and the proof; never the raw id
)

MAX_AUDITED_FILTERS = 16


DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # per file; with the backups at most ~384 MiB of audit on disk
DEFAULT_BACKUPS = 5


class AuditLog:
    """Appends records to a JSON-lines file, one write per record (whole lines, even with many RPC threads).

    Rotated by size like logrotate's `size`: PATH → PATH.1 → … → PATH.<backups>, the oldest dropped, so no client
    can fill the disk; every record is bounded (values cut, filter values hashed).
    """

    def __init__(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        if max_bytes < 1024 or backups < 1:
            raise ValueError(f"audit rotation needs max_bytes >= 1024 and backups >= 1, got {max_bytes}, {backups}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        # 0o600: the log says who searched for what; only the service account reads it.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def record(self, caller: Caller, method: str, status: str, latency_ms: float,
               request: dict[str, Any] | None = None, result_ids: list[str] | None = None) -> None:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "caller": caller.name, "auth": caller.method, "peer": caller.peer, "method": method,
        }
        entry.update(request or {})
        entry["result_ids"] = list(result_ids or [])
        entry["status"] = status
        entry["latency_ms"] = round(latency_ms, 3)
        line = json.dumps({k: entry[k] for k in AUDIT_FIELDS if k in entry}, sort_keys=False, default=str)
        with self._lock:
            if self._size + len(line) + 1 > self.max_bytes and self._size > 0:
                self._rotate()
            self._file.write(line + "\n")
            self._size += len(line.encode("utf-8")) + 1

    def close(self) -> None:
        with self._lock:
            self._file.close()


def refusal_recorder(audit: AuditLog) -> RefusalHook:
    """What the interceptors call when they refuse a call before the servicer runs: an audit record for it too."""

    def record(context: Any, method: str, status: str, reason: str) -> None:
        try:
            subject = peer_subject(context)
            caller = Caller(name=subject, peer=context.peer() or "", method="mtls" if subject else "none")
            audit.record(caller, method.rsplit("/", 1)[-1][:64], status, 0.0, {"reason": reason})
        except Exception:  # an audit failure is loud in the server log but never changes the reply
            logging.getLogger(__name__).exception("cannot write the audit record of a refused call")
    return record


def describe_search(request: Any) -> dict[str, Any]:
    """What a SearchRequest asked, without its pixels: the audit record's request part."""
    kind = request.WhichOneof("query") or "none"
    described: dict[str, Any] = {
        "kind": kind, "collection": request.collection[:64], "k": int(request.top_k),
        # Bounded: a request may carry any number of keys (it is refused, but still audited).
        "filters": {key[:64]: filter_value_digest(value)
                    for key, value in itertools.islice(request.filters.items(), MAX_AUDITED_FILTERS)},
        "prefilter": _prefilter_name(request.prefilter), "prefilter_class": request.prefilter_class[:64],
        "rerank": request.rerank[:64],
    }
    if kind == "image":
        described["image_bytes"] = len(request.image)
    elif kind == "vector":
        described["vector_dim"] = len(request.vector.values)
    elif kind == "id":
        described["query_id"] = request.id[:64]
    return described


def filter_value_digest(value: str) -> str:
    """A filter value as the audit log records it: hashed, since a client may filter by anything (a patient's name
    typed into a free-text field). An auditor who suspects a value hashes it and compares."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def _prefilter_name(value: int) -> str:
    try:
        return retrieval_pb2.PrefilterMode.Name(value).removeprefix("PREFILTER_MODE_").lower()
    except ValueError:  # an enum number this server does not know (a newer client)
        return str(value)
