"""The link-state routing engine (sans-IO): flooded signed adverts, then Dijkstra.

Every node originates an advert (origin, sequence, links with costs, the
services and subjects it hosts), floods it, and keeps the newest advert of
every origin in its link-state database (LSDB). The routing table is SPF from
this node over the graph of links reported by *both* ends (see
:mod:`mesh.routing.spf`), recomputed lazily when the LSDB changed.

Protocol choices, OSPF-like where OSPF has an answer:

- flooding: a newer advert is stored and forwarded to every neighbour but the
  one it came from; an equal one (a duplicate, normal in flooding) is ignored
  silently; a strictly older one is refused with :class:`StaleUpdate`. So each
  advert crosses each direction of each link at most once.
- sequence numbers are uint32 compared with RFC 1982 serial arithmetic, so
  they wrap safely. A node that sees its own advert with a newer sequence (it
  restarted and the mesh remembers its previous life) jumps past it and
  re-originates.
- originations are coalesced: link and offer changes arm a timer at
  ``max(now, last + min_origination_interval)``, so n links coming up at one
  instant produce one advert, not n.
- database sync: when a link comes up, the new neighbour is sent the whole
  LSDB, so a healed partition converges without waiting for refreshes.
- the origin refreshes its advert every ``refresh_interval``; an advert whose
  age reaches ``max_age`` is dropped (a dead origin), as is one whose origin
  stayed unreachable for ``unreachable_hold`` (the other side of a partition
  or a crashed node: it cannot be used and need not be kept).
- everything a peer controls is bounded (links, services, subjects, name
  lengths, costs) and checked, with the signature, *before* any state changes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mesh.errors import InvalidArgument, Malformed
from mesh.routing.base import Outgoing
from mesh.routing.errors import (
    InvalidCost,
    NotANeighbour,
    OversizedUpdate,
    StaleUpdate,
    UnexpectedFrame,
    UnknownOrigin,
)
from mesh.routing.spf import Topology
from mesh.routing.table import RoutingTable, ServiceInstance
from mesh.v1 import peer_pb2

__all__ = [
    "LinkStateConfig",
    "LinkStateEngine",
    "advert_signing_bytes",
    "serial_add",
    "serial_compare",
]

_SERIAL_BITS = 32
_SERIAL_MOD = 1 << _SERIAL_BITS
_SERIAL_HALF = 1 << (_SERIAL_BITS - 1)
_SIGNING_MAGIC = b"meshwork/lsa/v1\x00"
_MAX_UTF8 = 0xFFFF


def serial_compare(a: int, b: int) -> int:
    """RFC 1982 comparison of uint32 serials: -1 if a < b, 0 if equal, 1 if a > b.

    The RFC leaves a distance of exactly 2**31 undefined; it is resolved here
    by plain integer order so that every node decides the same way.
    """
    if a == b:
        return 0
    diff = (a - b) % _SERIAL_MOD
    if diff == _SERIAL_HALF:
        return 1 if a > b else -1
    return 1 if diff < _SERIAL_HALF else -1


def serial_add(a: int, n: int) -> int:
    """``a + n`` in uint32 serial space (``0 <= n < 2**31``)."""
    return (a + n) % _SERIAL_MOD


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > _MAX_UTF8:
        raise Malformed(f"name of {len(raw)} bytes is too long to sign")
    return raw


def advert_signing_bytes(advert: peer_pb2.LinkStateAdvert) -> bytes:
    """The canonical bytes an origin signs: every field but ``age_s`` and ``signature``.

    Byte-for-byte defined (not protobuf serialisation, which is not canonical),
    all integers big-endian::

        b"meshwork/lsa/v1\\0"
        str(origin)  u32 sequence
        u32 n_links     then n x (str(neighbor) u32 cost), sorted by neighbor
        u32 n_services  then n x (str(name) u32 weight), sorted by name
        u32 n_subjects  then n x str(subject), sorted

    where ``str(x)`` is a u16 byte length followed by the UTF-8 bytes. Sorting
    by code point equals sorting by UTF-8 bytes, so the order is well defined.
    Raises :class:`Malformed` if a name is longer than 65535 bytes.
    """
    parts = [_SIGNING_MAGIC]
    origin = _utf8(advert.origin)
    parts.append(struct.pack("!H", len(origin)) + origin)
    parts.append(struct.pack("!I", advert.sequence))
    links = sorted((_utf8(link.neighbor), link.cost) for link in advert.links)
    parts.append(struct.pack("!I", len(links)))
    for name, cost in links:
        parts.append(struct.pack("!H", len(name)) + name + struct.pack("!I", cost))
    services = sorted((_utf8(s.name), s.weight) for s in advert.services)
    parts.append(struct.pack("!I", len(services)))
    for name, weight in services:
        parts.append(struct.pack("!H", len(name)) + name + struct.pack("!I", weight))
    subjects = sorted(_utf8(s) for s in advert.subjects)
    parts.append(struct.pack("!I", len(subjects)))
    for name in subjects:
        parts.append(struct.pack("!H", len(name)) + name)
    return b"".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStateConfig:
    """Timers and bounds of the link-state engine (seconds, costs, counts)."""

    refresh_interval: float = 1800.0
    """The origin re-floods its advert this often, so live adverts never age out."""
    max_age: float = 3600.0
    """An advert this old (not refreshed) is dropped: its origin is presumed dead."""
    min_origination_interval: float = 0.0
    """Least time between two originations; changes in between are coalesced."""
    unreachable_hold: float = 60.0
    """An origin unreachable for about this long (at most twice it) is dropped."""
    max_cost: int = 2**24
    """Largest acceptable link cost; 0 is never acceptable."""
    max_links: int = 1024
    """Most links one advert may carry."""
    max_services: int = 256
    """Most services one advert may carry."""
    max_subjects: int = 256
    """Most subjects one advert may carry."""
    max_name_bytes: int = 255
    """Longest node id, service name or subject, in UTF-8 bytes."""

    def __post_init__(self) -> None:
        if not 0 < self.refresh_interval < self.max_age:
            raise InvalidArgument("need 0 < refresh_interval < max_age")
        if self.min_origination_interval < 0 or self.unreachable_hold <= 0:
            raise InvalidArgument("intervals must be positive")
        if not 1 <= self.max_cost < 2**32:
            raise InvalidArgument("max_cost must fit a uint32")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    """One advert held in the LSDB, with what is derived from it."""

    frame: peer_pb2.Frame
    """The frame as received (or originated); forwarded as is when its age still fits."""
    sequence: int
    """Its sequence number."""
    received_at: float
    """Local time it was accepted."""
    age: int
    """``age_s`` when accepted."""
    links: Mapping[str, int]
    """Neighbour -> cost as claimed by the origin."""
    services: tuple[tuple[str, int], ...]
    """(name, weight) offered by the origin."""
    subjects: frozenset[str]
    """Subjects the origin subscribes to."""

    def age_at(self, now: float) -> int:
        return self.age + int(now - self.received_at)


class LinkStateEngine:
    """A link-state :class:`~mesh.routing.base.RoutingEngine` for one node.

    ``sign(data)`` returns this node's Ed25519 signature over
    :func:`advert_signing_bytes`; ``verify(origin, data, signature)`` says
    whether a signature is genuine (False for an unknown origin). With both
    None, adverts are neither signed nor checked (tests, trusted simulations).
    """

    kind = peer_pb2.ROUTING_ENGINE_LINK_STATE

    def __init__(
        self,
        node_id: str,
        config: LinkStateConfig | None = None,
        *,
        sign: Callable[[bytes], bytes] | None = None,
        verify: Callable[[str, bytes, bytes], bool] | None = None,
    ) -> None:
        if not node_id:
            raise InvalidArgument("node_id must not be empty")
        self.node_id = node_id
        self.config = config or LinkStateConfig()
        self._sign = sign
        self._verify = verify
        self._neighbours: dict[str, int] = {}
        self._peers: tuple[str, ...] = ()  # sorted neighbours, for deterministic output
        self._services: dict[str, int] = {}
        self._subjects: frozenset[str] = frozenset()
        self._db: dict[str, _Entry] = {}
        self._topology = Topology()
        self._topology.set_links(node_id, {})
        self._sequence = 0
        self._originated_at: float | None = None
        self._originate_at: float | None = None
        self._next_expiry: float | None = None
        self._sweep_at: float | None = None
        self._unreachable_since: dict[str, float] = {}
        self._table = RoutingTable()
        self._table_version = -1
        self._offers_version = 0
        self._offers_cache: (
            tuple[int, int, dict[str, tuple[ServiceInstance, ...]], dict[str, frozenset[str]]]
            | None
        ) = None

    # --- the RoutingEngine interface ---------------------------------------------

    def link_up(self, peer: str, cost: int, now: float) -> list[Outgoing]:
        """A link came up (or changed cost): sync the LSDB to a new neighbour, re-originate.

        Raises :class:`~mesh.errors.InvalidArgument` for a cost outside
        ``1..max_cost`` or a link to this node itself.
        """
        if peer == self.node_id or not peer:
            raise InvalidArgument(f"cannot link {self.node_id!r} to {peer!r}")
        if not 1 <= cost <= self.config.max_cost:
            raise InvalidArgument(f"link cost {cost} outside 1..{self.config.max_cost}")
        old = self._neighbours.get(peer)
        if old == cost:
            return []
        self._neighbours[peer] = cost
        self._peers = tuple(sorted(self._neighbours))
        self._topology.set_links(self.node_id, self._neighbours)
        self._schedule_origination(now)
        self._schedule_sweep(now)
        if old is not None:
            return []
        return [Outgoing(peer=peer, frame=self._frame_at(e, now)) for e in self._sorted_entries()]

    def link_down(self, peer: str, now: float) -> list[Outgoing]:
        """The link to ``peer`` went down: stop using it at once, re-originate."""
        if self._neighbours.pop(peer, None) is None:
            return []
        self._peers = tuple(sorted(self._neighbours))
        self._topology.set_links(self.node_id, self._neighbours)
        self._schedule_origination(now)
        self._schedule_sweep(now)
        return []

    def set_local_offers(
        self, services: Mapping[str, int], subjects: Iterable[str], now: float
    ) -> list[Outgoing]:
        """Replace the services (name -> weight >= 1) and subjects this node advertises.

        Raises :class:`~mesh.errors.InvalidArgument` for a weight below 1 or
        outside uint32, an empty or over-long name, or more than the configured
        number of services or subjects.
        """
        cfg = self.config
        new_services = dict(services)
        new_subjects = frozenset(subjects)
        if len(new_services) > cfg.max_services or len(new_subjects) > cfg.max_subjects:
            raise InvalidArgument("too many services or subjects for one advert")
        for name, weight in new_services.items():
            if not 1 <= weight < 2**32:
                raise InvalidArgument(f"service {name!r}: weight {weight} must be >= 1")
        for name in (*new_services, *new_subjects):
            if not name or len(name.encode("utf-8")) > cfg.max_name_bytes:
                raise InvalidArgument(f"bad service or subject name {name!r}")
        if new_services == self._services and new_subjects == self._subjects:
            return []
        self._services = new_services
        self._subjects = new_subjects
        self._offers_version += 1
        self._schedule_origination(now)
        return []

    def receive(self, peer: str, frame: peer_pb2.Frame, now: float) -> list[Outgoing]:
        """Take an advert from neighbour ``peer``; flood it on if it is new.

        Raises (changing nothing): :class:`NotANeighbour` when no link to
        ``peer`` is up; :class:`UnexpectedFrame` for a frame that is not an
        advert; :class:`~mesh.errors.Malformed` for a missing origin, a bad
        name, a self-link or repeated neighbour or service, a weight of 0;
        :class:`OversizedUpdate` for too many links, services or subjects;
        :class:`InvalidCost` for a link cost of 0 or above ``max_cost``;
        :class:`StaleUpdate` for a sequence strictly older than the one held;
        :class:`UnknownOrigin` when the signature does not verify. An advert
        with the sequence already held is a flooding duplicate and is ignored
        (before its content is checked: it cannot change anything).
        """
        if peer not in self._neighbours:
            raise NotANeighbour(f"advert from {peer!r}, which is not a neighbour")
        if frame.WhichOneof("body") != "advert":
            raise UnexpectedFrame(
                f"link-state engine got a {frame.WhichOneof('body') or 'empty'} frame"
            )
        advert = frame.advert
        origin = advert.origin
        held = self._db.get(origin)
        seq = advert.sequence
        if origin == self.node_id:
            self._check(advert)
            return self._receive_own(advert, held, now)
        # Freshness first: most deliveries in a flood are duplicates, and
        # neither a duplicate nor a stale advert can change state, so they are
        # settled before the (costlier) content and signature checks.
        if held is not None:
            order = serial_compare(seq, held.sequence)
            if order < 0:
                raise StaleUpdate(
                    f"advert of {origin!r} seq {seq} is older than the held {held.sequence}"
                )
            if order == 0:
                return []
        links, services, subjects = self._check(advert)
        self._check_signature(advert)
        if advert.age_s >= self.config.max_age:
            return []  # already dead: neither stored nor flooded
        self._store(
            origin, frame, seq=seq, now=now, links=links, services=services, subjects=subjects
        )
        return [Outgoing(peer=p, frame=frame) for p in self._peers if p != peer]

    def tick(self, now: float) -> list[Outgoing]:
        """Originate (when due or for the refresh), age adverts out, drop unreachable ones."""
        out: list[Outgoing] = []
        due = self._originate_at
        if (due is not None and now >= due) or (
            self._originated_at is not None
            and now >= self._originated_at + self.config.refresh_interval
        ):
            out = self._originate(now)
        if self._next_expiry is not None and now >= self._next_expiry:
            self._expire(now)
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep_unreachable(now)
        return out

    def next_wake(self) -> float | None:
        """The earliest of: pending origination, refresh, age expiry, unreachable sweep."""
        times = [
            t
            for t in (
                self._originate_at,
                None
                if self._originated_at is None
                else self._originated_at + self.config.refresh_interval,
                self._next_expiry,
                self._sweep_at,
            )
            if t is not None
        ]
        return min(times) if times else None

    @property
    def table(self) -> RoutingTable:
        """The current routing table (SPF re-run only if the graph changed)."""
        version = self._topology.version
        if version != self._table_version:
            self._table = self._topology.routing_table(self.node_id)
            self._table_version = version
        return self._table

    def services(self) -> Mapping[str, tuple[ServiceInstance, ...]]:
        """Service name -> reachable nodes offering it (this node included), by node id."""
        return self._offers()[0]

    def subjects(self) -> Mapping[str, frozenset[str]]:
        """Subject -> reachable nodes subscribed to it (this node included)."""
        return self._offers()[1]

    # --- introspection (tests, admin) ------------------------------------------------

    @property
    def sequence(self) -> int:
        """The sequence number of this node's latest advert (0 before the first)."""
        return self._sequence

    def database(self) -> Mapping[str, peer_pb2.LinkStateAdvert]:
        """A snapshot of the LSDB: origin -> advert as held (ages as received)."""
        return {o: e.frame.advert for o, e in sorted(self._db.items())}

    # --- internals ---------------------------------------------------------------

    def _check(
        self, advert: peer_pb2.LinkStateAdvert
    ) -> tuple[dict[str, int], tuple[tuple[str, int], ...], frozenset[str]]:
        """Validate an advert's content; return it in the form the LSDB keeps."""
        cfg = self.config
        origin = advert.origin
        if not origin or len(origin.encode("utf-8")) > cfg.max_name_bytes:
            raise Malformed("advert origin is empty or too long")
        if (
            len(advert.links) > cfg.max_links
            or len(advert.services) > cfg.max_services
            or len(advert.subjects) > cfg.max_subjects
        ):
            raise OversizedUpdate(
                f"advert of {origin!r} has {len(advert.links)} links, "
                f"{len(advert.services)} services, {len(advert.subjects)} subjects"
            )
        links: dict[str, int] = {}
        max_cost = cfg.max_cost
        for link in advert.links:
            n = link.neighbor
            c = link.cost
            if not 0 < c <= max_cost:
                raise InvalidCost(f"advert of {origin!r}: cost {c} to {n!r} not in 1..{max_cost}")
            if not n or n == origin or n in links:
                raise Malformed(f"advert of {origin!r}: bad or repeated neighbour {n!r}")
            links[n] = c
        if any(len(n.encode("utf-8")) > cfg.max_name_bytes for n in links):
            raise Malformed(f"advert of {origin!r}: neighbour name too long")
        services: dict[str, int] = {}
        for s in advert.services:
            if not s.name or s.name in services or len(s.name.encode()) > cfg.max_name_bytes:
                raise Malformed(f"advert of {origin!r}: bad or repeated service {s.name!r}")
            if s.weight < 1:
                raise Malformed(f"advert of {origin!r}: service {s.name!r} has weight 0")
            services[s.name] = s.weight
        subjects = frozenset(advert.subjects)
        if len(subjects) != len(advert.subjects) or any(
            not s or len(s.encode()) > cfg.max_name_bytes for s in subjects
        ):
            raise Malformed(f"advert of {origin!r}: bad or repeated subject")
        return links, tuple(sorted(services.items())), subjects

    def _check_signature(self, advert: peer_pb2.LinkStateAdvert) -> None:
        if self._verify is None:
            return
        if not advert.signature or not self._verify(
            advert.origin, advert_signing_bytes(advert), advert.signature
        ):
            raise UnknownOrigin(f"advert of {advert.origin!r} is not signed by a known origin")

    def _receive_own(
        self, advert: peer_pb2.LinkStateAdvert, held: _Entry | None, now: float
    ) -> list[Outgoing]:
        """Our own advert came back: a newer one (or a different one with our sequence)
        is from a previous life of this node, so jump past it and re-originate."""
        seq = advert.sequence
        if held is not None:
            order = serial_compare(seq, held.sequence)
            if order < 0:
                raise StaleUpdate(f"own advert seq {seq} is older than the current {held.sequence}")
            if order == 0 and _same_content(advert, held.frame.advert):
                return []
        self._check_signature(advert)
        self._sequence = seq
        self._originate_at = now  # not rate-limited: the mesh holds a wrong advert of ours
        return []

    def _store(
        self,
        origin: str,
        frame: peer_pb2.Frame,
        *,
        seq: int,
        now: float,
        links: dict[str, int],
        services: tuple[tuple[str, int], ...],
        subjects: frozenset[str],
    ) -> None:
        entry = _Entry(
            frame=frame,
            sequence=seq,
            received_at=now,
            age=frame.advert.age_s,
            links=links,
            services=services,
            subjects=subjects,
        )
        old = self._db.get(origin)
        self._db[origin] = entry
        if origin != self.node_id:
            if old is None or old.links != links:
                self._topology.set_links(origin, links)
            if old is None or old.services != services or old.subjects != subjects:
                self._offers_version += 1
            expiry = now + self.config.max_age - entry.age
            if self._next_expiry is None or expiry < self._next_expiry:
                self._next_expiry = expiry
        self._schedule_sweep(now)

    def _forget(self, origin: str) -> None:
        entry = self._db.pop(origin, None)
        if entry is None:
            return
        self._topology.remove(origin)
        self._unreachable_since.pop(origin, None)
        if entry.services or entry.subjects:
            self._offers_version += 1

    def _schedule_origination(self, now: float) -> None:
        at = now
        if self._originated_at is not None:
            at = max(now, self._originated_at + self.config.min_origination_interval)
        if self._originate_at is None or at < self._originate_at:
            self._originate_at = at

    def _schedule_sweep(self, now: float) -> None:
        if self._sweep_at is None:
            self._sweep_at = now + self.config.unreachable_hold

    def _originate(self, now: float) -> list[Outgoing]:
        self._sequence = serial_add(self._sequence, 1)
        advert = peer_pb2.LinkStateAdvert(
            origin=self.node_id,
            sequence=self._sequence,
            age_s=0,
            links=[peer_pb2.AdvertLink(neighbor=n, cost=self._neighbours[n]) for n in self._peers],
            services=[
                peer_pb2.ServiceInstance(name=n, weight=w)
                for n, w in sorted(self._services.items())
            ],
            subjects=sorted(self._subjects),
        )
        if self._sign is not None:
            advert.signature = self._sign(advert_signing_bytes(advert))
        frame = peer_pb2.Frame(advert=advert)
        self._originate_at = None
        self._originated_at = now
        self._store(
            self.node_id,
            frame,
            seq=self._sequence,
            now=now,
            links=dict(self._neighbours),
            services=tuple(sorted(self._services.items())),
            subjects=self._subjects,
        )
        return [Outgoing(peer=p, frame=frame) for p in self._peers]

    def _expire(self, now: float) -> None:
        """Drop adverts whose age reached max_age; re-arm for the next one due."""
        max_age = self.config.max_age
        nxt: float | None = None
        for origin, entry in list(self._db.items()):
            if origin == self.node_id:
                continue
            expiry = entry.received_at + max_age - entry.age
            if now >= expiry:
                self._forget(origin)
            elif nxt is None or expiry < nxt:
                nxt = expiry
        self._next_expiry = nxt

    def _sweep_unreachable(self, now: float) -> None:
        """Drop adverts of origins unreachable since the previous sweep (or longer)."""
        hold = self.config.unreachable_hold
        table = self.table
        since = self._unreachable_since
        for origin in list(self._db):
            if origin in table:
                since.pop(origin, None)
                continue
            first = since.setdefault(origin, now)
            if now - first >= hold:
                self._forget(origin)
        self._sweep_at = min(since.values()) + hold if since else None

    def _sorted_entries(self) -> list[_Entry]:
        return [self._db[o] for o in sorted(self._db)]

    def _frame_at(self, entry: _Entry, now: float) -> peer_pb2.Frame:
        """The entry's frame with its age brought up to ``now`` (the same object if unchanged)."""
        age = min(entry.age_at(now), 2**32 - 1)
        if age == entry.frame.advert.age_s:
            return entry.frame
        advert = peer_pb2.LinkStateAdvert()
        advert.CopyFrom(entry.frame.advert)
        advert.age_s = age
        return peer_pb2.Frame(advert=advert)

    def _offers(
        self,
    ) -> tuple[dict[str, tuple[ServiceInstance, ...]], dict[str, frozenset[str]]]:
        table = self.table
        key = (self._table_version, self._offers_version)
        cache = self._offers_cache
        if cache is not None and (cache[0], cache[1]) == key:
            return cache[2], cache[3]
        by_service: dict[str, list[ServiceInstance]] = {}
        by_subject: dict[str, set[str]] = {}
        offers: list[tuple[str, Iterable[tuple[str, int]], Iterable[str]]] = [
            (self.node_id, self._services.items(), self._subjects)
        ]
        offers += [
            (o, e.services, e.subjects)
            for o, e in self._db.items()
            if o != self.node_id and o in table
        ]
        for node, services, subjects in sorted(offers, key=lambda t: t[0]):
            for name, weight in services:
                by_service.setdefault(name, []).append(ServiceInstance(node=node, weight=weight))
            for subject in subjects:
                by_subject.setdefault(subject, set()).add(node)
        result = (
            {k: tuple(v) for k, v in sorted(by_service.items())},
            {k: frozenset(v) for k, v in sorted(by_subject.items())},
        )
        self._offers_cache = (key[0], key[1], *result)
        return result


def _same_content(a: peer_pb2.LinkStateAdvert, b: peer_pb2.LinkStateAdvert) -> bool:
    """Equal in everything signed (age and signature aside)."""
    return advert_signing_bytes(a) == advert_signing_bytes(b)
