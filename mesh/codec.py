"""Body encodings and compression.

The content type travels in the envelope header so the destination knows how to
decode; compression is chosen per message, because compressing a 100-byte body
or an already-compressed one costs CPU and gains nothing. Decompression is
always bounded: a peer must not be able to inflate a small envelope into
gigabytes.
"""

from __future__ import annotations

import enum
import json
import zlib
from dataclasses import dataclass
from typing import Any

import zstandard
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from mesh.errors import DecodeError, EncodeError, InvalidArgument, Malformed, TooLarge
from mesh.v1 import envelope_pb2


class ContentType(enum.IntEnum):
    """How a body is encoded (values are the wire enum)."""

    RAW = envelope_pb2.CONTENT_TYPE_RAW
    JSON = envelope_pb2.CONTENT_TYPE_JSON
    PROTOBUF = envelope_pb2.CONTENT_TYPE_PROTOBUF


class Compression(enum.IntEnum):
    """How a body is compressed (values are the wire enum)."""

    NONE = envelope_pb2.COMPRESSION_NONE
    ZLIB = envelope_pb2.COMPRESSION_ZLIB
    ZSTD = envelope_pb2.COMPRESSION_ZSTD


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedBody:
    """A body as bytes, with what is needed to decode it again."""

    data: bytes
    """The encoded bytes."""
    content_type: ContentType
    """Which encoding ``data`` is in."""
    body_type: str = ""
    """Protobuf full message name when ``content_type`` is PROTOBUF."""


def encode_body(body: Any, content_type: ContentType | None = None) -> EncodedBody:
    """Encode an application body.

    Without an explicit ``content_type``: bytes are RAW, protobuf messages are
    PROTOBUF, anything else is JSON.

    Raises:
        EncodeError: the body cannot be encoded as requested.
    """
    if content_type is None:
        if isinstance(body, bytes | bytearray | memoryview):
            content_type = ContentType.RAW
        elif isinstance(body, Message):
            content_type = ContentType.PROTOBUF
        else:
            content_type = ContentType.JSON
    if content_type is ContentType.RAW:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise EncodeError(f"a RAW body must be bytes, not {type(body).__name__}")
        return EncodedBody(data=bytes(body), content_type=content_type)
    if content_type is ContentType.PROTOBUF:
        if not isinstance(body, Message):
            raise EncodeError(f"a PROTOBUF body must be a message, not {type(body).__name__}")
        return EncodedBody(
            data=body.SerializeToString(),
            content_type=content_type,
            body_type=body.DESCRIPTOR.full_name,
        )
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"body is not JSON-serializable: {exc}") from exc
    return EncodedBody(data=text.encode(), content_type=ContentType.JSON)


def decode_body(body: EncodedBody, message_class: type[Message] | None = None) -> Any:
    """Decode a body; PROTOBUF needs the expected ``message_class``.

    Raises:
        DecodeError: the bytes are not valid for the content type, or the
            protobuf type named in the envelope is not ``message_class``.
    """
    if body.content_type is ContentType.RAW:
        return body.data
    if body.content_type is ContentType.JSON:
        try:
            return json.loads(body.data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"JSON body does not parse: {exc}") from exc
        except RecursionError:
            # json's decoder recurses per nesting level: a body of 1000 "[" overflows it.
            raise DecodeError("JSON body is nested too deeply to decode") from None
    if message_class is None:
        raise DecodeError(f"a PROTOBUF body of type {body.body_type!r} needs a message class")
    expected = message_class.DESCRIPTOR.full_name
    if body.body_type != expected:
        raise DecodeError(f"PROTOBUF body is a {body.body_type!r}, expected {expected!r}")
    message = message_class()
    try:
        message.ParseFromString(body.data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"PROTOBUF body of type {expected!r} does not parse: {exc}") from exc
    return message


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionPolicy:
    """When and how the source compresses."""

    preferred: Compression = Compression.ZSTD
    """Algorithm to try; NONE turns compression off."""
    min_size: int = 256
    """Bodies smaller than this are never compressed: the frame overhead eats the gain."""
    zstd_level: int = 1
    zlib_level: int = 1


class Compressor:
    """Compresses and decompresses bodies, reusing zstd contexts across calls.

    A context per instance (not per call) is what makes zstd-1 cost ~15 us at
    1 KiB instead of several times that; an instance is not thread-safe.
    """

    def __init__(self, policy: CompressionPolicy | None = None) -> None:
        self.policy = policy or CompressionPolicy()
        if self.policy.min_size < 0:
            raise InvalidArgument("min_size must be >= 0")
        self._zstd_c = zstandard.ZstdCompressor(level=self.policy.zstd_level)
        self._zstd_d = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> tuple[bytes, Compression]:
        """Compress ``data`` if the policy says so and it actually shrinks."""
        preferred = self.policy.preferred
        if preferred is Compression.NONE or len(data) < self.policy.min_size:
            return data, Compression.NONE
        if preferred is Compression.ZSTD:
            packed = self._zstd_c.compress(data)
        else:
            packed = zlib.compress(data, self.policy.zlib_level)
        if len(packed) >= len(data):
            return data, Compression.NONE
        return packed, preferred

    def decompress(self, data: bytes, compression: Compression, max_size: int) -> bytes:
        """Undo :meth:`compress`, refusing output larger than ``max_size``.

        Raises:
            TooLarge: the body would exceed ``max_size`` once decompressed.
            Malformed: the compressed data is corrupt.
        """
        if compression is Compression.NONE:
            if len(data) > max_size:
                raise TooLarge(f"body of {len(data)} bytes is over the {max_size}-byte limit")
            return data
        if compression is Compression.ZSTD:
            return self._unzstd(data, max_size)
        return _unzlib(data, max_size)

    def _unzstd(self, data: bytes, max_size: int) -> bytes:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise Malformed(f"zstd body is corrupt: {exc}") from exc
        if declared > max_size:
            raise TooLarge(f"zstd body declares {declared} bytes, over the {max_size}-byte limit")
        try:
            if declared >= 0:
                # zstd allocates the declared size and fails if the frame lies about it.
                out: bytes = self._zstd_d.decompress(data)
            else:
                with self._zstd_d.stream_reader(data) as reader:
                    out = reader.read(max_size + 1)
        except zstandard.ZstdError as exc:
            raise Malformed(f"zstd body is corrupt: {exc}") from exc
        if len(out) > max_size:
            raise TooLarge(f"zstd body inflates past the {max_size}-byte limit")
        return out


def _unzlib(data: bytes, max_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise Malformed(f"zlib body is corrupt: {exc}") from exc
    if len(out) > max_size:
        raise TooLarge(f"zlib body inflates past the {max_size}-byte limit")
    if not inflater.eof or inflater.unused_data:
        raise Malformed("zlib body is truncated or has trailing bytes")
    return out


__all__ = [
    "Compression",
    "CompressionPolicy",
    "Compressor",
    "ContentType",
    "EncodedBody",
    "decode_body",
    "encode_body",
]
