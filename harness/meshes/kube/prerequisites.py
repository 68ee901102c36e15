"""What the kind and cluster meshes need on this machine, checked before anything is created.

One message names everything that is missing and how to get it, instead of a traceback halfway through
creating a cluster.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.core.mesh import MeshError
from harness.meshes.kube.supported import MIN_HELM


@dataclass(frozen=True)
class Tool:
    name: str
    how_to_get: str


DOCKER = Tool("docker", "install Docker Engine or Docker Desktop: https://docs.docker.com/get-docker/")
KIND = Tool("kind", "install kind v0.30+: https://kind.sigs.k8s.io/docs/user/quick-start/#installation")
KUBECTL = Tool("kubectl", "install kubectl: https://kubernetes.io/docs/tasks/tools/")
HELM = Tool("helm", "install Helm 3.21 or newer (its skew policy covers Kubernetes 1.33-1.36): "
                    "https://helm.sh/docs/intro/install/")

KIND_TOOLS = (DOCKER, KIND, KUBECTL, HELM)


def missing_tools(tools: Sequence[Tool], which: Callable[[str], str | None] = shutil.which) -> list[str]:
    return [f"- {tool.name} is not on PATH: {tool.how_to_get}" for tool in tools if which(tool.name) is None]


def docker_problem(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                   timeout: float = 20.0) -> str | None:
    """Why the Docker daemon cannot be used, or None when ``docker info`` answers."""
    try:
        result = run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                     timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"- the Docker daemon does not answer ({error}): start Docker, then retry"
    if result.returncode != 0 or not result.stdout.strip():
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"- the Docker daemon does not answer (`docker info`: {detail[0]}): start Docker, then retry"
    return None


def helm_problem(helm: str = "helm", run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                 minimum: tuple[int, int] = MIN_HELM) -> str | None:
    """Why this Helm cannot install the pinned Istio releases' Kubernetes versions, or None."""
    try:
        result = run([helm, "version", "--template", "{{.Version}}"], capture_output=True, text=True,
                     timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"- helm does not run ({error}): {HELM.how_to_get}"
    match = re.match(r"v(\d+)\.(\d+)\.", result.stdout.strip())
    if result.returncode != 0 or match is None:
        return f"- `helm version` did not say its version ({(result.stderr or result.stdout).strip()[:200]})"
    found = (int(match.group(1)), int(match.group(2)))
    if found < minimum:
        return (f"- helm {result.stdout.strip()} is too old: {HELM.how_to_get} (Helm supports Kubernetes n-3 of "
                f"the client it is built with; the pinned kind node images run Kubernetes 1.35 and 1.36)")
    return None


def check_kind_prerequisites(which: Callable[[str], str | None] = shutil.which,
                             run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> None:
    """Raise one MeshError listing every missing tool (and a silent Docker daemon, an old Helm) for --mesh kind."""
    problems = missing_tools(KIND_TOOLS, which)
    if which("docker") is not None:
        problem = docker_problem(run)
        if problem:
            problems.append(problem)
    helm = which("helm")
    if helm is not None:
        problem = helm_problem(helm, run)
        if problem:
            problems.append(problem)
    if problems:
        raise MeshError("the kind mesh needs Docker, kind, kubectl and Helm; nothing was created.\n"
                        + "\n".join(problems))
