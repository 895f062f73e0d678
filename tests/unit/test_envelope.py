"""Seal, verify and open: round trips, tampering, and hostile bytes."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.codec import Compression, CompressionPolicy, Compressor, ContentType, encode_body
from mesh.crypto import Cipher, KeyRing, NodeIdentity
from mesh.envelope import (
    VERSION,
    Envelope,
    EnvelopeHeader,
    Limits,
    Opener,
    Sealer,
    compute_digest,
    parse_envelope,
    read_header,
    verify,
)
from mesh.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    ClockSkew,
    DigestMismatch,
    Expired,
    InvalidArgument,
    Malformed,
    MeshError,
    TooLarge,
    UnknownRecipient,
    UnknownSender,
    UnsupportedVersion,
    WrongRecipient,
)
from mesh.v1 import peer_pb2
from tests.unit.conftest import NOW_MS, SealFactory, header, keyring

SIZES = [0, 1, 255, 256, 1024, 65_536, 4 * 1024 * 1024]


def body_of(content_type: ContentType, size: int) -> object:
    """A body of about ``size`` encoded bytes, half compressible, half not."""
    noise = os.urandom(size // 2).hex()[: size // 2]
    text = ("abc" * size)[: size - len(noise)] + noise
    if content_type is ContentType.RAW:
        return text.encode()[:size]
    if content_type is ContentType.JSON:
        return {"text": text[: max(0, size - 12)]}
    return peer_pb2.LinkError(status=3, reason=text[: max(0, size - 8)])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("content_type", list(ContentType))
@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("cipher", list(Cipher))
def test_round_trip(
    size: int, content_type: ContentType, compression: Compression, cipher: Cipher
) -> None:
    body = encode_body(body_of(content_type, size), content_type)
    sealer = Sealer(
        keyring("a"),
        cipher=cipher,
        compressor=Compressor(CompressionPolicy(preferred=compression)),
    )
    envelope = sealer.seal(header(), body)
    wire = envelope.SerializeToString()
    received = parse_envelope(wire)
    verify(received)
    opened = Opener(keyring("c")).open(received, now_ms=NOW_MS)
    assert opened.body == body
    assert opened.header.message_id == b"\x01" * 16
    assert read_header(received).cipher == cipher
    if size >= 1024 and compression is not Compression.NONE:
        assert read_header(received).compression == compression


def test_a_forwarder_without_keys_cannot_read_the_body(seal: SealFactory) -> None:
    secret = b"the launch code is 0000" * 20
    envelope = seal(encode_body(secret))
    verify(envelope)  # a forwarder can check it...
    wire = envelope.SerializeToString()
    assert secret[:16] not in wire  # ...but the body is nowhere in clear
    with pytest.raises(WrongRecipient):
        Opener(keyring("b")).open(envelope)


def test_the_wrong_destination_key_cannot_open_it(seal: SealFactory) -> None:
    impostor = KeyRing(NodeIdentity.generate("c"), random_bytes=os.urandom)
    impostor.add_peer(keyring("a").identity.public)
    with pytest.raises(AuthenticationFailed):
        Opener(impostor).open(seal())


def test_a_header_rewritten_by_a_neighbour_fails_at_the_destination(seal: SealFactory) -> None:
    envelope = seal()
    parsed = read_header(envelope)
    parsed.destination_kind = 2  # redirect it, then fix the digest so hops accept it
    envelope.header = parsed.SerializeToString()
    envelope.digest = compute_digest(VERSION, envelope.header, envelope.payload)
    verify(envelope)
    with pytest.raises(AuthenticationFailed):
        Opener(keyring("c")).open(envelope)


def test_a_signature_is_checked_when_present(seal: SealFactory) -> None:
    envelope = seal(sign=True)
    assert Opener(keyring("c")).open(envelope).signed
    envelope.signature = keyring("b").identity.sign(envelope.digest)
    with pytest.raises(AuthenticationFailed):
        Opener(keyring("c")).open(envelope)


def test_ttl_and_trace_may_change_on_the_way(seal: SealFactory) -> None:
    envelope = seal()
    envelope.ttl -= 5
    envelope.trace.extend(["a", "b"])
    verify(envelope)
    Opener(keyring("c")).open(envelope)


@pytest.mark.parametrize("field", ["header", "payload", "digest"])
@given(data=st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_flipped_bit_is_caught_by_verify_and_open(
    seal: SealFactory, field: str, data: st.DataObject
) -> None:
    envelope = seal(encode_body(b"payload " * 64))
    original = getattr(envelope, field)
    bit = data.draw(st.integers(0, len(original) * 8 - 1))
    flipped = bytearray(original)
    flipped[bit // 8] ^= 1 << (bit % 8)
    setattr(envelope, field, bytes(flipped))
    with pytest.raises(DigestMismatch):
        verify(envelope)
    with pytest.raises(DigestMismatch):
        Opener(keyring("c")).open(envelope)


@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_mesh_errors(data: bytes) -> None:
    opener = Opener(keyring("c"))
    with contextlib.suppress(MeshError):
        envelope = parse_envelope(data)
        verify(envelope)
        read_header(envelope)
        opener.open(envelope)


@given(st.binary(max_size=300))
def test_random_header_bytes_with_a_valid_digest_only_raise_mesh_errors(data: bytes) -> None:
    # What a hostile neighbour can do: any header, digest recomputed to match.
    envelope = Envelope(version=VERSION, header=data, payload=b"\0" * 32)
    envelope.digest = compute_digest(VERSION, data, envelope.payload)
    with contextlib.suppress(MeshError):
        Opener(keyring("c")).open(envelope, now_ms=NOW_MS)


def test_truncated_wire_bytes_are_refused(seal: SealFactory) -> None:
    wire = seal(encode_body(b"x" * 300)).SerializeToString()
    for cut in range(1, len(wire)):
        with pytest.raises((Malformed, DigestMismatch, UnsupportedVersion)):
            envelope = parse_envelope(wire[:cut])
            verify(envelope)
            Opener(keyring("c")).open(envelope)


def test_garbage_is_malformed() -> None:
    with pytest.raises(Malformed):
        parse_envelope(b"\xff" * 64)


def test_wrong_version_is_unsupported(seal: SealFactory) -> None:
    envelope = seal()
    envelope.version = 2
    with pytest.raises(UnsupportedVersion):
        verify(envelope)


def test_oversized_envelopes_are_refused(seal: SealFactory) -> None:
    small = Limits(max_envelope_bytes=1024, max_body_bytes=1024)
    envelope = seal(encode_body(os.urandom(2048)))
    with pytest.raises(TooLarge):
        verify(envelope, small)
    with pytest.raises(TooLarge):
        parse_envelope(envelope.SerializeToString(), small)
    with pytest.raises(BodyTooLarge):
        Sealer(keyring("a"), limits=small).seal(header(), encode_body(os.urandom(2048)))


def test_a_body_that_inflates_past_the_limit_is_refused(seal: SealFactory) -> None:
    envelope = seal(encode_body(b"\0" * 100_000))
    assert len(envelope.payload) < 1_000
    with pytest.raises(TooLarge):
        Opener(keyring("c"), limits=Limits(max_body_bytes=50_000)).open(envelope)


def test_an_oversized_header_is_refused(seal: SealFactory) -> None:
    envelope = seal()
    envelope.header = envelope.header + b"\x0a\x00" * 3000
    with pytest.raises(TooLarge):
        verify(envelope)


def test_a_short_message_id_is_malformed() -> None:
    envelope = Envelope(
        version=VERSION,
        header=EnvelopeHeader(message_id=b"x", source="a", recipient="c").SerializeToString(),
    )
    envelope.digest = compute_digest(VERSION, envelope.header, envelope.payload)
    with pytest.raises(Malformed, match="message id"):
        read_header(envelope)


def test_an_expired_envelope_is_refused(seal: SealFactory) -> None:
    # The deadline is on the source's clock: late by less than the skew bound (60 s)
    # may be on time there; later than that cannot be.
    envelope = seal(deadline_ms=NOW_MS + 10)
    Opener(keyring("c")).open(envelope, now_ms=NOW_MS + 10 + 30_000)
    with pytest.raises(Expired, match="more than the 60000 ms clocks may differ"):
        Opener(keyring("c")).open(envelope, now_ms=NOW_MS + 10 + 60_001)


def test_an_envelope_from_the_future_is_refused(seal: SealFactory) -> None:
    envelope = seal(created_ms=NOW_MS + 300_000)
    with pytest.raises(ClockSkew):
        Opener(keyring("c")).open(envelope, now_ms=NOW_MS)
    Opener(keyring("c")).open(seal(created_ms=NOW_MS + 30_000), now_ms=NOW_MS)


def test_unknown_sender_and_recipient_are_refused(seal: SealFactory) -> None:
    envelope = seal()
    with pytest.raises(UnknownSender):
        Opener(keyring("c", known=("c",))).open(envelope)
    with pytest.raises(UnknownRecipient):
        Sealer(keyring("a", known=("a",))).seal(header(), encode_body(b""))


def test_sealing_as_another_node_or_with_bad_fields_is_refused() -> None:
    sealer = Sealer(keyring("a"))
    with pytest.raises(InvalidArgument, match="cannot seal as"):
        sealer.seal(header(source="b"), encode_body(b""))
    with pytest.raises(InvalidArgument, match="message id"):
        sealer.seal(header(message_id=b"short"), encode_body(b""))
    with pytest.raises(InvalidArgument, match="ttl"):
        sealer.seal(header(), encode_body(b""), ttl=0)


def test_every_message_gets_a_fresh_nonce(seal: SealFactory) -> None:
    sealer = Sealer(keyring("a"))
    nonces = {read_header(sealer.seal(header(), encode_body(b"x"))).nonce for _ in range(50)}
    assert len(nonces) == 50
