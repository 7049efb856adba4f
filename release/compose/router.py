"""The compose router's nginx config (deploy/compose/nginx.conf.tmpl): the local target's weighted split, with the
compose services as upstream hosts. Pure: the served versions in, the config text out."""

from __future__ import annotations

import re

from release.compose.options import Served

PORT = 8080  # the servers' port in the image (MLRELEASE_PORT), and the router's inside its container
FAIL_TIMEOUT = "1s"  # how long a replica that failed a request rests before it is tried again
SAFE = re.compile(r"[^\w.:@/%(), -]")  # the release line is quoted in nginx's config: nothing that could end it


def release_line(model_name: str, served: list[Served]) -> str:
    """What the router says it routes: model, and per service its version, digest and weight."""
    return SAFE.sub("-", f"{model_name}: " + ", ".join(s.short for s in served))


def upstream(slot: Served, backup: Served | None, replicas: int) -> str:
    """One service's upstream: its replicas (the service name resolves to each), each taken out for a moment
    after a failure (passive health check), and the other routed service as the backup when none answers."""
    lines = [f"    upstream mlrelease_{slot.name} {{  # version {slot.release.version}, {replicas} replica(s)"]
    # a server alone is never marked down (nginx ignores max_fails then); among siblings a failed one rests
    check = "max_fails=0" if replicas == 1 else f"max_fails=1 fail_timeout={FAIL_TIMEOUT}"
    lines.append(f"        server {slot.name}:{PORT} {check};")
    if backup is not None:
        lines.append(f"        server {backup.name}:{PORT} backup;")
    # idle upstream connections go before the server closes them (its keep-alive is at least 2 s)
    lines += ["        keepalive 16;", "        keepalive_timeout 1s;", "    }"]
    return "\n".join(lines)


def splits(served: list[Served]) -> str:
    """split_clients' lines: each routed service's percent, the largest last as the remainder (``*``)."""
    routed = sorted((s for s in served if s.weight > 0), key=lambda s: -s.weight)
    lines = [f"        {s.weight:g}% mlrelease_{s.name};" for s in routed[1:]]
    return "\n".join([*lines, f"        * mlrelease_{routed[0].name};"])


def nginx_conf(template: str, model_name: str, served: list[Served], replicas: int) -> str:
    """The router's config for the served versions (every one of them routed, weight above 0)."""
    upstreams = []
    for slot in served:
        backup = next((s for s in served if s is not slot), None)
        upstreams.append(upstream(slot, backup, replicas))
    text = template
    for key, value in {
        "RELEASE": release_line(model_name, served),
        "UPSTREAMS": "\n".join(upstreams),
        "SPLITS": splits(served),
        "TRIES": str(replicas * len(served) + 1),
    }.items():
        text = text.replace(f"@@{key}@@", value)
    return text
