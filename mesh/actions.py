"""What ``NodeCore`` asks its driver to do.

Each input to the core answers with a list of these; the runtime (``nodes/``)
and the simulator (``mesh/sim/``) carry them out. Small, frozen, one class per
kind, as h11's and h2's events are.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.envelope import Envelope, OpenedMessage
from mesh.errors import Status
from mesh.v1 import peer_pb2


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFrame:
    """Write a frame on the link to a neighbour."""

    peer: str
    """Neighbour node id."""
    frame: peer_pb2.Frame
    """What to send; the driver may batch several frames into one write."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseLink:
    """Close the link to a neighbour (refused hello, dead peer, protocol error)."""

    peer: str
    """Neighbour node id."""
    status: Status
    """Why, as a status the driver can log and report."""
    reason: str
    """Human-readable reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Hand a message to the local application."""

    message: OpenedMessage
    """The authenticated, decrypted message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """Input from a neighbour was refused; the driver logs and counts it."""

    peer: str
    """Neighbour the input came from ("" for a local submission)."""
    status: Status
    """Status of the error that refused it."""
    reason: str
    """The error's message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Store an acknowledged message in the durable outbox before it counts as accepted."""

    message_id: bytes
    """Its id (the outbox key)."""
    recipient: str
    """Node it is sealed to."""
    envelope: Envelope
    """The sealed envelope, as it is (re)sent."""
    created_ms: int
    """When it was sealed."""
    deadline_ms: int
    """When the source gives up on it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Forget:
    """Remove a message from the durable outbox (acked, or given up)."""

    message_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Remember:
    """Persist an accepted message id in the dedupe window before acking it."""

    message_id: bytes
    created_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Acked:
    """The destination acknowledged an acknowledged message."""

    message_id: bytes
    latency_s: float
    """From first send to ack."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Replied:
    """The reply to a request arrived."""

    message_id: bytes
    """The request's id."""
    reply: OpenedMessage
    """The reply; ``reply.header.status`` says how the handler fared."""
    latency_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """An acknowledged message or request will not be acked or answered."""

    message_id: bytes
    status: Status
    """DEADLINE_EXCEEDED, UNAVAILABLE (no route / no instance), ..."""
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Wake:
    """Call ``tick`` again no later than ``at``."""

    at: float
    """Time, on the clock the driver passes as ``now``."""


Action = (
    SendFrame
    | CloseLink
    | Deliver
    | Rejected
    | Wake
    | Persist
    | Forget
    | Remember
    | Acked
    | Replied
    | Failed
)

__all__ = [
    "Acked",
    "Action",
    "CloseLink",
    "Deliver",
    "Failed",
    "Forget",
    "Persist",
    "Rejected",
    "Remember",
    "Replied",
    "SendFrame",
    "Wake",
]
