from mesh.v1 import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoutingEngine(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTING_ENGINE_UNSPECIFIED: _ClassVar[RoutingEngine]
    ROUTING_ENGINE_LINK_STATE: _ClassVar[RoutingEngine]
    ROUTING_ENGINE_DISTANCE_VECTOR: _ClassVar[RoutingEngine]
ROUTING_ENGINE_UNSPECIFIED: RoutingEngine
ROUTING_ENGINE_LINK_STATE: RoutingEngine
ROUTING_ENGINE_DISTANCE_VECTOR: RoutingEngine

class Hello(_message.Message):
    __slots__ = ("node_id", "mesh_id", "engine", "protocol_version", "cost", "sent_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESH_ID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    mesh_id: str
    engine: RoutingEngine
    protocol_version: int
    cost: int
    sent_ms: int
    def __init__(self, node_id: _Optional[str] = ..., mesh_id: _Optional[str] = ..., engine: _Optional[_Union[RoutingEngine, str]] = ..., protocol_version: _Optional[int] = ..., cost: _Optional[int] = ..., sent_ms: _Optional[int] = ...) -> None: ...

class LinkError(_message.Message):
    __slots__ = ("status", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: int
    reason: str
    def __init__(self, status: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class EnvelopeBatch(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[_envelope_pb2.Envelope, _Mapping]]] = ...) -> None: ...

class AdvertLink(_message.Message):
    __slots__ = ("neighbor", "cost")
    NEIGHBOR_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    neighbor: str
    cost: int
    def __init__(self, neighbor: _Optional[str] = ..., cost: _Optional[int] = ...) -> None: ...

class ServiceInstance(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: int
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class LinkStateAdvert(_message.Message):
    __slots__ = ("origin", "sequence", "age_s", "links", "services", "subjects", "signature")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    origin: str
    sequence: int
    age_s: int
    links: _containers.RepeatedCompositeFieldContainer[AdvertLink]
    services: _containers.RepeatedCompositeFieldContainer[ServiceInstance]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    signature: bytes
    def __init__(self, origin: _Optional[str] = ..., sequence: _Optional[int] = ..., age_s: _Optional[int] = ..., links: _Optional[_Iterable[_Union[AdvertLink, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[ServiceInstance, _Mapping]]] = ..., subjects: _Optional[_Iterable[str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RouteEntry(_message.Message):
    __slots__ = ("destination", "metric", "seqno", "services", "subjects")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SEQNO_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    destination: str
    metric: int
    seqno: int
    services: _containers.RepeatedCompositeFieldContainer[ServiceInstance]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, destination: _Optional[str] = ..., metric: _Optional[int] = ..., seqno: _Optional[int] = ..., services: _Optional[_Iterable[_Union[ServiceInstance, _Mapping]]] = ..., subjects: _Optional[_Iterable[str]] = ...) -> None: ...

class DistanceVector(_message.Message):
    __slots__ = ("origin", "sequence", "full", "routes")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    origin: str
    sequence: int
    full: bool
    routes: _containers.RepeatedCompositeFieldContainer[RouteEntry]
    def __init__(self, origin: _Optional[str] = ..., sequence: _Optional[int] = ..., full: _Optional[bool] = ..., routes: _Optional[_Iterable[_Union[RouteEntry, _Mapping]]] = ...) -> None: ...

class IdentityRecord(_message.Message):
    __slots__ = ("node_id", "signing_key", "agreement_key", "certificate", "sequence", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    signing_key: bytes
    agreement_key: bytes
    certificate: bytes
    sequence: int
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., signing_key: _Optional[bytes] = ..., agreement_key: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., sequence: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LinkAck(_message.Message):
    __slots__ = ("message_ids", "status", "detail")
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[bytes]
    status: int
    detail: str
    def __init__(self, message_ids: _Optional[_Iterable[bytes]] = ..., status: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sequence", "sent_ms", "echo_sequence", "echo_delay_us")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    ECHO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ECHO_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    sent_ms: int
    echo_sequence: int
    echo_delay_us: int
    def __init__(self, sequence: _Optional[int] = ..., sent_ms: _Optional[int] = ..., echo_sequence: _Optional[int] = ..., echo_delay_us: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("hello", "batch", "advert", "vector", "ack", "heartbeat", "identity", "error")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ADVERT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: EnvelopeBatch
    advert: LinkStateAdvert
    vector: DistanceVector
    ack: LinkAck
    heartbeat: Heartbeat
    identity: IdentityRecord
    error: LinkError
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[EnvelopeBatch, _Mapping]] = ..., advert: _Optional[_Union[LinkStateAdvert, _Mapping]] = ..., vector: _Optional[_Union[DistanceVector, _Mapping]] = ..., ack: _Optional[_Union[LinkAck, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., identity: _Optional[_Union[IdentityRecord, _Mapping]] = ..., error: _Optional[_Union[LinkError, _Mapping]] = ...) -> None: ...
