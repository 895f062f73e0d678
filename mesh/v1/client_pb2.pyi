from mesh.v1 import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Address(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: _envelope_pb2.DestinationKind
    name: str
    def __init__(self, kind: _Optional[_Union[_envelope_pb2.DestinationKind, str]] = ..., name: _Optional[str] = ...) -> None: ...

class Body(_message.Message):
    __slots__ = ("content_type", "body_type", "data")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    content_type: _envelope_pb2.ContentType
    body_type: str
    data: bytes
    def __init__(self, content_type: _Optional[_Union[_envelope_pb2.ContentType, str]] = ..., body_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("target", "body", "mode", "timeout_ms", "message_id", "wait_for_ack", "policy", "trace")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_ACK_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    target: Address
    body: Body
    mode: _envelope_pb2.DeliveryMode
    timeout_ms: int
    message_id: bytes
    wait_for_ack: bool
    policy: str
    trace: bool
    def __init__(self, target: _Optional[_Union[Address, _Mapping]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., mode: _Optional[_Union[_envelope_pb2.DeliveryMode, str]] = ..., timeout_ms: _Optional[int] = ..., message_id: _Optional[bytes] = ..., wait_for_ack: _Optional[bool] = ..., policy: _Optional[str] = ..., trace: _Optional[bool] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("message_id", "acknowledged", "copies")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    acknowledged: bool
    copies: int
    def __init__(self, message_id: _Optional[bytes] = ..., acknowledged: _Optional[bool] = ..., copies: _Optional[int] = ...) -> None: ...

class RequestMessage(_message.Message):
    __slots__ = ("target", "body", "timeout_ms", "policy")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    target: Address
    body: Body
    timeout_ms: int
    policy: str
    def __init__(self, target: _Optional[_Union[Address, _Mapping]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., policy: _Optional[str] = ...) -> None: ...

class ReplyMessage(_message.Message):
    __slots__ = ("message_id", "body", "responder", "instance")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    body: Body
    responder: str
    instance: str
    def __init__(self, message_id: _Optional[bytes] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., responder: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class ServiceRegistration(_message.Message):
    __slots__ = ("service", "weight", "instance")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    service: str
    weight: int
    instance: str
    def __init__(self, service: _Optional[str] = ..., weight: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class HandlerReply(_message.Message):
    __slots__ = ("request_id", "body", "status", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: bytes
    body: Body
    status: int
    error: str
    def __init__(self, request_id: _Optional[bytes] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., status: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ServeUpstream(_message.Message):
    __slots__ = ("register", "reply")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    register: ServiceRegistration
    reply: HandlerReply
    def __init__(self, register: _Optional[_Union[ServiceRegistration, _Mapping]] = ..., reply: _Optional[_Union[HandlerReply, _Mapping]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("message_id", "source", "destination", "body", "created_ms", "deadline_ms", "expects_reply")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    EXPECTS_REPLY_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    source: str
    destination: Address
    body: Body
    created_ms: int
    deadline_ms: int
    expects_reply: bool
    def __init__(self, message_id: _Optional[bytes] = ..., source: _Optional[str] = ..., destination: _Optional[_Union[Address, _Mapping]] = ..., body: _Optional[_Union[Body, _Mapping]] = ..., created_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., expects_reply: _Optional[bool] = ...) -> None: ...

class ServeDownstream(_message.Message):
    __slots__ = ("registered", "request")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    registered: ServiceRegistration
    request: Delivery
    def __init__(self, registered: _Optional[_Union[ServiceRegistration, _Mapping]] = ..., request: _Optional[_Union[Delivery, _Mapping]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("subject", "queue")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    queue: str
    def __init__(self, subject: _Optional[str] = ..., queue: _Optional[str] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SendRequest, _Mapping]]] = ...) -> None: ...

class SendResult(_message.Message):
    __slots__ = ("message_id", "status", "error", "copies")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    status: int
    error: str
    copies: int
    def __init__(self, message_id: _Optional[bytes] = ..., status: _Optional[int] = ..., error: _Optional[str] = ..., copies: _Optional[int] = ...) -> None: ...

class SendBatchResult(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SendResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SendResult, _Mapping]]] = ...) -> None: ...

class DeliveryBatch(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...
