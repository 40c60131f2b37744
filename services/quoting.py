"""Client values inside error messages: quoted and clipped, so a reply never echoes a 100k-character input."""

from __future__ import annotations

SHOWN_CHARS = 100  # enough to recognise a value; an error reply stays far below gRPC's 8 KiB metadata limit


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`value` as repr() shows it, cut to `limit` characters with its full length said when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"
