"""pytest wiring: command-line options, the session's mesh, and the probe that tests use.

``pytest e2e/`` runs the conformance suite on the local mesh; ``--mesh kind|cluster`` selects another
mesh. Everything a test needs comes from fixtures here; the tests themselves never know which mesh runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.core.mesh import Mesh
from harness.core.needs import lacking, needs_of
from harness.core.verdicts import unsupported
from harness.traffic.probe import Probe

# Options, features and figures live in the plugin; imported by name so pytest can rewrite its asserts.
pytest_plugins = ["harness.plugin", "harness.report.writer"]


@pytest.fixture(scope="session")
def session_mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """The mesh for the whole run: started once, stopped (everything removed) at the end, also on Ctrl-C."""
    from harness.core.stash import MESH_KEY, MESH_VERSIONS
    from harness.plugin import missing_front_door, open_mesh

    missing = missing_front_door(request.config)
    if missing:
        unsupported(f"--front-door {request.config.getoption('--front-door')}: {missing}")
    mesh = open_mesh(request.config)
    try:
        # Inside the try: a mesh whose versions cannot be read is still closed (the kind cluster deleted).
        try:
            request.config.stash[MESH_VERSIONS] = mesh.versions()
        except Exception as error:
            pytest.exit(f"cannot read the {mesh.name} mesh's versions: {type(error).__name__}: {error}",
                        returncode=pytest.ExitCode.USAGE_ERROR)
        request.config.stash[MESH_KEY] = mesh
        yield mesh
    finally:
        mesh.close()


@pytest.fixture
def mesh(session_mesh: Mesh, request: pytest.FixtureRequest) -> Mesh:
    """The mesh at its baseline (base manifests, 3 pods, no DestinationRule, istiod flags unset). A test
    declaring a need the mesh lacks (``harness.core.needs``) is unsupported, with the mesh's reason."""
    missing = lacking(session_mesh, needs_of(request.node))
    if missing:
        unsupported(missing)
    session_mesh.reset()
    return session_mesh


@pytest.fixture
def probe(mesh: Mesh, request: pytest.FixtureRequest) -> Probe:
    from harness.plugin import timeouts

    # A cluster run routes its own host (kube_mesh.run_host), which the probe sends as the Host header.
    return Probe(mesh.gateway_url, timeout=timeouts(request.config).request,
                 host_header=mesh.gateway_host)
