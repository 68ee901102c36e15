"""The conformance report of a run (written even when tests fail) and the comparison gate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.core.manifests import PROJECT_ROOT
from harness.report import gate, schema
from harness.report.gate import Comparison, main, render
from harness.report.schema import ConformanceReport
from harness.report.writer import write_text_atomically


def compare(before: dict[str, Any], after: dict[str, Any], alpha: float = 1e-4) -> Comparison:
    """The gate on reports written as plain data (what the YAML holds)."""
    return gate.compare(ConformanceReport.from_dict(before), ConformanceReport.from_dict(after), alpha)


def dump(raw: dict[str, Any], path: Path) -> str:
    return schema.dump(ConformanceReport.from_dict(raw), path)

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
        [sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "harness.report.writer",
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
    assert report["summary"] == {"excluded": 1, "failed": 1, "passed": 2, "skipped": 1}
    assert report["complete"] is True
    contract = report["profiles"]["contract"]
    assert contract["stateful-header"]["result"] == "passed"
    assert contract["stateful-cookie"]["result"] == "failed"
    assert contract["maglev"]["skipped"] == [{"test": "e2e/test_fake.py::test_skipped", "reason": "no maglev here"}]
    assert contract["least-request"]["result"] == "not-run"
    assert "exempt by --exempt-features" in contract["least-request"]["excluded"][0]["reason"]
    assert "model-exact" in report["profiles"]["provisional"]
    passed = next(t for t in report["tests"] if t["test"].endswith("test_passes"))
    assert passed["figures"] == {"kept_share": 1.0, "kept_share_n": 100, "note": "x"}
    markdown = path.with_suffix(".md").read_text()
    assert "| contract | stateful-cookie | failed |" in markdown
    assert "**Not conformant: 1 tests failed** (stateful-cookie)" in markdown
    assert "stateful-cookie" in (tmp_path / "summary.md").read_text()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_supported_features_select_tests(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, "--supported-features", "stateful-header")
    assert process.returncode == 0, process.stdout
    report = yaml.safe_load(path.read_text())
    assert report["summary"] == {"excluded": 4, "passed": 1}
    assert report["selection"]["full"] is False


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
    before = report([entry("a", outcome="known-defect")])
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
        "test_needs_the_mesh": "not-run", "test_also_needs_it": "not-run"}
    assert all("not run: " in t["reason"] for t in report["tests"])
    assert report["complete"] is False
    assert "**Incomplete run: no verdict.**" in path.with_suffix(".md").read_text()
    # The gate refuses it, in one line.
    assert main([str(path), str(path)]) == 2


def test_deselected_tests_are_not_reported(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, "-k", "test_passes or test_skipped")
    assert process.returncode == 0, process.stdout
    report = yaml.safe_load(path.read_text())
    assert report["summary"] == {"passed": 1, "skipped": 1}
    assert "interrupted" not in report
    assert report["selection"]["full"] is False
    assert report["selection"]["keyword"] == "test_passes or test_skipped"
    assert "Partial run" in path.with_suffix(".md").read_text()


def test_a_k_expression_longer_than_a_file_name_is_no_path(tmp_path: Path) -> None:
    """The writer looks for e2e paths among the arguments; a -k value of 256+ characters (the kind leg's named
    subsets) made that lookup fail with ENAMETOOLONG at the end of the run, losing the report."""
    expression = " or ".join(["test_passes", *(f"test_not_there_{i:03d}" for i in range(20))])
    assert len(expression) > 255
    process, path = run_fake_suite(tmp_path, "-k", expression)
    assert process.returncode == 0, process.stdout + process.stderr
    report = yaml.safe_load(path.read_text())
    assert report["summary"] == {"passed": 1}
    assert report["selection"]["keyword"] == expression


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


# -- verdicts that do not depend on chance (harness/core/verdicts.py) -----------------------------------------
VERDICT_SUITE = '''
import pytest

from harness.core.verdicts import KNOWN_DEFECTS, KnownDefect, excluded, exposed_to, unsupported

KNOWN_DEFECTS["coin"] = KnownDefect("coin", "an upstream bug that shows by chance", ("upstream#1",),
                                    applies=lambda mesh: True)
KNOWN_DEFECTS["always"] = KnownDefect("always", "an upstream bug this mesh triggers on purpose", ("upstream#2",),
                                      applies=lambda mesh: True, deterministic=lambda mesh: True)

@pytest.mark.feature("ring-hash")
def test_defect_did_not_show(request, figures):
    exposed_to(request.node, None, "coin")
    figures.update(moved_share=0.5, moved_share_n=100)

@pytest.mark.feature("ring-hash")
def test_defect_showed(request):
    exposed_to(request.node, None, "coin")
    assert False, "a new pod got no traffic"

@pytest.mark.feature("maglev")
def test_deterministic_defect_must_show(request):
    exposed_to(request.node, None, "always")

@pytest.mark.feature("maglev")
def test_deterministic_defect_shows(request):
    exposed_to(request.node, None, "always")
    assert False

@pytest.mark.feature("stateful-header")
def test_mesh_cannot():
    unsupported("no metrics pipeline")

@pytest.mark.feature("stateful-header")
def test_option_missing():
    excluded("needs --upgrade-to")

@pytest.mark.feature("stateful-cookie")
@pytest.mark.xfail(reason="flaky", strict=False)
def test_pytest_mark_is_no_verdict():
    pass
'''


def test_a_known_defect_gives_one_verdict_whether_or_not_it_shows(tmp_path: Path) -> None:
    process, path = run_fake_suite(tmp_path, "-v", suite=VERDICT_SUITE)
    report = yaml.safe_load(path.read_text())
    outcomes = {t["test"].split("::")[1]: t for t in report["tests"]}
    assert outcomes["test_defect_did_not_show"]["outcome"] == "known-defect"
    assert outcomes["test_defect_showed"]["outcome"] == "known-defect"
    assert outcomes["test_defect_did_not_show"]["figures"]["defect_shown"] == 0
    assert outcomes["test_defect_showed"]["figures"]["defect_shown"] == 1
    assert outcomes["test_defect_showed"]["known_defect"]["upstream"] == ["upstream#1"]
    # Where the mesh triggers the defect itself, not showing it means the version gate is wrong.
    assert outcomes["test_deterministic_defect_must_show"]["outcome"] == "failed"
    assert "did not show" in outcomes["test_deterministic_defect_must_show"]["reason"]
    assert outcomes["test_deterministic_defect_shows"]["outcome"] == "known-defect"
    assert outcomes["test_mesh_cannot"]["outcome"] == "unsupported"
    assert outcomes["test_option_missing"]["outcome"] == "excluded"
    assert outcomes["test_pytest_mark_is_no_verdict"]["outcome"] == "error"
    assert report["profiles"]["contract"]["ring-hash"]["result"] == "known-defect"
    assert report["profiles"]["contract"]["stateful-header"]["result"] == "unsupported"
    # pytest shows every known defect the same way (XFAIL), whatever happened.
    assert process.stdout.count("XFAIL") == 3, process.stdout
    assert "test_defect_did_not_show XFAIL" in process.stdout
    markdown = path.with_suffix(".md").read_text()
    assert ("- `coin`: an upstream bug that shows by chance. Upstream: upstream#1. 2 tests exposed, shown in 1"
            in markdown)
    assert "Known upstream defects met" in markdown


def test_reports_keep_one_file_per_run_and_latest_points_at_the_last_complete(tmp_path: Path) -> None:
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test_fake.py").write_text(FAKE_SUITE)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("GITHUB_STEP_SUMMARY", None)

    def run(suite: str) -> None:
        (tmp_path / "e2e" / "test_fake.py").write_text(suite)
        subprocess.run([sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "harness.report.writer",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "e2e"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)

    run(FAKE_SUITE)
    first = sorted((tmp_path / "reports").glob("conformance-local-*.yaml"))
    assert len(first) == 1
    assert (tmp_path / "reports" / "latest.yaml").resolve() == first[0].resolve()
    assert (tmp_path / "reports" / "latest-local.md").resolve() == first[0].with_suffix(".md").resolve()
    run(UNSTARTABLE_SUITE)
    runs = sorted((tmp_path / "reports").glob("conformance-local-*.yaml"))
    assert len(runs) == 2, "the interrupted run kept its own file"
    assert (tmp_path / "reports" / "latest.yaml").resolve() == first[0].resolve(), "latest moved to an incomplete run"


def test_an_unwritable_report_path_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test_fake.py").write_text(FAKE_SUITE)
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "harness.report.writer",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "--report", str(blocker / "r.yaml"), "e2e"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert process.returncode == 4
    assert f"--report {blocker / 'r.yaml'}: cannot write in {blocker}" in process.stderr
    assert "passed" not in process.stdout


def gated(*tests: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**report(list(tests)), "complete": True, "selection": {"full": True}, **extra}


def test_identical_runs_compare_clean_even_with_many_figures() -> None:
    # 200 figures at the per-figure alpha would give a false alarm in 2% of comparisons; the
    # comparison's alpha is split over them, so noise of this size passes.
    before = gated(*[entry(f"t{i}", share=0.40) for i in range(200)])
    after = gated(*[entry(f"t{i}", share=0.40 + (0.045 if i == 7 else 0.0)) for i in range(200)])
    result = compare(before, after)
    assert not result.failed, render(result)
    assert result.per_figure_alpha == pytest.approx(1e-4 / 200)


def test_known_defect_figures_are_shown_not_gated() -> None:
    before = gated(entry("t", outcome="known-defect", share=0.09))
    after = gated(entry("t", outcome="known-defect", share=0.30))
    result = compare(before, after)
    assert not result.failed
    assert "known defect: shown, not gated" in render(result, show_all=True)


def test_an_expectation_of_zero_with_counts_falls_back_to_fisher() -> None:
    # survivor_share 0.0933 vs 0.0867 of 600 against an expectation of 0: the model says nothing about
    # this noise, so the raw counts are compared (no p = 0 for every run).
    result = compare(shares(0.0933, 0.0), shares(0.0867, 0.0))
    assert not result.failed, render(result)


def test_a_verdict_change_to_a_known_defect_is_a_regression_and_back_an_improvement() -> None:
    passing, defect = gated(entry("t")), gated(entry("t", outcome="known-defect"))
    assert "t: passed before, known-defect now" in render(compare(passing, defect))
    assert compare(passing, defect).failed
    result = compare(defect, passing)
    assert not result.failed
    assert result.improvements


def test_mesh_capabilities_are_not_compared_but_other_new_skips_are_regressions() -> None:
    before = gated(entry("a"), entry("b"))
    after = gated({**entry("a", outcome="unsupported"), "reason": "unsupported by this mesh: no metrics"},
                  {**entry("b", outcome="skipped"), "reason": "something broke"})
    result = compare(before, after)
    text = render(result)
    assert "a: unsupported in AFTER: unsupported by this mesh: no metrics" in text
    assert "b: passed before, skipped now (something broke)" in text
    assert result.regressions == ["b: passed before, skipped now (something broke)"]


def test_a_partial_run_leaves_unselected_tests_and_features_uncompared() -> None:
    before = gated(entry("a"), entry("b", feature="ring-hash"))
    after = {**gated(entry("a")), "selection": {"full": False, "keyword": "a"}}
    result = compare(before, after)
    assert not result.failed, render(result)
    assert "b: not selected in AFTER" in result.not_compared


def test_the_gate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(dump(gated(entry("t")), good))
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: ConformanceReport\ntests: [\n")
    incomplete = tmp_path / "incomplete.yaml"
    incomplete.write_text(dump({**gated(entry("t")), "complete": False, "interrupted": "Ctrl-C"}, incomplete))
    sidecar = tmp_path / "sidecar.yaml"
    sidecar.write_text(dump({**gated(entry("t")), "implementation": {"mesh": "local", "front_door": "sidecar"}},
                            sidecar))
    assert main([str(good), str(good)]) == 0
    assert main([str(good), str(broken)]) == 2
    assert "gate: not valid YAML (line" in capsys.readouterr().err
    assert main([str(incomplete), str(good)]) == 2
    assert "incomplete run (Ctrl-C)" in capsys.readouterr().err
    assert main([str(good), str(sidecar)]) == 2
    assert main([str(good), str(tmp_path / "missing.yaml")]) == 2
    assert "gate: cannot read" in capsys.readouterr().err
