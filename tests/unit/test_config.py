"""Topology and node config files: the shipped topologies, and errors that name file and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import networkx as nx
import pytest

from nodes.config import (
    ConfigError,
    Neighbour,
    NodeConfig,
    NodeSettings,
    ServiceSpec,
    TlsFiles,
    Topology,
    address,
    load_node_config,
    load_topology,
)

TOPOLOGIES = Path(__file__).resolve().parents[2] / "deploy" / "topologies"


def write(tmp_path: Path, text: str, name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def topology_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    return caught.value


def node_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text, "node.yaml")
    with pytest.raises(ConfigError) as caught:
        load_node_config(path)
    return caught.value


def assert_line(error: ConfigError, field: str, problem: str) -> None:
    """One line of the message names the file, the field and the problem."""
    assert error.path is not None
    wanted = [
        line
        for line in str(error).splitlines()
        if line.startswith(f"{error.path}: {field}: ") and problem in line
    ]
    assert wanted, f"no line for {field!r} / {problem!r} in:\n{error}"


# --- the shipped topologies ---------------------------------------------------------------


def test_the_demo_topology_has_two_disjoint_paths_and_weighted_echo() -> None:
    topology = load_topology(TOPOLOGIES / "demo.yaml")
    graph = topology.graph()
    assert topology.mesh == "demo" and topology.routing == "link-state"
    assert sorted(graph) == list("abcdef")
    assert len(list(nx.node_disjoint_paths(graph, "a", "f"))) >= 2
    assert nx.shortest_path(graph, "a", "f", weight="cost") == ["a", "b", "c", "f"]
    assert graph.has_edge("b", "e")
    echo = {name: node.services["echo"] for name, node in topology.nodes.items() if node.services}
    assert echo == {
        "c": ServiceSpec(handler="echo", weight=1),
        "e": ServiceSpec(handler="echo", weight=2),
    }


def test_the_line_topology_is_a_path_of_five() -> None:
    graph = load_topology(TOPOLOGIES / "line5.yaml").graph()
    assert nx.is_isomorphic(graph, nx.path_graph(5))
    assert nx.shortest_path(graph, "n1", "n5") == ["n1", "n2", "n3", "n4", "n5"]


def test_the_ring_topology_is_a_cycle_of_six_routed_by_distance_vector() -> None:
    topology = load_topology(TOPOLOGIES / "ring6.yaml")
    assert topology.routing == "distance-vector"
    assert nx.is_isomorphic(topology.graph(), nx.cycle_graph(6))


@pytest.mark.parametrize("name", ["demo.yaml", "line5.yaml", "ring6.yaml"])
def test_shipped_topologies_have_unequal_costs_and_no_fixed_ports(name: str) -> None:
    topology = load_topology(TOPOLOGIES / name)
    assert len({link.cost for link in topology.links}) > 1
    assert all(node.port is None for node in topology.nodes.values())


def test_the_graph_carries_cost_delay_and_loss_and_isolated_nodes(tmp_path: Path) -> None:
    topology = load_topology(
        write(
            tmp_path,
            """
            mesh: m
            nodes: {a: {}, b: {}, lonely: {}}
            links: [{a: a, b: b, cost: 7, delay_ms: 2.5, loss: 0.01}]
            settings: {heartbeat_ms: 50, dead_ms: 200}
            """,
        )
    )
    graph = topology.graph()
    assert graph.edges["b", "a"] == {"cost": 7, "delay_ms": 2.5, "loss": 0.01, "rate_mbit": None}
    assert "lonely" in graph
    assert topology.settings == NodeSettings(heartbeat_ms=50, dead_ms=200)
    assert topology.neighbours("b") == [("a", 7)]


# --- topology errors ---------------------------------------------------------------------------


def test_a_bad_field_is_named_by_its_path(tmp_path: Path) -> None:
    error = topology_error(
        tmp_path,
        """
        mesh: m
        nodes: {a: {}, b: {}, c: {}}
        links:
          - {a: a, b: b}
          - {a: b, b: c}
          - {a: a, b: c, cost: 0}
        """,
    )
    assert_line(error, "links[2].cost", "greater than or equal to 1 (got 0)")
    assert error.problems == [("links[2].cost", error.problems[0][1])]


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    error = topology_error(
        tmp_path,
        """
        mesh: m
        routing: ospf
        nodes:
          a: {port: 70000}
          "bad name": {}
          b: {services: {echo: {weight: 0, handlr: echo}}}
        links:
          - {a: a, b: b, cots: 3, loss: 1.5}
        """,
    )
    assert_line(error, "routing", "'link-state' or 'distance-vector'")
    assert_line(error, "nodes.a.port", "less than or equal to 65535")
    assert_line(error, "nodes['bad name']", "not a valid name")
    assert_line(error, "nodes.b.services.echo.weight", "greater than or equal to 1")
    assert_line(error, "nodes.b.services.echo.handlr", "unknown field (did you mean 'handler'?)")
    assert_line(error, "links[0].cots", "did you mean 'cost'?")
    assert_line(error, "links[0].loss", "less than or equal to 1")
    assert len(str(error).splitlines()) == len(error.problems) == 7


def test_links_must_join_declared_distinct_nodes_once(tmp_path: Path) -> None:
    error = topology_error(
        tmp_path,
        """
        mesh: m
        nodes: {a: {}, b: {}}
        links:
          - {a: a, b: b}
          - {a: b, b: a, cost: 3}
          - {a: a, b: a}
          - {a: a, b: ghost}
        """,
    )
    assert_line(error, "links[1]", "duplicate of links[0]")
    assert_line(error, "links[2]", "links 'a' to itself")
    assert_line(error, "links[3].b", "'ghost' is not a node declared under nodes")


def test_ports_must_be_unique(tmp_path: Path) -> None:
    error = topology_error(
        tmp_path,
        """
        mesh: m
        nodes: {a: {port: 7000}, b: {port: 7000}}
        """,
    )
    assert_line(error, "nodes.b.port", "port 7000 is already used by node 'a'")


def test_missing_fields_and_an_empty_mesh_are_refused(tmp_path: Path) -> None:
    error = topology_error(tmp_path, "routing: link-state\nnodes: {}\n")
    assert_line(error, "mesh", "required field is missing")
    assert_line(error, "nodes", "at least 1 item")


def test_settings_must_be_consistent(tmp_path: Path) -> None:
    error = topology_error(
        tmp_path,
        """
        mesh: m
        nodes: {a: {}}
        settings: {heartbeat_ms: 900, reconnect_min_ms: 500, reconnect_max_ms: 100}
        """,
    )
    assert_line(error, "settings.dead_ms", "must be greater than heartbeat_ms (900), got 800")
    assert_line(error, "settings.reconnect_max_ms", "at least reconnect_min_ms (500)")


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("mesh: m\nnodes: [a\n", "line 3, column 1", "YAML syntax error"),
        ("mesh: m\nnodes:\n  a: {}\n  a: {}\n", "line 4, column 3", "duplicate key 'a'"),
        ("- a\n- b\n", "(top level)", "expected a mapping of fields, got a list"),
        ("", "(top level)", "the file is empty"),
    ],
)
def test_unparseable_files_are_refused_with_the_place(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    assert_line(topology_error(tmp_path, text), field, problem)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_topology(tmp_path / "nope.yaml")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: (file): does not exist"


def test_config_errors_are_invalid_argument() -> None:
    assert ConfigError.status.name == "INVALID_ARGUMENT"


def test_a_topology_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match=r"links\[0\]\.b: 'z' is not a node"):
        Topology.model_validate({"mesh": "m", "nodes": {"a": {}}, "links": [{"a": "a", "b": "z"}]})


# --- node configs ---------------------------------------------------------------------------


NODE = """
node_id: a
mesh: demo
routing: distance-vector
listen: 0.0.0.0:7001
state_dir: state/a
tls: {ca: ../pki/ca.pem, cert: a/node.pem, key: /etc/mesh/a/node.key}
metrics_port: 9101
neighbours:
  - {node: b, address: "10.0.0.2:7001", cost: 3}
  - {node: c, address: "[::1]:7002"}
services: {echo: {handler: echo, weight: 2}}
subjects: [demo.news]
settings: {heartbeat_ms: 100, dead_ms: 400, cost_mode: rtt, trace: true}
"""


def test_a_node_config_resolves_relative_paths_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = load_node_config(write(tmp_path / "conf", NODE, "a.yaml"))
    assert config.state_dir == tmp_path / "conf" / "state" / "a"
    assert config.tls == TlsFiles(
        ca=tmp_path / "pki" / "ca.pem",
        cert=tmp_path / "conf" / "a" / "node.pem",
        key=Path("/etc/mesh/a/node.key"),
    )
    assert config.neighbours == [
        Neighbour(node="b", address="10.0.0.2:7001", cost=3),
        Neighbour(node="c", address="[::1]:7002"),
    ]
    assert config.settings.cost_mode == "rtt" and config.settings.batch_max == 64
    assert not config.insecure


def test_a_dumped_node_config_loads_back_equal(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = load_node_config(write(tmp_path / "conf", NODE, "a.yaml"))
    out = tmp_path / "run" / "a.yaml"
    out.parent.mkdir()
    config.dump(out)
    assert load_node_config(out) == config
    # Paths under the file's folder are written relative to it; others stay absolute.
    built = NodeConfig(
        node_id="b",
        mesh="demo",
        state_dir=out.parent / "b",
        tls=TlsFiles(ca=tmp_path / "ca.pem", cert=out.parent / "b.pem", key=out.parent / "b.key"),
        neighbours=[Neighbour(node="a", address="127.0.0.1:7001")],
    )
    built.dump(out)
    assert "state_dir: b\n" in out.read_text()
    assert load_node_config(out) == built


def test_a_node_needs_exactly_one_of_tls_and_insecure(tmp_path: Path) -> None:
    base = "node_id: a\nmesh: m\nstate_dir: s\n"
    error = node_error(tmp_path, base)
    assert_line(error, "tls", "required: give tls (ca, cert, key), or set insecure: true")
    both = base + "insecure: true\ntls: {ca: ca.pem, cert: a.pem, key: a.key}\n"
    assert_line(node_error(tmp_path, both), "insecure", "cannot be true when tls is given")
    assert load_node_config(write(tmp_path, base + "insecure: true\n")).tls is None


def test_node_config_errors_name_the_field(tmp_path: Path) -> None:
    error = node_error(
        tmp_path,
        """
        node_id: a
        mesh: m
        state_dir: s
        insecure: true
        listen: localhost
        neighbours:
          - {node: b, address: "b:0"}
          - {node: c, address: "c"}
        """,
    )
    assert_line(error, "listen", "'localhost' is not an address: expected host:port")
    assert_line(error, "neighbours[0].address", "a neighbour's port cannot be 0")
    assert_line(error, "neighbours[1].address", "expected host:port")


def test_neighbours_are_other_nodes_listed_once(tmp_path: Path) -> None:
    error = node_error(
        tmp_path,
        """
        node_id: a
        mesh: m
        state_dir: s
        insecure: true
        neighbours:
          - {node: a, address: "h:1"}
          - {node: b, address: "h:2"}
          - {node: b, address: "h:3"}
        """,
    )
    assert_line(error, "neighbours[0].node", "a node cannot neighbour itself")
    assert_line(error, "neighbours[2].node", "'b' is already neighbours[1]")


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("node-a.mesh.svc:7001", ("node-a.mesh.svc", 7001)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_addresses_split_into_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("localhost", "expected host:port"),
        (":7001", "expected host:port"),
        ("h:65536", "port must be 0..65535"),
        ("h:x", "port must be 0..65535"),
        ("::1:7001", "write IPv6 hosts as [addr]:port"),
        ("[]:7001", "bad [IPv6] host"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        address(text)
