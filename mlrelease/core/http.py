"""The one HTTP probe and the one wait-until-ready loop, shared by every launcher, gate and target.

Plain ``urllib``: cheap to import (the incident rollback's fast path probes a slot). A probe of a loopback server
(the servers we start) never goes through an ``http_proxy`` from the environment; any other URL (a load test's
remote target) uses the environment's proxy settings as any client would.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from functools import lru_cache
from urllib.parse import urlsplit

from mlrelease.core.net import is_loopback_http


@lru_cache(maxsize=2)
def _opener(direct: bool) -> urllib.request.OpenerDirector:
    """An opener without proxies (``direct``: for loopback) or with the environment's proxy settings."""
    if direct:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def probe(url: str, timeout: float = 1.0, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Status and body of a GET; ``(0, reason)`` when nothing answers (refused, reset, timed out, not HTTP)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url}: a probe takes an http:// or https:// URL")
    opener = _opener(is_loopback_http(url))
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310  # nosec B310
    try:  # the scheme is checked above: http or https only, never file://
        with opener.open(request, timeout=timeout) as resp:  # nosec B310
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    interrupt: Callable[[], None] | None = None,
) -> bool:
    """Call ``check`` until it is true (True) or ``timeout`` seconds passed (False); at least once.

    ``interrupt`` is called before every check and may raise to stop the wait (a rollback asking for the lock);
    whatever ``check`` raises stops the wait too (a server that exited will never be ready).
    """
    deadline = time.monotonic() + timeout
    while True:
        if interrupt is not None:
            interrupt()
        if check():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))
