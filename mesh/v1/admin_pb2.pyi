from mesh.v1 import peer_pb2 as _peer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Route(_message.Message):
    __slots__ = ("destination", "cost", "next_hops")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOPS_FIELD_NUMBER: _ClassVar[int]
    destination: str
    cost: int
    next_hops: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, destination: _Optional[str] = ..., cost: _Optional[int] = ..., next_hops: _Optional[_Iterable[str]] = ...) -> None: ...

class RoutesResponse(_message.Message):
    __slots__ = ("node_id", "engine", "routes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    engine: _peer_pb2.RoutingEngine
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, node_id: _Optional[str] = ..., engine: _Optional[_Union[_peer_pb2.RoutingEngine, str]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class PeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "address", "state", "cost", "rtt_ms", "frames_sent", "frames_received")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    state: str
    cost: int
    rtt_ms: float
    frames_sent: int
    frames_received: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., cost: _Optional[int] = ..., rtt_ms: _Optional[float] = ..., frames_sent: _Optional[int] = ..., frames_received: _Optional[int] = ...) -> None: ...

class PeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class TopologyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TopologyResponse(_message.Message):
    __slots__ = ("nodes", "links")
    NODES_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    links: _containers.RepeatedCompositeFieldContainer[TopologyLink]
    def __init__(self, nodes: _Optional[_Iterable[str]] = ..., links: _Optional[_Iterable[_Union[TopologyLink, _Mapping]]] = ...) -> None: ...

class TopologyLink(_message.Message):
    __slots__ = ("a", "b", "cost")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    cost: int
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., cost: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("counters",)
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.ScalarMap[str, int]
    def __init__(self, counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class TraceRequest(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    def __init__(self, message_id: _Optional[bytes] = ...) -> None: ...

class TraceResponse(_message.Message):
    __slots__ = ("hops",)
    HOPS_FIELD_NUMBER: _ClassVar[int]
    hops: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hops: _Optional[_Iterable[str]] = ...) -> None: ...

class SetLinkRequest(_message.Message):
    __slots__ = ("peer", "enabled")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    peer: str
    enabled: bool
    def __init__(self, peer: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class SetLinkResponse(_message.Message):
    __slots__ = ("was_up",)
    WAS_UP_FIELD_NUMBER: _ClassVar[int]
    was_up: bool
    def __init__(self, was_up: _Optional[bool] = ...) -> None: ...
