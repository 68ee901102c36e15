"""The conformance report of a run (written even when tests fail) and the comparison gate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from fixtures.compare_reports import compare, main, render
from fixtures.conformance_report import dump
from fixtures.manifests import PROJECT_ROOT

FAKE_SUITE = '''
import pytest

@pytest.mark.feature("stateful-header")
def test_passes(figures):
    figures.update(kept_share=1.0, kept_share_n=100, note="x")

@pytest.mark.feature("stateful-cookie")
def test_fails(figures):
    figures.update(kept_share=0.5, kept_share_n=100)
    assert False, "deliberate"

@pytest.mark.feature("model-exact")
def test_provisional():
    pass

@pytest.mark.feature("maglev")
def test_skipped():
    pytest.skip("no maglev here")

@pytest.mark.feature("least-request")
def test_exempt():
    pass
'''


def run_fake_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test_fake.py").write_text(FAKE_SUITE)
    report = tmp_path / "out" / "report.yaml"
    summary = tmp_path / "summary.md"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "GITHUB_STEP_SUMMARY": str(summary)}
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fixtures.plugin", "-p", "fixtures.conformance_report",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "--report", str(report), "e2e", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    return process, report


def test_report_is_written_for_a_failing_run(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, "--exempt-features", "least-request")
    assert process.returncode == 1, process.stdout
    report = yaml.safe_load(path.read_text())
    assert report["kind"] == "ConformanceReport"
    assert report["implementation"]["mesh"] == "local"
    assert report["summary"] == {"failed": 1, "passed": 2, "skipped": 2}
    contract = report["profiles"]["contract"]
    assert contract["stateful-header"]["result"] == "passed"
    assert contract["stateful-cookie"]["result"] == "failed"
    assert contract["maglev"]["skipped"] == [{"test": "e2e/test_fake.py::test_skipped", "reason": "no maglev here"}]
    assert "exempt by --exempt-features" in contract["least-request"]["skipped"][0]["reason"]
    assert "model-exact" in report["profiles"]["provisional"]
    passed = next(t for t in report["tests"] if t["test"].endswith("test_passes"))
    assert passed["figures"] == {"kept_share": 1.0, "kept_share_n": 100, "note": "x"}
    assert "| contract | stateful-cookie | failed |" in path.with_suffix(".md").read_text()
    assert "stateful-cookie" in (tmp_path / "summary.md").read_text()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_supported_features_select_tests(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, "--supported-features", "stateful-header")
    assert process.returncode == 0, process.stdout
    report = yaml.safe_load(path.read_text())
    assert report["summary"] == {"passed": 1, "skipped": 4}


def test_unknown_feature_is_a_usage_error(tmp_path: Path) -> None:
    process, _ = run_fake_suite(tmp_path, "--exempt-features", "no-such-feature")
    assert process.returncode == 4
    assert "unknown feature" in process.stderr


def report(tests: list[dict[str, Any]]) -> dict[str, Any]:
    features: dict[str, dict[str, Any]] = {}
    for test in tests:
        for feature in test["features"]:
            features[feature] = {"result": "failed" if test["outcome"] == "failed" else "passed"}
    return {"kind": "ConformanceReport", "implementation": {"mesh": "local", "envoy": "1.40.0"},
            "profiles": {"contract": features}, "tests": tests}


def entry(test: str, outcome: str = "passed", share: float = 0.4, n: int = 600,
          feature: str = "maglev") -> dict[str, Any]:
    return {"test": test, "outcome": outcome, "features": [feature],
            "figures": {"remap_share": share, "remap_share_n": n, "chi2": 1.5}}


def test_noise_level_change_is_no_regression() -> None:
    result = compare(report([entry("t", share=0.40)]), report([entry("t", share=0.43)]))
    assert not result.failed, render(result)


def test_a_share_beyond_noise_is_a_regression() -> None:
    result = compare(report([entry("t", share=0.40)]), report([entry("t", share=0.52)]))
    assert result.failed
    assert result.moved[0].figure == "remap_share"
    assert "+0.1200" in render(result)


def test_failing_or_missing_tests_and_features_are_regressions() -> None:
    before = report([entry("a"), entry("b", feature="ring-hash")])
    after = report([entry("a", outcome="failed")])
    text = render(compare(before, after))
    assert "a: passed before, failed now" in text
    assert "b: passed before, missing now" in text
    assert "feature ring-hash: had tests before, none now" in text


def test_fixed_test_is_an_improvement(tmp_path: Path) -> None:
    before = report([entry("a", outcome="xfailed")])
    after = report([entry("a")])
    (tmp_path / "before.yaml").write_text(dump(before, tmp_path / "before.yaml"))
    (tmp_path / "after.json").write_text(dump(after, tmp_path / "after.json"))
    assert main([str(tmp_path / "before.yaml"), str(tmp_path / "after.json")]) == 0
    assert main([str(tmp_path / "after.json"), str(tmp_path / "before.yaml")]) == 1
    assert main([str(tmp_path / "missing.yaml"), str(tmp_path / "before.yaml")]) == 2
