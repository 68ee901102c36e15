"""Run by tests/test_lifecycle.py in a child pytest: records the mesh's processes, then fails or hangs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from harness.core.mesh import Mesh
from harness.meshes.local.mesh import LocalMesh


def test_record_then_misbehave(mesh: Mesh) -> None:
    assert isinstance(mesh, LocalMesh)
    assert mesh.gateway.process is not None
    pids = [mesh.gateway.process.pid] + [p.process.pid for p in mesh.pod_set.pods.values()]
    pids += [process.pid for process, _ in mesh.pod_set.spares]
    Path(os.environ["LIFECYCLE_OUT"]).write_text(json.dumps({"pids": pids, "workdir": str(mesh.workdir)}))
    if os.environ.get("LIFECYCLE_MODE") == "hang":
        threading.Event().wait(60)  # the parent interrupts us with SIGINT (Ctrl-C) before this ends
    raise AssertionError("deliberate failure: the mesh must still be cleaned up")
