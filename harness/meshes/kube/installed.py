"""What an existing cluster has installed: which istiod serves the ingress gateway, its version and flags,
and the Helm release (if any) that manages it.

Nothing here assumes a Deployment named ``istiod`` or a release named ``istiod``: revisioned control planes
(``istiod-<rev>``, Helm value ``revision``) and installs without Helm (istioctl, the operator) are found
too, and each case that the suite cannot work with gets a message saying what was found.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from harness.core.mesh import MeshError
from harness.istio_model.translation import KNOWN_FLAGS
from harness.meshes.kube.istio import ISTIOD_CHART, InstalledRelease

ISTIOD_SELECTOR = "app=istiod"
REVISION_LABEL = "istio.io/rev"
_VERSION = re.compile(r"v?(\d+\.\d+\.\d+(?:-(?:alpha|beta|rc)\.\d+)?)")


def istio_version_from_image(image: str) -> str | None:
    """``1.30.3`` from ``docker.io/istio/pilot:1.30.3``, ``...:1.30.3-distroless``,
    ``registry:5000/istio/pilot:1.30.3@sha256:...``; None when the image names no version (a digest only,
    ``latest``, a custom build tag)."""
    reference = image.split("@", 1)[0]
    _, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon was a registry's port
        return None
    match = _VERSION.match(tag)
    return match.group(1) if match else None


def relevant_flags(env: dict[str, str]) -> dict[str, str]:
    """The flags of istiod's environment that decide what the gateway gets for this suite's manifests."""
    return {name: value for name, value in env.items() if name in KNOWN_FLAGS}


def deployment_env(deployment: Any) -> dict[str, str]:
    """istiod's literal environment (``value:`` entries; ``valueFrom`` ones are not flags we read)."""
    containers = deployment.spec.template.spec.containers
    discovery = next((c for c in containers if c.name == "discovery"), containers[0])
    return {e.name: e.value for e in (discovery.env or []) if e.value is not None}


def gateway_revision(core: Any, namespace: str, selector: str) -> str:
    """The control plane revision the gateway's pods are attached to ("default" without one)."""
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    revisions = {(p.metadata.labels or {}).get(REVISION_LABEL) or "default" for p in pods}
    return revisions.pop() if len(revisions) == 1 else "default"


def choose_istiod(deployments: list[Any], revision: str) -> Any:
    """The istiod Deployment of ``revision``; the only one when there is one; a MeshError otherwise."""
    if not deployments:
        raise MeshError("Istio is not installed: no istiod Deployment (label app=istiod) in istio-system; "
                        "`helmfile sync` installs it, or use --mesh kind")
    if len(deployments) == 1:
        return deployments[0]
    matching = [d for d in deployments if ((d.metadata.labels or {}).get(REVISION_LABEL) or "default") == revision]
    if len(matching) == 1:
        return matching[0]
    names = sorted(d.metadata.name for d in deployments)
    raise MeshError(f"several istiod Deployments ({', '.join(names)}) and the gateway's revision {revision!r} "
                    "does not pick one of them")


def _chart_version(chart: str) -> str | None:
    """``1.30.3`` from ``helm list``'s ``istiod-1.30.3``; None for another chart."""
    prefix = f"{ISTIOD_CHART}-"
    rest = chart[len(prefix):] if chart.startswith(prefix) else ""
    return rest if rest[:1].isdigit() else None


async def _istiod_releases(client: Any, namespace: str) -> list[InstalledRelease]:
    """Every release of Istio's istiod chart in ``namespace``, whatever its status, with its own values."""
    found = []
    for entry in await client.list_release_definitions(all=True, namespace=namespace):
        version = _chart_version(str(entry.get("chart", "")))
        if version is None:
            continue
        revision = await client.get_current_revision(entry["name"], namespace=namespace)
        found.append(InstalledRelease(
            name=str(entry["name"]), namespace=namespace, chart=ISTIOD_CHART, chart_version=version,
            app_version=str(entry.get("app_version") or ""), status=str(entry.get("status") or ""),
            revision=int(entry.get("revision") or revision.revision), values=await revision.values()))
    return found


def istiod_releases(client: Any, namespace: str) -> list[InstalledRelease]:
    return asyncio.run(_istiod_releases(client, namespace))


def find_istiod_release(client: Any, namespace: str, revision: str) -> InstalledRelease | None:
    """The Helm release of the istiod chart for ``revision`` (matched on its ``revision`` value), the only
    one when there is just one, None when Helm manages no istiod here; a MeshError when it is ambiguous."""
    releases = istiod_releases(client, namespace)
    if len(releases) <= 1:
        return releases[0] if releases else None
    matching = [r for r in releases if r.istio_revision == revision]
    if len(matching) == 1:
        return matching[0]
    names = ", ".join(f"{r.name} (revision {r.istio_revision})" for r in releases)
    raise MeshError(f"several Helm releases of istiod in {namespace} ({names}); none is uniquely the gateway's "
                    f"revision {revision!r}")


def not_helm_message(deployment: str, namespace: str) -> str:
    return (f"istiod ({deployment} in {namespace}) is not managed by Helm: no release of Istio's istiod chart "
            "there (installed by istioctl or the operator?). The suite changes istiod's flags only by a helm "
            "upgrade of its release; run without --allow-istiod-restart (tests that need a flag change then "
            "skip, with this reason), or install Istio with Helm (`helmfile sync`)")
