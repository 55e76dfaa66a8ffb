"""Throwaway TLS material: a CA, a server certificate for 127.0.0.1, a client certificate."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str, key: Key, issuer: str, issuer_key: Key, *, ca: bool, server: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    elif not ca:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: Key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclasses.dataclass(frozen=True)
class Tls:
    ca_pem: str
    server_cert: Path
    server_key: Path
    client_cert_pem: str
    client_key_pem: str

    def server_context(self, *, ask_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if ask_client_cert:
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=self.ca_pem)
        return context


def make_tls(folder: Path) -> Tls:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("test-ca", ca_key, "test-ca", ca_key, ca=True, server=False)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, "test-ca", ca_key, ca=False, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("admin", client_key, "test-ca", ca_key, ca=False, server=False)
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_text(_pem(server))
    key_path.write_text(_key_pem(server_key))
    return Tls(_pem(ca), cert_path, key_path, _pem(client), _key_pem(client_key))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
