"""What istiod would push, modelled: Kubernetes and Istio objects in, a proxy's Envoy configuration out.

``translation.py`` gives an ingress gateway's configuration, ``sidecar.py`` a client sidecar's outbound one.
The local mesh runs on it; every Kubernetes mesh predicts its proxy's facts with it, and the fidelity test
compares it with real istiod.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.istio_model.sidecar import SidecarOutboundTranslator
from harness.istio_model.translation import Translator


def translator_for(front_door: str, namespace: str, listen_address: str, listen_port: int,
                   xds_sources: Mapping[str, Any]) -> Translator:
    """The translation for the proxy the probe's requests enter through: the gateway, or a sidecar."""
    kind = SidecarOutboundTranslator if front_door == "sidecar" else Translator
    return kind(namespace, listen_address, listen_port, xds_sources)
