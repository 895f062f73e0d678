"""The Prometheus collector reads a node's counters, links and routes at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mesh.core import CoreConfig
from nodes.metrics import NodeCollector
from nodes.runtime import NodeRuntime, RuntimeOptions, Transport
from tests.unit.conftest import identity


def test_a_scrape_shows_counters_links_and_routes() -> None:
    runtime = NodeRuntime(identity("a"), CoreConfig(mesh_id="m"), RuntimeOptions(), Transport())
    runtime.core.stats["forwarded"] += 3
    runtime.core.stats["dropped_ttl"] += 2
    runtime.core.stats["rejected_envelope_data_loss"] += 1
    runtime.core.link_up("b", 7, 0.0)
    registry = CollectorRegistry()
    registry.register(NodeCollector(runtime))
    text = generate_latest(registry).decode()
    assert 'mesh_envelopes_total{event="forwarded",node="a"} 3.0' in text
    assert 'mesh_envelopes_dropped_total{node="a",reason="ttl"} 2.0' in text
    assert 'mesh_digest_failures_total{node="a"} 1.0' in text
    assert 'mesh_link_up{node="a",peer="b"} 0.0' in text  # awaiting its hello
    assert 'mesh_link_cost{node="a",peer="b"} 7.0' in text
    assert 'mesh_routes{node="a"} 1.0' in text
