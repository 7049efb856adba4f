"""Loopback helpers: a free port, where credentials may go, and which URLs count as loopback (stopping processes
is checked in tests/integration/test_process_control.py)."""

from __future__ import annotations

from mlrelease.core.net import free_port, is_loopback_http, safe_for_secrets


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_credentials_go_only_to_https_or_loopback() -> None:
    for url in [
        "http://127.0.0.1:8080",
        "http://127.5.0.1/x",
        "http://localhost:1",
        "http://[::1]:9",
        "https://staging.example.com",
    ]:
        assert safe_for_secrets(url), url
    for url in ["http://staging.example.com", "http://10.0.0.5:8080", "ftp://127.0.0.1", "127.0.0.1:8080", ""]:
        assert not safe_for_secrets(url), url


def test_loopback_means_plain_http_to_a_loopback_address() -> None:
    assert all(map(is_loopback_http, ["http://127.0.0.1:1/ready", "http://localhost:2", "http://[::1]:3/m"]))
    for url in ["https://127.0.0.1:1", "http://10.0.0.5:1", "http://example.com", "file:///etc/passwd", ""]:
        assert not is_loopback_http(url), url
