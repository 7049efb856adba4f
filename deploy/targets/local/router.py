"""nginx as the weighted router of one environment: render the config, start it, reload it gracefully."""

from __future__ import annotations

import getpass
import hashlib
import os
import signal
import subprocess
import uuid
from pathlib import Path

from deploy.targets.base import DeploymentError
from deploy.targets.local.processes import REPO_ROOT, detached_env
from deploy.targets.local.state import Environment, Slot
from deploy.targets.local.tls import TlsFiles
from mlrelease.core.files import atomic_write
from mlrelease.core.http import probe, wait_until
from mlrelease.core.proc import children, command_line, pid_alive

TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "nginx.conf.tmpl"
NGINX_BIN = "/usr/sbin/nginx"
FAIL_TIMEOUT = "1s"  # how long a replica that failed a request rests before it is tried again
SHUTTING_DOWN = "shutting down"  # an old worker's process title after a reload: it finishes requests, takes none


def upstream(name: str, slot: Slot, backup: Slot | None) -> str:
    """One slot's upstream: its replicas, each taken out for a moment after a failure (passive health check), and
    the other routed slot's replicas as backups for when none of its own answers."""
    lines = [
        f"    upstream mlrelease_{slot.port} {{  # {name}: version {slot.version}, {len(slot.replicas)} replica(s)"
    ]
    # one server alone is never marked down (nginx ignores max_fails then); among siblings a failed one rests
    # FAIL_TIMEOUT while the others serve, then gets one request to prove itself
    check = "max_fails=0" if len(slot.replicas) == 1 else f"max_fails=1 fail_timeout={FAIL_TIMEOUT}"
    lines += [f"        server 127.0.0.1:{replica.port} {check};" for replica in slot.replicas]
    if backup is not None:
        lines += [f"        server 127.0.0.1:{replica.port} backup;" for replica in backup.replicas]
    # idle upstream connections go before the server closes them (MLRELEASE_KEEP_ALIVE_S, at least 2 s): nginx
    # would otherwise send a request down one the server is closing, and a POST is not retried (a 502)
    lines += ["        keepalive 16;", "        keepalive_timeout 1s;", "    }"]
    return "\n".join(lines)


def tls_listen(port: int | None, tls: TlsFiles | None) -> str:
    """The TLS listener's directives (nothing when the environment has none)."""
    if port is None or tls is None:
        return "        # no TLS listener"
    return "\n".join(
        [
            f"        listen 127.0.0.1:{port} ssl;",
            f"        ssl_certificate {tls.cert};",
            f"        ssl_certificate_key {tls.key};",
            "        ssl_protocols TLSv1.2 TLSv1.3;",
            "        ssl_session_cache shared:mlrelease_tls:1m;",
        ]
    )


def render(
    env: Environment, prefix: Path, generation: str, template: Path = TEMPLATE, tls: TlsFiles | None = None
) -> str:
    """The nginx config for the environment's slots and weights (a pure function of the state)."""
    routed = sorted(((n, w) for n, w in env.weights.items() if w > 0), key=lambda item: -item[1])
    if not routed:
        raise DeploymentError("no slot receives traffic; refusing to render a router with no backend")
    upstreams, splits = [], []
    for index, (name, weight) in enumerate(routed):
        slot = env.slots[name]
        backup = next((env.slots[n] for n, _ in routed if n != name), None)
        upstreams.append(upstream(name, slot, backup))
        share = "*" if index == len(routed) - 1 else f"{weight:g}%"
        splits.append(f"        {share} mlrelease_{slot.port};")
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else "# not root: workers run as the current user"
    servers = sum(len(env.slots[name].replicas) for name, _ in routed)
    text = template.read_text()
    for key, value in {
        "USER_DIRECTIVE": user,
        "PREFIX": str(prefix),
        "PORT": str(env.entry_port),
        "TLS": tls_listen(env.tls_port, tls),
        "UPSTREAMS": "\n".join(upstreams),
        "SPLITS": "\n".join(splits),
        "TRIES": str(servers + 1),
        "GENERATION": generation,
    }.items():
        text = text.replace(f"@@{key}@@", value)
    return text


def shutting_down(worker: int) -> bool:
    """An old worker finishing its requests after a reload (it no longer accepts new ones)."""
    return SHUTTING_DOWN in " ".join(command_line(worker))


def accepting(worker: int) -> bool:
    """An old worker still accepts until it has closed its listeners ("worker process is shutting down")."""
    title = " ".join(command_line(worker))
    return bool(title) and SHUTTING_DOWN not in title and pid_alive(worker)


class Nginx:
    """One nginx instance with its own prefix folder (config, pid, logs, temp paths)."""

    def __init__(
        self, prefix: Path, binary: str = NGINX_BIN, apply_timeout_s: float = 10.0, tls: TlsFiles | None = None
    ) -> None:
        self.prefix = Path(prefix).resolve()
        self.tls = tls
        self.binary = binary
        self.conf = self.prefix / "nginx.conf"
        self.pid_file = self.prefix / "nginx.pid"
        self.apply_timeout_s = apply_timeout_s

    def _cmd(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log"), *extra]

    def pid(self) -> int | None:
        """The master's pid when it runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def apply(self, env: Environment, fresh: bool = False) -> None:
        """Write the config for ``env`` (validated with nginx -t), then start nginx or reload it, and wait. ``fresh``
        reloads even an unchanged config: new workers forget the replicas they marked down and their idle
        connections to servers that were restarted."""
        if not Path(self.binary).exists():
            raise DeploymentError(f"{self.binary} not found: run `make setup` (scripts/install_debs.sh installs nginx)")
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        rendered = render(env, self.prefix, "-", tls=self.tls) + (self.tls.digest() if self.tls else "")
        fingerprint = hashlib.sha256(rendered.encode()).hexdigest()
        stamp = self.prefix / "applied.sha256"
        if not fresh and self.pid() is not None and stamp.is_file() and stamp.read_text() == fingerprint:
            return  # already serving exactly this routing: no reload
        generation = uuid.uuid4().hex[:12]
        candidate = self.prefix / "nginx.conf.next"
        atomic_write(candidate, render(env, self.prefix, generation, tls=self.tls))
        self._check(candidate)
        # the stamp names what nginx runs: it goes before the config changes, so an apply interrupted after it
        # (Ctrl-C, kill -9, a reload that never took effect) makes the next apply reload whatever it wants
        stamp.unlink(missing_ok=True)
        os.replace(candidate, self.conf)
        pid = self.pid()
        old_workers = children(pid) if pid else []
        if pid is None:
            self._start()
        else:
            os.kill(pid, signal.SIGHUP)
        self._wait_generation(env.entry_port, generation, old_workers)
        atomic_write(stamp, fingerprint)

    def _start(self) -> None:
        """Start the nginx master (it daemonizes); a failure names nginx's own words (a port taken, say)."""
        try:
            result = subprocess.run(self._cmd(), capture_output=True, text=True, timeout=30, env=detached_env())
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"nginx did not start within 30 s (see {self.prefix / 'error.log'})") from exc
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            raise DeploymentError(f"nginx could not start: {said} (see {self.prefix / 'error.log'})")

    def _check(self, conf: Path) -> None:
        cmd = [self.binary, "-t", "-q", "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise DeploymentError(f"nginx rejected the rendered config {conf}: {result.stderr.strip()}")

    def _wait_generation(self, port: int | None, generation: str, old_workers: list[int]) -> None:
        """Wait until new workers answer and every old worker stopped accepting (it finishes its requests)."""
        url = f"http://127.0.0.1:{port}/_mlrelease/generation"

        def applied() -> bool:
            return probe(url, timeout=0.5)[1].strip() == generation and not any(map(accepting, old_workers))

        if not wait_until(applied, self.apply_timeout_s, interval=0.002):
            raise DeploymentError(
                f"nginx did not apply the new config within {self.apply_timeout_s:.0f} s; "
                f"see {self.prefix / 'error.log'}"
            )

    def wait_drained(self, timeout_s: float = 10.0) -> bool:
        """Wait until no old worker (from before the last reload) is still finishing requests."""
        pid = self.pid()
        if pid is None:
            return True
        return wait_until(lambda: not any(map(shutting_down, children(pid))), timeout_s, interval=0.02)

    def stop(self) -> None:
        """Graceful quit (SIGQUIT) and wait for the master to exit."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: not pid_alive(pid), 10.0, interval=0.05)
