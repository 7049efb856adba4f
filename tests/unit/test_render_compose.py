"""``mlrelease render compose`` without docker: the compose project is a pure function of the registered versions'
image digests, params.yaml's ``promotion:`` and deploy/compose; the compose file validates against the Compose
specification's JSON schema (deploy/compose/schema), the servers and router keep their security settings, the
router splits by the given weight, and a mistake is one line. The one test marked ``integration`` runs ``nginx -t``
on the rendered router config (the service names resolving through a private /etc/hosts)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from mlrelease.commands import render as render_cmd
from mlrelease.core.errors import UserError
from mlrelease.core.params import PromotionParams
from release.compose.options import ComposeOptions, Served, network_of, options_of
from release.compose.render import render, served_versions
from tests.fakes import FakeRegistry

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
DIGESTS = {v: f"sha256:{v * 64}" for v in ("5", "6", "7")}
PROMOTION = PromotionParams(replicas=2, ready_timeout="90s", drain_timeout="15s")


def registry(**drop: str) -> FakeRegistry:
    """Versions 5, 6, 7 built (image_digest, image_ref tags), production on 6; ``drop`` removes a version's tag."""
    fake = FakeRegistry(Path("unused"), versions=("5", "6", "7"), model_name="breast-cancer-classifier")
    for version, digest in DIGESTS.items():
        fake.versions[version].update({"image_digest": digest, "image_ref": f"localhost/bcc:{version}-abc1234"})
    for version, tag in drop.items():
        fake.versions[version.lstrip("v")].pop(tag)
    fake.aliases["production"] = "6"
    return fake


def rendered(
    tmp_path: Path, canary: str | None = "7", weight: float = 25, options: ComposeOptions | None = None
) -> tuple[dict[str, Any], str]:
    """The compose document and the router config of a render into ``tmp_path``."""
    served = served_versions(registry(), None, canary, weight)
    done = render(served, COMPOSE_DIR, tmp_path, PROMOTION, options or ComposeOptions())
    return yaml.safe_load(done.compose_file.read_text()), (tmp_path / "router" / "nginx.conf").read_text()


@cache
def validator() -> jsonschema.Draft7Validator:
    """The vendored Compose specification schema (draft 7), with format checks."""
    schema = json.loads((COMPOSE_DIR / "schema" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(document)]


@pytest.mark.parametrize(
    ("canary", "weight", "options"),
    [
        ("7", 25, ComposeOptions()),
        (None, 0, ComposeOptions(host_ip="0.0.0.0", port=80, cpus=2, memory="2g", subnet="10.77.0.0/16")),
        ("canary-less", 0, ComposeOptions(router_image=f"nginx:1.30-alpine@{DIGESTS['5']}")),
    ],
)
def test_the_rendered_file_is_valid_compose(
    tmp_path: Path, canary: str | None, weight: float, options: ComposeOptions
) -> None:
    document, _ = rendered(tmp_path, canary, weight, options)
    assert schema_errors(document) == []
    assert set(document["services"]) == ({"stable", "canary", "router"} if weight else {"stable", "router"})


def test_the_schema_refuses_what_compose_refuses(tmp_path: Path) -> None:
    """The check can fail: a misspelt key, a list given as a string, a depends_on without its condition. (Numbers
    and booleans may be strings in the schema, for ${VAR} interpolation: the tests above check those values.)"""
    document, _ = rendered(tmp_path)
    document["services"]["stable"]["readonly"] = True
    document["services"]["canary"]["cap_drop"] = "ALL"
    document["services"]["router"]["depends_on"]["stable"] = {"restart": True}
    assert len(schema_errors(document)) == 3


def test_servers_run_by_digest_non_root_read_only_without_privileges(tmp_path: Path) -> None:
    document, _ = rendered(tmp_path)
    services = document["services"]
    for name, version in (("stable", "6"), ("canary", "7")):
        server = services[name]
        assert server["image"] == f"localhost/bcc@{DIGESTS[version]}"
        assert server["environment"]["MLRELEASE_MODEL_VERSION"] == version
        assert server["labels"]["io.mlrelease.model-version"] == version
        assert server["deploy"]["replicas"] == 2
        assert server["deploy"]["resources"]["limits"] == {"cpus": "1", "memory": "1g"}
        assert server["healthcheck"]["test"] == ["CMD", "/opt/venv/bin/python", "/opt/app/healthcheck.py", "/ready"]
        assert server["healthcheck"]["start_period"] == "90s"  # promotion.ready_timeout
        assert server["stop_grace_period"] == "20s"  # promotion.drain_timeout + 5 s
        assert server["environment"]["MLRELEASE_GRACEFUL_TIMEOUT_S"] == "15"
        assert server["networks"] == {"serving": {}}  # the internal network only: no way out
        assert server["env_file"] == [{"path": "serving.env", "required": False}]
        assert not [key for key in server["environment"] if "KEY" in key or "TOKEN" in key]  # secrets: env file
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["tmpfs"][0].startswith("/tmp:"), name
        assert service["user"].split(":")[0] not in ("", "0", "root"), name
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"], name
        assert service["restart"] == "unless-stopped", name
        assert service["deploy"]["resources"]["limits"]["memory"], name
    assert services["stable"]["user"] == "10001:10001"  # the image's user (deploy/docker/Dockerfile)
    assert document["networks"]["serving"]["internal"] is True


def test_the_router_waits_for_healthy_servers_and_is_the_one_trusted_proxy(tmp_path: Path) -> None:
    document, conf = rendered(tmp_path, options=options_of("0.0.0.0:9000", None, None, "10.9.8.0/24", None))
    router = document["services"]["router"]
    assert router["depends_on"] == {
        "stable": {"condition": "service_healthy", "restart": True},
        "canary": {"condition": "service_healthy", "restart": True},
    }
    assert router["ports"] == [{"target": 8080, "published": "9000", "host_ip": "0.0.0.0", "protocol": "tcp"}]
    assert router["networks"]["serving"] == {"ipv4_address": "10.9.8.2"}
    assert document["networks"]["serving"]["ipam"]["config"] == [{"subnet": "10.9.8.0/24", "ip_range": "10.9.8.128/25"}]
    for name in ("stable", "canary"):
        assert document["services"][name]["environment"]["MLRELEASE_TRUSTED_PROXIES"] == "10.9.8.2"
    assert router["volumes"][0] == {
        "type": "bind",
        "source": "./router",
        "target": "/etc/nginx/mlrelease",
        "read_only": True,
    }
    assert "/etc/nginx/mlrelease/nginx.conf" in router["entrypoint"]
    assert "listen 8080;" in conf and "pid /tmp/nginx.pid;" in conf
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf


def test_the_router_splits_by_the_canary_weight(tmp_path: Path) -> None:
    _, conf = rendered(tmp_path / "a", weight=25)
    assert "        25% mlrelease_canary;\n        * mlrelease_stable;\n" in conf
    assert "server stable:8080 max_fails=1 fail_timeout=1s;\n        server canary:8080 backup;" in conf
    assert "server canary:8080 max_fails=1 fail_timeout=1s;\n        server stable:8080 backup;" in conf
    assert "proxy_next_upstream_tries 5;" in conf  # 2 replicas x 2 services + 1
    assert "stable 6 (sha256:666666666666) 75%, canary 7 (sha256:777777777777) 25%" in conf
    _, small = rendered(tmp_path / "b", weight=2.5)
    assert "        2.5% mlrelease_canary;\n" in small
    document, alone = rendered(tmp_path / "c", canary=None, weight=0)
    assert "canary" not in alone.split("# Release:")[1] and "        * mlrelease_stable;\n" in alone
    assert " backup;" not in alone and set(document["services"]["router"]["depends_on"]) == {"stable"}


def test_a_weight_change_is_a_router_reload_and_the_same_release_the_same_bytes(tmp_path: Path) -> None:
    served = served_versions(registry(), None, "7", 25)
    first = render(served, COMPOSE_DIR, tmp_path, PROMOTION, ComposeOptions())
    assert [p.relative_to(tmp_path).as_posix() for p in first.changed] == ["compose.yaml", "router/nginx.conf"]
    before = {p: p.stat().st_mtime_ns for p in first.changed}
    assert render(served, COMPOSE_DIR, tmp_path, PROMOTION, ComposeOptions()).changed == []
    assert {p: p.stat().st_mtime_ns for p in first.changed} == before
    stepped = render(served_versions(registry(), None, "7", 50), COMPOSE_DIR, tmp_path, PROMOTION, ComposeOptions())
    assert stepped.changed == [tmp_path / "router" / "nginx.conf"]  # compose.yaml unchanged: no container replaced
    assert first.compose_file.read_text().startswith(
        "# Rendered by `mlrelease render compose --version 6 --canary-version 7 --canary-weight W`"
    )
    dry = render(served, COMPOSE_DIR, tmp_path / "dry", PROMOTION, ComposeOptions(), dry_run=True)
    assert dry.changed == [] and not (tmp_path / "dry").exists()


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda: served_versions(registry(v7="image_digest"), None, "7", 5), r"`mlrelease build --version 7`"),
        (lambda: served_versions(registry(v6="image_digest"), None, None, 0), r"`mlrelease build --version 6`"),
        (lambda: served_versions(registry(), None, "7", 100), r"--canary-weight 100: give a percent from 0"),
        (lambda: served_versions(registry(), None, "7", -1), r"--canary-weight -1"),
        (lambda: served_versions(registry(), None, "7", 2.555), r"at most two decimals"),
        (lambda: served_versions(registry(), None, None, 5), r"needs --canary-version"),
        (lambda: served_versions(registry(), None, "6", 5), r"version 6, which is stable already"),
        (lambda: served_versions(registry(), "9", None, 0), r"registered versions: 5, 6, 7"),
        (lambda: served_versions(registry(), None, "canary", 5), r"alias `canary`"),
        (lambda: options_of("localhost:80", None, None, None, None), r"--publish 'localhost:80'"),
        (lambda: options_of("8080", 0, None, None, None), r"--cpus 0"),
        (lambda: options_of("8080", None, "lots", None, None), r"--memory 'lots'"),
        (lambda: options_of("8080", None, None, "10.0.0.0/30", None), r"subnet '10.0.0.0/30'"),
        (lambda: options_of("8080", None, None, None, "Nginx Latest"), r"--router-image"),
    ],
)
def test_a_mistake_is_one_line(call: Any, said: str) -> None:
    with pytest.raises(UserError, match=said) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_options_and_network() -> None:
    assert options_of("8080", None, None, None, None) == ComposeOptions("127.0.0.1", 8080)
    assert options_of("0.0.0.0:80", 0.5, "512M", None, None).memory == "512M"
    assert network_of("172.30.27.0/24").router == "172.30.27.2"


def test_render_compose_cli_writes_and_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlrelease.cli import app

    fake = registry()
    monkeypatch.setattr(render_cmd, "_registry", lambda params: fake)
    out = tmp_path / "release"
    args = ["render", "compose", "--params", str(REPO / "params.yaml"), "--compose-dir", str(COMPOSE_DIR)]
    done = CliRunner().invoke(app, [*args, "--out", str(out), "--canary-version", "7", "--canary-weight", "5"])
    assert done.exit_code == 0, done.output
    assert f"canary: version 7, localhost/bcc@{DIGESTS['7']}, 5%" in done.output
    assert "kill -s HUP router" in done.output and (out / "router" / "nginx.conf").is_file()
    fake.versions["7"].pop("image_digest")
    missing = CliRunner().invoke(app, [*args, "--out", str(out), "--canary-version", "7", "--canary-weight", "5"])
    assert missing.exit_code == 2 and missing.output.startswith("mlrelease render: version 7 has no image digest")
    assert len(missing.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(app, [*args, "--canary-weight", "150", "--canary-version", "7"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "--canary-weight 150" in bad.output


class _Probe(BaseHTTPRequestHandler):
    """/ready answers 200, /health 503: tells which path the health check asked."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def probe_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_image_health_check_probes_ready_when_asked(probe_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", REPO / "deploy" / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    monkeypatch.setenv("MLRELEASE_PORT", str(probe_port))
    assert healthcheck.main(["/ready"]) == 0
    assert healthcheck.main([]) == 1  # /health by default (here: 503)
    assert healthcheck.main(["/admin"]) == 1


CHECK = """set -eu
mount --bind "$1/hosts" /etc/hosts
mount -t tmpfs -o size=1m tmpfs /etc/nginx
mkdir /etc/nginx/mlrelease
mount --bind "$1/router" /etc/nginx/mlrelease
mount -t tmpfs -o size=16m tmpfs /tmp
exec unshare --map-user=101 --map-group=101 /usr/sbin/nginx -t -c /etc/nginx/mlrelease/nginx.conf -e stderr
"""


def nginx_t(folder: Path, names: str) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` as the router runs it: its config at the container's path, uid 101 (the nginx image's user),
    a private /tmp, and ``names`` resolving to loopback (a private mount namespace binds a hosts file)."""
    (folder / "hosts").write_text(f"127.0.0.1 localhost {names}\n")
    cmd = ["unshare", "--map-root-user", "--mount", "sh", "-c", CHECK, "sh", str(folder)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.integration
def test_nginx_accepts_the_rendered_router_config(tmp_path: Path) -> None:
    if not (shutil.which("unshare") and Path("/usr/sbin/nginx").exists()):
        pytest.skip("needs unshare (util-linux) and nginx")
    if subprocess.run(["unshare", "--map-root-user", "--mount", "true"], check=False).returncode != 0:
        pytest.skip("user namespaces are not allowed here: nginx -t needs a private /etc/hosts")
    rendered(tmp_path / "canary")
    rendered(tmp_path / "alone", canary=None, weight=0)
    for folder in ("canary", "alone"):
        checked = nginx_t(tmp_path / folder, "stable canary")
        assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    unresolved = nginx_t(tmp_path / "canary", "stable")  # the check can fail: canary does not resolve
    assert unresolved.returncode != 0 and 'host not found in upstream "canary:8080"' in unresolved.stderr


def test_served_short_names_the_digest() -> None:
    served = served_versions(registry(), None, "7", 25)
    assert [s.short for s in served] == ["stable 6 (sha256:666666666666) 75%", "canary 7 (sha256:777777777777) 25%"]
    assert isinstance(served[0], Served)
