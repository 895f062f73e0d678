"""meshwork: a message mesh. The protocol core (sans-IO) and the application SDK.

Everything here but the SDK is pure: no sockets, threads, clocks or global
randomness. ``nodes`` adapts it to gRPC, SQLite and the operating system.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "AuthenticationFailed",
    "BodyTooLarge",
    "Cipher",
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
    "NodeIdentity",
    "OpenedMessage",
    "Opener",
    "PublicIdentity",
    "RemoteError",
    "Replayed",
    "Sealer",
    "Status",
    "TooLarge",
    "UnknownRecipient",
    "UnknownSender",
    "UnsupportedVersion",
    "WrongRecipient",
    "__version__",
    "decode_body",
    "encode_body",
    "parse_envelope",
    "read_header",
    "verify",
]
