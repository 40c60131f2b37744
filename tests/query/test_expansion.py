"""αQE (issue 18, item 2): the expanded query, by itself; through the service in test_service.py."""

from __future__ import annotations

import numpy as np
import pytest

from cbmir.services.query.expansion import expanded_query


def test_alpha_query_expansion_pulls_towards_close_neighbours_and_keeps_the_query_length() -> None:
    query = np.array([2.0, 0.0, 0.0])
    close, far, opposite = np.array([1.0, 1.0, 0.0]), np.array([0.1, 0.0, 1.0]), np.array([-1.0, 0.0, 0.0])

    expanded = expanded_query(query, [close, far, opposite])

    assert np.linalg.norm(expanded) == pytest.approx(2.0, rel=1e-5)
    assert expanded[1] > 0.3 and expanded[2] < expanded[1] / 100  # cos^3 weights: 0.35 vs 0.001
    assert np.array_equal(expanded_query(query, []), query.astype(np.float32))
    assert np.allclose(expanded_query(query, [opposite]), query)  # a neighbour facing away weighs nothing
