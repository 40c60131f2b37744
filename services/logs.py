"""Structured logging: one JSON object per line (or plain text for humans), same fields everywhere."""

from __future__ import annotations

import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """What the caller passed in `extra=`; private attributes that libraries (Ray) add are left out."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{record.levelname.lower():7s} {record.name}: {record.getMessage()}" + (f" {fields}" if fields else "")


def configure_logging(level: str = "INFO", json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Milvus Lite logs harmless "AllocTimestamp: Method not implemented" tracebacks on every write.
    for noisy in ("milvus_lite", "pymilvus", "grpc", "ray", "ray.data", "filelock", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
    # Milvus Lite's in-process gRPC server answers some pymilvus calls with "Method not implemented" and
    # grpc logs each as an error; only those are dropped, any other grpc._server error stays visible.
    grpc_server = logging.getLogger("grpc._server")
    if not any(isinstance(f, _DropLiteUnimplemented) for f in grpc_server.filters):
        grpc_server.addFilter(_DropLiteUnimplemented())


class _DropLiteUnimplemented(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Method not implemented" not in record.getMessage()
