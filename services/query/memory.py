"""Keep the server's resident memory near what it holds: few glibc malloc arenas for many RPC threads.

glibc gives each thread that allocates under contention its own arena (up to 8 per core) and rarely returns their
freed pages. After a burst of large decodes on many threads RSS then stays hundreds of MiB above what is live: with
40 clients sending 8192² images the peak went 255 MiB over the decode budget's bound (docs/reliability.md). Two
arenas keep it under, at no measurable cost for a service whose threads mostly wait on numpy, torch and gRPC.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h
DEFAULT_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = DEFAULT_MALLOC_ARENAS) -> bool:
    """mallopt(M_ARENA_MAX, arenas) for the threads started from now on; False where there is no glibc, or when
    the operator set MALLOC_ARENA_MAX (theirs wins)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(M_ARENA_MAX, arenas) == 1
    log.debug("malloc arenas limited", extra={"arenas": arenas, "applied": applied})
    return applied
