"""The compose file of a single-host release: deploy/compose/base.yaml's policy, the served versions' images by
digest, and the timing and replicas of params.yaml's ``promotion:``. Pure: inputs in, a compose document out."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from mlrelease.core.params import PromotionParams
from release.compose.options import ComposeOptions, Network, Served, network_of
from release.compose.router import PORT
from release.k8s.manifests import release_annotations

ROUTER_DIR = "router"  # beside compose.yaml: router/nginx.conf, mounted whole (a re-render is seen by a reload)
ROUTER_MOUNT = "/etc/nginx/mlrelease"
SERVING, EDGE = "serving", "edge"  # the servers' internal network; the router's way out to the published port


def project_name(model_name: str) -> str:
    """The compose project: ``mlrelease-<model>`` in the characters a project name may hold."""
    return "mlrelease-" + (re.sub(r"[^a-z0-9_-]+", "-", model_name.lower()).strip("-_") or "model")


def labels(slot: Served) -> dict[str, str]:
    """What a server's containers say about the release they belong to (the Kubernetes annotations' keys)."""
    found = {key.replace("mlrelease.io/", "io.mlrelease."): v for key, v in release_annotations(slot.release).items()}
    return {**found, "io.mlrelease.service": slot.name}


def resources(base: dict[str, Any], options: ComposeOptions) -> dict[str, Any]:
    """A server replica's limits and reservations: base.yaml's, with --cpus and --memory."""
    found: dict[str, Any] = copy.deepcopy(base)
    limits = found.setdefault("limits", {})
    if options.cpus is not None:
        limits["cpus"] = f"{options.cpus:g}"
    if options.memory is not None:
        limits["memory"] = options.memory.lower()
    return found


def server(
    base: dict[str, Any], slot: Served, promotion: PromotionParams, options: ComposeOptions, net: Network
) -> Any:
    """A model server service: base.yaml's server block with the version's image, replicas, env and timing."""
    service: dict[str, Any] = copy.deepcopy(base)
    drain = max(1, math.ceil(promotion.drain_timeout))
    service["image"] = slot.release.image_ref
    service["deploy"] = {"replicas": promotion.replicas, "resources": resources(service.pop("resources", {}), options)}
    service["environment"] = {
        **service.get("environment", {}),
        "MLRELEASE_MODEL_VERSION": slot.release.version,
        "MLRELEASE_GRACEFUL_TIMEOUT_S": str(drain),
        "MLRELEASE_TRUSTED_PROXIES": net.router,  # the router's fixed address: its X-Forwarded-For is believed
    }
    service.setdefault("healthcheck", {})["start_period"] = f"{max(1, math.ceil(promotion.ready_timeout))}s"
    service["stop_grace_period"] = f"{drain + 5}s"  # the server drains for `drain`, then Docker kills it
    service["labels"] = labels(slot)
    service["networks"] = {SERVING: {}}
    return service


def router(base: dict[str, Any], served: list[Served], options: ComposeOptions, net: Network) -> Any:
    """The nginx router: published port, its config folder read-only, started once every server is healthy and
    restarted whenever compose recreates one (nginx resolves the service names when it starts)."""
    service: dict[str, Any] = copy.deepcopy(base)
    service["image"] = options.router_image or service.get("image")
    service["deploy"] = {"resources": service.pop("resources", {})}
    service["volumes"] = [
        {"type": "bind", "source": f"./{ROUTER_DIR}", "target": ROUTER_MOUNT, "read_only": True},
    ]
    published = {"target": PORT, "published": str(options.port), "host_ip": options.host_ip, "protocol": "tcp"}
    service["ports"] = [published]
    service["depends_on"] = {s.name: {"condition": "service_healthy", "restart": True} for s in served}
    # the versions it routes to (not their weights: a weight change is a reload, not a new container)
    routed = ", ".join(f"{s.name} {s.release.version} ({s.release.image_ref})" for s in served)
    service["labels"] = {"io.mlrelease.routes": routed}
    service["networks"] = {EDGE: {}, SERVING: {"ipv4_address": net.router}}
    return service


def compose_document(
    base: dict[str, Any], served: list[Served], promotion: PromotionParams, options: ComposeOptions
) -> dict[str, Any]:
    """The whole compose file: the served versions, the router, the two networks."""
    net = network_of(options.subnet or str(base["network"].get("subnet")))
    model_name = served[0].release.model_name
    services = {s.name: server(base["server"], s, promotion, options, net) for s in served}
    services["router"] = router(base["router"], served, options, net)
    return {
        "name": project_name(model_name),
        "services": services,
        "networks": {
            SERVING: {"internal": True, "ipam": {"config": [{"subnet": net.subnet, "ip_range": net.ip_range}]}},
            EDGE: {},
        },
    }
