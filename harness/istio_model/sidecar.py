"""The local mesh's translation of a client sidecar's outbound configuration (the sidecar front door).

What istiod (release-1.31, pilot/pkg/networking/core) pushes to a sidecar whose ``Sidecar`` resource has one
egress listener on the Service port, ``captureMode: NONE``, bound to an address, hosts ``./*`` (the
configuration ``harness/meshes/istiod/sidecar.py`` gives the istiod mesh's client):

- listener ``<bind>_<port>``, direction OUTBOUND, one HTTP connection manager (listener.go
  buildSidecarOutboundHTTPListenerOpts): route configuration named for the port, ``use_remote_address``
  false (``features.UseRemoteAddress``), **no server name** (util/proxy_headers.go: sidecar outbound keeps
  Envoy's ``envoy``, "likely due to a mistake"), OVERWRITE, path normalization and websocket upgrades as
  every HCM (listener_builder.go buildHTTPConnectionManager), the empty stateful_session filter with the
  flag on (every class but sidecar inbound);
- one virtual host per Service and port, ``<fqdn>:<port>``, with the Service's names as domains, no ports
  (httproute.go generateVirtualHostDomains; the route configuration ignores ports in host matching),
  ``StatefulSessionPerRoute`` **on the virtual host** for a labelled Service with the flag on
  (httproute.go, util.go MaybeBuildStatefulSessionFilterConfig);
- its one ``default`` route (route.go buildSidecarVirtualHostForService): the DestinationRule's hash policy,
  and the **default retry policy with the previous_hosts predicate even when a hash is set**
  (BuildDefaultHTTPOutboundRoute calls ``retry.ConvertPolicy(..., false)``), unlike the gateway's hash
  routes, so a dead pod's keys are retried on other pods instead of failing;
- the same ``outbound|<port>||<fqdn>`` clusters and endpoints as the gateway's (cluster builder is shared).

VirtualServices bound to a gateway do not apply to sidecars; one bound to ``mesh`` is refused (not modelled).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.core.mesh import APP_PORT, MeshError
from harness.istio_model.translation import (
    _T,
    DEFAULT_RETRY_POLICY,
    STATEFUL_SESSION_FILTER,
    Endpoint,
    GatewayConfig,
    SessionLabels,
    Translator,
    _hash_policy,
    _per_route_session,
    cluster_name,
    connection_manager,
)


def service_domains(service: str, namespace: str) -> list[str]:
    """A Kubernetes Service's virtual host domains seen from its own namespace, as real istiod sent them
    (release-1.31 generateVirtualHostDomains: the sidecar ignores ports in host matching, so no ``:port``
    variants; the FQDN, its absolute form, the short names). Its ClusterIP is left out: there is none here."""
    fqdn = f"{service}.{namespace}.svc.cluster.local"
    return [fqdn, f"{fqdn}.", service, f"{service}.{namespace}.svc", f"{service}.{namespace}"]


def translate_sidecar_outbound(translator: Translator, by_kind: Mapping[str, Mapping[str, dict[str, Any]]],
                               rules: Mapping[str, dict[str, Any]], session_labels: SessionLabels, *,
                               flag_on: bool, endpoints: Mapping[str, list[Endpoint]]) -> GatewayConfig:
    for name, vs in by_kind.get("VirtualService", {}).items():
        if "mesh" in (vs["spec"].get("gateways") or []):
            raise MeshError(f"VirtualService {name}: routes bound to the mesh (sidecars) are not translated here")
    services = by_kind.get("Service", {})
    port = APP_PORT  # the Sidecar's egress listener port: the app Service's
    namespace = translator.namespace
    clusters: list[dict[str, Any]] = []
    assignments: list[dict[str, Any]] = []
    virtual_hosts: list[dict[str, Any]] = []
    for service, svc in sorted(services.items()):
        labels = svc["metadata"].get("labels") or {}
        session = session_labels.setting(labels)
        for service_port in svc["spec"].get("ports", []):
            number = int(service_port["port"])
            cluster = cluster_name(service, namespace, number)
            clusters.append(translator._cluster(cluster, rules.get(service), session is not None))
            keep_draining = session is not None and session.kind == "cookie"
            assignments.append(translator._assignment(cluster, endpoints.get(service, []), keep_draining))
            if number != port:
                continue
            fqdn = f"{service}.{namespace}.svc.cluster.local"
            action: dict[str, Any] = {"cluster": cluster, "timeout": "0s", "retry_policy": DEFAULT_RETRY_POLICY,
                                      "max_grpc_timeout": "0s"}
            hash_policy = _hash_policy(rules.get(service))
            if hash_policy:
                action["hash_policy"] = [hash_policy]
            vhost: dict[str, Any] = {
                "name": f"{fqdn}:{number}", "domains": service_domains(service, namespace),
                "routes": [{"name": "default", "match": {"prefix": "/"}, "route": action,
                            "decorator": {"operation": f"{fqdn}:{number}/*"}}],
                "include_request_attempt_count": True,
            }
            if flag_on and session is not None:
                vhost["typed_per_filter_config"] = {STATEFUL_SESSION_FILTER: _per_route_session(session)}
            virtual_hosts.append(vhost)
    http_filters: list[dict[str, Any]] = []
    if flag_on:
        http_filters.append({"name": STATEFUL_SESSION_FILTER, "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.stateful_session.v3.StatefulSession"}})
    http_filters.append({"name": "envoy.filters.http.router",
                         "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"}})
    route_name = str(port)
    listener_name = f"{translator.listen_address}_{port}"
    listener = {
        "@type": _T + "envoy.config.listener.v3.Listener",
        "name": listener_name,
        "traffic_direction": "OUTBOUND",
        "address": {"socket_address": {"address": translator.listen_address, "port_value": translator.listen_port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": connection_manager(f"outbound_{listener_name};", route_name, translator.xds_sources["rds"],
                                               http_filters, use_remote_address=False),
        }]}],
    }
    route_config = {"@type": _T + "envoy.config.route.v3.RouteConfiguration", "name": route_name,
                    "virtual_hosts": virtual_hosts, "validate_clusters": False,
                    "max_direct_response_body_size_bytes": 1048576, "ignore_port_in_host_matching": True}
    return GatewayConfig(listeners=[listener], routes=[route_config], clusters=clusters, endpoints=assignments)


class SidecarOutboundTranslator(Translator):
    """A client sidecar's outbound configuration (``front_door="sidecar"``), its listener on the same
    address and port a gateway's would take."""

    front_door = "sidecar"

    def _proxy_config(self, by_kind: Mapping[str, Mapping[str, dict[str, Any]]],
                      rules: Mapping[str, dict[str, Any]], session_labels: SessionLabels, *,
                      flag_on: bool, endpoints: Mapping[str, list[Endpoint]]) -> GatewayConfig:
        return translate_sidecar_outbound(self, by_kind, rules, session_labels, flag_on=flag_on, endpoints=endpoints)
