"""Options that would fail only after minutes of set-up are refused before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.manifests import PROJECT_ROOT
from harness.core.mesh import MeshError
from harness.meshes.local.envoy import wait_until_bindable


def run_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "e2e").mkdir(exist_ok=True)
    (tmp_path / "e2e" / "test_x.py").write_text("def test_x():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "harness.report.writer",
                           "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "e2e", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["--upgrade-to", "/no/such/envoy"], "--upgrade-to /no/such/envoy: not an executable Envoy binary"),
    (["--mesh", "cluster", "--kubeconfig", "{tmp}/bad.yaml"], "not YAML, so not a kubeconfig"),
    (["--mesh", "cluster", "--kubeconfig", "{tmp}/other.yaml"], "not a kubeconfig (no `kind: Config`"),
    (["--mesh", "cluster", "--kubeconfig", "{tmp}/missing.yaml"], "cannot read it"),
])
def test_a_bad_option_is_one_line_and_nothing_runs(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.yaml").write_text("clusters: [\n")
    (tmp_path / "other.yaml").write_text("kind: ConformanceReport\n")
    process = run_suite(tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert process.returncode == 4, process.stdout
    assert message in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1, process.stderr
    assert not (tmp_path / "reports").exists(), "a report was written for a run that never started"


def test_a_restarted_gateway_waits_for_its_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(MeshError, match=rf"127.0.0.1:{port} \(gateway listener\) is still in use after 0.3 s"):
            wait_until_bindable("127.0.0.1", port, 0.3)
    wait_until_bindable("127.0.0.1", port, 0.3)  # released: returns at once
