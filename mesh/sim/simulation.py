"""Run a :class:`~mesh.sim.scenario.Scenario` through real cores and report what happened.

The run: every node boots at t=0 and its links come up; tables are compared
with the ground truth (:class:`~mesh.sim.truth.GroundTruth`) every
``convergence_resolution_ms`` while they differ; traffic starts once they all
match (unless a generator sets ``start_s``); each event changes the network
and the time until every table matches the new ground truth is recorded.

Link-state meshes above 400 nodes run in fast fidelity by default
(:mod:`mesh.sim.fast`: flooding computed, the data path through the same real
cores); ``Scenario.fidelity`` forces ``full`` or ``fast``.

The report is plain JSON-able data with no wall-clock value in it, so the
same scenario and seed give the same report byte for byte.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from mesh.actions import Acked, Deliver, Failed, Replied
from mesh.codec import ContentType, EncodedBody
from mesh.core import CoreConfig
from mesh.errors import MeshError
from mesh.routing.table import RoutingTable
from mesh.sim.fast import FastCoreNetwork, resolve_fidelity
from mesh.sim.network import EPOCH, CoreNetwork
from mesh.sim.scenario import Event, Scenario, Traffic
from mesh.sim.truth import GroundTruth, Truth
from mesh.v1 import envelope_pb2, peer_pb2

ENGINES = {
    "link-state": peer_pb2.ROUTING_ENGINE_LINK_STATE,
    "distance-vector": peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR,
}
ACK = envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
_TRACKED_KINDS = (envelope_pb2.ENVELOPE_KIND_DATA, envelope_pb2.ENVELOPE_KIND_REQUEST)

Progress = Callable[[float, float], None]
"""``progress(done_s, total_s)`` in virtual seconds."""


@dataclass(slots=True)
class _Sent:
    at: float
    source: str
    truth: Truth | None
    """Shortest paths at send time, kept only while the recipient is unknown (a service
    or subject: the core picks it) and dropped once delivered (a version can be 400 MB)."""
    acknowledged: bool
    shortest: int | None = None
    """Shortest path cost to the destination node at send time, when it was named."""


@dataclass(slots=True)
class Convergence:
    """How long the tables took to match the ground truth after one change."""

    at_s: float
    event: str
    converged_after_s: float | None = None
    """None: not converged before the next change or the end of the run."""


@dataclass(slots=True)
class Result:
    """The report (:attr:`report`) plus the samples plots are drawn from."""

    report: dict[str, Any]
    latencies_ms: list[float]
    timeline: list[tuple[float, float]]
    """(time s, fraction of nodes whose table matches the ground truth) at each check."""
    graph: nx.Graph
    """The original topology (with node positions for drawing)."""
    link_load: dict[tuple[str, str], int] = field(default_factory=dict)
    """Undirected link -> bytes carried both ways."""


class _Observed:
    """The simulator's observers, for either network."""

    sim: Simulation

    def link_changed(self, a: str, b: str) -> None:
        sim = getattr(self, "sim", None)
        if sim is not None:
            sim._graph_changed()

    def observe(self, node: str, action: Deliver | Acked | Replied | Failed) -> None:
        self.sim._observe(node, action)

    def observe_batch(self, src: str, dst: str, frame: peer_pb2.Frame) -> None:
        self.sim._observe_batch(src, dst, frame)


class _Network(_Observed, CoreNetwork):
    """CoreNetwork (full fidelity) with the simulator's observers."""


class _FastNetwork(_Observed, FastCoreNetwork):
    """FastCoreNetwork (modelled flooding) with the simulator's observers."""


class Simulation:
    """One scenario under one routing engine."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        engine: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.scenario = scenario
        self.engine = engine or scenario.routing
        self.progress = progress
        self.plan = _with_link_defaults(scenario)
        self.fidelity = resolve_fidelity(
            scenario.fidelity, self.engine, self.plan.number_of_nodes()
        )
        config = CoreConfig(mesh_id="sim", engine=ENGINES[self.engine], trace=True)
        network = _FastNetwork if self.fidelity == "fast" else _Network
        self.net: _Network | _FastNetwork = network(
            self.plan,
            config,
            seed=scenario.seed,
            trusted=scenario.trusted,
            reconnect_s=0.1,
            keep_messages=False,
        )
        self.net.sim = self
        self.rng = random.Random(f"sim/{scenario.seed}")
        self._truth: Truth | None = None
        self._matched: dict[str, RoutingTable] = {}
        self._checking = False
        self.sent = 0
        self.refused: Counter[str] = Counter()
        self.delivered = 0
        self.duplicates = 0
        self.acknowledged_sent = 0
        self.acked = 0
        self.requests_sent = 0
        self.replied = 0
        self.failed: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.ack_latencies: list[float] = []
        self.stretches: list[float] = []
        self.loops = 0
        self._messages: dict[bytes, _Sent] = {}
        self._delivered_ids: set[bytes] = set()
        self._paths: dict[bytes, int] = {}
        """Message id -> cost of the path its first copy took to the recipient."""
        self._digests: dict[bytes, tuple[bytes, str, str, bool]] = {}
        self.convergence: list[Convergence] = []
        self.timeline: list[tuple[float, float]] = []
        self.initial_convergence_s: float | None = None
        self._traffic_started = False

    # --- running ---------------------------------------------------------------------

    @property
    def t(self) -> float:
        """Scenario time (seconds since the nodes booted)."""
        return self.net.now - EPOCH

    def run(self) -> Result:
        """Run the scenario to its end; returns the report."""
        scenario = self.scenario
        for node, attrs in sorted(self.plan.nodes(data=True)):
            services = dict(attrs.get("services") or {})
            subjects = list(attrs.get("subjects") or [])
            if services or subjects:
                self.net.offer(node, services, subjects, _echo if services else None)
        self.convergence.append(Convergence(at_s=0.0, event="start"))
        self._start_checking()
        for index, traffic in enumerate(scenario.traffic):
            if traffic.start_s is not None:
                self._schedule_traffic(index, traffic, traffic.start_s)
        for event in sorted(scenario.events, key=lambda e: e.at_s):
            self.net.schedule(EPOCH + event.at_s, functools.partial(self._apply_event, event))
        end = EPOCH + scenario.duration_s + scenario.drain_s
        step = max(scenario.duration_s / 100, 0.01)
        while self.net.now < end:
            self.net.run_until(min(end, self.net.now + step))
            if self.progress is not None:
                self.progress(self.t, scenario.duration_s)
        return self._result()

    def _schedule_traffic(self, index: int, traffic: Traffic, start: float) -> None:
        rng = random.Random(f"traffic/{self.scenario.seed}/{index}")
        body = EncodedBody(data=rng.randbytes(traffic.size), content_type=ContentType.RAW)
        stop = self.scenario.duration_s if traffic.stop_s is None else traffic.stop_s
        nodes = sorted(self.plan.nodes)
        sources = list(traffic.sources) or nodes
        targets = list(traffic.to) or nodes
        where = {t: i for i, t in enumerate(targets)}
        positions = where if len(where) == len(targets) else None  # None: a name repeats

        def fire() -> None:
            if self.t > min(stop, self.scenario.duration_s) + 1e-9:
                return
            count = traffic.burst_size if traffic.kind == "burst" else 1
            for _ in range(count):
                self._send_one(traffic, rng, sources, targets, body, positions=positions)
            if traffic.kind == "poisson":
                gap = rng.expovariate(traffic.rate_per_s)
            else:
                gap = 1.0 / traffic.rate_per_s
            self.net.schedule(self.net.now + gap, fire)

        self.net.schedule(EPOCH + start, fire)

    def _send_one(
        self,
        traffic: Traffic,
        rng: random.Random,
        sources: list[str],
        targets: list[str],
        body: EncodedBody,
        *,
        positions: dict[str, int] | None = None,
    ) -> None:
        source = rng.choice(sources)
        if source not in self.net.cores:
            self.sent += 1
            self.refused["source_down"] += 1
            return
        now = self.net.now
        truth = self._current_truth()
        deadline_ms = int((now + traffic.deadline_s) * 1000)
        mode = ACK if traffic.mode == "acknowledged" else envelope_pb2.DELIVERY_MODE_ASYNC
        named: str | None = None
        try:
            if traffic.subject is not None:
                ids = self.net.publish(
                    source,
                    traffic.subject,
                    body,
                    mode=mode,
                    deadline_ms=deadline_ms if mode == ACK else 0,
                )
            elif traffic.service is not None and traffic.mode == "request":
                ids = [
                    self.net.request(
                        source, traffic.service, body, timeout_ms=int(traffic.deadline_s * 1000)
                    )
                ]
                self.requests_sent += 1
            elif traffic.service is not None:
                ids = [
                    self.net.send(
                        source,
                        traffic.service,
                        body,
                        mode=mode,
                        deadline_ms=deadline_ms if mode == ACK else 0,
                        destination_kind=envelope_pb2.DESTINATION_KIND_SERVICE,
                    )
                ]
            else:
                destination = _pick_other(rng, targets, positions, source)
                named = destination
                if traffic.mode == "request":
                    ids = [
                        self.net.request(
                            source,
                            destination,
                            body,
                            timeout_ms=int(traffic.deadline_s * 1000),
                            destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
                        )
                    ]
                    self.requests_sent += 1
                else:
                    ids = [
                        self.net.send(
                            source,
                            destination,
                            body,
                            mode=mode,
                            deadline_ms=deadline_ms if mode == ACK else 0,
                        )
                    ]
        except MeshError as exc:
            self.sent += 1
            self.refused[type(exc).__name__] += 1
            if traffic.mode == "request":
                self.requests_sent += 1
            elif mode == ACK:
                self.acknowledged_sent += 1
            return
        acknowledged = mode == ACK and traffic.mode != "request"
        for message_id in ids:
            self.sent += 1
            if acknowledged:
                self.acknowledged_sent += 1
            if named is None:
                self._messages[message_id] = _Sent(
                    at=now, source=source, truth=truth, acknowledged=acknowledged
                )
            else:
                self._messages[message_id] = _Sent(
                    at=now,
                    source=source,
                    truth=None,
                    acknowledged=acknowledged,
                    shortest=truth.distance(source, named),
                )
        if len(ids) == 0 and traffic.subject is not None:
            self.refused["no_subscriber"] += 1

    # --- events ------------------------------------------------------------------------

    def _apply_event(self, event: Event) -> None:
        net = self.net
        original = self.plan
        if event.cut is not None:
            a, b = event.cut
            if net.graph.has_edge(a, b):
                net.cut(a, b)
        elif event.heal is not None:
            self._heal(*event.heal)
        elif event.heal_all:
            for a, b in sorted(original.edges):
                if not net.graph.has_edge(a, b):
                    self._heal(a, b)
        elif event.crash is not None:
            if event.crash in net.cores:
                net.remove_node(event.crash, silently=True)
        elif event.restart is not None:
            node = event.restart
            if node not in net.cores:
                links = {
                    other: dict(original.edges[node, other])
                    for other in sorted(original.neighbors(node))
                    if other in net.cores
                }
                net.add_node(node, links)
                attrs = original.nodes[node]
                services = dict(attrs.get("services") or {})
                subjects = list(attrs.get("subjects") or [])
                if services or subjects:
                    net.offer(node, services, subjects, _echo if services else None)
        elif event.partition is not None:
            group_of: dict[str, int] = {}
            for index, group in enumerate(event.partition):
                for node in group:
                    group_of[node] = index
            rest = len(event.partition)
            for a, b in sorted(net.graph.edges):
                if group_of.get(a, rest) != group_of.get(b, rest):
                    net.cut(a, b)
        elif event.cost is not None:
            a, b, cost = event.cost
            if net.graph.has_edge(a, b):
                net.set_cost(a, b, cost)
            self.plan.edges[a, b]["cost"] = cost
        self._close_open_convergence()
        self.convergence.append(Convergence(at_s=round(self.t, 9), event=event.describe()))
        self._start_checking()

    def _heal(self, a: str, b: str) -> None:
        net = self.net
        if a not in net.cores or b not in net.cores or net.graph.has_edge(a, b):
            return
        attrs = dict(self.plan.edges[a, b]) if self.plan.has_edge(a, b) else {"cost": 1}
        cost = int(attrs.pop("cost", 1))
        net.heal(a, b, cost, **attrs)

    # --- convergence -----------------------------------------------------------------------

    def _graph_changed(self) -> None:
        self._truth = None
        self._matched.clear()

    def _current_truth(self) -> Truth:
        if isinstance(self.net, FastCoreNetwork):
            return self.net.model.truth()
        if self._truth is None:
            self._truth = GroundTruth(self.net.graph)
        return self._truth

    def _close_open_convergence(self) -> None:
        last = self.convergence[-1] if self.convergence else None
        if last is not None and last.converged_after_s is None:
            pass  # superseded: stays None

    def _start_checking(self) -> None:
        if not self._checking:
            self._checking = True
            self.net.schedule(self.net.now, self._check)

    def _check(self) -> None:
        if isinstance(self.net, FastCoreNetwork):
            # The installed versions are the truth's own arrays: count who has the newest.
            fraction = self.net.model.installed_fraction()
        else:
            fraction = self._matched_fraction()
        self.timeline.append((round(self.t, 6), fraction))
        if fraction == 1.0:
            self._checking = False
            current = self.convergence[-1]
            current.converged_after_s = round(self.t - current.at_s, 6)
            if not self._traffic_started:
                self._traffic_started = True
                self.initial_convergence_s = current.converged_after_s
                for index, traffic in enumerate(self.scenario.traffic):
                    if traffic.start_s is None:
                        self._schedule_traffic(index, traffic, self.t)
            return
        resolution = self.scenario.convergence_resolution_ms / 1000
        self.net.schedule(self.net.now + resolution, self._check)

    def _matched_fraction(self) -> float:
        truth = self._current_truth()
        matched = self._matched
        cores = self.net.cores
        for node, core in cores.items():
            table = core.table
            if matched.get(node) is table:
                continue
            if table == truth.table(node):
                matched[node] = table
            else:
                matched.pop(node, None)
        ok = sum(1 for node in cores if node in matched)
        return ok / len(cores) if cores else 1.0

    # --- observation ---------------------------------------------------------------------

    def _observe_batch(self, src: str, dst: str, frame: peer_pb2.Frame) -> None:
        # Cores run with hop tracing on: an envelope's trace lists the forwarders so far,
        # so a loop is the next hop already on it, exactly, per attempt.
        for envelope in frame.batch.envelopes:
            digest = envelope.digest
            known = self._digests.get(digest)
            if known is None:
                header = envelope_pb2.EnvelopeHeader()
                header.ParseFromString(envelope.header)
                known = (
                    header.message_id,
                    header.source,
                    header.recipient,
                    header.kind in _TRACKED_KINDS,
                )
                self._digests[digest] = known
            message_id, source, recipient, tracked = known
            # Trace entries are "node@unix_ms"; only the node names matter here.
            trace = [hop.rpartition("@")[0] or hop for hop in envelope.trace]
            if trace and trace[0] == source:
                trace = trace[1:]  # a source that traced its own message listed itself
            if dst == source or dst in trace:
                self.loops += 1
            if tracked and dst == recipient and message_id not in self._paths:
                self._paths[message_id] = self._path_cost([source, *trace, dst])

    def _path_cost(self, path: list[str]) -> int:
        graph = self.net.graph
        total = 0
        for a, b in itertools.pairwise(path):
            total += int(graph.edges[a, b].get("cost", 1)) if graph.has_edge(a, b) else 0
        return total

    def _observe(self, node: str, action: Deliver | Acked | Replied | Failed) -> None:
        if isinstance(action, Deliver):
            header = action.message.header
            message_id = header.message_id
            sent = self._messages.get(message_id)
            if sent is None:
                return
            if message_id in self._delivered_ids:
                self.duplicates += 1
                return
            self._delivered_ids.add(message_id)
            self.delivered += 1
            self.latencies.append((self.net.now - sent.at) * 1000)
            cost = self._paths.pop(message_id, None)
            if sent.truth is not None:
                sent.shortest = sent.truth.distance(sent.source, node)
                sent.truth = None
            shortest = sent.shortest
            if cost is not None and shortest:
                self.stretches.append(cost / shortest)
        elif isinstance(action, Acked):
            self.acked += 1
            self.ack_latencies.append(action.latency_s * 1000)
        elif isinstance(action, Replied):
            self.replied += 1
            self.ack_latencies.append(action.latency_s * 1000)
        else:
            self.failed[action.status.name] += 1

    # --- the report --------------------------------------------------------------------

    def _result(self) -> Result:
        net = self.net
        scenario = self.scenario
        modelled: dict[str, int] = {}
        if isinstance(net, FastCoreNetwork):
            net.finish_accounting()
            modelled = dict(net.modelled_frames)
        load: dict[tuple[str, str], dict[str, int]] = {}
        for sender, receiver, pipe in net.pipes_closed + net.live_pipes():
            a, b = sorted((sender, receiver))
            entry = load.setdefault(
                (a, b),
                {"frames_ab": 0, "frames_ba": 0, "bytes_ab": 0, "bytes_ba": 0, "envelopes": 0},
            )
            suffix = "ab" if sender == a else "ba"
            entry[f"frames_{suffix}"] += pipe.frames
            entry[f"bytes_{suffix}"] += pipe.bytes
            entry["envelopes"] += pipe.envelopes
        links = []
        for (a, b), entry in sorted(load.items()):
            row: dict[str, Any] = {"a": a, "b": b, **entry}
            bandwidth = (
                self.plan.edges[a, b].get("bandwidth_bps") if self.plan.has_edge(a, b) else None
            )
            if bandwidth:
                busiest = max(entry["bytes_ab"], entry["bytes_ba"])
                row["utilization"] = _round(8 * busiest / (bandwidth * scenario.duration_s))
            links.append(row)
        stats = Counter[str]()
        for core in net.cores.values():
            stats.update(core.stats)
        report: dict[str, Any] = {
            "scenario": scenario.name,
            "engine": self.engine,
            "fidelity": self.fidelity,
            "seed": scenario.seed,
            "nodes": self.plan.number_of_nodes(),
            "links": self.plan.number_of_edges(),
            "duration_s": scenario.duration_s,
            "drain_s": scenario.drain_s,
            "sent": self.sent,
            "delivered": self.delivered,
            "delivery_ratio": _round(self.delivered / self.sent) if self.sent else None,
            "duplicates_delivered": self.duplicates,
            "refused_at_source": dict(sorted(self.refused.items())),
            "acknowledged": {
                "sent": self.acknowledged_sent,
                "acked": self.acked,
                "pending_at_end": sum(len(o) for o in net.outbox.values()),
            },
            "requests": {"sent": self.requests_sent, "replied": self.replied},
            "failed": dict(sorted(self.failed.items())),
            "latency_ms": _percentiles(self.latencies),
            "ack_latency_ms": _percentiles(self.ack_latencies),
            "stretch": _round(sum(self.stretches) / len(self.stretches))
            if self.stretches
            else None,
            "stretch_max": _round(max(self.stretches)) if self.stretches else None,
            "control_messages": net.stats.control_frames,
            "control_bytes": net.stats.control_bytes,
            "frames_by_kind": dict(sorted(net.stats.frames.items())),
            "bytes_by_kind": dict(sorted(net.stats.bytes.items())),
            "initial_convergence_s": self.initial_convergence_s,
            "convergence": [
                {"at_s": _round(c.at_s), "event": c.event, "converged_after_s": c.converged_after_s}
                for c in self.convergence
            ],
            "loops_detected": self.loops,
            "ttl_expired": stats["dropped_ttl"],
            "dropped_no_route": stats["dropped_no_route"],
            "dropped_in_flight": net.stats.dropped_in_flight,
            "link_retransmissions": net.stats.retransmissions,
            "retransmits": stats["retransmits"],
            "held_no_route": stats["held_no_route"],
            "events_processed": net.events_processed,
            "modelled_frames": modelled,
            "link_load": links,
        }
        return Result(
            report=report,
            latencies_ms=sorted(self.latencies),
            timeline=self.timeline,
            graph=self.plan,
            link_load={(r["a"], r["b"]): r["bytes_ab"] + r["bytes_ba"] for r in links},
        )


def _pick_other(
    rng: random.Random, targets: list[str], positions: dict[str, int] | None, source: str
) -> str:
    """``rng.choice([t for t in targets if t != source] or targets)``, without the copy.

    The same draw (``choice(seq)`` is ``seq[randrange(len(seq))]``), so reports do
    not change; building the list was O(N) per message (0.6 ms at 10k nodes).
    ``positions``: index of each target, None when a name repeats.
    """
    if positions is None or len(targets) == 1:
        return rng.choice([t for t in targets if t != source] or targets)
    position = positions.get(source)
    if position is None:
        return rng.choice(targets)
    i = rng.randrange(len(targets) - 1)
    return targets[i if i < position else i + 1]


def _echo(message: Any) -> EncodedBody:
    return EncodedBody(data=message.body.data, content_type=ContentType.RAW)


def _round(value: float) -> float:
    return round(value, 6)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return _round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])

    return {
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "mean": _round(sum(ordered) / len(ordered)),
        "max": _round(ordered[-1]),
    }


def _with_link_defaults(scenario: Scenario) -> nx.Graph:
    """The topology with simulator link attributes (seconds, bits/s) filled in."""
    defaults = scenario.links
    graph = nx.Graph()
    for node, attrs in scenario.graph.nodes(data=True):
        graph.add_node(str(node), **attrs)
    for u, v, attrs in scenario.graph.edges(data=True):
        delay_ms = attrs.get("delay_ms") or defaults.delay_ms
        rate = attrs.get("rate_mbit") or defaults.bandwidth_mbit
        graph.add_edge(
            str(u),
            str(v),
            cost=int(attrs.get("cost", 1)),
            delay_s=float(delay_ms) / 1000,
            jitter_s=defaults.jitter_ms / 1000,
            bandwidth_bps=None if rate is None else float(rate) * 1e6,
            loss=float(attrs.get("loss") or defaults.loss),
        )
    return graph


def simulate(
    scenario: Scenario, *, engine: str | None = None, progress: Progress | None = None
) -> Result:
    """Run ``scenario`` (under ``engine``, default the scenario's) and return the result."""
    return Simulation(scenario, engine=engine, progress=progress).run()


__all__ = ["ENGINES", "Convergence", "Progress", "Result", "Simulation", "simulate"]
