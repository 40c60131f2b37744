"""RetrievalClient: a small Python client for the gRPC service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbmir.services.query.proto import DEFAULT_MAX_MESSAGE_MB, retrieval_pb2, retrieval_pb2_grpc
from cbmir.services.query.tls import channel_credentials

PREFILTERS = {
    "off": retrieval_pb2.PREFILTER_MODE_OFF,
    "predicted": retrieval_pb2.PREFILTER_MODE_PREDICTED,
    "explicit": retrieval_pb2.PREFILTER_MODE_EXPLICIT,
    "soft": retrieval_pb2.PREFILTER_MODE_SOFT,
}


def read_image_file(path: Path) -> bytes:
    """The query image's bytes; a folder or an unreadable file is a ValueError naming the fix, not a traceback."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory: a search takes one image file (to index a folder, use "
                         "`cbmir ingest --source DIR`)") from None
    except PermissionError:
        raise ValueError(f"cannot read {path}: permission denied (give an image file this user may read)") from None


class RetrievalClient:
    """Plain text by default (a loopback server); `tls_ca` (and `tls_cert`/`tls_key` for mTLS) switch to TLS.

    `token` is sent as `authorization: Bearer <token>` metadata on every call; `tls_server_name` overrides the
    name the server certificate is checked against (when connecting by IP to a certificate issued for a name).
    """

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 30.0,
                 max_message_mb: int = DEFAULT_MAX_MESSAGE_MB, *, tls: bool = False, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, tls_server_name: str | None = None,
                 token: str | None = None) -> None:
        max_bytes = max_message_mb * 1024 * 1024
        options = [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls or tls_ca or tls_cert:
            self.channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def search(
        self,
        *,
        image: bytes | str | Path | None = None,
        vector: Sequence[float] | None = None,
        id: str | None = None,
        top_k: int = 10,
        collection: str = "",
        filters: Mapping[str, str] | None = None,
        prefilter: str = "off",
        prefilter_class: str = "",
        exclude_query_id: bool = False,
        min_confidence: float = 0.0,
        rerank: str = "",
        k_prep: int = 0,
        thumbnails: bool = False,
        query_expansion: int = 0,
        soft_weight: float | None = None,
    ) -> Any:
        """One of image (bytes or a file path), vector or id; returns the SearchResponse message."""
        request = retrieval_pb2.SearchRequest(
            top_k=top_k, collection=collection, filters=dict(filters or {}),
            prefilter=PREFILTERS[prefilter], prefilter_class=prefilter_class, exclude_query_id=exclude_query_id,
            min_confidence=min_confidence, rerank=rerank, k_prep=k_prep, with_thumbnails=thumbnails,
            query_expansion=query_expansion,
        )
        if soft_weight is not None:
            request.soft_weight = soft_weight
        if image is not None:
            request.image = image if isinstance(image, bytes) else read_image_file(Path(image))
        elif vector is not None:
            request.vector.values.extend(float(v) for v in vector)
        elif id is not None:
            request.id = id
        return self.stub.Search(request, timeout=self.timeout, metadata=self.metadata)

    def describe(self, collection: str = "") -> Any:
        return self.stub.DescribeCollection(
            retrieval_pb2.DescribeCollectionRequest(collection=collection), timeout=self.timeout,
            metadata=self.metadata,
        )

    def health(self, service: str = "") -> str:
        reply = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
