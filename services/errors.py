"""Turn the errors a user can fix into one clear line and exit code 2, instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The errors a user can fix. Decode, weights, filter and config errors are ValueErrors; the store's are not,
    and a class whose module was never imported cannot have been raised, so `cbmir search` never loads pymilvus."""
    found: list[type[BaseException]] = [FileNotFoundError, ValueError]
    store = sys.modules.get("cbmir.services.store.milvus")
    if store is not None:
        found.append(store.StoreError)
    engine = sys.modules.get("cbmir.services.query.engine")
    if engine is not None:  # `cbmir serve` checking its collection at start: missing, or another model's
        found.append(engine.QueryRejected)
    return tuple(found)


@contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except _user_error_types() as error:
        print(f"cbmir: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("cbmir: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
