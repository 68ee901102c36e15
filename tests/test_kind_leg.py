"""The kind leg's start and stop rule (.ci/kind-leg.sh), with stand-ins for kind-offline, docker and pytest:
down.sh runs at the end (pass, fail, or up.sh failing) exactly when the leg started dockerd itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.manifests import PROJECT_ROOT

LEG = PROJECT_ROOT / ".ci" / "kind-leg.sh"


def executable(path: Path, text: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(0o755)
    return path


def run_leg(tmp_path: Path, *, dockerd_up: bool, pytest_rc: int = 0, up_rc: int = 0,
            offline: Path | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    log = tmp_path / "calls.log"
    folder = tmp_path / "kind-offline"
    folder.mkdir(exist_ok=True)
    executable(folder / "up.sh", f"""echo "up $*" >> {log}
echo export DOCKER_HOST=unix://{tmp_path}/docker.sock
[[ ${{1:-}} == --env ]] && exit 0
[[ {up_rc} == 0 ]] || exit {up_rc}
echo export KIND_OFFLINE_NODE_IMAGE=kindest/node:v1.35.4-offline
echo export KIND_OFFLINE_CHART_REPO=http://127.0.0.1:8879
echo export KIND_OFFLINE_ISTIO_VERSION=1.31.0
echo export KIND_OFFLINE_ISTIOD_VALUES={folder}/upstream-envoy-values.yaml
""")
    executable(folder / "down.sh", f'echo down >> {log}\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    executable(bin_dir / "docker", f"exit {0 if dockerd_up else 1}\n")
    fake_pytest = executable(tmp_path / "pytest", f'echo "pytest $*" >> {log}\nexit {pytest_rc}\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KIND_OFFLINE_DIR": str(offline or folder),
           "KIND_LEG_PYTEST": str(fake_pytest)}
    result = subprocess.run(["bash", str(LEG), "-k", "fidelity"], env=env, capture_output=True, text=True,
                            check=False, timeout=60)
    return result, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_absent_folder_is_one_line_and_success(tmp_path: Path) -> None:
    result, log = run_leg(tmp_path, dockerd_up=False, offline=tmp_path / "absent")
    assert result.returncode == 0
    assert result.stdout.strip().count("\n") == 0
    assert "kind leg: not run" in result.stdout
    assert calls(log) == []


@pytest.mark.parametrize("pytest_rc", [0, 1])
def test_a_leg_that_started_dockerd_stops_it(tmp_path: Path, pytest_rc: int) -> None:
    result, log = run_leg(tmp_path, dockerd_up=False, pytest_rc=pytest_rc)
    assert result.returncode == pytest_rc, result.stdout + result.stderr
    assert calls(log)[-1] == "down"
    command = next(c for c in calls(log) if c.startswith("pytest"))
    for option in ("--mesh kind", "--kind-image kindest/node:v1.35.4-offline", "--istio-version 1.31.0",
                   "--istio-chart-repo http://127.0.0.1:8879", "--istio-values istiod=", "-k fidelity"):
        assert option in command


def test_up_failing_still_stops_what_it_started(tmp_path: Path) -> None:
    result, log = run_leg(tmp_path, dockerd_up=False, up_rc=3)
    assert result.returncode != 0
    assert calls(log)[-1] == "down"
    assert not [c for c in calls(log) if c.startswith("pytest")]


def test_a_running_dockerd_is_left_running(tmp_path: Path) -> None:
    result, log = run_leg(tmp_path, dockerd_up=True, pytest_rc=1)
    assert result.returncode == 1
    assert "down" not in calls(log)
    assert "left running" in result.stdout


def test_start_lines_show_while_the_mesh_fixture_runs(tmp_path: Path) -> None:
    """The mesh starts inside a session fixture, whose output pytest captures: the progress lines (cluster,
    cgroup v1 patch, Istio install) must still reach the terminal, not only a failure's captured output."""
    (tmp_path / "test_start.py").write_text(
        "import pytest\nfrom harness.core.provider import progress\n\n"
        "@pytest.fixture(scope='session')\ndef started(request):\n    progress(request.config, 'start line')\n\n"
        "def test_uses_it(started):\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), "-c", os.devnull, "-p", "harness.plugin", "-p",
                             "harness.meshes.kube.provider", str(tmp_path / "test_start.py")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[local] start line" in result.stdout
