"""Drift scores, rate limiting and secret comparison."""

from __future__ import annotations

import numpy as np

from deploy.serving.drift import DriftMonitor, psi
from deploy.serving.security import RateLimiter, client_address, presented_secret, secret_matches
from mlrelease.core.modelcard import FeatureReference, ReferenceStats


def reference() -> ReferenceStats:
    feature = FeatureReference(edges=[0, 1, 2, 3, 4], fractions=[0.25] * 4, mean=2, std=1, min=0, max=4)
    return ReferenceStats(n_rows=100, features={"x": feature, "y": feature})


def test_psi_is_zero_for_the_reference_and_large_for_a_shift() -> None:
    monitor = DriftMonitor(reference(), ["x", "y"], window=400)
    same = np.repeat(np.array([[0.5, 0.5], [1.5, 1.5], [2.5, 2.5], [3.5, 3.5]], np.float32), 100, axis=0)
    monitor.observe(same)
    assert max(monitor.scores().values()) < 1e-9
    monitor.observe(np.column_stack([np.full(400, 3.9), np.linspace(0, 4, 400)]).astype(np.float32))
    scores = monitor.scores()
    assert scores["x"] > 1.0 and scores["y"] < 0.1
    assert monitor.count == 400


def test_ring_buffer_keeps_the_latest_rows() -> None:
    monitor = DriftMonitor(reference(), ["x", "y"], window=10)
    for value in range(25):
        monitor.observe(np.full((1, 2), value, np.float32))
    assert sorted(monitor._buffer[:, 0].tolist()) == list(range(15, 25))
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_a_scrape_scores_one_consistent_window_while_the_model_thread_observes() -> None:
    """Batches run on the model thread while /metrics scores on the loop: every feature of one scrape must come
    from the same window. Each batch fills the whole window with one value (all features alike), so a scrape
    that reads some columns before a batch and some after gives features different scores."""
    import sys
    import threading

    names = [f"f{j}" for j in range(24)]
    feature = FeatureReference(edges=[0, 1, 2, 3, 4], fractions=[0.25] * 4, mean=2, std=1, min=0, max=4)
    monitor = DriftMonitor(ReferenceStats(n_rows=100, features=dict.fromkeys(names, feature)), names, window=256)
    batches = [np.full((256, len(names)), value, np.float32) for value in (0.5, 3.5)]
    monitor.observe(batches[0])
    stop = threading.Event()

    def model_thread() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            monitor.observe(batches[i % 2])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=model_thread)
    worker.start()
    try:
        torn = [scores for scores in (monitor.scores() for _ in range(300)) if len(set(scores.values())) != 1]
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    assert not torn, f"{len(torn)} of 300 scrapes mixed two windows"


def test_rate_limiter_allows_the_burst_then_refuses_then_refills() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.retry_after("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.retry_after("a", now=100.0)
    assert 0.4 < wait <= 0.5
    assert limiter.retry_after("b", now=100.0) == 0.0
    assert limiter.retry_after("a", now=100.6) == 0.0


def test_client_address_trusts_forwarded_for_only_from_a_trusted_proxy() -> None:
    trusted = frozenset({"127.0.0.1"})
    via_nginx = [(b"x-forwarded-for", b"198.51.100.4, 203.0.113.9")]
    assert client_address("127.0.0.1", via_nginx, trusted) == "203.0.113.9"  # the hop nginx itself saw
    assert client_address("192.0.2.1", via_nginx, trusted) == "192.0.2.1"  # anyone can send the header
    assert client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", [(b"x-forwarded-for", b"127.0.0.1")], trusted) == "127.0.0.1"


def test_secrets_are_read_from_bearer_or_api_key_header() -> None:
    headers = [(b"x-api-key", b"k1"), (b"authorization", b"Bearer k2")]
    assert presented_secret(headers, allow_api_key_header=True) == b"k1"
    assert presented_secret(headers[::-1], allow_api_key_header=True) == b"k1"
    assert presented_secret(headers, allow_api_key_header=False) == b"k2"
    assert secret_matches(b"k2", b"k2") and not secret_matches(b"k3", b"k2") and not secret_matches(None, b"k2")


def test_secrets_with_whitespace_or_placeholders_are_refused() -> None:
    import random
    import string

    import pytest
    from pydantic import SecretStr, ValidationError

    from mlrelease.core.settings import Settings, check_secret

    good = "k3y-" + "0123456789abcdefXYZ"
    assert check_secret("api_key", SecretStr(good)) == SecretStr(good)
    for bad, why in [
        (good + "\n", "whitespace"),
        (" " + good, "whitespace"),
        (good + "\x00", "control"),
        ("changeme", "placeholder"),
        ("short", "placeholder"),
        ("your-admin-token-here", "placeholder"),  # long enough, but an example's wording
        ("CHANGEME-0123456789abcdef", "placeholder"),
        ("x" * 32, "distinct characters"),
        ("abab" * 8, "distinct characters"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_secret("api_key", SecretStr(bad))
    draw = random.Random(0)  # random tokens are not taken for placeholders (hex has only 16 characters to draw)
    for alphabet in (string.ascii_letters + string.digits + "-_", string.hexdigits[:16]):
        for _ in range(2000):
            token = "".join(draw.choice(alphabet) for _ in range(16))
            assert check_secret("api_key", SecretStr(token)) == SecretStr(token), token
    with pytest.raises(ValidationError, match="whitespace"):
        Settings(api_key=good + "\n")
    assert Settings(api_key=good).prediction_headers() == {"Authorization": f"Bearer {good}"}
