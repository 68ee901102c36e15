"""The conformance report of a run (written even when tests fail) and the comparison gate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.manifests import PROJECT_ROOT
from fixtures.report.gate import compare, main, render
from fixtures.report.writer import dump, write_text_atomically

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


def run_fake_suite(tmp_path: Path, *args: str,
                   suite: str = FAKE_SUITE) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test_fake.py").write_text(suite)
    report = tmp_path / "out" / "report.yaml"
    summary = tmp_path / "summary.md"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "GITHUB_STEP_SUMMARY": str(summary)}
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fixtures.plugin", "-p", "fixtures.report.writer",
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


UNSTARTABLE_SUITE = '''
import pytest

@pytest.fixture(scope="session")
def session_mesh():
    pytest.exit("cannot start the local mesh: no Envoy", returncode=pytest.ExitCode.USAGE_ERROR)

@pytest.mark.feature("stateful-header")
def test_needs_the_mesh(session_mesh):
    pass

@pytest.mark.feature("maglev")
def test_also_needs_it(session_mesh):
    pass
'''


def test_report_is_written_when_the_mesh_cannot_start(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, suite=UNSTARTABLE_SUITE)
    assert process.returncode == 4, process.stdout + process.stderr
    report = yaml.safe_load(path.read_text())
    assert "no Envoy" in report["interrupted"]
    assert {t["test"].split("::")[1]: t["outcome"] for t in report["tests"]} == {
        "test_needs_the_mesh": "error", "test_also_needs_it": "error"}
    assert all("not run: " in t["reason"] for t in report["tests"])
    assert "The run stopped early" in path.with_suffix(".md").read_text()


def test_deselected_tests_are_not_reported(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, "-k", "test_passes or test_skipped")
    assert process.returncode == 0, process.stdout
    report = yaml.safe_load(path.read_text())
    assert report["summary"] == {"passed": 1, "skipped": 1}
    assert "interrupted" not in report


def test_report_is_readable_by_others_and_the_step_summary_has_no_relative_links(tmp_path: Path) -> None:
    _, path = run_fake_suite(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert path.with_suffix(".md").stat().st_mode & 0o777 == 0o666 & ~umask
    assert "](" not in (tmp_path / "summary.md").read_text()


def test_an_interrupted_write_leaves_the_old_report_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.yaml"
    target.write_text("old\n")

    with pytest.raises(TypeError):
        write_text_atomically(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.yaml"]


def shares(share: float, expected: float | None, n: int = 600) -> dict[str, Any]:
    figures: dict[str, Any] = {"remap_share": share, "remap_share_n": n}
    if expected is not None:
        figures["remap_share_expected"] = expected
    return report([{"test": "t", "outcome": "passed", "features": ["ring-hash"], "figures": figures}])


def test_a_share_that_follows_its_own_expectation_is_no_regression() -> None:
    # Ring hash over other pod addresses: the model predicts 0.44 then 0.56, and each run measures that.
    # On raw shares Fisher's test would call this a regression; against the expectations it is none.
    assert compare(shares(0.44, None), shares(0.56, None)).failed
    result = compare(shares(0.44, 0.44), shares(0.56, 0.56))
    assert not result.failed, render(result)


def test_a_share_that_leaves_its_expectation_is_a_regression() -> None:
    result = compare(shares(0.50, 0.50), shares(0.62, 0.50))
    assert result.failed
    assert "deviation from expected +0.1200" in render(result)


def test_rare_events_are_judged_exactly() -> None:
    # Maglev moves ~0.0001 of sessions between survivors: one session in 600 is not beyond noise, where
    # a normal approximation (z = 3.8) would nearly call it so; four are.
    assert not compare(shares(0.0, 0.0001), shares(1 / 600, 0.0001)).failed
    assert compare(shares(0.0, 0.0001), shares(4 / 600, 0.0001)).failed


def test_figures_that_are_not_shares_are_reported_never_judged_and_never_crash() -> None:
    def figures(**values: Any) -> dict[str, Any]:
        return report([{"test": "t", "outcome": "passed", "features": ["maglev"], "figures": values}])

    before = figures(ratio=1.2, ratio_n=100, chi2=float("nan"), keys=600)
    after = figures(ratio=1.5, ratio_n=100, chi2=3.0, keys=700)
    result = compare(before, after)
    assert not result.failed
    assert [(c.figure, bool(c.why_not_judged)) for c in result.unjudged] == [("ratio", True), ("keys", False)]
    assert "2 figures without a known noise changed (not judged; --all lists them)" in render(result)
    assert "t keys: 600 -> 700 (+100)" in render(result, show_all=True)
    assert "<details><summary>2 figures" in render(result, markdown=True)
