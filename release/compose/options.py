"""What ``mlrelease render compose`` renders: the served versions, and the options checked before anything is read
(each mistake is one line)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mlrelease.core.errors import UserError
from release.k8s.manifests import Release

MEMORY = re.compile(r"^[1-9][0-9]*[kmg]?b?$", re.IGNORECASE)  # compose's byte values: 512m, 1g, 1073741824
IMAGE = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
MAX_WEIGHT = 100.0


@dataclass(frozen=True)
class Served:
    """One compose service running a registered version behind the router: ``stable`` or ``canary``."""

    name: str
    release: Release
    weight: float  # percent of the requests the router sends it

    @property
    def short(self) -> str:
        """The version and its digest's first 12 hex digits, for the router's release line."""
        return f"{self.name} {self.release.version} ({self.release.digest[:19]}) {self.weight:g}%"


@dataclass(frozen=True)
class Network:
    """The servers' network: its subnet, the range Docker hands out, and the router's fixed address on it."""

    subnet: str
    ip_range: str
    router: str


@dataclass(frozen=True)
class ComposeOptions:
    """What a render may change beside the versions: the published address, per-replica limits, the network,
    the router's image (None: base.yaml's)."""

    host_ip: str = "127.0.0.1"
    port: int = 8080
    cpus: float | None = None
    memory: str | None = None
    subnet: str | None = None
    router_image: str | None = None


def check_weight(weight: float, canary_version: str | None) -> float:
    """The canary's share in percent: 0 (no canary) up to below 100, in steps of 0.01 (nginx's split_clients)."""
    if not 0 <= weight < MAX_WEIGHT or round(weight, 2) != weight:
        raise UserError(
            f"--canary-weight {weight:g}: give a percent from 0 (no canary) up to below 100, at most two decimals; "
            "to send all traffic to a version, render it as --version instead"
        )
    if weight > 0 and canary_version is None:
        raise UserError(f"--canary-weight {weight:g} needs --canary-version (a version number or alias)")
    return weight


def parse_publish(publish: str) -> tuple[str, int]:
    """``[IP:]PORT`` where the router listens on the host (default IP 127.0.0.1: this host only)."""
    host, _, port = publish.rpartition(":")
    try:
        number = int(port)
        address = str(ipaddress.ip_address(host or "127.0.0.1"))
    except ValueError:
        number, address = 0, ""
    if not address or not 1 <= number <= 65535:
        raise UserError(f"--publish {publish!r}: give [IP:]PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:80")
    return address, number


def network_of(subnet: str) -> Network:
    """The router at the subnet's second address; Docker hands out the upper half, so the two never meet."""
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError:
        net = None
    if net is None or net.version != 4 or net.prefixlen > 28:
        raise UserError(f"subnet {subnet!r}: give an IPv4 network of /28 or larger, e.g. --subnet 172.30.27.0/24")
    upper = list(net.subnets(prefixlen_diff=1))[1]
    return Network(subnet=str(net), ip_range=str(upper), router=str(net.network_address + 2))


def options_of(
    publish: str, cpus: float | None, memory: str | None, subnet: str | None, router_image: str | None
) -> ComposeOptions:
    """The checked options of a render."""
    host_ip, port = parse_publish(publish)
    if cpus is not None and not cpus > 0:
        raise UserError(f"--cpus {cpus:g}: give a positive number of CPUs per replica, e.g. 1 or 0.5")
    if memory is not None and not MEMORY.match(memory):
        raise UserError(f"--memory {memory!r}: give a size per replica such as 512m or 2g")
    if subnet is not None:
        network_of(subnet)
    if router_image is not None and not IMAGE.match(router_image):
        raise UserError(f"--router-image {router_image!r}: give an image reference, e.g. nginx:1.30-alpine@sha256:...")
    return ComposeOptions(host_ip, port, cpus, memory, subnet, router_image)
