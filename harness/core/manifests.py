"""Reading the YAML under ``manifests/``: the one source of truth every mesh applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.core.mesh import MeshError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = PROJECT_ROOT / "manifests"
APP_SOURCE = PROJECT_ROOT / "app" / "echo_server.py"

# What the baseline of every test is built from, in apply order.
BASE_MANIFESTS = (
    "01-deployment.yml",
    "02-service.yml",
    "03-gateway.yml",
    "04-virtualservice.yml",
)


def resolve(manifest: str | Path) -> Path:
    """A manifest path relative to ``manifests/`` (or absolute); a clear error when it is missing."""
    path = Path(manifest)
    if not path.is_absolute():
        path = MANIFEST_DIR / path
    if not path.is_file():
        raise MeshError(f"manifest not found: {path}")
    return path


def load(manifest: str | Path) -> list[dict[str, Any]]:
    """The objects of a manifest file, each checked for apiVersion, kind and metadata.name."""
    path = resolve(manifest)
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as error:
        raise MeshError(f"{path}: not valid YAML: {error}") from None
    objects = [doc for doc in documents if doc is not None]
    for obj in objects:
        if not isinstance(obj, dict) or not {"apiVersion", "kind", "metadata"} <= obj.keys():
            raise MeshError(f"{path}: every document needs apiVersion, kind and metadata")
        if not obj["metadata"].get("name"):
            raise MeshError(f"{path}: a {obj['kind']} without metadata.name")
    return objects


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    """Identity of an object within one namespace: (kind, name)."""
    return str(obj["kind"]), str(obj["metadata"]["name"])
