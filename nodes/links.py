"""Peer links: one long-lived bidirectional gRPC stream per neighbour.

A link owns two outbound queues. Control frames (hello, heartbeats, adverts,
vectors, identities, acks) go first and are few; data frames (envelope
batches) are bounded, so a slow neighbour pushes back on whoever feeds it
instead of growing memory. The writer coalesces what is queued into one write:
envelope batches are merged at the byte level (protobuf parses concatenated
encodings of a message as one, and repeated fields concatenate), so a busy link
makes few, large writes and an idle link sends each frame at once.

Frames travel as raw bytes (no generated deserializer), so the runtime parses
them itself and can answer garbage with INVALID_ARGUMENT instead of grpcio's
UNKNOWN.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from mesh.errors import Malformed, Status
from mesh.v1 import peer_pb2

LINK_METHOD = "/mesh.v1.PeerService/Link"

log = logging.getLogger("mesh.links")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """Batching and queue bounds of every link of a node."""

    batch_max: int = 64
    """Most envelope-batch frames merged into one write."""
    batch_delay: float = 0.0
    """Seconds to wait for more frames before a write that is not full (0: never wait)."""
    queue_max: int = 10_000
    """Data frames queued per link before senders wait (or are refused)."""
    control_max: int = 100_000
    """Control frames queued per link before the link is considered stuck and closed."""
    write_max_bytes: int = 16 * 1024 * 1024
    """Most bytes merged into one write (one frame always goes alone, whatever its size).
    Without it ``batch_max`` large envelopes could merge into a message over the
    neighbour's gRPC receive limit, which fails the whole link."""


class LinkStuck(Exception):
    """The neighbour stopped reading control frames; the link must be closed."""


class PeerLink:
    """The outbound side of one established link: queues and a batching writer."""

    def __init__(self, peer: str, settings: LinkSettings, initiated: bool) -> None:
        self.peer = peer
        self.settings = settings
        self.initiated = initiated
        self._control: collections.deque[bytes] = collections.deque()
        self._data: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.closed = asyncio.Event()
        self.close_status: Status | None = None
        self.close_reason = ""
        self.frames_written = 0
        self.writes = 0
        self.bytes_written = 0

    @property
    def queue_depth(self) -> int:
        return len(self._data)

    def send_control(self, frame: peer_pb2.Frame) -> None:
        """Queue a control frame; raises LinkStuck when the neighbour stopped reading."""
        if len(self._control) >= self.settings.control_max:
            raise LinkStuck(f"{len(self._control)} control frames queued for {self.peer!r}")
        self._control.append(frame.SerializeToString())
        self._ready.set()

    def try_send_data(self, frame: peer_pb2.Frame) -> bool:
        """Queue an envelope batch if there is room; False when the queue is full."""
        if len(self._data) >= self.settings.queue_max:
            return False
        self._data.append(frame.SerializeToString())
        self._ready.set()
        if len(self._data) >= self.settings.queue_max:
            self._space.clear()
        return True

    async def wait_for_space(self, timeout: float) -> bool:
        """Wait until the data queue has room (or the link closed); False on timeout."""
        try:
            await asyncio.wait_for(self._space.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def has_space(self) -> bool:
        return len(self._data) < self.settings.queue_max

    def close(self, status: Status, reason: str) -> None:
        """Ask the link to end (after flushing queued control frames)."""
        if self.close_status is None:
            self.close_status = status
            self.close_reason = reason
        self.closed.set()
        self._ready.set()
        self._space.set()

    async def run_writer(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Write queued frames until the link closes; control first, data coalesced."""
        settings = self.settings
        while True:
            if self.closed.is_set():
                return  # the caller flushes control frames (a LinkError) and ends the stream
            if not self._control and not self._data:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._control:
                chunk = self._control.popleft()
                count = 1
            else:
                if settings.batch_delay > 0 and len(self._data) < settings.batch_max:
                    await asyncio.sleep(settings.batch_delay)
                parts: list[bytes] = [self._data.popleft()]
                size = len(parts[0])
                while (
                    self._data
                    and len(parts) < settings.batch_max
                    and size + len(self._data[0]) <= settings.write_max_bytes
                ):
                    parts.append(self._data.popleft())
                    size += len(parts[-1])
                chunk = b"".join(parts)  # merges into one Frame with one EnvelopeBatch
                count = len(parts)
                if len(self._data) < settings.queue_max:
                    self._space.set()
            await write(chunk)
            self.writes += 1
            self.frames_written += count
            self.bytes_written += len(chunk)

    async def flush_control(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Write what control frames are left (a LinkError before closing)."""
        while self._control:
            await write(self._control.popleft())


def parse_frame(data: bytes) -> peer_pb2.Frame:
    """Parse one frame read off a link.

    Raises:
        Malformed: the bytes are not a Frame, or the frame is empty.
    """
    frame = peer_pb2.Frame()
    try:
        frame.ParseFromString(data)
    except DecodeError:
        raise Malformed(f"{len(data)} bytes on the link are not a mesh.v1.Frame") from None
    if frame.WhichOneof("body") is None:
        raise Malformed("empty frame on the link")
    return frame


def is_data(frame: peer_pb2.Frame) -> bool:
    """Envelope batches are data (bounded, back-pressured); everything else is control."""
    return frame.HasField("batch")


def link_method(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable:
    """The Link method on ``channel``, carrying raw bytes both ways."""
    return channel.stream_stream(LINK_METHOD, request_serializer=None, response_deserializer=None)


__all__ = [
    "LINK_METHOD",
    "LinkSettings",
    "LinkStuck",
    "PeerLink",
    "is_data",
    "link_method",
    "parse_frame",
]
