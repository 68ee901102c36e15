"""The Istio releases the kind mesh is run against, each with a Kubernetes version it supports, and the Helm
whose version-skew policy covers those Kubernetes versions. Checked 2026-12 (shared DESIGN.md section 8).

- Istio 1.29 reached end of life on 2026-10-15: not in the matrix (a run on it still works, with a note).
- Istio 1.30 supports Kubernetes 1.32-1.36 (Istio's supported-releases table).
- Istio 1.31 (1.31.0, released 2026-08-31 at commit eed52eb, the commit the istiod mesh builds): its source
  requires Kubernetes 1.32+ (istioctl's ``MinK8SVersion``), is built against client-go v0.36, and Istio's
  own CI runs it on kind 1.35; 1.32-1.36 is what that source vouches for.
- Patches pinned: 1.30.5 and 1.31.1, the newest of each line (both 2026-09-21, Istio's release notes).
  The kind node images are the ones kind v0.33.0's release notes publish: v1.36.4 and v1.35.8.
- Helm v3.21.4 (the one the istiod mesh builds from source) is built against client-go v0.36; Helm 3
  supports Kubernetes n-3 of its client-go, so 1.33-1.36. Helm 3.18 (client-go 0.33: 1.30-1.33) covers
  neither 1.35 nor 1.36.

The kind workflow's matrix (``.github/workflows/kind.yml``) is the one list of what CI runs; tests check it
against this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IstioSupport:
    minor: str
    patch: str  # the patch CI pins
    kubernetes: tuple[str, str]  # oldest and newest supported Kubernetes minor
    source: str


SUPPORTED_ISTIO = {
    "1.30": IstioSupport("1.30", "1.30.5", ("1.32", "1.36"), "Istio's supported-releases table"),
    "1.31": IstioSupport("1.31", "1.31.1", ("1.32", "1.36"),
                         "the 1.31.0 source: istioctl's minimum 1.32, client-go v0.36, Istio's CI on kind 1.35"),
}
END_OF_LIFE = {"1.29": "2026-10-15", "1.28": "2026-07-01", "1.27": "2026-04-07", "1.26": "2025-12-22"}

# The Helm the suite pins: the kind mesh and CI use it; the istiod mesh builds it (harness/meshes/istiod/build.py).
HELM_VERSION = "v3.21.4"
HELM_CLIENT_GO_MINOR = 36  # helm.sh/helm/v3 v3.21.4's go.mod: k8s.io/client-go v0.36.2
HELM_SKEW = 3  # Helm 3's policy: Kubernetes n to n-3 of the client-go it is built with
MIN_HELM = (3, 21)


def minor_of(version: str) -> str:
    """``1.30`` from ``1.30.4``, ``v1.36.1`` or ``kindest/node:v1.36.1@sha256:...``."""
    reference = version.split("@", 1)[0]
    tag = reference.rsplit(":", 1)[-1]
    major, minor = tag.lstrip("v").split(".")[:2]
    return f"{major}.{minor}"


def _key(minor: str) -> tuple[int, int]:
    major, rest = minor.split(".")
    return int(major), int(rest)


def helm_kubernetes() -> tuple[str, str]:
    """The Kubernetes minors the pinned Helm supports."""
    return f"1.{HELM_CLIENT_GO_MINOR - HELM_SKEW}", f"1.{HELM_CLIENT_GO_MINOR}"


def supports(span: tuple[str, str], kubernetes: str) -> bool:
    return _key(span[0]) <= _key(minor_of(kubernetes)) <= _key(span[1])


def support_note(istio_version: str) -> str | None:
    """A line for the person running the suite when the Istio version is not one the suite pins."""
    minor = minor_of(istio_version)
    if minor in SUPPORTED_ISTIO:
        return None
    if minor in END_OF_LIFE:
        return (f"note: Istio {minor} reached end of life on {END_OF_LIFE[minor]}; the suite is pinned to "
                f"{', '.join(s.patch for s in SUPPORTED_ISTIO.values())} (running it anyway)")
    return (f"note: Istio {istio_version} is not one the suite pins ("
            f"{', '.join(s.patch for s in SUPPORTED_ISTIO.values())}); running it anyway")


__all__ = ["END_OF_LIFE", "HELM_VERSION", "MIN_HELM", "SUPPORTED_ISTIO", "helm_kubernetes", "minor_of",
           "support_note", "supports"]
