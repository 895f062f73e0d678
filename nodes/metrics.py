"""Prometheus metrics of one node, read from the core and the runtime at scrape time.

A collector, not counters incremented along the hot path: the core already
counts everything (``NodeCore.stats``), so a scrape turns those counts into
metric families and the forwarding path pays nothing. Each node has its own
registry (no process-global state), served on ``--metrics-port``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nodes.runtime import NodeRuntime

# core.stats keys that become labelled families: prefix -> (metric, label)
_DROPPED_PREFIX = "dropped_"
_REJECTED_PREFIX = "rejected_"


class NodeCollector(Collector):
    """Exports a runtime's counters, links and routes."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        runtime = self.runtime
        stats = dict(runtime.core.stats)
        for name, value in runtime.counters.items():
            stats[name] = stats.get(name, 0) + value
        node = runtime.node_id
        envelopes = CounterMetricFamily(
            "mesh_envelopes",
            "Envelopes handled, by what happened to them",
            labels=["node", "event"],
        )
        for event in ("sealed", "forwarded", "delivered"):
            envelopes.add_metric([node, event], stats.get(event, 0))
        yield envelopes
        dropped = CounterMetricFamily(
            "mesh_envelopes_dropped", "Envelopes dropped, by reason", labels=["node", "reason"]
        )
        rejected = CounterMetricFamily(
            "mesh_input_rejected",
            "Input refused, by what it was and the status it got",
            labels=["node", "kind"],
        )
        other = CounterMetricFamily("mesh_events", "Other node events", labels=["node", "event"])
        for key, value in sorted(stats.items()):
            if key.startswith(_DROPPED_PREFIX):
                dropped.add_metric([node, key[len(_DROPPED_PREFIX) :]], value)
            elif key.startswith(_REJECTED_PREFIX):
                rejected.add_metric([node, key[len(_REJECTED_PREFIX) :]], value)
            elif key not in ("sealed", "forwarded", "delivered"):
                other.add_metric([node, key], value)
        yield dropped
        yield rejected
        yield other
        digest = CounterMetricFamily(
            "mesh_digest_failures", "Envelopes whose digest did not match", labels=["node"]
        )
        digest.add_metric([node], sum(v for k, v in stats.items() if k.endswith("_data_loss")))
        yield digest
        state = GaugeMetricFamily("mesh_link_up", "1 when the link is up", labels=["node", "peer"])
        rtt = GaugeMetricFamily("mesh_link_rtt_seconds", "Smoothed RTT", labels=["node", "peer"])
        cost = GaugeMetricFamily("mesh_link_cost", "Link cost in use", labels=["node", "peer"])
        depth = GaugeMetricFamily(
            "mesh_link_queue_depth", "Data frames queued", labels=["node", "peer"]
        )
        sent = CounterMetricFamily(
            "mesh_link_bytes_sent", "Bytes written on the link", labels=["node", "peer"]
        )
        for info in runtime.core.peers():
            labels = [node, info.peer]
            state.add_metric(labels, 1.0 if info.phase == "up" else 0.0)
            cost.add_metric(labels, info.cost)
            if info.rtt_ms is not None:
                rtt.add_metric(labels, info.rtt_ms / 1000)
            link = runtime.links.get(info.peer)
            depth.add_metric(labels, link.queue_depth if link else 0)
            sent.add_metric(labels, link.bytes_written if link else 0)
        yield from (state, rtt, cost, depth, sent)
        routes = GaugeMetricFamily("mesh_routes", "Reachable destinations", labels=["node"])
        routes.add_metric([node], len(runtime.core.table))
        yield routes


def start_metrics(runtime: NodeRuntime, port: int, host: str = "127.0.0.1") -> int:
    """Serve this node's metrics over HTTP on ``host:port``; returns the port."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(runtime))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


__all__ = ["NodeCollector", "start_metrics"]
