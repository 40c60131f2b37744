"""The Ray resource plan never asks for more CPUs than exist once a read task is running."""

from __future__ import annotations

import pytest

from cbmir.ingestion.pipeline import plan_resources


@pytest.mark.parametrize(("cpus", "actors"), [(1, 1), (2, 1), (2, 2), (2, 4), (8, 3), (64, 4)])
def test_actors_leave_room_for_a_read_task(cpus: int, actors: int) -> None:
    plan = plan_resources(cpus, actors, "cpu", 1.0)

    assert plan.read_cpus + actors * plan.actor_cpus <= cpus + 1e-9
    assert plan.torch_threads == max(1, cpus // actors)


def test_two_cpus_two_actors_get_fractional_cpus() -> None:
    plan = plan_resources(2, 2, "cpu", 1.0)

    assert plan.actor_cpus < 1
    assert plan.actor_gpus == 0


def test_cuda_actors_reserve_their_gpu_share() -> None:
    plan = plan_resources(8, 4, "cuda", 0.5)

    assert plan.actor_gpus == 0.5
    assert plan.actor_cpus <= 1


def test_read_cpus_given_replace_the_per_task_figure_and_nothing_else() -> None:
    planned = plan_resources(2, 1, "cpu", 1.0)
    given = plan_resources(2, 1, "cpu", 1.0, read_cpus=0.25)

    assert given.read_cpus == 0.25 != planned.read_cpus
    assert (given.actor_cpus, given.torch_threads) == (planned.actor_cpus, planned.torch_threads)


def test_read_cpus_out_of_range_is_refused() -> None:
    from cbmir.ingestion import IngestConfig

    with pytest.raises(ValueError, match="read_cpus"):
        IngestConfig(source="x", read_cpus=0)
