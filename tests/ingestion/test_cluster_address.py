"""Which Ray `cbmir ingest` runs on: --ray-address, else $RAY_ADDRESS, else a local Ray; and a single node needs
no placement. The two-node behaviour itself is tests/cluster/test_ray_cluster.py."""

from __future__ import annotations

import warnings

import pytest
import ray
import ray.data

from cbmir.cli import build_parser
from cbmir.ingestion.pipeline import (
    actors_spread_over_nodes,
    batches_to_the_least_busy_actor,
    plan_resources,
    ray_address,
)


def test_ray_address_env_is_the_ingest_flag_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")

    assert build_parser().parse_args(["ingest", "archive"]).ray_address == "10.0.0.1:6379"
    assert build_parser().parse_args(["ingest", "archive", "--ray-address", "auto"]).ray_address == "auto"


def test_without_ray_address_ingest_starts_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    assert build_parser().parse_args(["ingest", "archive"]).ray_address is None
    assert ray_address(None) is None


def test_the_env_address_is_what_the_report_and_the_session_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")

    assert ray_address(None) == "10.0.0.1:6379"
    assert ray_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ray_address(None) is None


def test_one_node_places_actors_without_a_placement_group(ray_local: None) -> None:
    plan = plan_resources(2, 2, "cpu", 1.0, node_cpus=[2.0])

    with actors_spread_over_nodes(plan, 2) as placement:
        assert placement == {}
    # One node: batches follow Ray Data's own dispatch (locality on, its default).
    assert ray.data.DataContext.get_current().execution_options.actor_locality_enabled


def test_a_spread_run_sends_each_batch_to_the_least_busy_actor_and_restores_the_setting(ray_local: None) -> None:
    """Ray 2.60 deprecates the switch: this fails when Ray drops it or changes what it warns, which is when
    batches_to_the_least_busy_actor needs another way to keep every node's actor busy."""
    options = ray.data.DataContext.get_current().execution_options
    before = options.actor_locality_enabled

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation warning is ours to silence, not the user's to read
        with batches_to_the_least_busy_actor():
            assert options.actor_locality_enabled is False
            assert ray.data.DataContext.get_current().execution_options.actor_locality_enabled is False

    assert options.actor_locality_enabled == before
