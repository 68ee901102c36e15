"""Istio installed and reconfigured with Helm (pyhelm3): the kind mesh's install from helmfile.yaml, and an
existing cluster's istiod release as it was found.

istiod's environment flags are changed by a ``helm upgrade`` of the istiod release with ``pilot.env.<FLAG>``
values, never by patching the Deployment: what the suite runs is what Helm says. Every upgrade sends the
release's whole values (``--reset-values``): the base values (helmfile.yaml's on kind, ``helm get values``
of the release on an existing cluster) with the flags this run set on top. A flag set back is simply left
out, so it is what the base says (never ``value: ""``, which an empty label flag would turn into "off"), and
``restore`` gives the release back exactly the values it was found with.

A release left ``pending-*`` by an interrupted Helm command blocks every later upgrade ("another operation
is in progress"). On kind (the suite's own cluster) it is rolled back, or uninstalled when nothing was ever
deployed, before installing; on a shared cluster the suite stops and says how to fix it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.core.mesh import MeshError
from harness.meshes.kube.helmfile import HELMFILE, Release, install_plan, merge_values
from harness.meshes.kube.install_options import InstallOptions

ISTIOD_CHART = "istiod"
ISTIO_REPO_NAME = "istio"
# Helm's statuses of a release whose last operation never finished.
PENDING = ("pending-install", "pending-upgrade", "pending-rollback", "uninstalling")

T = TypeVar("T")


def helm_string(value: Any) -> str:
    """How the istiod chart writes a value into the container env (``value: "{{ $val }}"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def env_of(values: Mapping[str, Any]) -> dict[str, str]:
    """istiod's environment from its chart values: top-level ``env`` (Istio 1.24+ charts), overridden by
    ``pilot.env`` (the chart copies ``pilot.*`` over the top level). Null entries render nothing useful
    and are left out."""
    env: dict[str, str] = {}
    for source in (values.get("env"), (values.get("pilot") or {}).get("env")):
        for name, value in (source or {}).items():
            if value is not None:
                env[str(name)] = helm_string(value)
    return env


def istio_repo_url(path: Path = HELMFILE) -> str:
    import yaml

    for repo in (yaml.safe_load(path.read_text()) or {}).get("repositories", []):
        if repo.get("name") == ISTIO_REPO_NAME:
            return str(repo["url"])
    raise MeshError(f"{path} declares no repository named {ISTIO_REPO_NAME}")


@dataclass(frozen=True)
class InstalledRelease:
    """A Helm release as found on a cluster (``helm list`` / ``helm get values``)."""

    name: str
    namespace: str
    chart: str
    chart_version: str
    app_version: str
    status: str
    revision: int
    values: dict[str, Any] = field(default_factory=dict)  # user-supplied values, as `helm get values` shows

    @property
    def istio_revision(self) -> str:
        """The control plane revision the release installs ("default" without one), as pods label it."""
        return str(self.values.get("revision") or "default")


def pending_message(release: InstalledRelease) -> str:
    return (f"Helm release {release.name} in {release.namespace} is {release.status} (revision "
            f"{release.revision}): an earlier helm command was interrupted, and every upgrade now fails with "
            f"\"another operation (install/upgrade/rollback) is in progress\". The suite does not roll back a "
            f"shared control plane: look at `helm history {release.name} -n {release.namespace}`, then "
            f"`helm rollback {release.name} <last deployed revision> -n {release.namespace}`")


class IstioHelm:
    def __init__(self, kubeconfig: Path | None, istio_version: str | None, timeout_seconds: float, *,
                 helmfile: Path | None = None, plan: list[Release] | None = None,
                 charts: Mapping[str, Path] | None = None, wait: bool = True, executable: str = "helm",
                 progress: Callable[[str], None] | None = None, options: InstallOptions | None = None) -> None:
        """``helmfile``: install another helmfile's releases the same way (the monitoring stack).
        ``plan``: these releases instead of a helmfile's. ``charts``: chart name -> local chart directory
        to use instead of the repository (tests). ``wait``: each install waits for its resources.
        ``options``: chart repository, hub and extra values (kept for a later ``upgrade_to``)."""
        self.kubeconfig = kubeconfig
        self.options = options or InstallOptions()
        self.plan = plan if plan is not None else install_plan(helmfile or HELMFILE, istio_version, self.options)
        self.charts = dict(charts or {})
        self.wait = wait
        self.executable = executable
        self.timeout = f"{int(timeout_seconds)}s"
        self.progress = progress or (lambda message: None)
        self.istiod_name = ISTIOD_CHART
        self.shared = False  # an existing cluster's release: never rolled back by the suite
        self._client: Any = None
        # The flags this run set on top of the base values; a flag set back is removed from here.
        self.env_overlay: dict[str, str] = {}
        self.upgrades = 0  # helm upgrades of istiod for a flag change or a restore

    @classmethod
    def for_installed(cls, kubeconfig: Path | None, release: InstalledRelease, timeout_seconds: float,
                      **options: Any) -> IstioHelm:
        """The istiod release found on an existing cluster: its chart version from Istio's repository
        (helmfile.yaml's), its own values as the base."""
        plan = [Release(release.name, release.namespace, release.chart, options.pop("repo_url", None)
                        or istio_repo_url(), release.chart_version, dict(release.values))]
        helm = cls(kubeconfig, None, timeout_seconds, plan=plan, **options)
        helm.istiod_name = release.name
        helm.shared = True
        return helm

    def client(self) -> Any:
        """pyhelm3's Client runs `helm version` when built: build it only when Helm is needed."""
        if self._client is None:
            from pyhelm3 import Client

            self._client = Client(kubeconfig=self.kubeconfig, default_timeout=self.timeout,
                                  executable=self.executable)
        return self._client

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(work)

    def release(self, name: str) -> Release:
        for release in self.plan:
            if release.name == name:
                return release
        raise MeshError(f"the install plan has no release {name}")

    @property
    def istiod(self) -> Release:
        return self.release(self.istiod_name)

    def values(self, release: Release) -> dict[str, Any]:
        """Everything the release is installed with: its base values, plus this run's flags for istiod."""
        if release.name == self.istiod_name and self.env_overlay:
            return merge_values(release.values, {"pilot": {"env": dict(self.env_overlay)}})
        return dict(release.values)

    def baseline_env(self) -> dict[str, str]:
        """istiod's environment from its base values (before this run set anything)."""
        return env_of(self.istiod.values)

    async def _chart(self, release: Release) -> Any:
        client = self.client()
        local = self.charts.get(release.chart)
        if local is not None:
            return await client.get_chart(local)
        return await client.get_chart(release.chart, repo=release.repo_url, version=release.version)

    def check_chart(self, release: Release) -> None:
        """The chart a later upgrade needs can be fetched (a clear message at start, not mid-run)."""
        try:
            self._run(self._chart(release))
        except Exception as error:
            raise MeshError(f"cannot fetch chart {release.chart} {release.version} from {release.repo_url} (the "
                            f"suite upgrades {release.name} with it): {str(error).strip()[-400:]}") from None

    async def _install(self, release: Release) -> None:
        client = self.client()
        chart = await self._chart(release)
        await client.install_or_upgrade_release(
            release.name, chart, self.values(release), namespace=release.namespace, create_namespace=True,
            wait=self.wait, atomic=False, timeout=self.timeout, reset_values=True,
        )

    # -- releases left pending -----------------------------------------------------------------------
    async def _find(self, release: Release) -> InstalledRelease | None:
        from pyhelm3.errors import ReleaseNotFoundError

        client = self.client()
        try:
            revision = await client.get_current_revision(release.name, namespace=release.namespace)
        except ReleaseNotFoundError:
            return None
        return InstalledRelease(release.name, release.namespace, release.chart, release.version, "",
                                revision.status.value, revision.revision)

    def pending(self) -> list[InstalledRelease]:
        """Releases of the plan whose last Helm operation never finished."""

        async def find_all() -> list[InstalledRelease]:
            found = [await self._find(release) for release in self.plan]
            return [r for r in found if r is not None and r.status in PENDING]

        return self._run(find_all())

    def recover_pending(self) -> list[str]:
        """Make every release of the plan upgradable again (kind: the suite's own cluster): pyhelm3 rolls a
        pending upgrade or rollback back to the last revision, and uninstalls a pending install. A shared
        cluster's release is never touched: ``MeshError`` with the commands a person would run."""
        stuck = self.pending()
        if stuck and self.shared:
            raise MeshError(pending_message(stuck[0]))
        done = []
        for release in stuck:
            action = "uninstalled" if release.status in {"pending-install", "uninstalling"} else "rolled back"
            self.progress(f"Helm release {release.name} was left {release.status} by an interrupted helm "
                          f"command: {action} before installing")
            self._run(self.client().get_proceedable_revision(release.name, namespace=release.namespace,
                                                             timeout=self.timeout))
            done.append(f"{release.name}: {release.status} -> {action}")
        return done

    # -- installing and changing -----------------------------------------------------------------------
    def install(self) -> None:
        """Install or upgrade every release in plan order, each waited for (istiod is Ready after)."""
        self.recover_pending()
        for release in self.plan:
            self._run(self._install(release))

    def set_env(self, name: str, value: str | None) -> None:
        """istiod with this flag (None: as the base values have it, or absent), by a helm upgrade; nothing
        happens when the values would not change."""
        overlay = dict(self.env_overlay)
        if value is None:
            overlay.pop(name, None)
        else:
            overlay[name] = value
        if overlay == self.env_overlay:
            return
        self.env_overlay = overlay
        self._upgrade_istiod()

    def restore(self) -> None:
        """istiod back to exactly the values it was found (or installed) with."""
        if self.env_overlay:
            self.env_overlay = {}
            self._upgrade_istiod()

    def _upgrade_istiod(self) -> None:
        if self.shared:
            stuck = self.pending()
            if stuck:
                raise MeshError(pending_message(stuck[0]))
        self.upgrades += 1
        self._run(self._install(self.istiod))

    def upgrade_to(self, version: str) -> None:
        """Move istiod and the gateway to another Istio version (the kind live-upgrade)."""
        if self.shared:
            raise MeshError("the cluster mesh never upgrades a shared Istio; use --mesh kind")
        self.plan = install_plan(istio_version=version, options=self.options)
        self.install()

    @property
    def version(self) -> str:
        return self.istiod.version
