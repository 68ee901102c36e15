"""An istiod rollout leaves its validating webhook unanswered for a moment: applies wait for it, bounded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from harness.core.timeouts import Timeouts
from harness.meshes.kube.mesh import KubeMesh

WEBHOOK_DOWN = ('{"message":"Internal error occurred: failed calling webhook \\"validation.istio.io\\": failed to '
                'call webhook: Post \\"https://istiod.istio-system.svc:443/validate\\": connection refused"}')


class FlakyDynamic:
    def __init__(self, failures: int, body: str = WEBHOOK_DOWN, status: int = 500) -> None:
        self.failures, self.body, self.status, self.calls = failures, body, status, 0
        self.resources = SimpleNamespace(get=lambda **_: "resource")

    def server_side_apply(self, *_: Any, **__: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            error = ApiException(status=self.status, reason="Internal Server Error")
            error.body = self.body
            raise error


def mesh_with(dynamic: FlakyDynamic, webhook_timeout: float) -> Any:
    return SimpleNamespace(routed_host=None, config=SimpleNamespace(app_image=None), namespace="sticky-x",
                           dynamic=dynamic, timeouts=Timeouts(admission_webhook=webhook_timeout))


RULE = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "r"}, "spec": {}}


def test_an_apply_waits_for_the_webhook_to_answer_again() -> None:
    dynamic = FlakyDynamic(failures=2)
    KubeMesh._server_side_apply(mesh_with(dynamic, 10.0), RULE)
    assert dynamic.calls == 3


def test_a_webhook_that_never_answers_fails_naming_it() -> None:
    with pytest.raises(TimeoutError, match="istiod's admission webhook for DestinationRule"):
        KubeMesh._server_side_apply(mesh_with(FlakyDynamic(failures=10**6), 0.5), RULE)


def test_a_rejection_by_the_webhook_is_final() -> None:
    dynamic = FlakyDynamic(failures=1, body='{"message":"admission webhook denied the request"}', status=400)
    with pytest.raises(ApiException):
        KubeMesh._server_side_apply(mesh_with(dynamic, 10.0), RULE)
    assert dynamic.calls == 1
