"""Turn the errors a user can fix into one clear line and exit code 2, instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def friendly_errors() -> Iterator[None]:
    from services.embedding import ImageDecodeError, WeightsError
    from services.store import StoreError

    try:
        yield
    except (StoreError, WeightsError, ImageDecodeError, FileNotFoundError, ValueError) as error:
        print(f"cbmir: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("cbmir: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
