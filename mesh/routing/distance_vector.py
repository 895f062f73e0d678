"""The distance-vector routing engine: Bellman-Ford with Babel's feasibility condition.

Neighbours exchange vectors of ``(destination, metric, seqno, offers)`` and each
node relaxes them Bellman-Ford style into a :class:`~mesh.routing.table.RoutingTable`
with every equal-cost next hop. Like the rest of the core the engine is sans-IO:
it is fed link events, frames and the time, and answers with frames to send.

Why it cannot loop or count to infinity (Babel, RFC 8966 section 2.4-2.5):

* Every destination originates its own route with a sequence number (seqno)
  that only it may increase. Pairs ``(seqno, metric)`` are ordered so that a
  newer seqno is *smaller* (better) whatever the metric, and within one seqno
  the smaller metric is better.
* Each node keeps, per destination, a *feasibility distance* FD: the smallest
  pair it has selected (hence advertised) since it last forgot the destination.
  FD only ever decreases in that order.
* A route heard from a neighbour is *feasible* only when its pair is strictly
  smaller than the node's FD, and only feasible routes are selected. So if A
  routes through B, B's FD <= the pair B advertised < A's FD: FD strictly falls
  along every chain of next hops and a chain can never come back to where it
  started. Loop-freedom holds at every instant, with any message delays.
* With one seqno, the metric a node advertises is below its FD plus one link
  cost, and FD never rises: metrics cannot creep upwards. Only the destination
  can mint a newer seqno, so a cut-off destination's routes can only be
  retracted (no count to infinity); they vanish within a few rounds.
* When a node has routes but none is feasible (or an unfeasible one would be at
  least as good as the best feasible one, which ECMP needs), it asks for a newer
  seqno. The request rides on the seqno of the retractions it sends: the
  poisoned-reverse entries to its next hops, or the retraction to everyone when
  it has no route. A node hearing a retraction with a seqno newer than its own
  FD's remembers it and forwards it the same way; the destination, hearing a
  retraction of itself with a seqno newer than its own, jumps to that seqno.
  The new seqno then resets every FD on its way and the mesh re-converges to
  the exact shortest paths. A neighbour that knew nothing of the destination
  drops a request, so it is repeated when such a neighbour starts advertising
  the destination under an older seqno than the one asked for.

Split horizon with poisoned reverse, periodic full vectors, triggered partial
vectors (coalesced and rate-limited), route timeouts and garbage collection
complete the classic distance-vector machinery. Everything a neighbour controls
is bounded and checked before any state changes (see :meth:`receive`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.errors import InvalidArgument, Malformed
from mesh.routing.base import Outgoing
from mesh.routing.errors import (
    InvalidCost,
    NotANeighbour,
    OversizedUpdate,
    StaleUpdate,
    UnexpectedFrame,
)
from mesh.routing.table import Route, RoutingTable, ServiceInstance
from mesh.v1 import peer_pb2

__all__ = ["DistanceVectorConfig", "DistanceVectorEngine"]

_SERIAL = 2**32
_HALF = 2**31


def _newer(a: int, b: int) -> bool:
    """True when seqno/sequence ``a`` is newer than ``b`` (RFC 1982, 32 bits)."""
    return 0 < (a - b) % _SERIAL < _HALF


@dataclass(frozen=True, slots=True, kw_only=True)
class DistanceVectorConfig:
    """Timers and bounds of the distance-vector engine; every node of a mesh uses the same."""

    update_interval: float = 10.0
    """Seconds between periodic full vectors to every neighbour (also the housekeeping pace)."""
    update_jitter: float = 0.25
    """Fraction of ``update_interval`` shaved off at random when a ``rng`` is injected,
    so nodes started together do not update in lock-step."""
    triggered_delay: float = 0.0
    """Seconds a triggered update waits after the first change; 0 still coalesces every
    change made at the same instant into one vector."""
    triggered_min_interval: float = 0.05
    """Least seconds between two triggered updates (damping against update storms)."""
    infinity: int = 2**20
    """Metric that means unreachable; must exceed every real path cost in the mesh."""
    route_timeout: float = 35.0
    """A neighbour's route not refreshed for this long counts as retracted."""
    gc_delay: float = 30.0
    """Seconds an unreachable destination is still advertised as such before it is forgotten."""
    max_routes: int = 4096
    """Most routes in one vector, and most destinations held from one neighbour."""
    max_link_cost: int = 4096
    """Highest cost accepted for one link."""
    max_offers: int = 256
    """Most services plus subjects a destination may advertise."""
    max_name_length: int = 256
    """Longest node id, service name or subject accepted from a neighbour."""

    def __post_init__(self) -> None:
        if self.update_interval <= 0 or self.route_timeout <= 0 or self.gc_delay <= 0:
            raise InvalidArgument("update_interval, route_timeout and gc_delay must be > 0")
        if self.triggered_delay < 0 or self.triggered_min_interval < 0:
            raise InvalidArgument("triggered_delay and triggered_min_interval must be >= 0")
        if not 0 <= self.update_jitter < 1:
            raise InvalidArgument("update_jitter must be in [0, 1)")
        if not 1 <= self.max_link_cost < self.infinity < _SERIAL:
            raise InvalidArgument("need 1 <= max_link_cost < infinity < 2**32")
        if self.max_routes < 1 or self.max_offers < 0 or self.max_name_length < 1:
            raise InvalidArgument("max_routes and max_name_length must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Offers:
    """What one destination offers: services (name, weight) and subjects."""

    services: tuple[tuple[str, int], ...] = ()
    """Sorted (service name, weight) pairs."""
    subjects: tuple[str, ...] = ()
    """Sorted subject patterns."""


_NO_OFFERS = _Offers()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Heard:
    """The last route a neighbour advertised to us for one destination."""

    seqno: int
    """The destination's seqno as the neighbour advertised it."""
    metric: int
    """The neighbour's own metric (our link cost not added); >= infinity is a retraction."""
    offers: _Offers
    """The destination's offers as carried by the entry."""
    refreshed: float
    """When we last heard it; the route times out ``route_timeout`` later."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Selected:
    """The route we use and advertise for one destination."""

    cost: int
    """Our metric: neighbour's metric plus link cost."""
    seqno: int
    """The seqno we advertise with it (the newest among the best routes)."""
    next_hops: frozenset[str]
    """Every feasible neighbour giving ``cost``."""
    offers: _Offers
    """The destination's offers, from one of the next hops' entries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Feasibility:
    """The feasibility distance: the smallest (seqno, metric) we have selected."""

    seqno: int
    """Seqno of the FD; newer seqnos are always feasible."""
    metric: int
    """Within ``seqno``, only metrics strictly below this are feasible."""


class DistanceVectorEngine:
    """A :class:`~mesh.routing.base.RoutingEngine` speaking distance vectors.

    Input methods only update state and arm the triggered-update timer (the one
    exception: a new neighbour gets our full vector from ``link_up`` at once);
    vectors go out from :meth:`tick` at :meth:`next_wake`, so every change made
    at one instant leaves as one vector per neighbour.

    ``rng`` is only used to jitter the periodic update; without one the
    interval is exact, which keeps simulations repeatable.
    """

    kind = peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR

    def __init__(
        self,
        node_id: str,
        config: DistanceVectorConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not node_id:
            raise InvalidArgument("node_id must not be empty")
        self.node_id = node_id
        self.config = config or DistanceVectorConfig()
        self._rng = rng
        self._infinity = self.config.infinity
        # Our own destination: seqno we originate and what we offer.
        self._seqno = 0
        self._offers = _NO_OFFERS
        # Neighbours: link cost and the last vector sequence each sent us.
        self._links: dict[str, int] = {}
        self._last_sequence: dict[str, int] = {}
        self._sequence = 0
        # Per destination: what each neighbour said, FD, pending seqno request, choice.
        self._heard: dict[str, dict[str, _Heard]] = {}
        self._from_peer: dict[str, set[str]] = {}
        self._fd: dict[str, _Feasibility] = {}
        self._wanted: dict[str, int] = {}
        self._selected: dict[str, _Selected] = {}
        self._unreachable_since: dict[str, float] = {}
        # What we last advertised per destination, to know what a triggered update must carry.
        self._signature: dict[str, tuple[object, ...]] = {}
        self._dirty: set[str] = set()
        # Timers.
        self._next_periodic: float | None = None
        self._trigger_at: float | None = None
        self._last_triggered = -math.inf
        self._table: RoutingTable | None = None

    # --- the RoutingEngine interface ---------------------------------------------

    def link_up(self, peer: str, cost: int, now: float) -> list[Outgoing]:
        """A link to ``peer`` came up, or its cost changed.

        A new neighbour gets our full vector at once so it learns the mesh in one
        round trip. Raises :class:`InvalidArgument` for a cost outside
        ``1..max_link_cost`` or a link to ourselves.
        """
        if peer == self.node_id or not peer:
            raise InvalidArgument(f"cannot link {self.node_id!r} to {peer!r}")
        if not 1 <= cost <= self.config.max_link_cost:
            raise InvalidArgument(f"link cost {cost} outside 1..{self.config.max_link_cost}")
        self._start(now)
        old = self._links.get(peer)
        self._links[peer] = cost
        out: list[Outgoing] = []
        if old is None:
            self._last_sequence.pop(peer, None)  # a new session may restart its numbering
            out.extend(self._vectors_for(peer, self._known_destinations(), full=True))
        elif old != cost:
            for destination in sorted(self._from_peer.get(peer, ())):
                self._recompute(destination, now)
        return out

    def link_down(self, peer: str, now: float) -> list[Outgoing]:
        """The link to ``peer`` went down: everything it told us is dropped at once."""
        self._start(now)
        if self._links.pop(peer, None) is None:
            return []
        self._last_sequence.pop(peer, None)
        for destination in sorted(self._from_peer.pop(peer, set())):
            heard = self._heard.get(destination)
            if heard is not None:
                heard.pop(peer, None)
            self._recompute(destination, now)
        return []

    def set_local_offers(
        self, services: Mapping[str, int], subjects: Iterable[str], now: float
    ) -> list[Outgoing]:
        """Replace what this node offers; a change is carried under a new seqno.

        The new seqno makes every node take the new offers from whichever
        neighbour brings them first. Raises :class:`InvalidArgument` (changing
        nothing) for a weight outside ``1..2**32-1``, an empty or over-long name,
        or more than ``max_offers`` offers.
        """
        subject_set = frozenset(subjects)
        limit = self.config.max_name_length
        for name, weight in services.items():
            if not name or len(name) > limit or not 1 <= weight < _SERIAL:
                raise InvalidArgument(f"bad service offer {name!r} weight {weight}")
        for subject in subject_set:
            if not subject or len(subject) > limit:
                raise InvalidArgument(f"bad subject {subject!r}")
        if len(services) + len(subject_set) > self.config.max_offers:
            raise InvalidArgument(f"more than {self.config.max_offers} offers")
        offers = _Offers(
            services=tuple(sorted(services.items())), subjects=tuple(sorted(subject_set))
        )
        self._start(now)
        if offers != self._offers:
            self._offers = offers
            self._seqno = (self._seqno + 1) % _SERIAL
            self._mark(self.node_id, now)
            self._table = None
        return []

    def receive(self, peer: str, frame: peer_pb2.Frame, now: float) -> list[Outgoing]:
        """Take a vector from neighbour ``peer`` and relax it into the table.

        Raises, before changing anything: :class:`UnexpectedFrame` for a frame
        that is not a vector; :class:`NotANeighbour` when no link to ``peer`` is
        up; :class:`Malformed` for a wrong origin, an empty, over-long or repeated
        destination or name, or a service weight of 0; :class:`InvalidCost` for a
        metric above infinity, a non-zero metric for the sender itself or a zero
        one for anyone else; :class:`OversizedUpdate` for more than
        ``max_routes`` routes (in the vector, or held from ``peer`` after it) or
        more than ``max_offers`` offers in one entry; :class:`StaleUpdate` for a
        sequence older than the last one from ``peer``. A repeat of the last
        sequence is a duplicate and is ignored.
        """
        if frame.WhichOneof("body") != "vector":
            raise UnexpectedFrame(
                f"distance-vector engine got a {frame.WhichOneof('body')!r} frame"
            )
        if peer not in self._links:
            raise NotANeighbour(f"vector from {peer!r}, which is not a neighbour")
        vector = frame.vector
        if vector.origin != peer:
            raise Malformed(f"vector from {peer!r} claims origin {vector.origin!r}")
        last = self._last_sequence.get(peer)
        if last is not None and vector.sequence != last and not _newer(vector.sequence, last):
            raise StaleUpdate(f"vector {vector.sequence} from {peer!r} is older than {last}")
        entries = self._validate(peer, vector)
        if last is not None and vector.sequence == last:
            return []
        self._start(now)
        self._last_sequence[peer] = vector.sequence
        touched: list[str] = []
        remind: list[str] = []
        for destination, seqno, metric, offers in entries:
            if destination == self.node_id:
                self._hear_request_for_self(seqno, metric, now)
                continue
            if metric >= self._infinity and not self._knows(destination):
                continue  # a retraction of something we never had: nothing to undo
            heard = self._heard.setdefault(destination, {})
            before = heard.get(peer)
            heard[peer] = _Heard(seqno=seqno, metric=metric, offers=offers, refreshed=now)
            self._from_peer.setdefault(peer, set()).add(destination)
            if metric >= self._infinity:
                self._hear_request(destination, seqno)
            elif (
                before is not None
                and before.seqno == seqno
                and before.metric == metric
                and before.offers == offers
            ):
                continue  # only a refresh: nothing to relax
            else:
                wanted = self._wanted.get(destination)
                if wanted is not None and _newer(wanted, seqno):
                    remind.append(destination)
            touched.append(destination)
        for destination in touched:
            self._recompute(destination, now)
        for destination in remind:
            self._remind(destination, now)
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Send due triggered or periodic vectors; time routes out; forget dead destinations."""
        self._start(now)
        return self._flush(now)

    def next_wake(self) -> float | None:
        """The next periodic update, or the pending triggered update if sooner."""
        if self._next_periodic is None:
            return None
        if self._trigger_at is not None:
            return min(self._trigger_at, self._next_periodic)
        return self._next_periodic

    @property
    def table(self) -> RoutingTable:
        """This node (cost 0) and every destination with a feasible route."""
        if self._table is None:
            routes = {self.node_id: Route(destination=self.node_id, cost=0, next_hops=frozenset())}
            for destination, selected in self._selected.items():
                routes[destination] = Route(
                    destination=destination, cost=selected.cost, next_hops=selected.next_hops
                )
            self._table = RoutingTable(routes)
        return self._table

    def services(self) -> Mapping[str, tuple[ServiceInstance, ...]]:
        """Service name -> reachable nodes offering it (this node included), by node id."""
        found: dict[str, list[ServiceInstance]] = {}
        for node, offers in self._reachable_offers():
            for name, weight in offers.services:
                found.setdefault(name, []).append(ServiceInstance(node=node, weight=weight))
        return {name: tuple(sorted(v, key=lambda s: s.node)) for name, v in found.items()}

    def subjects(self) -> Mapping[str, frozenset[str]]:
        """Subject pattern -> reachable nodes subscribed to it (this node included)."""
        found: dict[str, set[str]] = {}
        for node, offers in self._reachable_offers():
            for subject in offers.subjects:
                found.setdefault(subject, set()).add(node)
        return {subject: frozenset(nodes) for subject, nodes in found.items()}

    # --- introspection for tests and metrics -------------------------------------

    @property
    def seqno(self) -> int:
        """The seqno this node currently originates for itself."""
        return self._seqno

    def feasibility_distance(self, destination: str) -> tuple[int, int] | None:
        """(seqno, metric) of the FD for ``destination``, or None when it has none."""
        fd = self._fd.get(destination)
        return None if fd is None else (fd.seqno, fd.metric)

    # --- input checking ------------------------------------------------------------

    def _validate(
        self, peer: str, vector: peer_pb2.DistanceVector
    ) -> list[tuple[str, int, int, _Offers]]:
        """Check every bound on ``vector`` and return its entries as plain tuples."""
        cfg = self.config
        if len(vector.routes) > cfg.max_routes:
            raise OversizedUpdate(
                f"vector from {peer!r} has {len(vector.routes)} routes, over {cfg.max_routes}"
            )
        entries: list[tuple[str, int, int, _Offers]] = []
        seen: set[str] = set()
        held = self._from_peer.get(peer, set())
        new_destinations = 0
        for entry in vector.routes:
            destination = entry.destination
            if not destination or len(destination) > cfg.max_name_length:
                raise Malformed(f"vector from {peer!r} has a bad destination {destination!r}")
            if destination in seen:
                raise Malformed(f"vector from {peer!r} repeats destination {destination!r}")
            seen.add(destination)
            metric = entry.metric
            if metric > self._infinity:
                raise InvalidCost(f"metric {metric} for {destination!r} is above infinity")
            if destination == peer and metric != 0:
                raise InvalidCost(f"{peer!r} advertises itself at metric {metric}, not 0")
            if destination != peer and metric == 0:
                raise InvalidCost(f"{peer!r} advertises {destination!r} at metric 0")
            if len(entry.services) + len(entry.subjects) > cfg.max_offers:
                raise OversizedUpdate(f"{destination!r} carries more than {cfg.max_offers} offers")
            services: dict[str, int] = {}
            for service in entry.services:
                if not service.name or len(service.name) > cfg.max_name_length:
                    raise Malformed(f"bad service name {service.name!r} for {destination!r}")
                if service.weight < 1 or service.name in services:
                    raise Malformed(f"bad or repeated service {service.name!r} for {destination!r}")
                services[service.name] = service.weight
            subjects = set(entry.subjects)
            if any(not s or len(s) > cfg.max_name_length for s in subjects):
                raise Malformed(f"bad subject for {destination!r}")
            if destination != self.node_id and destination not in held:
                new_destinations += 1
            offers = (
                _Offers(services=tuple(sorted(services.items())), subjects=tuple(sorted(subjects)))
                if services or subjects
                else _NO_OFFERS
            )
            entries.append((destination, entry.seqno, metric, offers))
        if len(held) + new_destinations > cfg.max_routes:
            raise OversizedUpdate(f"{peer!r} would hold more than {cfg.max_routes} routes")
        return entries

    # --- route selection -------------------------------------------------------------

    def _knows(self, destination: str) -> bool:
        return destination in self._heard or destination in self._fd

    def _hear_request_for_self(self, seqno: int, metric: int, now: float) -> None:
        """A retraction of ourselves with a newer seqno asks us to originate that seqno."""
        if metric >= self._infinity and _newer(seqno, self._seqno):
            self._seqno = seqno
            self._mark(self.node_id, now)

    def _hear_request(self, destination: str, seqno: int) -> None:
        """Remember a seqno request for ``destination`` so our retractions forward it."""
        fd = self._fd.get(destination)
        if fd is None or not _newer(seqno, fd.seqno):
            return
        wanted = self._wanted.get(destination)
        if wanted is None or _newer(seqno, wanted):
            self._wanted[destination] = seqno

    def _recompute(self, destination: str, now: float) -> None:
        """Bellman-Ford relaxation of one destination over what neighbours said.

        Selects every feasible neighbour at the least cost, lowers the FD to
        what we will now advertise, and files a seqno request when a route we
        would want is held back by the feasibility condition.
        """
        inf = self._infinity
        links = self._links
        fd = self._fd.get(destination)
        # (cost, seqno, peer, offers) of every feasible finite route over a live link.
        feasible: list[tuple[int, int, str, _Offers]] = []
        have_routes = False
        blocked = inf  # least cost among routes unfeasible only for their metric
        for peer, h in self._heard.get(destination, {}).items():
            link = links.get(peer)
            if link is None or h.metric + link >= inf:
                continue
            have_routes = True
            cost = h.metric + link
            if fd is None or _newer(h.seqno, fd.seqno):
                feasible.append((cost, h.seqno, peer, h.offers))
            elif h.seqno == fd.seqno:
                if h.metric < fd.metric:
                    feasible.append((cost, h.seqno, peer, h.offers))
                elif cost < blocked:
                    blocked = cost
        selected: _Selected | None = None
        stuck = have_routes
        if feasible:
            best = min(c[0] for c in feasible)
            top = [c for c in feasible if c[0] == best]
            newest = top[0][1]
            for c in top:
                if _newer(c[1], newest):
                    newest = c[1]
            if fd is None or _newer(newest, fd.seqno) or best < fd.metric:
                fd = _Feasibility(seqno=newest, metric=best)
                self._fd[destination] = fd
                blocked = inf  # same-seqno routes blocked before are older now, or worse
            # Every route that set or kept the FD stays feasible; only older seqnos drop.
            hops = sorted(c for c in top if c[1] == newest)
            selected = _Selected(
                cost=best,
                seqno=newest,
                next_hops=frozenset(c[2] for c in hops),
                offers=hops[0][3],
            )
            # ECMP needs every least-cost neighbour: ask for a newer seqno if one is held back.
            stuck = blocked <= best
        self._update_request(destination, fd, stuck=stuck)
        self._commit(destination, selected, now)

    def _update_request(self, destination: str, fd: _Feasibility | None, *, stuck: bool) -> None:
        """File a request for the seqno after our FD's, or drop one a newer seqno answered."""
        if stuck and fd is not None:
            want = (fd.seqno + 1) % _SERIAL
            wanted = self._wanted.get(destination)
            if wanted is None or _newer(want, wanted):
                self._wanted[destination] = want
        wanted = self._wanted.get(destination)
        if wanted is not None and fd is not None and not _newer(wanted, fd.seqno):
            del self._wanted[destination]

    def _commit(self, destination: str, selected: _Selected | None, now: float) -> None:
        """Install the new choice for ``destination`` and queue what changed for neighbours."""
        old = self._selected.get(destination)
        if selected is None:
            if old is not None:
                del self._selected[destination]
                self._table = None
            self._unreachable_since.setdefault(destination, now)
        else:
            if (
                old is None
                or old.cost != selected.cost
                or old.next_hops != selected.next_hops
                or old.offers != selected.offers
            ):
                self._table = None
            self._selected[destination] = selected
            self._unreachable_since.pop(destination, None)
        self._mark(destination, now)

    def _signature_of(self, destination: str) -> tuple[object, ...]:
        """Everything that shapes the entries we send for ``destination``."""
        if destination == self.node_id:
            return (self._seqno, self._offers)
        selected = self._selected.get(destination)
        request = self._request_seqno(destination)
        if selected is None:
            return (None, request)
        return (selected.seqno, selected.cost, selected.next_hops, selected.offers, request)

    def _mark(self, destination: str, now: float) -> None:
        """Queue ``destination`` for the next triggered update if what we say about it changed."""
        signature = self._signature_of(destination)
        if self._signature.get(destination) == signature:
            return
        self._signature[destination] = signature
        self._dirty.add(destination)
        self._arm_trigger(now)

    def _remind(self, destination: str, now: float) -> None:
        """Repeat a pending seqno request to a neighbour that may not have taken it.

        A neighbour ignores a request for a destination it knows nothing of, so
        one that starts advertising the destination under an older seqno than
        we asked for may have missed ours; waiting for the periodic vector would
        leave the mesh off the shortest paths for a whole update interval. Sent
        once per change in what that neighbour says, so it cannot storm.
        """
        if destination in self._wanted:
            self._dirty.add(destination)
            self._arm_trigger(now)

    def _arm_trigger(self, now: float) -> None:
        if self._trigger_at is None:
            self._trigger_at = max(
                now + self.config.triggered_delay,
                self._last_triggered + self.config.triggered_min_interval,
            )

    def _request_seqno(self, destination: str) -> int:
        """Seqno carried by our retractions of ``destination``: a pending request, or our FD's."""
        wanted = self._wanted.get(destination)
        if wanted is not None:
            return wanted
        fd = self._fd.get(destination)
        return 0 if fd is None else fd.seqno

    def _reachable_offers(self) -> list[tuple[str, _Offers]]:
        found = [(self.node_id, self._offers)]
        found.extend((d, s.offers) for d, s in self._selected.items())
        return found

    # --- timers and output -------------------------------------------------------------

    def _start(self, now: float) -> None:
        """Arm the periodic timer the first time we are told the time."""
        if self._next_periodic is None:
            self._next_periodic = now + self._interval()

    def _interval(self) -> float:
        interval = self.config.update_interval
        if self._rng is not None and self.config.update_jitter > 0:
            interval *= 1.0 - self.config.update_jitter * self._rng.random()
        return interval

    def _housekeeping(self, now: float) -> None:
        """Time out silent routes and forget destinations unreachable for ``gc_delay``.

        Runs at the periodic update, so a timeout fires within one update
        interval of being due; that is enough, because links going down are
        reported directly and timeouts only catch neighbours that stopped
        mentioning a destination.
        """
        cfg = self.config
        for destination in sorted(self._heard):
            heard = self._heard[destination]
            changed = False
            for peer, h in list(heard.items()):
                if h.metric < self._infinity and now >= h.refreshed + cfg.route_timeout:
                    heard[peer] = _Heard(
                        seqno=h.seqno, metric=self._infinity, offers=_NO_OFFERS, refreshed=now
                    )
                    changed = True
            if changed:
                self._recompute(destination, now)
        for destination, since in sorted(self._unreachable_since.items()):
            if now < since + cfg.gc_delay:
                continue
            heard = self._heard.get(destination, {})
            if any(h.metric < self._infinity for h in heard.values()):
                continue  # still hearing routes: waiting on a seqno request, not dead
            self._forget(destination)

    def _forget(self, destination: str) -> None:
        for peer in self._heard.pop(destination, {}):
            held = self._from_peer.get(peer)
            if held is not None:
                held.discard(destination)
        self._fd.pop(destination, None)
        self._wanted.pop(destination, None)
        self._unreachable_since.pop(destination, None)
        self._signature.pop(destination, None)
        self._dirty.discard(destination)

    def _known_destinations(self) -> list[str]:
        """Every destination we advertise: ourselves, reachable ones, and recently lost ones."""
        known = {self.node_id, *self._selected, *self._unreachable_since}
        return sorted(known)

    def _flush(self, now: float) -> list[Outgoing]:
        """Send the periodic full vector or a due triggered update."""
        out: list[Outgoing] = []
        assert self._next_periodic is not None
        if now >= self._next_periodic:
            self._housekeeping(now)
            destinations = self._known_destinations()
            for peer in sorted(self._links):
                out.extend(self._vectors_for(peer, destinations, full=True))
            self._dirty.clear()
            self._trigger_at = None
            self._last_triggered = now
            self._next_periodic = now + self._interval()
        elif self._trigger_at is not None and now >= self._trigger_at:
            destinations = sorted(self._dirty)
            for peer in sorted(self._links):
                out.extend(self._vectors_for(peer, destinations, full=False))
            self._dirty.clear()
            self._trigger_at = None
            self._last_triggered = now
        return out

    def _entry_for(self, peer: str, destination: str) -> peer_pb2.RouteEntry:
        """One route as told to ``peer``: split horizon with poisoned reverse."""
        if destination == self.node_id:
            return _route_entry(destination, 0, self._seqno, self._offers)
        selected = self._selected.get(destination)
        if selected is not None and peer not in selected.next_hops:
            return _route_entry(destination, selected.cost, selected.seqno, selected.offers)
        return peer_pb2.RouteEntry(
            destination=destination,
            metric=self._infinity,
            seqno=self._request_seqno(destination),
        )

    def _vectors_for(self, peer: str, destinations: list[str], *, full: bool) -> list[Outgoing]:
        """Frames carrying ``destinations`` to ``peer``, split to respect ``max_routes``."""
        out: list[Outgoing] = []
        size = self.config.max_routes
        for start in range(0, len(destinations), size):
            self._sequence = (self._sequence + 1) % _SERIAL
            vector = peer_pb2.DistanceVector(
                origin=self.node_id,
                sequence=self._sequence,
                full=full,
                routes=[self._entry_for(peer, d) for d in destinations[start : start + size]],
            )
            out.append(Outgoing(peer=peer, frame=peer_pb2.Frame(vector=vector)))
        return out


def _route_entry(destination: str, metric: int, seqno: int, offers: _Offers) -> peer_pb2.RouteEntry:
    return peer_pb2.RouteEntry(
        destination=destination,
        metric=metric,
        seqno=seqno,
        services=[peer_pb2.ServiceInstance(name=n, weight=w) for n, w in offers.services],
        subjects=offers.subjects,
    )
