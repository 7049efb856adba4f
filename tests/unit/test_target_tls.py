"""The router's self-signed certificate: made for localhost and 127.0.0.1, private key readable by its owner only,
kept while valid, renewed near its end; a configured pair must be complete and readable."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from deploy.targets.base import DeploymentError
from deploy.targets.local import tls


def test_a_self_signed_certificate_names_localhost_and_is_kept_while_valid(tmp_path: Path) -> None:
    made = tls.self_signed(tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=300)
    assert stat.S_IMODE(os.stat(made.key).st_mode) == 0o600
    digest = made.digest()
    assert tls.self_signed(tmp_path / "tls").digest() == digest  # the same files, not a new pair


def test_a_certificate_near_its_end_is_renewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = tls.self_signed(tmp_path / "tls")
    digest = made.digest()
    monkeypatch.setattr(tls, "RENEW_BEFORE", datetime.timedelta(days=tls.SELF_SIGNED_DAYS + 1))
    assert tls.self_signed(tmp_path / "tls").digest() != digest


def test_a_configured_pair_must_be_complete_and_readable(tmp_path: Path) -> None:
    assert tls.configured(None, None) is None
    with pytest.raises(DeploymentError, match="both"):
        tls.configured(str(tmp_path / "cert.pem"), None)
    with pytest.raises(DeploymentError, match="not a readable file"):
        tls.configured(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
