"""The one place mesh statuses become gRPC status codes."""

from __future__ import annotations

import grpc

from mesh.errors import Status

_CODES: dict[Status, grpc.StatusCode] = {
    status: getattr(grpc.StatusCode, status.name) for status in Status
}


def grpc_code(status: Status) -> grpc.StatusCode:
    """The grpc.StatusCode with the same number as ``status``."""
    return _CODES[status]


def mesh_status(code: grpc.StatusCode) -> Status:
    """The mesh Status with the same number as ``code``."""
    return Status[code.name]


__all__ = ["grpc_code", "mesh_status"]
