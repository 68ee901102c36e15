"""The kind leg's named subsets (.ci/kind-leg.sh ``--subset NAME``): each becomes one ``-k`` expression for
pytest, an unknown name stops the leg before anything starts, and ``sidecar-ci`` selects exactly the tests
its comment and the README name (a -k expression matches substrings: ``ring-1024`` alone would also take
``ring-10240``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.core.manifests import PROJECT_ROOT

LEG = PROJECT_ROOT / ".ci" / "kind-leg.sh"

SIDECAR_CI = {
    "e2e/test_consistent_hash.py::test_key_pins_sessions[header]",
    "e2e/test_consistent_hash.py::test_key_pins_sessions[query]",
    "e2e/test_consistent_hash.py::test_key_pins_sessions[cookie-own]",
    "e2e/test_consistent_hash.py::test_key_pins_sessions[cookie-issued]",
    "e2e/test_consistent_hash.py::test_gateway_config_shows_the_rule[ring-1024]",
    "e2e/test_consistent_hash.py::test_gateway_config_shows_the_rule[ring-10240]",
    "e2e/test_consistent_hash.py::test_gateway_config_shows_the_rule[maglev]",
    "e2e/test_consistent_hash.py::test_gateway_config_shows_the_rule[query]",
    "e2e/test_consistent_hash.py::test_gateway_config_shows_the_rule[source-ip]",
    "e2e/test_consistent_hash.py::test_scaling_moves_the_predicted_share[ring-1024-3to5]",
    "e2e/test_consistent_hash.py::test_scaling_moves_the_predicted_share[maglev-3to5]",
    "e2e/test_stateful_sessions.py::test_scale_up_keeps_every_session[header]",
    "e2e/test_stateful_sessions.py::test_scale_up_keeps_every_session[cookie]",
    "e2e/test_stateful_sessions.py::test_new_sessions_after_scale_up[least-request]",
    "e2e/test_stateful_sessions.py::test_new_sessions_after_scale_up[round-robin]",
    "e2e/test_stateful_sessions.py::test_new_sessions_after_scale_up[random]",
    "e2e/test_stateful_sessions.py::test_gateway_config_shows_sessions[header]",
    "e2e/test_stateful_sessions.py::test_gateway_config_shows_sessions[cookie]",
    "e2e/test_stateful_sessions.py::test_graceful_drain[header]",
    "e2e/test_stateful_sessions.py::test_graceful_drain[cookie]",
    "e2e/test_stateful_sessions.py::test_rollout_restart_moves_every_session_without_errors[header]",
    "e2e/test_translation_edges.py::test_gateway_answers_like_an_istio_gateway",
}


def leg_pytest_args(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the leg with stand-ins (dockerd already up, kind-offline, pytest) and return what pytest got,
    one argument a line."""
    log = tmp_path / "pytest-args"
    folder = tmp_path / "kind-offline"
    folder.mkdir()
    for name, text in {
        "up.sh": f"echo export DOCKER_HOST=unix://{tmp_path}/docker.sock\n"
                 "[[ ${1:-} == --env ]] && exit 0\necho export KIND_OFFLINE_NODE_IMAGE=n\n"
                 "echo export KIND_OFFLINE_CHART_REPO=r\necho export KIND_OFFLINE_ISTIO_VERSION=1.31.0\n"
                 "echo export KIND_OFFLINE_ISTIOD_VALUES=v\n",
        "down.sh": "exit 0\n",
    }.items():
        (folder / name).write_text("#!/usr/bin/env bash\n" + text)
        (folder / name).chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_dir / "docker").chmod(0o755)
    fake = tmp_path / "pytest"
    fake.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {log}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KIND_OFFLINE_DIR": str(folder),
           "KIND_LEG_PYTEST": str(fake)}
    result = subprocess.run(["bash", str(LEG), *args], env=env, capture_output=True, text=True, check=False,
                            timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def test_a_named_subset_becomes_one_k_expression(tmp_path: Path) -> None:
    result, args = leg_pytest_args(tmp_path, "--front-door", "sidecar", "--subset", "sidecar-ci", "-x")
    assert result.returncode == 0, result.stderr
    assert "--subset" not in args
    assert args[-5:-3] == ["--front-door", "sidecar"]
    assert args[-3] == "-k"
    assert args[-1] == "-x"
    assert "test_new_sessions_after_scale_up" in args[-2]


def test_an_unknown_subset_stops_the_leg_before_anything_starts(tmp_path: Path) -> None:
    result, args = leg_pytest_args(tmp_path, "--subset", "nope")
    assert result.returncode == 2
    assert "unknown --subset nope" in result.stderr
    assert args == []


def test_sidecar_ci_selects_the_headline_and_door_tests(tmp_path: Path) -> None:
    _, args = leg_pytest_args(tmp_path, "--subset", "sidecar-ci")
    expression = args[args.index("-k") + 1]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e/", "--collect-only", "-q", "-p", "no:cacheprovider", "-k", expression],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=120)
    selected = {line for line in collected.stdout.splitlines() if line.startswith("e2e/")}
    assert selected == SIDECAR_CI, collected.stdout[-2000:]
