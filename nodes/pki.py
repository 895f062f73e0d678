"""The mesh's certificate authority: mTLS material for links and the identity binding.

Links between neighbours run over mutual TLS, and every node's identity record
(flooded through the mesh, see mesh/directory.py) carries its certificate. So
one certificate does two jobs:

- **TLS**: an ECDSA P-256 key (``node.key``) and a certificate (``node.pem``)
  whose DNS SAN is the node id, so gRPC's hostname check doubles as "is this
  the neighbour I meant to dial" (see :func:`channel_options`), and whose URI
  SAN ``mesh://<mesh>/node/<node>`` says which mesh and role it belongs to;
- **identity**: a non-critical extension (:data:`IDENTITY_BINDING_OID`)
  holds SHA-256(Ed25519 public key || X25519 public key), binding the node's
  long-lived identity keys to its id. :func:`certificate_check` is the
  ``CertificateCheck`` the identity directory runs on every record, so a node
  cannot flood keys for an id the CA did not give it.

The binding OID is ``2.25.156207477873712823146356649280995728238``: an
OID under ``2.25`` is derived from a UUID (ITU-T X.667), which needs no
registration and cannot collide with anyone's arc. (``1.3.6.1.4.1.57264`` was
suggested but is Sigstore's enterprise number; its ``.1`` arc holds Fulcio's
extensions, so squatting there could confuse tooling that reads them.)

Administrative clients (the CLI) get client-only certificates with the URI
``mesh://<mesh>/client/<name>`` and no DNS SAN, so they can never pass as a node.

Everything here runs in the node runtime, so reading the clock is allowed; it
is still injectable (``now``) so tests can check expiry without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.crypto import AGREEMENT_KEY_FILE, SIGNING_KEY_FILE, NodeIdentity
from mesh.directory import CertificateCheck
from mesh.errors import AuthenticationFailed, LocalError, Status
from mesh.v1 import peer_pb2
from nodes.config import NAME_PATTERN

IDENTITY_BINDING_OID = x509.ObjectIdentifier("2.25.156207477873712823146356649280995728238")
"""Extension holding SHA-256(signing key raw || agreement key raw), as a DER OCTET STRING."""

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
NODE_CERT_FILE = "node.pem"
NODE_KEY_FILE = "node.key"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client.key"

CA_VALIDITY = timedelta(days=3650)
NODE_VALIDITY = timedelta(days=730)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before issue, so a peer whose clock lags a little accepts them."""

URI_SCHEME = "mesh://"
_BINDING_PREFIX = b"\x04\x20"  # DER: OCTET STRING, 32 bytes

Clock = Callable[[], datetime]
Role = Literal["node", "client"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PkiError(LocalError):
    """A CA, certificate or key file is missing, unreadable, or does not fit the others."""

    status = Status.FAILED_PRECONDITION


class TlsMaterial(Protocol):
    """Anything naming a CA, a certificate and its key (``config.TlsFiles``, :class:`NodeFiles`)."""

    @property
    def ca(self) -> Path: ...
    @property
    def cert(self) -> Path: ...
    @property
    def key(self) -> Path: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CaFiles:
    """What :func:`init_ca` wrote."""

    mesh_id: str
    cert: Path
    """``ca.pem``: the self-signed CA certificate, the mesh's only trust root."""
    key: Path
    """``ca.key``: the CA's private key (mode 0600); keep it off the nodes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFiles:
    """What :func:`issue_node_certificate` wrote; usable as ``TlsMaterial``."""

    node_id: str
    mesh_id: str
    ca: Path
    cert: Path
    key: Path
    signing: Path
    """The node's Ed25519 identity key (``signing.pem``)."""
    agreement: Path
    """The node's X25519 identity key (``agreement.pem``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientFiles:
    """What :func:`issue_client_certificate` wrote; usable as ``TlsMaterial``."""

    name: str
    mesh_id: str
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshName:
    """Who a certificate names, from its ``mesh://<mesh>/<role>/<name>`` URI."""

    mesh_id: str
    role: Role
    name: str


# --- files ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write a file created with ``mode`` from the start, so a key is never briefly readable."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise PkiError(f"{path} already exists") from None
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create directory {directory}: {exc.strerror}") from exc


def _read(path: Path, *, private: bool = False) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path} does not exist") from None
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from exc
    if private and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PkiError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    return data


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, private=True), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} holds a {type(key).__name__.lstrip('_')}, expected an EC key")
    return key


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_name(kind: str, name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise PkiError(
            f"{kind} {name!r} is not a valid name: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


# --- names in certificates -------------------------------------------------------------------


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in san.get_values_for_type(x509.DNSName)]


def _mesh_name(cert: x509.Certificate) -> MeshName | None:
    for uri in _uris(cert):
        if not uri.startswith(URI_SCHEME):
            continue
        parts = uri.removeprefix(URI_SCHEME).split("/")
        if len(parts) == 3 and parts[1] in ("node", "client"):
            role: Role = "node" if parts[1] == "node" else "client"
            return MeshName(mesh_id=parts[0], role=role, name=parts[2])
    return None


def _ca_mesh_id(cert: x509.Certificate) -> str | None:
    for uri in _uris(cert):
        rest = uri.removeprefix(URI_SCHEME)
        if uri.startswith(URI_SCHEME) and rest and "/" not in rest:
            return rest
    return None


def _parse_certificate(der_or_pem: bytes) -> x509.Certificate:
    """Raises ValueError when the bytes are neither a PEM nor a DER certificate."""
    if der_or_pem.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(der_or_pem)
    return x509.load_der_x509_certificate(der_or_pem)


def certificate_name(der_or_pem: bytes) -> MeshName | None:
    """The mesh, role and name a certificate was issued for; None if it has no mesh URI.

    Raises:
        PkiError: the bytes are not a certificate.
    """
    try:
        cert = _parse_certificate(der_or_pem)
    except ValueError:
        raise PkiError("not a PEM or DER certificate") from None
    return _mesh_name(cert)


def node_id_from_certificate(der_or_pem: bytes) -> str | None:
    """The node id a node certificate names (its DNS SAN); None for a client certificate.

    Raises:
        PkiError: the bytes are not a certificate.
    """
    try:
        cert = _parse_certificate(der_or_pem)
    except ValueError:
        raise PkiError("not a PEM or DER certificate") from None
    name = _mesh_name(cert)
    if name is None or name.role != "node" or name.name not in _dns_names(cert):
        return None
    return name.name


def certificate_der(source: Path | TlsMaterial) -> bytes:
    """A certificate as DER, for ``IdentityRecord.certificate``.

    ``source`` is a PEM certificate file, or TLS material whose ``cert`` is read
    (a :class:`TlsBundle` already holds it).

    Raises:
        PkiError: the file is missing or not a PEM certificate.
    """
    if isinstance(source, Path):
        cert = _load_certificate(source)
    elif isinstance(source, TlsBundle):
        cert = x509.load_pem_x509_certificate(source.cert_pem)
    else:
        cert = _load_certificate(source.cert)
    return cert.public_bytes(serialization.Encoding.DER)


def identity_binding(signing_key: bytes, agreement_key: bytes) -> bytes:
    """SHA-256 over the raw Ed25519 and X25519 public keys (32 bytes each, fixed order)."""
    return hashlib.sha256(signing_key + agreement_key).digest()


# --- the CA ----------------------------------------------------------------------------------


def init_ca(directory: Path, mesh_id: str, *, force: bool = False, now: Clock = _utcnow) -> CaFiles:
    """Create the mesh CA: ``ca.pem`` (self-signed, 10 years) and ``ca.key`` (0600).

    The CA may sign end-entity certificates only (``pathlen`` 0); its URI SAN
    ``mesh://<mesh_id>`` is where issued certificates take their mesh id from.

    Raises:
        PkiError: a CA already exists there (and ``force`` is not set), the
            mesh id is not a valid name, or the files cannot be written.
    """
    _check_name("mesh id", mesh_id)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise PkiError(
                    f"{path} already exists; a new CA would orphan every certificate the "
                    "old one issued (use --force to replace it)"
                )
    _mkdir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshwork"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshwork CA for mesh {mesh_id}"),
        ]
    )
    start = now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + CA_VALIDITY)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(URI_SCHEME + mesh_id)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    # Key first: a certificate without its key is useless, a key without a certificate harmless.
    _write(key_path, _private_pem(key), 0o600)
    _write(cert_path, _pem(cert), 0o644)
    return CaFiles(mesh_id=mesh_id, cert=cert_path, key=key_path)


@dataclass(frozen=True, slots=True)
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    mesh_id: str
    pem: bytes


def _load_ca(directory: Path) -> _Ca:
    cert_path = directory / CA_CERT_FILE
    if not cert_path.exists():
        raise PkiError(f"no CA in {directory}: {cert_path} does not exist (see `mesh ca init`)")
    cert = _load_certificate(cert_path)
    key = _load_key(directory / CA_KEY_FILE)
    if not _same_key(cert, key):
        raise PkiError(f"{directory / CA_KEY_FILE} is not the key of {cert_path}")
    mesh_id = _ca_mesh_id(cert)
    if mesh_id is None:
        raise PkiError(f"{cert_path} is not a meshwork CA (no mesh:// URI); see `mesh ca init`")
    return _Ca(cert, key, mesh_id, _pem(cert))


def _issue(
    ca: _Ca,
    *,
    common_name: str,
    alt_names: Sequence[x509.GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    key: ec.EllipticCurvePrivateKey,
    extra: Sequence[x509.ExtensionType] = (),
    start: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.mesh_id),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        # A certificate outliving its CA would only fail later and more confusingly.
        .not_valid_after(min(start + NODE_VALIDITY, ca.cert.not_valid_after_utc))
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
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def issue_node_certificate(
    node_id: str,
    ca_dir: Path,
    out_dir: Path,
    identity: NodeIdentity | None = None,
    *,
    now: Clock = _utcnow,
) -> NodeFiles:
    """Give a node its TLS certificate and bind its identity keys to its id.

    Writes into ``out_dir``: ``node.pem`` and ``node.key`` (0600, a fresh
    ECDSA P-256 key), ``signing.pem`` and ``agreement.pem`` (the identity) and
    a copy of ``ca.pem``. Without ``identity``, keys already in ``out_dir``
    are kept (re-issuing renews the certificate, not the node's identity);
    otherwise new ones are generated.

    Raises:
        PkiError: the CA files are missing or do not match, the node id is not
            a valid name or differs from ``identity.node_id``, or a file cannot
            be written.
        KeyFileError: identity keys in ``out_dir`` are unreadable.
    """
    _check_name("node id", node_id)
    if identity is not None and identity.node_id != node_id:
        raise PkiError(f"identity is for node {identity.node_id!r}, not {node_id!r}")
    ca = _load_ca(ca_dir)
    _mkdir(out_dir)
    if identity is None:
        if (out_dir / SIGNING_KEY_FILE).exists() or (out_dir / AGREEMENT_KEY_FILE).exists():
            identity = NodeIdentity.load(node_id, out_dir)
        else:
            identity = NodeIdentity.generate(node_id)
            identity.save(out_dir)
    else:
        identity.save(out_dir)
    binding = identity_binding(identity.public.signing_key, identity.public.agreement_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(
        ca,
        common_name=node_id,
        alt_names=[
            x509.DNSName(node_id),
            x509.UniformResourceIdentifier(f"{URI_SCHEME}{ca.mesh_id}/node/{node_id}"),
        ],
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        key=key,
        extra=[x509.UnrecognizedExtension(IDENTITY_BINDING_OID, _BINDING_PREFIX + binding)],
        start=now(),
    )
    files = NodeFiles(
        node_id=node_id,
        mesh_id=ca.mesh_id,
        ca=out_dir / CA_CERT_FILE,
        cert=out_dir / NODE_CERT_FILE,
        key=out_dir / NODE_KEY_FILE,
        signing=out_dir / SIGNING_KEY_FILE,
        agreement=out_dir / AGREEMENT_KEY_FILE,
    )
    _write(files.key, _private_pem(key), 0o600)
    _write(files.cert, _pem(cert), 0o644)
    _write(files.ca, ca.pem, 0o644)
    return files


def issue_client_certificate(
    name: str, ca_dir: Path, out_dir: Path, *, now: Clock = _utcnow
) -> ClientFiles:
    """A client-only certificate for the CLI or an admin tool.

    Writes ``client.pem``, ``client.key`` (0600) and a copy of ``ca.pem``
    into ``out_dir``. The certificate has no DNS SAN and no serverAuth, so
    it can neither serve as a node nor pass :func:`certificate_check`.

    Raises:
        PkiError: the CA files are missing or do not match, the name is not
            valid, or a file cannot be written.
    """
    _check_name("client name", name)
    ca = _load_ca(ca_dir)
    _mkdir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(
        ca,
        common_name=name,
        alt_names=[x509.UniformResourceIdentifier(f"{URI_SCHEME}{ca.mesh_id}/client/{name}")],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        key=key,
        start=now(),
    )
    files = ClientFiles(
        name=name,
        mesh_id=ca.mesh_id,
        ca=out_dir / CA_CERT_FILE,
        cert=out_dir / CLIENT_CERT_FILE,
        key=out_dir / CLIENT_KEY_FILE,
    )
    _write(files.key, _private_pem(key), 0o600)
    _write(files.cert, _pem(cert), 0o644)
    _write(files.ca, ca.pem, 0o644)
    return files


# --- checking identity records -------------------------------------------------------------


def _within_validity(cert: x509.Certificate, at: datetime) -> str | None:
    if at < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
    if at > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
    return None


def certificate_check(ca_pem: bytes, *, now: Clock = _utcnow) -> CertificateCheck:
    """The check the identity directory runs on every record (``CertificateCheck``).

    The returned function accepts a record only if its ``certificate`` (DER)
    is a node certificate signed by this CA, valid now, whose DNS SAN is the
    record's node id and whose binding extension is SHA-256 of the record's
    two public keys; otherwise it raises ``AuthenticationFailed`` saying which.

    Raises:
        PkiError: ``ca_pem`` is not a meshwork CA certificate (at creation).
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise PkiError("the CA certificate is not PEM") from None
    mesh_id = _ca_mesh_id(ca)
    if mesh_id is None:
        raise PkiError("the CA certificate is not a meshwork CA (no mesh:// URI)")

    def check(record: peer_pb2.IdentityRecord) -> None:
        who = f"identity record of {record.node_id!r}"
        if not record.certificate:
            raise AuthenticationFailed(f"{who} carries no certificate")
        try:
            cert = x509.load_der_x509_certificate(record.certificate)
        except ValueError:
            raise AuthenticationFailed(f"{who}: certificate is not DER X.509") from None
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise AuthenticationFailed(f"{who}: certificate is not issued by the mesh CA") from None
        at = now()
        for subject, what in ((ca, "the mesh CA"), (cert, "certificate")):
            problem = _within_validity(subject, at)
            if problem is not None:
                raise AuthenticationFailed(f"{who}: {what} {problem}")
        name = _mesh_name(cert)
        if name is None or name.role != "node" or name.mesh_id != mesh_id:
            raise AuthenticationFailed(
                f"{who}: certificate is not a node certificate of mesh {mesh_id!r}"
            )
        if record.node_id not in _dns_names(cert) or name.name != record.node_id:
            raise AuthenticationFailed(f"{who}: certificate is for node {name.name!r}")
        try:
            extension = cert.extensions.get_extension_for_oid(IDENTITY_BINDING_OID).value
        except x509.ExtensionNotFound:
            raise AuthenticationFailed(f"{who}: certificate binds no identity keys") from None
        held = extension.value if isinstance(extension, x509.UnrecognizedExtension) else b""
        expected = _BINDING_PREFIX + identity_binding(record.signing_key, record.agreement_key)
        if not hmac.compare_digest(held, expected):
            raise AuthenticationFailed(
                f"{who}: its keys are not the ones its certificate binds to the node id"
            )

    return check


# --- gRPC ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsBundle:
    """TLS files read and checked together once: what a running node holds.

    Usable as ``TlsMaterial`` (the paths are kept for messages), and the
    credential functions take it without reading the files again.
    """

    ca: Path
    cert: Path
    key: Path
    ca_pem: bytes
    """The CA certificate, for :func:`certificate_check`."""
    cert_pem: bytes
    key_pem: bytes


def node_files(ca: Path, cert: Path, key: Path, *, now: Clock = _utcnow) -> TlsBundle:
    """Read CA, certificate and key, and check they belong together before gRPC sees them.

    gRPC would otherwise accept mismatched files and fail every handshake later
    with an opaque error; here the message names the file. Works for client
    certificates too (the name says what a node passes).

    Raises:
        PkiError: a file is missing, unreadable or open to other users (the
            key), the key is not the certificate's, the certificate is not
            issued by the CA, or it is outside its validity.
    """
    ca_cert = _load_certificate(ca)
    own = _load_certificate(cert)
    private = _load_key(key)
    if not _same_key(own, private):
        raise PkiError(f"{key} is not the key of {cert}")
    try:
        own.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert} is not issued by the CA in {ca}") from None
    problem = _within_validity(own, now())
    if problem is not None:
        raise PkiError(f"{cert} {problem}; issue a new one with `mesh cert issue`")
    return TlsBundle(
        ca=ca,
        cert=cert,
        key=key,
        ca_pem=_pem(ca_cert),
        cert_pem=_pem(own),
        key_pem=_private_pem(private),
    )


def _bundle(files: TlsMaterial, now: Clock) -> TlsBundle:
    if isinstance(files, TlsBundle):
        return files
    return node_files(files.ca, files.cert, files.key, now=now)


def server_credentials(files: TlsMaterial, *, now: Clock = _utcnow) -> grpc.ServerCredentials:
    """mTLS server credentials: this node's certificate, clients must present one from the CA.

    Raises:
        PkiError: as :func:`node_files` (files given as paths are read and checked).
    """
    tls = _bundle(files, now)
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )


def channel_credentials(files: TlsMaterial, *, now: Clock = _utcnow) -> grpc.ChannelCredentials:
    """mTLS channel credentials: trust only the mesh CA, present our own certificate.

    Dial a node with :func:`channel_options` too: its certificate names the
    node id, not the host it runs on.

    Raises:
        PkiError: as :func:`server_credentials`.
    """
    tls = _bundle(files, now)
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )


def channel_options(node_id: str) -> list[tuple[str, str]]:
    """Channel options to dial the node ``node_id`` over mTLS.

    gRPC checks the server's certificate against the target's host name, but
    a node's certificate names its node id (DNS SAN), not its host or IP. So
    the channel must expect the node id instead:
    ``grpc.aio.secure_channel(address, creds, options=channel_options(neighbour))``.
    As a bonus, dialing the wrong node at an address fails the handshake.
    """
    return [("grpc.ssl_target_name_override", node_id)]


def peer_identity(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The node id of a verified peer, from ``context.auth_context()`` of a gRPC call.

    None when the peer presented no certificate (insecure server) or presented
    a client certificate. The id is read from the verified PEM certificate
    (``x509_pem_cert``) rather than the flattened SAN list, which mixes DNS
    names and URIs.

    Raises:
        AuthenticationFailed: the certificate gRPC verified does not parse.
    """
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return node_id_from_certificate(bytes(pems[0]))
    except PkiError:
        raise AuthenticationFailed("the peer's certificate does not parse") from None


__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLIENT_CERT_FILE",
    "CLIENT_KEY_FILE",
    "IDENTITY_BINDING_OID",
    "NODE_CERT_FILE",
    "NODE_KEY_FILE",
    "CaFiles",
    "ClientFiles",
    "MeshName",
    "NodeFiles",
    "PkiError",
    "TlsBundle",
    "TlsMaterial",
    "certificate_check",
    "certificate_der",
    "certificate_name",
    "channel_credentials",
    "channel_options",
    "identity_binding",
    "init_ca",
    "issue_client_certificate",
    "issue_node_certificate",
    "node_files",
    "node_id_from_certificate",
    "peer_identity",
    "server_credentials",
]
