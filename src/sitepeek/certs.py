"""sitepeek's local certificate authority (``--https``) and the leaves it issues.

The CA is made on first use in the user's data directory (``$XDG_DATA_HOME/sitepeek``
or ``~/.local/share/sitepeek``): its key never leaves it and is readable by the user
only (0600). Each start asks for a leaf certificate covering the names the server is
reached by; the one on disk is reused while it is the current CA's, names exactly
those and has more than :data:`RENEW_BEFORE` left, and is reissued otherwise. Leaves
live :data:`LEAF_LIFETIME` only: a leaked one is soon worthless.

``cryptography`` is imported lazily: it is the ``https`` extra, and ``--cert/--key``
need only the standard library's ``ssl``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import getpass
import hashlib
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "HTTPS_HINT",
    "Authority",
    "CertError",
    "Leaf",
    "authority",
    "data_dir",
    "issue_leaf",
]

HTTPS_HINT = "--https needs the https extra: pip install 'sitepeek[https]'"
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=30)
RENEW_BEFORE = datetime.timedelta(days=7)
# Clocks of phones and laptops disagree a little: a certificate starts an hour early.
_BACKDATE = datetime.timedelta(hours=1)
CA_CERT = "ca.crt"
CA_KEY = "ca-key.pem"
LEAF_CERT = "localhost.crt"
LEAF_KEY = "localhost-key.pem"


class CertError(Exception):
    """The CA or a leaf cannot be made or read; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Authority:
    """The local CA: where it lives, its certificate (PEM) and its fingerprint."""

    directory: Path
    pem: bytes
    name: str
    fingerprint: str  # SHA-256 of the DER certificate, colon-separated hex
    created: bool  # made by this call

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY


@dataclass(frozen=True, slots=True)
class Leaf:
    """A certificate for the server and its key, issued by ``authority``."""

    cert_path: Path
    key_path: Path
    authority: Authority
    names: tuple[str, ...]
    issued: bool  # made by this call (False: the one on disk still fits)


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the CA lives: $XDG_DATA_HOME/sitepeek, else ~/.local/share/sitepeek."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or ""
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sitepeek"


def _import_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise CertError(HTTPS_HINT) from None


def authority(directory: Path | None = None) -> Authority:
    """The local CA, created on first use."""
    _import_cryptography()
    directory = data_dir() if directory is None else directory
    with _locked(directory):
        return _load_or_create_authority(directory)


def issue_leaf(
    names: Sequence[str],
    directory: Path | None = None,
    now: datetime.datetime | None = None,
) -> Leaf:
    """A leaf for ``names`` (host names and IP addresses): the one on disk when it
    still fits, else a new one."""
    _import_cryptography()
    directory = data_dir() if directory is None else directory
    now = now or datetime.datetime.now(datetime.UTC)
    wanted = tuple(dict.fromkeys(name.lower().strip("[]") for name in names if name))
    with _locked(directory):
        ca = _load_or_create_authority(directory)
        cert_path, key_path = directory / LEAF_CERT, directory / LEAF_KEY
        if _leaf_fits(cert_path, key_path, ca, wanted, now):
            return Leaf(cert_path, key_path, ca, wanted, issued=False)
        ca_cert, ca_key = _read_authority(directory)
        cert_pem, key_pem = _make_leaf(ca_cert, ca_key, wanted, now)
        _write_private(key_path, key_pem)
        _write_public(cert_path, cert_pem)
        return Leaf(cert_path, key_path, ca, wanted, issued=True)


def local_names(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """localhost, the loopback addresses, this machine's name, and ``extra``."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    return tuple(dict.fromkeys(n for n in map(_dns_form, names) if n is not None))


def _dns_form(name: str) -> str | None:
    """How ``name`` goes into a certificate: lowercase ASCII (IDNA for others), or
    None for a name no certificate can carry."""
    name = name.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or any(c.isspace() or c in "/@:" for c in name):
        return None
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


# -- the CA -----------------------------------------------------------------------------
def _load_or_create_authority(directory: Path) -> Authority:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    created = False
    if not (cert_path.exists() and key_path.exists()):
        if cert_path.exists() or key_path.exists():
            missing = key_path if cert_path.exists() else cert_path
            raise CertError(
                f"the local CA in {directory} is incomplete ({missing.name} is missing): "
                "move the directory away to start afresh"
            )
        _make_authority(directory)
        created = True
    ca_cert, _ = _read_authority(directory)
    from cryptography.hazmat.primitives import serialization

    pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    der = ca_cert.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    common = _common_name(ca_cert)
    return Authority(directory, pem, common, fingerprint, created)


def _authority_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"sitepeek local CA ({user}@{socket.gethostname()})"


def _make_authority(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"cannot create {directory}: {exc.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, _authority_name()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sitepeek local CA"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(directory / CA_KEY, key_pem)
    _write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))


def _read_authority(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except OSError as exc:
        raise CertError(f"cannot read the local CA in {directory}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise CertError(f"the local CA in {directory} is damaged ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"the local CA key in {directory} is not the kind sitepeek makes")
    return cert, key


def _common_name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else cert.subject.rfc4514_string()


# -- leaves -----------------------------------------------------------------------------
def _alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


def _san_set(cert: x509.Certificate) -> set[str]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(name).lower() for name in ext.get_values_for_type(x509.DNSName)}
    names |= {str(address) for address in ext.get_values_for_type(x509.IPAddress)}
    return names


def _normalised(names: Sequence[str]) -> set[str]:
    found = set()
    for name in names:
        try:
            found.add(str(ipaddress.ip_address(name)))
        except ValueError:
            found.add(name.lower())
    return found


def _leaf_fits(
    cert_path: Path,
    key_path: Path,
    ca: Authority,
    names: Sequence[str],
    now: datetime.datetime,
) -> bool:
    """The leaf on disk is this CA's, for exactly ``names``, and not near expiry."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(ca.pem)
        leaf.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if key.public_key() != leaf.public_key():
        return False
    if _san_set(leaf) != _normalised(names):
        return False
    return leaf.not_valid_before_utc <= now and leaf.not_valid_after_utc - now > RENEW_BEFORE


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    now: datetime.datetime,
) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_alt_names(names)), critical=False)
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# -- files ------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One sitepeek at a time makes or replaces these files (servers start together)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CertError(f"cannot use {directory}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    _write(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write(path, data, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically; the content is never readable with a wider mode."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror}") from None
