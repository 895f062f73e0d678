"""The mesh CA: issued certificates, the identity-record check, and real mTLS over grpc.aio."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from mesh.crypto import NodeIdentity
from mesh.directory import IdentityDirectory, make_identity_record
from mesh.errors import AuthenticationFailed, KeyFileError
from mesh.v1 import admin_pb2, admin_pb2_grpc, peer_pb2
from nodes.cli import app
from nodes.config import TlsFiles
from nodes.pki import (
    IDENTITY_BINDING_OID,
    ClientFiles,
    MeshName,
    NodeFiles,
    PkiError,
    TlsMaterial,
    certificate_check,
    certificate_der,
    certificate_name,
    channel_credentials,
    channel_options,
    identity_binding,
    init_ca,
    issue_client_certificate,
    issue_node_certificate,
    node_files,
    node_id_from_certificate,
    peer_identity,
    server_credentials,
)

RPC_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Pki:
    root: Path
    ca_pem: bytes
    a: NodeFiles
    b: NodeFiles
    admin: ClientFiles
    rogue: NodeFiles
    """A node called 'a' certified by another CA of a mesh with the same id."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca", "demo")
    init_ca(root / "other-ca", "demo")
    yield Pki(
        root=root,
        ca_pem=(root / "ca" / "ca.pem").read_bytes(),
        a=issue_node_certificate("a", root / "ca", root / "a"),
        b=issue_node_certificate("b", root / "ca", root / "b"),
        admin=issue_client_certificate("admin", root / "ca", root / "admin"),
        rogue=issue_node_certificate("a", root / "other-ca", root / "rogue"),
    )


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def record_of(files: NodeFiles, *, sequence: int = 1, node_id: str | None = None):
    identity = NodeIdentity.load(files.node_id, files.cert.parent)
    if node_id is not None:
        identity = NodeIdentity(node_id, identity.signing_key, identity.agreement_key)
    return make_identity_record(identity, sequence, certificate_der(files.cert))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the CA and what it issues ---------------------------------------------------------------


def test_the_ca_is_a_ten_year_end_entity_only_ca(pki: Pki) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_pem)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)
    assert mode(pki.root / "ca" / "ca.key") == 0o600


def test_an_existing_ca_is_not_overwritten_without_force(tmp_path: Path) -> None:
    first = init_ca(tmp_path, "m")
    before = first.cert.read_bytes()
    with pytest.raises(PkiError, match=r"ca\.pem already exists.*--force"):
        init_ca(tmp_path, "m")
    assert first.cert.read_bytes() == before
    init_ca(tmp_path, "m", force=True)
    assert first.cert.read_bytes() != before


def test_a_node_certificate_names_the_node_and_binds_its_keys(pki: Pki) -> None:
    cert = cert_of(pki.a.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["mesh://demo/node/a"]
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    binding = cert.extensions.get_extension_for_oid(IDENTITY_BINDING_OID)
    public = NodeIdentity.load("a", pki.a.cert.parent).public
    assert not binding.critical
    assert binding.value.value[2:] == identity_binding(public.signing_key, public.agreement_key)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(days=731)
    assert {mode(pki.a.key), mode(pki.a.signing), mode(pki.a.agreement)} == {0o600}
    assert pki.a.ca.read_bytes() == pki.ca_pem
    assert (pki.a.node_id, pki.a.mesh_id) == ("a", "demo")


def test_reissuing_renews_the_certificate_but_keeps_the_identity(pki: Pki) -> None:
    out = pki.root / "renewed"
    first = issue_node_certificate("n", pki.root / "ca", out)
    keys = first.signing.read_bytes()
    old = first.cert.read_bytes()
    second = issue_node_certificate("n", pki.root / "ca", out)
    assert second.signing.read_bytes() == keys
    assert second.cert.read_bytes() != old


def test_an_identity_given_for_another_node_is_refused(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="identity is for node 'x', not 'y'"):
        issue_node_certificate("y", pki.root / "ca", tmp_path, NodeIdentity.generate("x"))


def test_a_given_identity_is_saved_and_bound(pki: Pki, tmp_path: Path) -> None:
    identity = NodeIdentity.generate("z")
    files = issue_node_certificate("z", pki.root / "ca", tmp_path, identity)
    assert NodeIdentity.load("z", tmp_path).public == identity.public
    certificate_check(pki.ca_pem)(make_identity_record(identity, 1, certificate_der(files.cert)))


@pytest.mark.parametrize("name", ["", "bad name", "-x", "x" * 64, "a\n"])
def test_invalid_node_ids_are_refused(pki: Pki, tmp_path: Path, name: str) -> None:
    with pytest.raises(PkiError, match="not a valid name"):
        issue_node_certificate(name, pki.root / "ca", tmp_path)


def test_missing_and_mismatched_ca_files_name_the_file(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=rf"no CA in {tmp_path}: .*ca\.pem does not exist"):
        issue_node_certificate("a", tmp_path, tmp_path / "out")
    (tmp_path / "ca.pem").write_bytes(pki.ca_pem)
    (tmp_path / "ca.key").write_bytes((pki.root / "other-ca" / "ca.key").read_bytes())
    (tmp_path / "ca.key").chmod(0o600)
    with pytest.raises(PkiError, match=r"ca\.key is not the key of .*ca\.pem"):
        issue_node_certificate("a", tmp_path, tmp_path / "out")
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(PkiError, match=r"ca\.key is accessible by other users"):
        issue_node_certificate("a", tmp_path, tmp_path / "out")


def test_unreadable_identity_keys_are_not_replaced(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "signing.pem").write_text("garbage")
    (tmp_path / "signing.pem").chmod(0o600)
    with pytest.raises(KeyFileError):
        issue_node_certificate("a", pki.root / "ca", tmp_path)
    assert (tmp_path / "signing.pem").read_text() == "garbage"


def test_names_are_read_back_from_certificates(pki: Pki) -> None:
    assert node_id_from_certificate(pki.a.cert.read_bytes()) == "a"
    assert node_id_from_certificate(certificate_der(pki.b.cert)) == "b"
    assert node_id_from_certificate(pki.admin.cert.read_bytes()) is None
    assert certificate_name(pki.admin.cert.read_bytes()) == MeshName(
        mesh_id="demo", role="client", name="admin"
    )
    assert node_id_from_certificate(pki.ca_pem) is None
    with pytest.raises(PkiError, match="not a PEM or DER certificate"):
        node_id_from_certificate(b"junk")


def test_a_client_certificate_is_client_only(pki: Pki) -> None:
    cert = cert_of(pki.admin.cert)
    usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert mode(pki.admin.key) == 0o600


# --- the identity-record check -----------------------------------------------------------------


def test_a_good_record_passes_and_the_directory_learns_it(pki: Pki) -> None:
    check = certificate_check(pki.ca_pem)
    check(record_of(pki.a))
    held = IdentityDirectory(record_of(pki.b), check_certificate=check)
    assert held.offer(record_of(pki.a)) is not None


def test_a_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    with pytest.raises(AuthenticationFailed, match="not issued by the mesh CA"):
        certificate_check(pki.ca_pem)(record_of(pki.rogue))


def test_a_certificate_for_another_node_is_refused(pki: Pki) -> None:
    with pytest.raises(AuthenticationFailed, match="'b': certificate is for node 'a'"):
        certificate_check(pki.ca_pem)(record_of(pki.a, node_id="b"))


def test_keys_the_certificate_does_not_bind_are_refused(pki: Pki) -> None:
    stranger = NodeIdentity.generate("a")
    record = make_identity_record(stranger, 1, certificate_der(pki.a.cert))
    with pytest.raises(AuthenticationFailed, match="not the ones its certificate binds"):
        certificate_check(pki.ca_pem)(record)


@pytest.mark.parametrize(
    ("shift", "problem"),
    [(timedelta(days=3 * 365), "certificate expired on"), (-timedelta(days=1), "not valid before")],
)
def test_a_certificate_outside_its_validity_is_refused(
    pki: Pki, shift: timedelta, problem: str
) -> None:
    check = certificate_check(pki.ca_pem, now=lambda: datetime.now(UTC) + shift)
    with pytest.raises(AuthenticationFailed, match=problem):
        check(record_of(pki.a))


def test_records_without_a_node_certificate_are_refused(pki: Pki) -> None:
    check = certificate_check(pki.ca_pem)
    identity = NodeIdentity.load("a", pki.a.cert.parent)
    cases = {
        b"": "carries no certificate",
        b"junk": "not DER X.509",
        certificate_der(pki.admin.cert): "not a node certificate of mesh 'demo'",
    }
    for certificate, problem in cases.items():
        with pytest.raises(AuthenticationFailed, match=problem):
            check(make_identity_record(identity, 1, certificate))


def test_the_check_needs_a_meshwork_ca() -> None:
    with pytest.raises(PkiError, match="not PEM"):
        certificate_check(b"junk")


# --- credentials ------------------------------------------------------------------------------


def test_credentials_refuse_mismatched_files(pki: Pki) -> None:
    wrong_key = TlsFiles(ca=pki.a.ca, cert=pki.a.cert, key=pki.b.key)
    with pytest.raises(PkiError, match=rf"{pki.b.key} is not the key of {pki.a.cert}"):
        server_credentials(wrong_key)
    wrong_ca = TlsFiles(ca=pki.a.ca, cert=pki.rogue.cert, key=pki.rogue.key)
    with pytest.raises(PkiError, match="is not issued by the CA in"):
        channel_credentials(wrong_ca)
    missing = TlsFiles(ca=pki.a.ca, cert=pki.root / "nope.pem", key=pki.a.key)
    with pytest.raises(PkiError, match=r"nope\.pem does not exist"):
        channel_credentials(missing)
    with pytest.raises(PkiError, match=r"expired on .*`mesh cert issue`"):
        server_credentials(pki.a, now=lambda: datetime.now(UTC) + timedelta(days=800))


def test_node_files_are_read_and_checked_once(pki: Pki) -> None:
    bundle = node_files(pki.a.ca, pki.a.cert, pki.a.key)
    assert bundle.ca_pem == pki.ca_pem and bundle.cert_pem == pki.a.cert.read_bytes()
    assert certificate_der(bundle) == certificate_der(pki.a) == certificate_der(pki.a.cert)
    certificate_check(bundle.ca_pem)(record_of(pki.a))
    assert isinstance(server_credentials(bundle), grpc.ServerCredentials)
    assert isinstance(channel_credentials(bundle), grpc.ChannelCredentials)


def test_channel_options_expect_the_node_id() -> None:
    assert channel_options("b") == [("grpc.ssl_target_name_override", "b")]


def test_no_certificate_means_no_peer_identity() -> None:
    assert peer_identity({}) is None
    with pytest.raises(AuthenticationFailed):
        peer_identity({"x509_pem_cert": [b"junk"]})


# --- real mutual TLS ----------------------------------------------------------------------------


class WhoAmI(admin_pb2_grpc.AdminServiceServicer):
    """Answers Stats with the peer's node id as seen through mTLS."""

    async def Stats(self, request, context):
        node = peer_identity(context.auth_context())
        return admin_pb2.StatsResponse(counters={f"peer:{node or '-'}": 1})


async def start_server(files: TlsMaterial) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(WhoAmI(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    await server.start()
    return server, port


async def ask(port: int, credentials: grpc.ChannelCredentials, server_node: str) -> dict[str, int]:
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=channel_options(server_node)
    ) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        reply = await stub.Stats(admin_pb2.StatsRequest(), timeout=RPC_TIMEOUT_S)
        return dict(reply.counters)


async def test_mutual_tls_admits_mesh_certificates_and_refuses_strangers(pki: Pki) -> None:
    server, port = await start_server(node_files(pki.b.ca, pki.b.cert, pki.b.key))
    try:
        async with asyncio.timeout(30):
            # A node of the mesh: admitted, and the server knows which node it is.
            assert await ask(port, channel_credentials(pki.a), "b") == {"peer:a": 1}
            # A client certificate is admitted but is no node.
            assert await ask(port, channel_credentials(pki.admin), "b") == {"peer:-": 1}

            # A node called 'a' certified by another CA: the server refuses it.
            rogue = grpc.ssl_channel_credentials(
                root_certificates=pki.ca_pem,
                private_key=pki.rogue.key.read_bytes(),
                certificate_chain=pki.rogue.cert.read_bytes(),
            )
            # No client certificate at all: refused too.
            anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
            # The right server at the address, but we meant to dial node 'c'.
            for credentials, target in (
                (rogue, "b"),
                (anonymous, "b"),
                (channel_credentials(pki.a), "c"),
                (channel_credentials(pki.rogue, now=lambda: datetime.now(UTC)), "b"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await ask(port, credentials, target)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


def test_pem_files_round_trip_through_der(pki: Pki) -> None:
    der = certificate_der(pki.a.cert)
    assert x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) == (
        pki.a.cert.read_bytes()
    )
    assert isinstance(record_of(pki.a), peer_pb2.IdentityRecord)


# --- the CLI ------------------------------------------------------------------------------------


def test_the_cli_creates_a_ca_and_issues_certificates(tmp_path: Path) -> None:
    runner = CliRunner()
    ca, out = tmp_path / "ca", tmp_path / "nodes" / "a"
    result = runner.invoke(app, ["ca", "init", str(ca), "--mesh", "demo"])
    assert result.exit_code == 0, result.output
    assert str(ca / "ca.pem") in result.output
    result = runner.invoke(app, ["cert", "issue", "a", "--ca", str(ca), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "node certificate for 'a' in mesh 'demo'" in result.output
    assert node_id_from_certificate((out / "node.pem").read_bytes()) == "a"
    result = runner.invoke(
        app, ["cert", "issue", "ops", "--ca", str(ca), "--out", str(tmp_path / "ops"), "--client"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ops" / "client.pem").exists()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["ca", "init", "{ca}"], "already exists"),
        (["cert", "issue", "bad name", "--ca", "{ca}"], "not a valid name"),
        (["cert", "issue", "a", "--ca", "{tmp}/nowhere"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line_without_a_traceback(
    tmp_path: Path, args: list[str], problem: str
) -> None:
    init_ca(tmp_path / "ca", "demo")
    argv = [arg.format(ca=tmp_path / "ca", tmp=tmp_path) for arg in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and problem in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
