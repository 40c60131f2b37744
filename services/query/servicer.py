"""gRPC RetrievalService: proto ↔ RetrievalEngine, every failure mapped to a status code with a clear message."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from cbmir.services.embedding import ModelIdentity
from cbmir.services.query import metrics
from cbmir.services.query.audit import AuditLog, describe_search
from cbmir.services.query.auth import Authenticator
from cbmir.services.query.engine import Prefilter, QueryRejected, Rejection, RetrievalEngine, SearchQuery
from cbmir.services.query.proto import retrieval_pb2, retrieval_pb2_grpc
from cbmir.services.query.watch import StoreWatcher
from cbmir.services.store.schema import LABEL, SOURCE, THUMBNAIL

log = logging.getLogger(__name__)

STATUS_OF = {
    Rejection.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Rejection.RESOURCE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Rejection.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Rejection.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Rejection.PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
}
ERASE_KINDS = {"patient_id": "patient", "study_uid": "study"}
PREFILTER_OF = {
    retrieval_pb2.PREFILTER_MODE_UNSPECIFIED: Prefilter.OFF,
    retrieval_pb2.PREFILTER_MODE_OFF: Prefilter.OFF,
    retrieval_pb2.PREFILTER_MODE_PREDICTED: Prefilter.PREDICTED,
    retrieval_pb2.PREFILTER_MODE_EXPLICIT: Prefilter.EXPLICIT,
    retrieval_pb2.PREFILTER_MODE_SOFT: Prefilter.SOFT,
}

Reply = TypeVar("Reply")
MAX_DETAILS_CHARS = 1024  # a status message travels in metadata (8 KiB limit): never let an echo overflow it


def _prefilter(value: int) -> Prefilter:
    if value not in PREFILTER_OF:  # a number no PrefilterMode has (a newer client, or a fuzzer): never silently OFF
        raise QueryRejected(Rejection.INVALID, f"unknown prefilter mode {value}: use one of "
                                               f"{', '.join(retrieval_pb2.PrefilterMode.keys())}")
    return PREFILTER_OF[value]


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, engine: RetrievalEngine, authenticator: Authenticator | None = None,
                 audit: AuditLog | None = None, watcher: StoreWatcher | None = None,
                 admin: Authenticator | None = None, id_salt: str = "") -> None:
        self.engine = engine
        self.authenticator = authenticator or Authenticator({})
        self.admin = admin or Authenticator({})  # the tokens that may call Erase; none: Erase is off
        self.id_salt = id_salt
        self.audit = audit
        self.watcher = watcher

    def _handle(self, method: str, context: grpc.ServicerContext, work: Callable[[], Reply],
                audit_request: dict[str, Any] | None = None) -> Reply:
        """Run `work`; a rejection or any unexpected error becomes a status, never a stack trace to the client."""
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        code = grpc.StatusCode.OK
        reply: Any = None
        try:
            if self.watcher is not None and not self.watcher.available:
                raise QueryRejected(Rejection.UNAVAILABLE, self.watcher.unavailable_message())
            reply = work()
            return reply
        except QueryRejected as rejected:
            code = STATUS_OF[rejected.kind]
            if rejected.kind is Rejection.UNAVAILABLE and self.watcher is not None and self.watcher.available:
                self.watcher.report_failure(rejected.message)
            context.abort(code, rejected.message[:MAX_DETAILS_CHARS])
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error", extra={"method": method})
            context.abort(code, "internal error (logged on the server)")
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.REQUESTS.labels(method, code.name).inc()
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info("rpc", extra={"method": method, "code": code.name, "ms": round(elapsed_ms, 3)})
            if self.audit is not None:
                self._audit(method, context, code, elapsed_ms, audit_request, reply)
        raise AssertionError("unreachable: context.abort raises")

    def _audit(self, method: str, context: grpc.ServicerContext, code: grpc.StatusCode, elapsed_ms: float,
               request: dict[str, Any] | None, reply: Any) -> None:
        assert self.audit is not None
        try:
            ids = [hit.id for hit in reply.hits] if reply is not None and hasattr(reply, "hits") else []
            self.audit.record(self.authenticator.caller(context), method, code.name, elapsed_ms, request, ids)
        except Exception:  # an audit failure is loud in the server log but never changes the reply
            log.exception("cannot write the audit record", extra={"method": method})

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC naming)
        return self._handle("Search", context, lambda: self._search(request),
                            describe_search(request) if self.audit is not None else None)

    def DescribeCollection(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._handle("DescribeCollection", context, lambda: self._describe(request),
                            {"collection": request.collection[:64]})

    def Erase(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        # Always audited (the audit request gains the erasure's counts); the id itself never enters it.
        described = {"kind": ERASE_KINDS.get(request.WhichOneof("subject") or "", "none"),
                     "collection": request.collection[:64] or "all"}
        return self._handle("Erase", context, lambda: self._erase(request, context, described), described)

    def _erase(self, request: Any, context: grpc.ServicerContext, described: dict[str, Any]) -> Any:
        from cbmir.services.embedding.id_salt import IdSaltError
        from cbmir.services.store.erase import erase_subject

        if not self.admin.enabled:
            raise QueryRejected(Rejection.PRECONDITION, "Erase is off on this server: start cbmir serve with "
                                                        "--admin-tokens-file, or run cbmir erase on the store")
        if self.admin.token_name(context.invocation_metadata()) is None:
            raise QueryRejected(Rejection.PERMISSION, "Erase needs an admin token (cbmir serve --admin-tokens-file)")
        field = request.WhichOneof("subject")
        if field is None:
            raise QueryRejected(Rejection.INVALID, "give patient_id or study_uid")
        try:
            report = erase_subject(self.engine.store, ERASE_KINDS[field], getattr(request, field),
                                   request.collection, self.id_salt)
        except IdSaltError as error:
            raise QueryRejected(Rejection.PRECONDITION, str(error)) from None
        except ValueError as error:  # an empty id
            raise QueryRejected(Rejection.INVALID, str(error)) from None
        described["erasure"] = report.to_dict()
        return retrieval_pb2.EraseResponse(rows_erased=report.rows_erased, proved=report.proved,
                                           report_json=json.dumps(report.to_dict(), sort_keys=True))

    def _search(self, request: Any) -> Any:
        kind = request.WhichOneof("query")
        query = SearchQuery(
            image=request.image if kind == "image" else None,
            vector=np.asarray(request.vector.values, dtype=np.float32) if kind == "vector" else None,
            id=request.id if kind == "id" else None,
            top_k=int(request.top_k),
            collection=request.collection,
            filters=dict(request.filters),
            prefilter=_prefilter(request.prefilter),
            prefilter_class=request.prefilter_class,
            exclude_query_id=request.exclude_query_id,
            min_confidence=float(request.min_confidence),
            rerank=request.rerank,
            k_prep=int(request.k_prep),
            thumbnails=request.with_thumbnails,
            query_expansion=request.query_expansion,
            soft_weight=request.soft_weight if request.HasField("soft_weight") else None,
        )
        if kind is None:
            raise QueryRejected(Rejection.INVALID, "give exactly one of: image bytes, vector, or id")
        result = self.engine.search(query)
        for stage, ms in result.timings_ms.items():
            metrics.STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
        timings = result.timings_ms
        return retrieval_pb2.SearchResponse(
            hits=[
                retrieval_pb2.Hit(
                    id=hit.id,
                    score=hit.score,
                    distance=hit.distance,
                    label=hit.fields.get(LABEL, ""),
                    source=hit.fields.get(SOURCE, ""),
                    metadata={k: v for k, v in hit.fields.items() if k not in (LABEL, SOURCE, THUMBNAIL) and v},
                    rank=rank,
                    thumbnail=base64.b64decode(hit.fields.get(THUMBNAIL, "")),
                )
                for rank, hit in enumerate(result.hits, start=1)
            ],
            collection=result.collection,
            model_id=result.model_id,
            timings=retrieval_pb2.StageTimings(
                decode_ms=timings["decode"], embed_ms=timings["embed"], search_ms=timings["search"],
                rerank_ms=timings["rerank"], total_ms=timings["total"],
            ),
            predicted_class=result.predicted_class,
            predicted_probability=result.predicted_probability,
            prefilter_applied=result.prefilter_applied,
            prefilter_note=result.prefilter_note,
            reranked=result.reranked,
        )

    def _describe(self, request: Any) -> Any:
        info = self.engine.describe(request.collection)
        identity = ModelIdentity.from_json(info.model_identity_json)
        return retrieval_pb2.CollectionInfo(
            name=info.name,
            model=retrieval_pb2.ModelIdentity(
                model_id=identity.model_id,
                architecture=identity.architecture,
                weights_sha256=identity.weights_sha256,
                dim=identity.dim,
                preprocessing_json=json.dumps(identity.preprocessing, sort_keys=True),
            ),
            dim=info.dim,
            metric=info.metric,
            index_type=info.index_type,
            index_params_json=json.dumps(info.index_params, sort_keys=True),
            row_count=info.row_count,
            filter_fields=list(info.filter_fields),
        )
