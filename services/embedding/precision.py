"""Which query precision a collection of another precision accepts, from measured retrieval figures."""

from __future__ import annotations

# (collection's precision, query precision) -> what was measured. A pair is accepted only when it is here, and it
# is here only when, on every data set measured, the 95% CI of the paired mAP@10 difference to the collection's own
# precision contains 0. `cbmir bench precision brain-mri mias-tissue mias-severity` (efficientnet_lite0, fp16 and
# bf16 by CPU autocast; docs/scaling.md "Precision"): fp16 <-> fp32 passes on all three. Any pair with bf16 fails:
# fp16 archive / bf16 queries lose 0.017 mAP@10 on mias-tissue (95% CI -0.028 to -0.007) and 0.003 on brain-mri
# (-0.006 to -0.001), so a bf16 service must not search fp16 or fp32 vectors, nor the reverse.
MEASURED: dict[tuple[str, str], str] = {
    ("fp16", "fp32"): "measured paired mAP@10 difference -0.0014 to +0.0009, every 95% CI contains 0, on brain-mri "
                      "and MIAS (docs/scaling.md)",
    ("fp32", "fp16"): "measured paired mAP@10 difference -0.0010 to -0.0001, every 95% CI contains 0, on brain-mri "
                      "and MIAS (docs/scaling.md)",
}


def query_precision_tolerance(collection: str, queries: str) -> str | None:
    """Why queries embedded at `queries` may search vectors stored at `collection`, or None when they may not."""
    if collection == queries:
        return "same precision"
    return MEASURED.get((collection, queries))


def serving_precision(collection: str, device: str) -> str:
    """`--precision auto` for a service over a collection written at `collection`: that precision when this device
    runs it natively (vectors closest to the stored ones), else fp32 when it is within the measured tolerance
    (fp16 collections), else the collection's precision anyway (emulated, slower, but the same vectors)."""
    from cbmir.services.embedding.model import cpu_supports_bf16, cpu_supports_fp16

    if device.startswith("cuda") or collection == "fp32":
        return collection
    native = {"bf16": cpu_supports_bf16, "fp16": cpu_supports_fp16}.get(collection)
    if native is not None and native():
        return collection
    return "fp32" if query_precision_tolerance(collection, "fp32") is not None else collection
