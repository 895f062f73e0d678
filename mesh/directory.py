"""The identity directory: signed public identities, flooded with either engine.

A source must know a recipient's X25519 key before its first message, so each
node floods a signed ``IdentityRecord`` and keeps the newest record of every
node. Records are self-signed (Ed25519 over a canonical encoding) and, where
the runtime supplies a check, bound to the mesh CA by their certificate; a
record that does not verify is refused and changes nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from mesh.crypto import NodeIdentity, PublicIdentity
from mesh.errors import AuthenticationFailed, Malformed, MeshError, TooLarge
from mesh.routing.errors import StaleUpdate
from mesh.routing.link_state import serial_compare
from mesh.v1 import peer_pb2

_MAGIC = b"meshwork/identity/v1\x00"
_LEN = struct.Struct(">I")

CertificateCheck = Callable[[peer_pb2.IdentityRecord], None]
"""Raises AuthenticationFailed when a record's certificate is not the mesh CA's for its node."""


def identity_signing_bytes(record: peer_pb2.IdentityRecord) -> bytes:
    """Canonical bytes an identity record's signature covers (all but the signature)."""
    parts = [_MAGIC]
    for field in (
        record.node_id.encode(),
        record.signing_key,
        record.agreement_key,
        record.certificate,
    ):
        parts.append(_LEN.pack(len(field)))
        parts.append(field)
    parts.append(_LEN.pack(record.sequence))
    return b"".join(parts)


def make_identity_record(
    identity: NodeIdentity, sequence: int, certificate: bytes = b""
) -> peer_pb2.IdentityRecord:
    """This node's signed record."""
    public = identity.public
    record = peer_pb2.IdentityRecord(
        node_id=public.node_id,
        signing_key=public.signing_key,
        agreement_key=public.agreement_key,
        certificate=certificate,
        sequence=sequence,
    )
    record.signature = identity.sign(identity_signing_bytes(record))
    return record


class IdentityDirectory:
    """Newest verified identity record per node, bounded in count."""

    def __init__(
        self,
        own: peer_pb2.IdentityRecord,
        *,
        check_certificate: CertificateCheck | None = None,
        max_records: int = 100_000,
        max_name_bytes: int = 255,
        max_certificate_bytes: int = 8192,
    ) -> None:
        self._records: dict[str, peer_pb2.IdentityRecord] = {own.node_id: own}
        self._own = own.node_id
        self._check_certificate = check_certificate
        self._max_records = max_records
        self._max_name_bytes = max_name_bytes
        self._max_certificate_bytes = max_certificate_bytes

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[peer_pb2.IdentityRecord]:
        return iter(self._records.values())

    def get(self, node_id: str) -> peer_pb2.IdentityRecord | None:
        return self._records.get(node_id)

    def replace_own(self, record: peer_pb2.IdentityRecord) -> None:
        self._records[self._own] = record

    def offer(self, record: peer_pb2.IdentityRecord) -> PublicIdentity | None:
        """Consider a record from a neighbour.

        Returns the public identity when the record is new (to be added to the
        key ring and flooded on), None for a duplicate of what is held.

        Raises:
            Malformed: a field is out of shape.
            TooLarge: the certificate is too big, or the directory is full.
            StaleUpdate: an older record than the one held.
            AuthenticationFailed: the signature or the certificate does not verify.
        """
        name = record.node_id
        if not name or len(name.encode()) > self._max_name_bytes:
            raise Malformed(f"identity record with a bad node id {name[:64]!r}")
        if len(record.certificate) > self._max_certificate_bytes:
            raise TooLarge(f"identity record of {name!r}: certificate over the size limit")
        held = self._records.get(name)
        if held is not None:
            order = serial_compare(record.sequence, held.sequence)
            if order == 0 and record.SerializeToString(deterministic=True) == (
                held.SerializeToString(deterministic=True)
            ):
                return None
            if order <= 0 or name == self._own:
                raise StaleUpdate(
                    f"identity record of {name!r} #{record.sequence} is not newer than "
                    f"#{held.sequence}"
                )
        elif len(self._records) >= self._max_records:
            raise TooLarge(f"identity directory is full ({self._max_records} records)")
        try:
            public = PublicIdentity(name, record.signing_key, record.agreement_key)
        except MeshError as exc:
            raise Malformed(str(exc)) from None
        try:
            public.verify(identity_signing_bytes(record), record.signature)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                f"identity record of {name!r} is not signed by its own key"
            ) from None
        if self._check_certificate is not None:
            self._check_certificate(record)
        # A new key for a known node must come with a certificate the CA vouches for;
        # without a certificate check, first come first served.
        if (
            held is not None
            and held.signing_key != record.signing_key
            and self._check_certificate is None
        ):
            raise AuthenticationFailed(
                f"identity record of {name!r} changes its key without a CA to vouch for it"
            )
        self._records[name] = record
        return public


__all__ = [
    "CertificateCheck",
    "IdentityDirectory",
    "identity_signing_bytes",
    "make_identity_record",
]
