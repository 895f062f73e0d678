from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DestinationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESTINATION_KIND_UNSPECIFIED: _ClassVar[DestinationKind]
    DESTINATION_KIND_NODE: _ClassVar[DestinationKind]
    DESTINATION_KIND_SERVICE: _ClassVar[DestinationKind]
    DESTINATION_KIND_SUBJECT: _ClassVar[DestinationKind]

class DeliveryMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_MODE_UNSPECIFIED: _ClassVar[DeliveryMode]
    DELIVERY_MODE_ASYNC: _ClassVar[DeliveryMode]
    DELIVERY_MODE_ACKNOWLEDGED: _ClassVar[DeliveryMode]

class EnvelopeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENVELOPE_KIND_UNSPECIFIED: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_DATA: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_ACK: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_REPLY: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_REQUEST: _ClassVar[EnvelopeKind]

class ContentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTENT_TYPE_UNSPECIFIED: _ClassVar[ContentType]
    CONTENT_TYPE_RAW: _ClassVar[ContentType]
    CONTENT_TYPE_JSON: _ClassVar[ContentType]
    CONTENT_TYPE_PROTOBUF: _ClassVar[ContentType]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_ZLIB: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]

class Cipher(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIPHER_UNSPECIFIED: _ClassVar[Cipher]
    CIPHER_AES_256_GCM: _ClassVar[Cipher]
    CIPHER_CHACHA20_POLY1305: _ClassVar[Cipher]
DESTINATION_KIND_UNSPECIFIED: DestinationKind
DESTINATION_KIND_NODE: DestinationKind
DESTINATION_KIND_SERVICE: DestinationKind
DESTINATION_KIND_SUBJECT: DestinationKind
DELIVERY_MODE_UNSPECIFIED: DeliveryMode
DELIVERY_MODE_ASYNC: DeliveryMode
DELIVERY_MODE_ACKNOWLEDGED: DeliveryMode
ENVELOPE_KIND_UNSPECIFIED: EnvelopeKind
ENVELOPE_KIND_DATA: EnvelopeKind
ENVELOPE_KIND_ACK: EnvelopeKind
ENVELOPE_KIND_REPLY: EnvelopeKind
ENVELOPE_KIND_REQUEST: EnvelopeKind
CONTENT_TYPE_UNSPECIFIED: ContentType
CONTENT_TYPE_RAW: ContentType
CONTENT_TYPE_JSON: ContentType
CONTENT_TYPE_PROTOBUF: ContentType
COMPRESSION_NONE: Compression
COMPRESSION_ZLIB: Compression
COMPRESSION_ZSTD: Compression
CIPHER_UNSPECIFIED: Cipher
CIPHER_AES_256_GCM: Cipher
CIPHER_CHACHA20_POLY1305: Cipher

class EnvelopeHeader(_message.Message):
    __slots__ = ("message_id", "source", "destination_kind", "destination", "recipient", "mode", "kind", "created_ms", "deadline_ms", "content_type", "body_type", "compression", "cipher", "key_id", "nonce", "reply_to", "correlation_id", "status", "queue_groups", "acked_attempt")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_KIND_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    ACKED_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    source: str
    destination_kind: DestinationKind
    destination: str
    recipient: str
    mode: DeliveryMode
    kind: EnvelopeKind
    created_ms: int
    deadline_ms: int
    content_type: ContentType
    body_type: str
    compression: Compression
    cipher: Cipher
    key_id: bytes
    nonce: bytes
    reply_to: str
    correlation_id: bytes
    status: int
    queue_groups: _containers.RepeatedScalarFieldContainer[str]
    acked_attempt: int
    def __init__(self, message_id: _Optional[bytes] = ..., source: _Optional[str] = ..., destination_kind: _Optional[_Union[DestinationKind, str]] = ..., destination: _Optional[str] = ..., recipient: _Optional[str] = ..., mode: _Optional[_Union[DeliveryMode, str]] = ..., kind: _Optional[_Union[EnvelopeKind, str]] = ..., created_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., content_type: _Optional[_Union[ContentType, str]] = ..., body_type: _Optional[str] = ..., compression: _Optional[_Union[Compression, str]] = ..., cipher: _Optional[_Union[Cipher, str]] = ..., key_id: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., reply_to: _Optional[str] = ..., correlation_id: _Optional[bytes] = ..., status: _Optional[int] = ..., queue_groups: _Optional[_Iterable[str]] = ..., acked_attempt: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("version", "header", "payload", "digest", "ttl", "signature", "trace", "attempt")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    version: int
    header: bytes
    payload: bytes
    digest: bytes
    ttl: int
    signature: bytes
    trace: _containers.RepeatedScalarFieldContainer[str]
    attempt: int
    def __init__(self, version: _Optional[int] = ..., header: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., ttl: _Optional[int] = ..., signature: _Optional[bytes] = ..., trace: _Optional[_Iterable[str]] = ..., attempt: _Optional[int] = ...) -> None: ...
