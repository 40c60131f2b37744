"""Which query precision a collection of another precision accepts, from measured retrieval figures."""

from __future__ import annotations

# (collection's precision, query precision) -> what was measured. A pair is accepted only when it is here.
# `cbmir bench precision brain-mri mias-tissue mias-severity` (efficientnet_lite0, this repository's CPU, fp16 and
# bf16 by autocast; docs/scaling.md "Precision"): every paired mAP@10 difference to the collection's own precision
# has a 95% CI inside ±TOLERANCE_MAP10 and contains 0.
TOLERANCE_MAP10 = 0.02
MEASURED: dict[tuple[str, str], str] = {
    (archive, queries): f"paired mAP@10 difference within ±{TOLERANCE_MAP10} (95% CI) on brain-mri and MIAS, "
                        "docs/scaling.md"
    for archive in ("fp32", "bf16", "fp16") for queries in ("fp32", "bf16", "fp16") if archive != queries
}


def query_precision_tolerance(collection: str, queries: str) -> str | None:
    """Why queries embedded at `queries` may search vectors stored at `collection`, or None when they may not."""
    if collection == queries:
        return "same precision"
    return MEASURED.get((collection, queries))


def serving_precision(collection: str, device: str) -> str:
    """`--precision auto` for a service over a collection written at `collection`: that precision when this device
    runs it natively (vectors closest to the stored ones), else fp32 (within the tolerance of every stored one)."""
    from cbmir.services.embedding.model import cpu_supports_bf16, cpu_supports_fp16

    if device.startswith("cuda") or collection == "fp32":
        return collection
    native = {"bf16": cpu_supports_bf16, "fp16": cpu_supports_fp16}.get(collection)
    return collection if native is not None and native() else "fp32"
