"""Routing-specific errors, shared by the link-state and distance-vector engines.

Each class narrows a general class of :mod:`mesh.errors` so callers that only
know the general hierarchy (``nodes/`` mapping statuses to gRPC codes, a link
deciding whether to drop a peer) keep working, while tests and metrics can tell
routing refusals apart. Every refusal is raised *before* the engine changes any
state: an engine that raises has not changed its table, database or timers.
"""

from __future__ import annotations

from mesh.errors import AuthenticationFailed, Malformed, RemoteError, Status, TooLarge


class StaleUpdate(RemoteError):
    """An update is strictly older (by serial arithmetic) than the one already held.

    ABORTED rather than INVALID_ARGUMENT: the input is well formed, it merely
    lost a race with a newer update, which is a normal event in a mesh.
    """

    status = Status.ABORTED


class InvalidCost(Malformed):
    """A link cost or metric is out of range (0, or above the configured maximum)."""


class OversizedUpdate(TooLarge):
    """An update carries more links, routes, services or subjects than allowed."""


class UnknownOrigin(AuthenticationFailed):
    """The origin of an update is unknown, or its signature does not verify.

    The verification hook cannot tell the two apart (it answers False for an
    origin it has no key for), and neither should a peer: both mean the update
    is not provably from who it claims to be.
    """


class UnexpectedFrame(Malformed):
    """A frame of a kind this engine does not take (an advert for a vector engine)."""


class NotANeighbour(RemoteError):
    """A routing frame arrived from a peer with no link up to this node."""

    status = Status.FAILED_PRECONDITION


__all__ = [
    "InvalidCost",
    "NotANeighbour",
    "OversizedUpdate",
    "StaleUpdate",
    "UnexpectedFrame",
    "UnknownOrigin",
]
