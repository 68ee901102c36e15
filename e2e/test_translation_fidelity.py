"""The local mesh's istiod translation against the real istiod: every manifest combination the suite applies.

On a mesh with a real istiod (``--mesh istiod``, kind, an existing cluster), every ``mesh.apply`` already
returns only once the gateway's Envoy shows exactly the facts the translation predicts (lb policy,
ring/table size, override_host_status, hash policies, session settings, the session filter), so a
difference surfaces as a time-out naming both sides. This test walks every combination the suite uses:
each Service variant with each DestinationRule (and none), with the persistent-session flag off and on.
On the local mesh the gateway configuration *is* the translation, so there is nothing to compare.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.core.manifests import MANIFEST_DIR
from harness.core.mesh import PERSISTENT_SESSION_FLAG, Mesh
from harness.core.needs import needs

SERVICES = ["02-service.yml", *sorted(f"services/{p.name}" for p in (MANIFEST_DIR / "services").glob("*.yml"))]
RULES = [None, *sorted(f"destinationrules/{p.name}" for p in (MANIFEST_DIR / "destinationrules").glob("*.yml"))]


@pytest.mark.feature("config")
@pytest.mark.parametrize("flag", [
    pytest.param("off", id="off"),
    pytest.param("on", id="on", marks=[pytest.mark.istiod_env({PERSISTENT_SESSION_FLAG: "true"}), needs("istiod-env")]),
])
@needs("real-istiod")
def test_real_istiod_agrees_with_the_translation(flag: str, mesh: Mesh, figures: dict[str, Any]) -> None:
    if flag == "on":
        mesh.set_istiod_env(PERSISTENT_SESSION_FLAG, "true")
    checked = []
    for service in SERVICES:
        mesh.apply(service)
        for rule in RULES:
            if rule is not None:
                mesh.apply(rule)  # returns once real istiod's config equals the translation's prediction
            facts = mesh.gateway_facts()
            assert facts["session_filter"] is (flag == "on"), f"{service} {rule}: session filter {facts}"
            checked.append((service, rule))
            if rule is not None:
                mesh.delete(rule)
    figures["combinations_agreeing"] = len(checked)
    figures["differences"] = 0
