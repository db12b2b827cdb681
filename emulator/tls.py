"""A private CA and a server certificate, so real clients verify TLS against the emulator.

The SDKs refuse plain HTTP for bearer tokens (azure-core enforces HTTPS), so the emulator must
speak TLS with a certificate the clients trust: we mint a CA, write ``ca.pem`` and point
``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` / ``FOUNDRY_WATCH_CA_BUNDLE`` at it. The leaf covers
127.0.0.1, ::1, localhost and ``*.services.ai.azure.com`` (Foundry's per-resource host names).
Existing files in the data directory are reused while valid, so a restarted emulator keeps the
CA that clients were told to trust.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SAN_DNS", "SAN_IPS", "CertFiles", "ensure_certs"]

SAN_DNS = ("localhost", "*.services.ai.azure.com")
SAN_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CertFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "foundry-watch emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _reusable(files: CertFiles, extra_dns: tuple[str, ...]) -> bool:
    if not (files.ca_file.exists() and files.cert_file.exists() and files.key_file.exists()):
        return False
    try:
        leaf = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    dns = set(names.get_values_for_type(x509.DNSName))
    fresh = leaf.not_valid_after_utc > datetime.now(UTC) + timedelta(days=1)
    return fresh and set(SAN_DNS + extra_dns) <= dns


def ensure_certs(directory: Path, extra_dns: tuple[str, ...] = ()) -> CertFiles:
    """Reuse or create ``ca.pem``, ``server.pem`` (leaf + CA chain) and ``server-key.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    if _reusable(files, extra_dns):
        return files

    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("foundry-watch emulator CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName(d) for d in (*SAN_DNS, *extra_dns)]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SAN_IPS]
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=825))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files.ca_file.write_bytes(ca_cert.public_bytes(pem))
    files.cert_file.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write_key(files.key_file, key)
    return files
