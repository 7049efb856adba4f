"""The router's TLS certificate: the one configured (``MLRELEASE_TLS_CERT`` / ``MLRELEASE_TLS_KEY``), or a
self-signed one made for local use (``localhost`` and ``127.0.0.1``, one year), kept in the router's folder."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deploy.targets.base import DeploymentError
from mlrelease.core.files import atomic_write

log = logging.getLogger(__name__)

SELF_SIGNED_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key, as nginx reads them."""

    cert: Path
    key: Path

    def digest(self) -> str:
        """Changes when either file does, so a replaced certificate makes the router reload."""
        blob = self.cert.read_bytes() + self.key.read_bytes()
        return hashlib.sha256(blob).hexdigest()


def configured(cert: str | None, key: str | None) -> TlsFiles | None:
    """The configured certificate and key; None when neither is set; DeploymentError when one is missing."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise DeploymentError("set both MLRELEASE_TLS_CERT and MLRELEASE_TLS_KEY (PEM files), or neither")
    files = TlsFiles(Path(cert).resolve(), Path(key).resolve())
    for path in (files.cert, files.key):
        if not path.is_file() or not os.access(path, os.R_OK):
            raise DeploymentError(f"TLS file {path} is not a readable file: fix MLRELEASE_TLS_CERT/KEY")
    return files


def self_signed(folder: Path) -> TlsFiles:
    """A self-signed certificate for localhost in ``folder``, made (or renewed near its end) on demand."""
    files = TlsFiles(folder / "cert.pem", folder / "key.pem")
    if files.cert.is_file() and files.key.is_file() and not _ending(files.cert):
        return files
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = _make_self_signed()
    atomic_write(files.key, key_pem)  # mkstemp: readable by its owner only
    atomic_write(files.cert, cert_pem)
    log.info("made a self-signed TLS certificate for localhost in %s", folder)
    return files


def _ending(cert: Path) -> bool:
    """True when the certificate cannot be read or ends within RENEW_BEFORE."""
    from cryptography import x509

    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return True
    return parsed.not_valid_after_utc - RENEW_BEFORE < datetime.datetime.now(datetime.UTC)


def _make_self_signed() -> tuple[str, str]:
    """(certificate PEM, key PEM): EC P-256, CN=localhost, SAN localhost and 127.0.0.1, valid a year."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()
