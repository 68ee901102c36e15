"""The install plan for Istio, read from the project's ``helmfile.yaml`` (one source for people and code).

The kind mesh installs exactly the releases, charts, chart repositories and values files helmfile.yaml
declares, in its order; ``--istio-version`` only replaces the version of the ``istio/*`` charts, and the
install options (``install_options.py``: a chart repository mirror, an image hub, extra values files) change
only what they name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.core.manifests import PROJECT_ROOT
from harness.core.mesh import MeshError
from harness.meshes.kube.install_options import ISTIO_REPO, InstallOptions

HELMFILE = PROJECT_ROOT / "helmfile.yaml"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    chart: str  # the chart's name inside its repository
    repo_url: str
    version: str
    values: dict[str, Any] = field(default_factory=dict)
    create_namespace: bool = False
    repo_name: str = ""  # the helmfile's name for the repository (``istio`` for Istio's charts)


def merge_values(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def release_names(path: Path = HELMFILE) -> list[str]:
    return [release.name for release in install_plan(path)]


def install_plan(path: Path = HELMFILE, istio_version: str | None = None,
                 options: InstallOptions | None = None) -> list[Release]:
    """The releases in helmfile order, values files merged (later files win, as in Helm); ``options``
    replace the ``istio`` repository's URL and layer their values over each release's files."""
    options = options or InstallOptions()
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MeshError(f"cannot read {path}: {error}") from None
    repos = {repo["name"]: repo["url"] for repo in spec.get("repositories", [])}
    plan = []
    for entry in spec.get("releases", []):
        repo, _, chart = entry["chart"].partition("/")
        if repo not in repos:
            raise MeshError(f"{path}: release {entry['name']} uses unknown repository {repo!r}")
        values: dict[str, Any] = {}
        for values_file in entry.get("values", []):
            if not isinstance(values_file, str):
                raise MeshError(f"{path}: release {entry['name']}: inline values are not supported, use a file")
            values = merge_values(values, yaml.safe_load((path.parent / values_file).read_text()) or {})
        for extra in options.extra_values(entry["name"]):
            values = merge_values(values, extra)
        version, url = str(entry["version"]), repos[repo]
        if repo == ISTIO_REPO:
            version = istio_version or version
            url = options.chart_repo or url
        plan.append(Release(entry["name"], entry["namespace"], chart, url, version, values,
                            bool(entry.get("createNamespace", False)), repo))
    return plan


def default_istio_version(path: Path = HELMFILE) -> str:
    """The version helmfile.yaml pins for the charts of its ``istio`` repository (whatever its URL)."""
    versions = {r.version for r in install_plan(path) if r.repo_name == ISTIO_REPO}
    if len(versions) != 1:
        raise MeshError(f"{path}: the istio charts must share one version, found {sorted(versions)}")
    return versions.pop()
