"""Development credentials of the `creditline dev` commands: a CA with a certificate for each
service, and bearer tokens for every role. For a laptop, a test or a staging cluster; never for
production, whose CA and tokens are made and kept elsewhere.
"""

import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.auth import token_sha256

SERVICES = ("scoring", "limits", "monitoring")
NAMESPACE = "creditline"
CERTIFICATE_DAYS = 365

# One principal of each role, named as the deployment names its callers.
DEV_PRINCIPALS = (
    ("loan-servicing", "loan_servicing"),
    ("app-backend", "app_backend"),
    ("messaging", "messaging"),
    ("collections", "collections"),
    ("monitoring", "monitoring"),
    ("limits", "limits"),
    ("operator", "operator"),
)
# The services that call others, and so hold a token of their own.
CALLING_SERVICES = ("limits", "monitoring")


def service_dns_names(service: str, namespace: str = NAMESPACE) -> list[str]:
    """The names a service is reached by: locally, and through its Kubernetes Service."""
    return [
        "localhost",
        service,
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


@dataclass(frozen=True)
class CertificateAuthority:
    """A development CA: an ECDSA P-256 key and its self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str = "creditline development CA", days: int = CERTIFICATE_DAYS):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self,
        common_name: str,
        dns_names: list[str],
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
        days: int = CERTIFICATE_DAYS,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A key and a certificate for both ends of a connection (serverAuth and clientAuth)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        names = [x509.DNSName(name) for name in dns_names] + [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses
        ]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, certificate


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool) -> Path:
    """Writes a file whole; a secret one is readable by its owner only from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if secret else 0o644
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(path, mode)
    return path


def write_dev_certs(
    out: Path,
    services: tuple[str, ...] = SERVICES,
    *,
    namespace: str = NAMESPACE,
    days: int = CERTIFICATE_DAYS,
    overwrite: bool = False,
) -> list[Path]:
    """Writes ca.crt and ca.key, and <service>.crt and <service>.key for each service, into
    `out`; returns the paths written. Refuses to replace existing files unless `overwrite`."""
    targets = [out / "ca.crt", out / "ca.key"]
    for service in services:
        targets += [out / f"{service}.crt", out / f"{service}.key"]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"would replace {', '.join(existing)}")
    ca = CertificateAuthority.create(days=days)
    written = [
        _write(out / "ca.crt", certificate_pem(ca.certificate), secret=False),
        _write(out / "ca.key", key_pem(ca.key), secret=True),
    ]
    for service in services:
        key, certificate = ca.issue(service, service_dns_names(service, namespace), days=days)
        written.append(_write(out / f"{service}.crt", certificate_pem(certificate), secret=False))
        written.append(_write(out / f"{service}.key", key_pem(key), secret=True))
    return written


def new_token() -> str:
    """A bearer token: 256 random bits, URL-safe base64."""
    return secrets.token_urlsafe(32)


def tokens_file_text(principals: list[tuple[str, str, str]]) -> str:
    """The YAML of a tokens file for (name, role, plaintext token) triples: digests only."""
    return yaml.safe_dump(
        {
            "principals": [
                {"name": name, "role": role, "token_sha256": token_sha256(token)}
                for name, role, token in principals
            ]
        },
        sort_keys=False,
    )


@dataclass(frozen=True)
class DevTokens:
    """Fresh development tokens: the tokens file, each calling service's own token file, and
    the plaintext tokens by principal name (to show once, never to store)."""

    tokens_file: Path
    client_token_files: dict[str, Path]
    tokens: dict[str, tuple[str, str]]  # principal name -> (role, token)


def write_dev_tokens(directory: Path) -> DevTokens:
    """Writes `tokens.yaml` (digests) and `<service>.token` for limits and monitoring, with a
    new token for every principal of DEV_PRINCIPALS, replacing the ones there before."""
    tokens = {name: (role, new_token()) for name, role in DEV_PRINCIPALS}
    tokens_file = _write(
        directory / "tokens.yaml",
        tokens_file_text([(name, role, token) for name, (role, token) in tokens.items()]).encode(),
        secret=False,
    )
    client_token_files = {
        service: _write(
            directory / f"{service}.token", (tokens[service][1] + "\n").encode(), secret=True
        )
        for service in CALLING_SERVICES
    }
    return DevTokens(tokens_file, client_token_files, tokens)


def dev_auth_environment(dev_tokens: DevTokens, services: tuple[str, ...] = SERVICES) -> dict:
    """The environment that turns authentication on for each service with these tokens."""
    env = {}
    for service in services:
        prefix = f"CREDITLINE_{service.upper()}_"
        env[prefix + "TOKENS_FILE"] = str(dev_tokens.tokens_file.resolve())
        if service in dev_tokens.client_token_files:
            env[prefix + "CLIENT_TOKEN_FILE"] = str(
                dev_tokens.client_token_files[service].resolve()
            )
    return env


def tokens_banner(dev_tokens: DevTokens) -> str:
    """The plaintext tokens, framed so they stand out in a terminal; shown once."""
    width = max(len(name) for name in dev_tokens.tokens)
    rule = "=" * 78
    lines = [
        rule,
        "DEVELOPMENT BEARER TOKENS (shown once; new ones on every run)",
        f"digests in {dev_tokens.tokens_file}",
        "",
    ]
    lines += [
        f"  {name:<{width}}  {role:<15} {token}"
        for name, (role, token) in dev_tokens.tokens.items()
    ]
    operator = dev_tokens.tokens["operator"][1]
    lines += [
        "",
        f"e.g. grpcurl -plaintext -H 'authorization: Bearer {operator}' \\",
        "       127.0.0.1:50051 creditline.scoring.v1.ScoringService/ListModels",
        rule,
    ]
    return "\n".join(lines)
