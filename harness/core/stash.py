"""What the layers hand each other through pytest's config stash during a run.

The plugin (top layer) starts the mesh and puts it here; the report writer (a lower layer) reads it here
instead of importing the plugin. Each key names one thing and who sets it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.core.mesh import Mesh

# The session's mesh, once started (set by the plugin's session_mesh fixture).
MESH_KEY = pytest.StashKey[Mesh]()
# The started mesh's versions (envoy, istio, kubernetes), read once at start (set with MESH_KEY).
MESH_VERSIONS = pytest.StashKey[dict[str, str]]()
# What the options tell about the versions when no mesh started (set by the plugin from the mesh's provider).
VERSIONS_FROM_OPTIONS = pytest.StashKey[Callable[[], dict[str, str]]]()
# The key under which a test's ``figures`` fixture stores its measured figures in ``item.user_properties``.
FIGURES_KEY = "figures"
