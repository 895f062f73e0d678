"""Factories for keys, key rings and sealed envelopes shared by the unit tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache

import pytest

from mesh.codec import EncodedBody, encode_body
from mesh.crypto import Cipher, KeyRing, NodeIdentity
from mesh.envelope import Envelope, Header, Opener, Sealer
from mesh.v1 import envelope_pb2

NOW_MS = 1_800_000_000_000


@cache
def identity(name: str) -> NodeIdentity:
    """One identity per name for the whole run: key generation is the slow part."""
    return NodeIdentity.generate(name)


def keyring(name: str, known: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> KeyRing:
    """A key ring for ``name`` that knows the public identities of ``known``."""
    rng = random.Random(f"{name}/{seed}")
    ring = KeyRing(identity(name), random_bytes=rng.randbytes)
    for other in known:
        ring.add_peer(identity(other).public)
    return ring


def header(
    source: str = "a",
    recipient: str = "c",
    *,
    message_id: bytes = b"\x01" * 16,
    created_ms: int = NOW_MS,
    deadline_ms: int = 0,
) -> Header:
    return Header(
        message_id=message_id,
        source=source,
        destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
        destination=recipient,
        recipient=recipient,
        mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
        created_ms=created_ms,
        deadline_ms=deadline_ms,
    )


SealFactory = Callable[..., Envelope]


@pytest.fixture
def seal() -> SealFactory:
    """Seal a body from a to c (by default) with fresh key rings."""

    def _seal(
        body: EncodedBody | None = None,
        *,
        source: str = "a",
        recipient: str = "c",
        cipher: Cipher = Cipher.AES_256_GCM,
        sign: bool = False,
        **header_fields: object,
    ) -> Envelope:
        sealer = Sealer(keyring(source), cipher=cipher, sign=sign)
        return sealer.seal(
            header(source, recipient, **header_fields),  # type: ignore[arg-type]
            body if body is not None else encode_body({"hello": "world"}),
        )

    return _seal


@pytest.fixture
def opener() -> Opener:
    return Opener(keyring("c"))
