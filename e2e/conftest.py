"""How e2e tests declare what they need from the mesh beyond its baseline, by marker.

- ``istiod_env``: the istiod environment a test starts with. Tests are ordered by it, so istiod (a rollout
  on a cluster, a restart on the istiod mesh) changes only between groups, not between tests.
- ``changes_istiod_env``: the test itself changes istiod's environment (the flag gates); it runs at the
  end of its starting group, right before the group that starts where it ends.
- ``adds_pods``: the test needs traffic to reach pods it adds; where the data plane may starve new pods
  (``harness.core.verdicts`` NEW_POD_STARVATION) its verdict is that known defect, whether or not it shows.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.vocabulary import NEEDS_UPGRADE_TARGET
from harness.core.mesh import Mesh, MeshError
from harness.core.needs import lacking
from harness.core.verdicts import EXCLUDED_PREFIX, NEW_POD_STARVATION, exposed_to, unsupported


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "adds_pods: the test needs traffic to reach pods it adds (scale-up, "
                            "replacement); a known defect where the data plane may starve new pods")
    config.addinivalue_line("markers", "istiod_env(env): the istiod environment (a dict of flags) the test "
                            "starts with; tests run grouped by it")
    config.addinivalue_line("markers", "changes_istiod_env: the test changes istiod's environment itself")


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
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=order_key)  # stable: file order within a group
    # Left out by the run's options, decided before anything about the mesh: the live-upgrade tests
    # without --upgrade-to (excluded, whatever the mesh could do).
    if not config.getoption("--upgrade-to"):
        for item in items:
            if "upgrade_target" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.skip(reason=f"{EXCLUDED_PREFIX}{NEEDS_UPGRADE_TARGET}"))


@pytest.fixture(autouse=True)
def _istiod_env(request: pytest.FixtureRequest) -> None:
    """istiod's environment as the test declared it, changed only where it differs from the last test's."""
    if "mesh" not in request.fixturenames:
        return
    env = istiod_env_of(request.node)
    mesh: Mesh = request.getfixturevalue("mesh")
    if {**mesh.baseline_istiod_env, **env} == mesh.istiod_env:
        return
    missing = lacking(mesh, ["istiod-env"])
    if missing:
        unsupported(missing)
    try:
        mesh.use_istiod_env(env)
    except MeshError as error:
        pytest.fail(f"could not set istiod's environment to {env}: {error}", pytrace=False)


@pytest.fixture(autouse=True)
def _new_pod_starvation(request: pytest.FixtureRequest) -> None:
    """On Envoy < 1.40 behind an istiod that sends starting pods as UNHEALTHY endpoints (Istio 1.31+),
    new pods may never get traffic, depending on how istiod batches its pushes: a test adding pods there
    gets the verdict of that known defect, shown or not (its own figure is measured by
    ``test_added_pods_get_traffic``)."""
    if request.node.get_closest_marker("adds_pods") is None:
        return
    exposed_to(request.node, request.getfixturevalue("mesh"), NEW_POD_STARVATION)
