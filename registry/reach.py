"""Whether a registry server answers at all: one GET of its /health, bounded in time, before MLflow's retries.

MLflow's own client retries a server that refuses connections for minutes; this check gives up within the
registry timeout (``MLRELEASE_REGISTRY_TIMEOUT_S``, default 10 s) with one line naming the URI and what to do.
Imported only when MLflow is configured (it imports MLflow's exception type).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from mlrelease.core.errors import UserError
from mlrelease.core.net import is_loopback_http

NEXT_STEP = (
    "start it, or set MLFLOW_TRACKING_URI to the registry's address (unset: the workspace's own sqlite registry)"
)


class RegistrySettingError(UserError):
    """MLRELEASE_REGISTRY_TIMEOUT_S is not a number of seconds."""


class RegistryUnreachable(MlflowException, UserError):
    """The registry server did not answer; an MLflow error too, so every caller that copes with an unreachable
    registry (the rollback moves traffic anyway) treats it as one."""

    def __init__(self, uri: str, problem: str) -> None:
        super().__init__(f"registry {redact(uri)} {problem}: {NEXT_STEP}", error_code=TEMPORARILY_UNAVAILABLE)


def redact(uri: str) -> str:
    """``uri`` without a user name or password, for messages, logs and the reachability check."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def is_http(uri: str) -> bool:
    """Whether ``uri`` names a registry server (http or https), as opposed to a file or database."""
    return urlsplit(uri).scheme in ("http", "https")


def no_answer(uri: str, timeout_s: float) -> str | None:
    """None when the server at ``uri`` answers a GET of /health (any status, or a TLS handshake: whether to trust
    it is MLflow's call); else how it failed. Connecting and reading get half of ``timeout_s`` each. No
    credentials are sent: a user name and password in ``uri`` are left out (urllib would take them for a host)."""
    url = redact(uri).rstrip("/") + "/health"
    direct = urllib.request.ProxyHandler({}) if is_loopback_http(url) else urllib.request.ProxyHandler()
    opener = urllib.request.build_opener(direct)
    try:  # http or https only (is_http), never file://
        with opener.open(url, timeout=timeout_s / 2):  # nosec B310
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        return describe(exc.reason, timeout_s)
    except (http.client.HTTPException, OSError) as exc:
        return describe(exc, timeout_s)


def describe(reason: object, timeout_s: float) -> str | None:
    """What a failed connection means, in a few words; None for a TLS error (the server did answer)."""
    if isinstance(reason, ssl.SSLError):
        return None
    if isinstance(reason, ConnectionRefusedError):
        return "refused the connection (nothing listens there)"
    if isinstance(reason, TimeoutError):  # socket.timeout too
        return f"did not answer within {timeout_s:g} s"
    if isinstance(reason, socket.gaierror):
        return "has a host name that does not resolve"
    return f"did not answer ({reason})"


def check_reachable(uri: str, timeout_s: float) -> None:
    """Raise :class:`RegistryUnreachable` when the registry server at ``uri`` does not answer within
    ``timeout_s``; nothing to check for a file or database URI, or with a timeout of 0 (the check is off)."""
    if not is_http(uri) or timeout_s <= 0:
        return
    problem = no_answer(uri, timeout_s)
    if problem is not None:
        raise RegistryUnreachable(uri, problem)
