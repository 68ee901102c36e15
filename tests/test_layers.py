"""The import check CI runs (`.ci/check-imports.py`): the harness's imports only go down its layers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from harness.core.manifests import PROJECT_ROOT


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", PROJECT_ROOT / ".ci" / "check-imports.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in {p.parent for p in root.rglob("*.py")}:
        (directory / "__init__.py").touch()
    return root


def test_the_harness_has_no_cycle_and_no_upward_import(capsys: pytest.CaptureFixture[str]) -> None:
    assert checker().main() == 0, capsys.readouterr().out


def test_an_upward_import_fails_even_inside_a_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path, {"harness/core/mesh.py": "def f():\n    from harness.plugin import x\n",
                           "harness/plugin.py": "x = 1\n"})
    assert checker().main(root) == 1
    assert "harness/core/mesh.py:2: upward import of harness.plugin" in capsys.readouterr().out


def test_a_cycle_inside_one_layer_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path, {"harness/core/a.py": "from harness.core import b\n",
                           "harness/core/b.py": "from harness.core.a import x\n"})
    assert checker().main(root) == 1
    assert "import cycle: harness.core.a -> harness.core.b -> harness.core.a" in capsys.readouterr().out


def test_a_sibling_package_of_the_same_layer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path, {"harness/meshes/local/m.py": "from harness.meshes.kube import k\n",
                           "harness/meshes/kube/k.py": ""})
    assert checker().main(root) == 1
    assert "sideways import of harness.meshes.kube.k" in capsys.readouterr().out
