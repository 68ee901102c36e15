"""Nothing is left running after a run: not after a failing test, not after Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.manifests import PROJECT_ROOT
from harness.core.timeouts import poll

CASE = PROJECT_ROOT / "tests" / "lifecycle_cases" / "case_mesh_run.py"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (it holds no port and runs nothing)
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def child_pytest(out: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LIFECYCLE_OUT": str(out), "LIFECYCLE_MODE": mode}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASE)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def wait_until_recorded(out: Path) -> None:
    for attempt in poll(30.0, "child mesh started"):
        with attempt:
            assert out.exists(), "child has not recorded its mesh yet"
            assert out.read_text(), "child is still writing its record"


def assert_cleaned_up(out: Path, teardown_ran: bool = True) -> None:
    """Every recorded process is gone; so is the temp dir, when the child got to run its teardown."""
    recorded = json.loads(out.read_text())
    assert recorded["pids"], "the child recorded no processes"
    for attempt in poll(5.0, "mesh processes gone"):
        with attempt:
            assert not [pid for pid in recorded["pids"] if alive(pid)]
    if teardown_ran:
        assert not Path(recorded["workdir"]).exists(), "the mesh's temp dir was left behind"
    else:
        # a SIGKILLed run cannot remove its temp dir; remove it here
        shutil.rmtree(recorded["workdir"], ignore_errors=True)


def test_failing_test_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    child = child_pytest(out, "fail")
    stdout, _ = child.communicate(timeout=60)
    assert child.returncode == 1, stdout.decode()
    assert b"deliberate failure" in stdout
    assert_cleaned_up(out)


def test_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    child = child_pytest(out, "hang")
    try:
        wait_until_recorded(out)
        child.send_signal(signal.SIGINT)
        stdout, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == pytest.ExitCode.INTERRUPTED, stdout.decode()
    assert_cleaned_up(out)


def test_killed_pytest_takes_its_children_along(tmp_path: Path) -> None:
    """Even SIGKILL, which runs no teardown: the kernel ends the children (PR_SET_PDEATHSIG)."""
    out = tmp_path / "run.json"
    child = child_pytest(out, "hang")
    try:
        wait_until_recorded(out)
        child.kill()
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert_cleaned_up(out, teardown_ran=False)
