"""How e2e tests declare what they need from the mesh beyond its baseline, by marker.

- ``istiod_env``: the istiod environment a test starts with. Tests are ordered by it, so istiod (a rollout
  on a cluster, a restart on the istiod mesh) changes only between groups, not between tests.
- ``changes_istiod_env``: the test itself changes istiod's environment (the flag gates); it runs at the
  end of its starting group, right before the group that starts where it ends.
- ``adds_pods``: a version-dependent truth (new pods may starve on some data planes).
- ``front_door_differs``: a door-dependent truth (istiod builds a sidecar's outbound routes unlike a gateway's).
"""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.mesh import Mesh, MeshError
from fixtures.versions import new_pods_may_starve


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "adds_pods: the test needs traffic to reach pods it adds (scale-up, "
                            "replacement); an expected failure where the data plane may starve new pods")
    config.addinivalue_line("markers", "istiod_env(env): the istiod environment (a dict of flags) the test "
                            "starts with; tests run grouped by it")
    config.addinivalue_line("markers", "changes_istiod_env: the test changes istiod's environment itself")
    config.addinivalue_line("markers", "front_door_differs(**reasons): istiod configures this behaviour "
                            "differently for a front door (keyword: the door, value: why); there the test is a "
                            "strict expected failure with that reason, so a change shows")


def istiod_env_of(item: pytest.Item) -> dict[str, str]:
    marker = item.get_closest_marker("istiod_env")
    return dict(marker.args[0]) if marker and marker.args else {}


def order_key(item: pytest.Item) -> tuple[Any, ...]:
    """Groups by starting environment (fewest flags first); within a group, the tests that change the
    environment come last. The flag-gate tests start with the flag off and end with it on, so the order
    off, gates, on costs one change per gate test and nothing else."""
    env = istiod_env_of(item)
    return (len(env), sorted(env.items()), item.get_closest_marker("changes_istiod_env") is not None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=order_key)  # stable: file order within a group


@pytest.fixture(autouse=True)
def _istiod_env(request: pytest.FixtureRequest) -> None:
    """istiod's environment as the test declared it, changed only where it differs from the last test's."""
    if "mesh" not in request.fixturenames:
        return
    env = istiod_env_of(request.node)
    mesh: Mesh = request.getfixturevalue("mesh")
    if {**mesh.baseline_istiod_env, **env} == mesh.istiod_env:
        return
    if not mesh.capabilities.can_set_istiod_env:
        pytest.skip(mesh.capabilities.reason_no_istiod_env or f"this test needs istiod with {env}")
    try:
        mesh.use_istiod_env(env)
    except MeshError as error:
        pytest.fail(f"could not set istiod's environment to {env}: {error}", pytrace=False)


@pytest.fixture(autouse=True)
def _new_pod_starvation(request: pytest.FixtureRequest) -> None:
    """On Envoy < 1.40 behind an istiod that sends starting pods as UNHEALTHY endpoints (Istio 1.31+),
    new pods may never get traffic: such a test is an expected failure there, with the reason in the
    report. Not strict: whether Envoy drops the update depends on how istiod batches its pushes."""
    if request.node.get_closest_marker("adds_pods") is None:
        return
    mesh: Mesh = request.getfixturevalue("mesh")
    reason = new_pods_may_starve(mesh)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=False))


@pytest.fixture(autouse=True)
def _front_door_truth(request: pytest.FixtureRequest) -> None:
    """Where istiod configures the selected front door differently, the test's gateway expectation is a
    strict expected failure there, with istiod's reason in the report."""
    marker = request.node.get_closest_marker("front_door_differs")
    door = request.config.getoption("--front-door")
    reason = marker.kwargs.get(door) if marker is not None else None
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=f"--front-door {door}: {reason}", strict=True))
