"""Body encodings and bounded compression."""

from __future__ import annotations

import contextlib
import os
import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from mesh.codec import (
    Compression,
    CompressionPolicy,
    Compressor,
    ContentType,
    EncodedBody,
    decode_body,
    encode_body,
)
from mesh.errors import DecodeError, EncodeError, Malformed, MeshError, TooLarge
from mesh.v1 import envelope_pb2, peer_pb2


def test_content_type_is_inferred_from_the_body() -> None:
    assert encode_body(b"x").content_type is ContentType.RAW
    assert encode_body({"a": 1}).content_type is ContentType.JSON
    hello = peer_pb2.Hello(node_id="a")
    encoded = encode_body(hello)
    assert encoded.content_type is ContentType.PROTOBUF
    assert encoded.body_type == "mesh.v1.Hello"


def test_json_round_trip() -> None:
    body = {"n": 1, "s": "ü", "l": [1.5, None, True]}
    assert decode_body(encode_body(body)) == body


def test_protobuf_round_trip_needs_the_right_class() -> None:
    hello = peer_pb2.Hello(node_id="a", mesh_id="m")
    encoded = encode_body(hello)
    assert decode_body(encoded, peer_pb2.Hello) == hello
    with pytest.raises(DecodeError, match=r"expected 'mesh\.v1\.Heartbeat'"):
        decode_body(encoded, peer_pb2.Heartbeat)
    with pytest.raises(DecodeError, match="needs a message class"):
        decode_body(encoded)


def test_unencodable_bodies_raise_encode_error() -> None:
    with pytest.raises(EncodeError):
        encode_body({"x": object()})
    with pytest.raises(EncodeError):
        encode_body(float("nan"))
    with pytest.raises(EncodeError):
        encode_body("text", ContentType.RAW)
    with pytest.raises(EncodeError):
        encode_body(b"bytes", ContentType.PROTOBUF)


def test_bad_json_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_body(EncodedBody(data=b"{nope", content_type=ContentType.JSON))
    with pytest.raises(DecodeError):
        decode_body(EncodedBody(data=b"\xff\xfe", content_type=ContentType.JSON))


def test_small_bodies_are_not_compressed() -> None:
    data = b"a" * 255
    assert Compressor().compress(data) == (data, Compression.NONE)


def test_incompressible_bodies_are_sent_as_is() -> None:
    data = os.urandom(4096)
    assert Compressor().compress(data) == (data, Compression.NONE)


@pytest.mark.parametrize("algorithm", [Compression.ZSTD, Compression.ZLIB])
def test_compressible_bodies_shrink_and_round_trip(algorithm: Compression) -> None:
    compressor = Compressor(CompressionPolicy(preferred=algorithm))
    data = b"log line 42: all is well\n" * 100
    packed, used = compressor.compress(data)
    assert used is algorithm
    assert len(packed) < len(data) // 5
    assert compressor.decompress(packed, used, len(data)) == data


def test_policy_none_disables_compression() -> None:
    data = b"z" * 10_000
    compressor = Compressor(CompressionPolicy(preferred=Compression.NONE))
    assert compressor.compress(data) == (data, Compression.NONE)


@pytest.mark.parametrize("algorithm", [Compression.ZSTD, Compression.ZLIB])
def test_decompression_bombs_are_refused(algorithm: Compression) -> None:
    bomb, used = Compressor(CompressionPolicy(preferred=algorithm)).compress(b"\0" * 10_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(TooLarge):
        Compressor().decompress(bomb, used, 1_000_000)


def test_zstd_frame_without_declared_size_is_still_bounded() -> None:
    stream = zstandard.ZstdCompressor().compressobj()
    bomb = stream.compress(b"\0" * 5_000_000) + stream.flush()
    assert zstandard.frame_content_size(bomb) == -1
    with pytest.raises(TooLarge):
        Compressor().decompress(bomb, Compression.ZSTD, 1_000_000)
    assert len(Compressor().decompress(bomb, Compression.ZSTD, 5_000_000)) == 5_000_000


def test_uncompressed_body_over_the_limit_is_too_large() -> None:
    with pytest.raises(TooLarge):
        Compressor().decompress(b"x" * 11, Compression.NONE, 10)


def test_truncated_zlib_is_malformed() -> None:
    packed = zlib.compress(b"hello world" * 100)
    with pytest.raises(Malformed):
        Compressor().decompress(packed[:-4], Compression.ZLIB, 10_000)


@given(st.binary(max_size=512), st.sampled_from(list(Compression)))
def test_random_bytes_only_raise_mesh_errors_when_decompressed(
    data: bytes, algorithm: Compression
) -> None:
    with contextlib.suppress(MeshError):
        Compressor().decompress(data, algorithm, 1_000_000)


@given(st.binary(max_size=256), st.sampled_from(list(ContentType)))
def test_random_bytes_only_raise_mesh_errors_when_decoded(
    data: bytes, content_type: ContentType
) -> None:
    body = EncodedBody(data=data, content_type=content_type, body_type="mesh.v1.Hello")
    with contextlib.suppress(MeshError):
        decode_body(body, peer_pb2.Hello)


def test_wire_enum_values_match_the_proto() -> None:
    assert Compression.ZSTD == envelope_pb2.COMPRESSION_ZSTD
    assert ContentType.PROTOBUF == envelope_pb2.CONTENT_TYPE_PROTOBUF
