"""meshwork: a message mesh. The protocol core (sans-IO) and the application SDK.

Everything here but the SDK is pure: no sockets, threads, clocks or global
randomness. ``nodes`` adapts it to gRPC, SQLite and the operating system.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.codec import (
    Compression,
    CompressionPolicy,
    Compressor,
    ContentType,
    EncodedBody,
    decode_body,
    encode_body,
)
from mesh.crypto import Cipher, KeyRing, NodeIdentity, PublicIdentity
from mesh.dedupe import DedupeWindow
from mesh.envelope import (
    DEFAULT_LIMITS,
    Envelope,
    EnvelopeHeader,
    Header,
    Limits,
    OpenedMessage,
    Opener,
    Sealer,
    parse_envelope,
    read_header,
    verify,
)
from mesh.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    ClockSkew,
    DecodeError,
    DigestMismatch,
    EncodeError,
    Expired,
    InvalidArgument,
    KeyExhausted,
    KeyFileError,
    LocalError,
    Malformed,
    MeshError,
    RemoteError,
    Replayed,
    Status,
    TooLarge,
    UnknownRecipient,
    UnknownSender,
    UnsupportedVersion,
    WrongRecipient,
)

if TYPE_CHECKING:
    from mesh.client import Client, Message, Reply, SyncClient, connect, connect_sync

__version__ = "0.1.0"

_SDK_NAMES = frozenset({"connect", "connect_sync", "Client", "SyncClient", "Reply", "Message"})


def __getattr__(name: str) -> Any:
    """Import the SDK (and with it grpc) only when one of its names is asked for."""
    if name in _SDK_NAMES:
        from mesh import client  # noqa: PLC0415

        return getattr(client, name)
    raise AttributeError(f"module 'mesh' has no attribute {name!r}")


__all__ = [
    "DEFAULT_LIMITS",
    "AuthenticationFailed",
    "BodyTooLarge",
    "Cipher",
    "Client",
    "ClockSkew",
    "Compression",
    "CompressionPolicy",
    "Compressor",
    "ContentType",
    "DecodeError",
    "DedupeWindow",
    "DigestMismatch",
    "EncodeError",
    "EncodedBody",
    "Envelope",
    "EnvelopeHeader",
    "Expired",
    "Header",
    "InvalidArgument",
    "KeyExhausted",
    "KeyFileError",
    "KeyRing",
    "Limits",
    "LocalError",
    "Malformed",
    "MeshError",
    "Message",
    "NodeIdentity",
    "OpenedMessage",
    "Opener",
    "PublicIdentity",
    "RemoteError",
    "Replayed",
    "Reply",
    "Sealer",
    "Status",
    "SyncClient",
    "TooLarge",
    "UnknownRecipient",
    "UnknownSender",
    "UnsupportedVersion",
    "WrongRecipient",
    "__version__",
    "connect",
    "connect_sync",
    "decode_body",
    "encode_body",
    "parse_envelope",
    "read_header",
    "verify",
]
