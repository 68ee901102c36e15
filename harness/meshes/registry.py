"""Every mesh the suite runs on, by name: the one place ``--mesh`` is resolved.

Each entry is the mesh's provider (``harness.core.provider.MeshProvider``): its options, their checks, its
opener, its versions and its header lines. The plugin asks the selected provider; no other code chooses by
mesh name.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.core.provider import MeshProvider, OptionGroup
from harness.meshes.istiod.provider import IstiodProvider
from harness.meshes.kube.provider import ClusterProvider, KindProvider
from harness.meshes.local.provider import LocalProvider

PROVIDERS: dict[str, MeshProvider] = {p.name: p for p in (LocalProvider(), IstiodProvider(), KindProvider(),
                                                          ClusterProvider())}
MESHES = tuple(PROVIDERS)
DEFAULT_MESH = "local"


def provider(config: pytest.Config) -> MeshProvider:
    return PROVIDERS[config.getoption("--mesh")]


class _Recorder:
    """Records each provider's options: who uses which, and with what settings (two may share one)."""

    def __init__(self) -> None:
        self.options: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {}  # first name -> (names, settings)
        self.owners: dict[str, set[str]] = {}  # option -> the meshes that use it
        self.current = ""

    def addoption(self, *names: str, **settings: Any) -> None:
        self.options.setdefault(names[0], (names, settings))
        self.owners.setdefault(names[0], set()).add(self.current)


def _recorded() -> _Recorder:
    recorder = _Recorder()
    for name, mesh in PROVIDERS.items():
        recorder.current = name
        mesh.add_options(recorder)
    return recorder


def add_options(group: OptionGroup) -> None:
    """Every provider's options, each once."""
    for names, settings in _recorded().options.values():
        group.addoption(*names, **settings)


def _default(settings: dict[str, Any]) -> Any:
    """An option's value when not given (argparse's rules for the actions the providers use)."""
    if "default" in settings:
        return settings["default"]
    return {"store_true": False, "store_false": True}.get(settings.get("action", ""))


def check_options(config: pytest.Config) -> None:
    """An option of another mesh is refused in one line; then the selected mesh checks its own."""
    mesh = config.getoption("--mesh")
    recorded = _recorded()
    wrong = [option for option, meshes in recorded.owners.items()
             if mesh not in meshes and config.getoption(option) != _default(recorded.options[option][1])]
    if wrong:
        raise pytest.UsageError(f"{', '.join(wrong)} do(es) not apply to --mesh {mesh}")
    PROVIDERS[mesh].check_options(config)
