"""The Ray resource plan never asks for more CPUs than exist once a read task is running."""

from __future__ import annotations

import pytest

from cbmir.ingestion.pipeline import RESERVATION_ENV, plan_resources, ray_session


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


def test_ray_data_runs_without_per_operator_reservations(ray_local: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data
    from ray.data._internal.execution import create_resource_allocator

    monkeypatch.delenv(RESERVATION_ENV, raising=False)
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "op_resource_reservation_enabled", True)
    with ray_session():
        # No allocator: Ray Data's executor then admits read tasks by free CPUs and object-store backpressure only.
        assert create_resource_allocator(None, context) is None
        assert ray.data.range(64).map_batches(lambda b: b, batch_size=16).count() == 64


def test_ray_s_own_reservation_switch_set_by_the_user_wins(ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data

    monkeypatch.setenv(RESERVATION_ENV, "1")
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "op_resource_reservation_enabled", True)
    with ray_session():
        assert context.op_resource_reservation_enabled is True


def test_a_local_run_describes_the_model_in_the_driver_as_an_actor_would(ray_local: None) -> None:
    import ray
    import torch

    from cbmir.ingestion import IngestConfig
    from cbmir.ingestion.embedder import describe_model
    from cbmir.ingestion.pipeline import _model_options, probe_model

    config = IngestConfig(source="x", backbone="efficientnet_lite0")
    plan = plan_resources(2, 2, "cpu", 1.0)  # an actor's torch pool of 1 thread
    before = torch.get_num_threads()
    threads = plan.torch_threads + 2  # the driver's own pool, set apart from the actor's
    torch.set_num_threads(threads)
    try:
        in_driver = probe_model(config, plan)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    # The same description a worker computes (a cluster's path), and the driver's torch threads left alone.
    in_worker = ray.get(ray.remote(describe_model).options(num_cpus=plan.actor_cpus).remote(
        **_model_options(config, plan)))
    assert in_driver == in_worker
