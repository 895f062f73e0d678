"""The error hierarchy of the mesh core.

Every failure the core reports is a :class:`MeshError`. Under it, h11-style,
:class:`LocalError` means our own caller asked for something impossible and
:class:`RemoteError` means input from elsewhere (a peer, a stored record, an
envelope) is bad. Each class carries the one :class:`Status` it maps to; only
``nodes/`` turns that into a ``grpc.StatusCode``, so the core never imports
grpc. The table of classes and codes is in docs/protocol.md.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Status(enum.IntEnum):
    """gRPC status codes by number (google.rpc.Code), usable without grpc."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, code: int) -> Status:
        """The status a number read off the wire names; UNKNOWN for any other number."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN


class MeshError(Exception):
    """Base of every error the mesh core raises."""

    status: ClassVar[Status] = Status.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LocalError(MeshError):
    """Our caller asked for something the protocol cannot do."""


class RemoteError(MeshError):
    """Input that came from outside (a peer, a frame, a file) is unacceptable."""


# --- caused by our caller ---------------------------------------------------


class InvalidArgument(LocalError):
    """An argument is out of range or of the wrong type."""

    status = Status.INVALID_ARGUMENT


class BodyTooLarge(LocalError):
    """A body to be sealed is over the configured limit."""

    status = Status.RESOURCE_EXHAUSTED


class EncodeError(LocalError):
    """A body cannot be encoded as the requested content type."""

    status = Status.INVALID_ARGUMENT


class KeyFileError(LocalError):
    """A key file is missing, unreadable, or holds the wrong kind of key."""

    status = Status.FAILED_PRECONDITION


class UnknownRecipient(LocalError):
    """No public identity is known for the node a message must be sealed to."""

    status = Status.FAILED_PRECONDITION


class KeyExhausted(LocalError):
    """A pair key has sealed as many messages as it safely may; rotate it."""

    status = Status.RESOURCE_EXHAUSTED


# --- caused by remote input ---------------------------------------------------


class Malformed(RemoteError):
    """Input does not parse, or a field is missing or out of range."""

    status = Status.INVALID_ARGUMENT


class TooLarge(RemoteError):
    """Input is over a size bound (envelope, body after decompression, batch)."""

    status = Status.RESOURCE_EXHAUSTED


class UnsupportedVersion(RemoteError):
    """The envelope or protocol version is not one this node speaks."""

    status = Status.FAILED_PRECONDITION


class DigestMismatch(RemoteError):
    """The SHA-256 digest does not match the header and payload: corrupt or tampered."""

    status = Status.DATA_LOSS


class AuthenticationFailed(RemoteError):
    """The AEAD tag or a signature does not verify: wrong key, or tampered."""

    status = Status.UNAUTHENTICATED


class UnknownSender(RemoteError):
    """No public identity is known for the node that sealed an envelope."""

    status = Status.UNAUTHENTICATED


class Expired(RemoteError):
    """The envelope's deadline has passed."""

    status = Status.DEADLINE_EXCEEDED


class Replayed(RemoteError):
    """This message id was already accepted within the dedupe window."""

    status = Status.ALREADY_EXISTS


class ClockSkew(RemoteError):
    """The envelope's creation time is too far from this node's clock."""

    status = Status.FAILED_PRECONDITION


class DecodeError(RemoteError):
    """A body does not decode as its declared content type."""

    status = Status.INVALID_ARGUMENT


class WrongRecipient(RemoteError):
    """An envelope reached a node it was not sealed to."""

    status = Status.FAILED_PRECONDITION


class NoRoute(LocalError):
    """No route to the node a message must go to (unknown or unreachable)."""

    status = Status.UNAVAILABLE


class ProtocolViolation(RemoteError):
    """A neighbour sent a frame the link's state does not allow (e.g. data before hello)."""

    status = Status.FAILED_PRECONDITION


class LinkRefused(RemoteError):
    """A neighbour's hello does not match: another mesh, engine, version or node id."""

    status = Status.FAILED_PRECONDITION


class TooManyPending(LocalError):
    """Too many acknowledged messages or requests are awaiting an answer; slow down."""

    status = Status.RESOURCE_EXHAUSTED


__all__ = [
    "AuthenticationFailed",
    "BodyTooLarge",
    "ClockSkew",
    "DecodeError",
    "DigestMismatch",
    "EncodeError",
    "Expired",
    "InvalidArgument",
    "KeyExhausted",
    "KeyFileError",
    "LinkRefused",
    "LocalError",
    "Malformed",
    "MeshError",
    "NoRoute",
    "ProtocolViolation",
    "RemoteError",
    "Replayed",
    "Status",
    "TooLarge",
    "TooManyPending",
    "UnknownRecipient",
    "UnknownSender",
    "UnsupportedVersion",
    "WrongRecipient",
]
