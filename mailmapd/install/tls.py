"""tls: Postfix's smtpd.cert and smtpd.key (seed section 5's `openssl req ... -days 365
-x509`), made in Python: RSA 2048, valid 365 days, CN = the host name given; the key is
root's alone (0600).

A pair that already matches (same CN, key fits the certificate, not expiring within 30
days) is kept, so a second run changes nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailmapd.install.plan import Context, Options
from mailmapd.install.values import Values

NAME = "tls"
CERT = "/etc/postfix/smtpd.cert"
KEY = "/etc/postfix/smtpd.key"
KEY_BITS = 2048
DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)

# Subject fields a certificate template may name, and their OIDs.
_SUBJECT_OIDS = {
    "c": NameOID.COUNTRY_NAME,
    "country": NameOID.COUNTRY_NAME,
    "st": NameOID.STATE_OR_PROVINCE_NAME,
    "state": NameOID.STATE_OR_PROVINCE_NAME,
    "l": NameOID.LOCALITY_NAME,
    "locality": NameOID.LOCALITY_NAME,
    "o": NameOID.ORGANIZATION_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "ou": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "unit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "emailaddress": NameOID.EMAIL_ADDRESS,
    "email": NameOID.EMAIL_ADDRESS,
}


@dataclass(frozen=True, slots=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes


def pem_blocks(data: bytes) -> dict[str, bytes]:
    """The PEM blocks of a file by type (the first of each type)."""
    blocks: dict[str, bytes] = {}
    for match in _PEM_BLOCK.finditer(data):
        blocks.setdefault(match[1].decode(), match[0] if match[0].endswith(b"\n") else match[0] + b"\n")
    return blocks


def make_pair(cn: str, subject: Mapping[str, str] | None = None, *, now: dt.datetime | None = None) -> KeyPair:
    """A new RSA key and a self-signed certificate for ``cn``."""
    now = now or dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    attributes = []
    for field, value in (subject or {}).items():
        oid = _SUBJECT_OIDS.get(field.lower())
        if oid is not None and value and not (oid == NameOID.COUNTRY_NAME and len(value) != 2):  # noqa: PLR2004 - ISO 3166 code
            attributes.append(x509.NameAttribute(oid, value))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    name = x509.Name(attributes)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return KeyPair(key_pem, cert.public_bytes(serialization.Encoding.PEM))


def pair_is_good(key_pem: bytes | None, cert_pem: bytes | None, cn: str) -> bool:
    """The certificate names ``cn``, is valid for 30 days more, and the key belongs to it."""
    if not key_pem or not cert_pem:
        return False
    try:
        cert = x509.load_pem_x509_certificate(pem_blocks(cert_pem).get("CERTIFICATE", b""))
        key_block = next((v for k, v in pem_blocks(key_pem).items() if k.endswith("PRIVATE KEY")), b"")
        key = serialization.load_pem_private_key(key_block, password=None)
    except (ValueError, TypeError):
        return False
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [cn]:
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return False
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < KEY_BITS:
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def apply(ctx: Context, values: Values, options: Options) -> None:  # noqa: ARG001 - one signature for every component
    cn = values.get("fqdn", NAME)
    key_pem, cert_pem = ctx.read(KEY), ctx.read(CERT)
    if pair_is_good(key_pem, cert_pem, cn):
        assert key_pem is not None
        assert cert_pem is not None
    else:
        pair = make_pair(cn)
        key_pem, cert_pem = pair.key_pem, pair.cert_pem
    # The key first: a certificate must never sit next to a key that does not fit it.
    changed = ctx.put(NAME, KEY, key_pem, mode=0o600, sensitive=True)
    changed2 = ctx.put(NAME, CERT, cert_pem, mode=0o644)
    if {changed, changed2} - {"unchanged", "left-alone"}:
        ctx.restart("postfix")
