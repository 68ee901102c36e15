"""Operation counts and the kind-run estimate built from them."""

from __future__ import annotations

from typing import Any

from harness.core.mesh import COUNTED_OPERATIONS
from harness.meshes.local.mesh import LocalMesh
from harness.report import estimate as run_estimate


def test_every_counted_operation_is_priced() -> None:
    assert set(COUNTED_OPERATIONS) <= set(run_estimate.PER_OPERATION)


def test_nested_operations_count_once() -> None:
    calls: list[str] = []

    class Probed(LocalMesh):
        def apply(self, manifest: Any) -> None:
            calls.append("apply")

        def reset(self) -> None:
            self.apply("x")  # an operation made of another counts as itself only

    mesh = Probed.__new__(Probed)
    mesh.reset()
    mesh.apply("y")
    assert calls == ["apply", "apply"]
    assert mesh.operations == {"reset": 1, "apply": 1}


def test_estimate_adds_each_count_at_its_cost() -> None:
    run = {"istiod_env_changes": 3, "operations": {"scale": 10, "restart_rollout": 2, "unknown": 5}}
    expected = (run_estimate.FIXED.seconds + run_estimate.TRAFFIC.seconds
                + 3 * run_estimate.PER_OPERATION["istiod_env_changes"].seconds
                + 10 * run_estimate.PER_OPERATION["scale"].seconds
                + 2 * run_estimate.PER_OPERATION["restart_rollout"].seconds)
    assert run_estimate.estimate_seconds(run) == expected
    assert run_estimate.breakdown(run)[-1].startswith("estimated kind run:")


def test_operation_time_is_the_outermost_operations(monkeypatch: Any) -> None:
    """A reset that applies inside is timed as a reset only; the estimate is calibrated on these seconds."""
    import harness.core.mesh as mesh_module

    ticks = iter([0.0, 1.0, 4.0, 10.0, 12.0])  # reset starts, its apply starts, reset ends; an apply: 10 -> 12
    monkeypatch.setattr(mesh_module.time, "monotonic", lambda: next(ticks))

    class Probed(LocalMesh):
        def apply(self, manifest: Any) -> None:
            pass

        def reset(self) -> None:
            self.apply("x")

    mesh = Probed.__new__(Probed)
    mesh.reset()
    mesh.apply("y")
    assert dict(mesh.operation_seconds) == {"reset": 4.0, "apply": 2.0}


def test_calibration_reads_seconds_per_operation_from_a_measured_run() -> None:
    run = {"istiod_env_changes": 2, "operations": {"scale": 4, "apply": 0},
           "operation_seconds": {"scale": 40.0, "istiod_env_changes": 60.0},
           "setup_seconds": {"kind_create": 50.0, "install_istio": 70.0, "app_start": 30.0}, "close_seconds": 50.0,
           "mesh_seconds": 500.0}
    assert run_estimate.calibration(run) == [
        "fixed set-up and close: 200 s (kind_create 50 s, install_istio 70 s, app_start 30 s, close 50 s)",
        "istiod_env_changes: 60 s / 2 = 30.0 s each",
        "scale: 40 s / 4 = 10.0 s each",
        "traffic and everything else: 200 s of the mesh's 500 s",
    ]
