"""Structured equality filters → a Milvus boolean expression, with no way for a value to become syntax."""

from __future__ import annotations

from collections.abc import Mapping

from cbmir.services.quoting import shown
from cbmir.services.store.schema import FILTER_FIELDS, SCALAR_FIELDS


class InvalidFilterError(ValueError):
    """A filter names a field that cannot be filtered on, or carries a value that cannot be matched safely."""


# Characters that could close or escape a string literal, or that no clinical label contains.
_FORBIDDEN = set('"\\\'`') | {chr(c) for c in range(32)} | {chr(127)}


def quote_literal(value: str) -> str:
    """A double-quoted Milvus string literal; values that could break out of the quotes are refused."""
    bad = sorted({ch for ch in value if ch in _FORBIDDEN})
    if bad:
        characters = ", ".join(repr(ch) for ch in bad)
        raise InvalidFilterError(f"filter value {shown(value)} contains characters that are not allowed: {characters}")
    return f'"{value}"'


def build_filter_expression(filters: Mapping[str, str]) -> str:
    """AND of `field == "value"` terms, fields from the allow-list only, in a stable order."""
    terms = []
    for name in sorted(filters):
        if name not in FILTER_FIELDS:
            raise InvalidFilterError(
                f"unknown filter field {shown(name)}: filterable fields are {', '.join(FILTER_FIELDS)}"
            )
        value = filters[name]
        if not isinstance(value, str):
            raise InvalidFilterError(f"filter value for {shown(name)} must be a string")
        if len(value) > SCALAR_FIELDS[name]:
            raise InvalidFilterError(f"filter value for {name!r} is longer than {SCALAR_FIELDS[name]} characters")
        terms.append(f"{name} == {quote_literal(value)}")
    return " and ".join(terms)


def ids_expression(ids: list[str]) -> str:
    return f"id in [{', '.join(quote_literal(i) for i in ids)}]"
