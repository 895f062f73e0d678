"""Coverage-guided fuzzing with atheris (libFuzzer) of the targets tests/unit/test_fuzz.py covers.

A script, not a test module (pytest does not collect this name). Each target
feeds the fuzzer's bytes to one decoder or loader and lets only ``MeshError``
through silently; anything else is a crash that libFuzzer reports with the
input that caused it::

    .venv/bin/pip install atheris        # optional, not a project dependency
    .venv/bin/python tests/fuzz/atheris_targets.py frame -runs=100000
    .venv/bin/python tests/fuzz/atheris_targets.py topology -max_total_time=60

Targets: frame, core-link-state, core-distance-vector, envelope, codec,
identity, topology, node-config, scenario. Arguments after the target go to
libFuzzer (``-runs``, ``-max_total_time``, a corpus directory, a crash file to
replay). ``--seeds TARGET DIR`` writes valid inputs into DIR to start a corpus
from, so mutations begin past the parsers::

    .venv/bin/python tests/fuzz/atheris_targets.py --seeds envelope /tmp/corpus-envelope
    .venv/bin/python tests/fuzz/atheris_targets.py envelope -runs=100000 /tmp/corpus-envelope
 The core targets keep one linked pair of cores for the whole run, so
they fuzz a sequence of frames, not one frame at a time.

tests/unit/test_fuzz.py runs every target over a few inputs without atheris,
so the targets cannot rot.
"""

from __future__ import annotations

import contextlib
import random
import sys
import tempfile
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

from google.protobuf.message import DecodeError as ProtobufDecodeError

try:
    import atheris
except ImportError:  # optional: the targets also run without it
    atheris = None

# Coverage feedback from our code only (instrumenting every library loaded
# takes minutes); only when run as the fuzzer, not when a test imports this.
with (
    atheris.instrument_imports(include=["mesh", "nodes"])
    if atheris is not None and __name__ == "__main__"
    else contextlib.nullcontext()
):
    from mesh.actions import SendFrame
    from mesh.codec import (
        Compression,
        Compressor,
        ContentType,
        EncodedBody,
        decode_body,
        encode_body,
    )
    from mesh.core import CoreConfig, NodeCore
    from mesh.crypto import KeyRing, NodeIdentity
    from mesh.directory import IdentityDirectory, make_identity_record
    from mesh.envelope import (
        Header,
        Limits,
        Opener,
        Sealer,
        parse_envelope,
        read_header,
        verify,
    )
    from mesh.errors import MeshError
    from mesh.v1 import envelope_pb2, peer_pb2
    from nodes.commands.sim import load_scenario
    from nodes.config import load_node_config, load_topology
    from nodes.links import parse_frame

NOW_MS = 1_800_000_000_000
NOW = NOW_MS / 1000
LIMITS = Limits(max_envelope_bytes=64 * 1024, max_body_bytes=16 * 1024, max_header_bytes=1024)
ENGINES = {
    "link-state": peer_pb2.ROUTING_ENGINE_LINK_STATE,
    "distance-vector": peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR,
}


def _ignore_mesh_errors(call: Callable[..., object], *args: object) -> object:
    """``call(*args)``, or None when it raises a MeshError; anything else propagates (a crash)."""
    try:
        return call(*args)
    except MeshError:
        return None


@cache
def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="mesh-atheris-"))


@cache
def _identity(name: str) -> NodeIdentity:
    return NodeIdentity.generate(name)


def _core(name: str, engine: str) -> NodeCore:
    config = CoreConfig(mesh_id="fuzz", engine=ENGINES[engine], limits=LIMITS)
    return NodeCore(_identity(name), config, random_bytes=random.Random(name).randbytes)


@cache
def _pair(engine: str) -> tuple[NodeCore, NodeCore, float]:
    """Core ``a`` linked up with ``b`` (both ways, routes exchanged), and the time."""
    a, b = _core("a", engine), _core("b", engine)
    cores = {"a": a, "b": b}
    queue = [("a", x) for x in a.link_up("b", 1, NOW) if isinstance(x, SendFrame)]
    queue += [("b", x) for x in b.link_up("a", 1, NOW) if isinstance(x, SendFrame)]
    now = NOW
    for _ in range(40):
        while queue:
            source, send = queue.pop(0)
            target = cores[send.peer]
            queue += [
                (send.peer, x)
                for x in target.frame_received(source, send.frame, now)
                if isinstance(x, SendFrame)
            ]
        if a.table.next_hops("b") and b.table.next_hops("a"):
            break
        now += 0.05
        for name, core in cores.items():
            queue += [(name, x) for x in core.tick(now) if isinstance(x, SendFrame)]
    return a, b, now


@cache
def _opener() -> Opener:
    ring = KeyRing(_identity("c"), random_bytes=random.Random("c").randbytes)
    ring.add_peer(_identity("a").public)
    return Opener(ring, limits=LIMITS)


# --- targets ---------------------------------------------------------------------------------


def frame(data: bytes) -> None:
    """The bytes a peer writes on a link, parsed as the runtime parses them."""
    _ignore_mesh_errors(parse_frame, data)


def _core_target(engine: str, data: bytes) -> None:
    a, b, now = _pair(engine)
    parsed = _ignore_mesh_errors(parse_frame, data)
    if not isinstance(parsed, peer_pb2.Frame):
        return
    if "b" not in {p.peer for p in a.peers()}:  # the last input closed the link
        a.link_up("b", 1, now)
        a.frame_received("b", b.hello(now, 1), now)
    a.frame_received("b", parsed, now)  # documented never to raise


def core_link_state(data: bytes) -> None:
    """Frames from a linked-up neighbour into a link-state core."""
    _core_target("link-state", data)


def core_distance_vector(data: bytes) -> None:
    """Frames from a linked-up neighbour into a distance-vector core."""
    _core_target("distance-vector", data)


def envelope(data: bytes) -> None:
    """Envelope bytes through parse, verify, read_header and open."""
    parsed = _ignore_mesh_errors(parse_envelope, data, LIMITS)
    if parsed is None:
        return
    _ignore_mesh_errors(verify, parsed, LIMITS)
    _ignore_mesh_errors(read_header, parsed, LIMITS)
    _ignore_mesh_errors(lambda e: _opener().open(e, now_ms=NOW_MS), parsed)


def codec(data: bytes) -> None:
    """Body decoding and bounded decompression; the first byte picks the variant."""
    if not data:
        return
    selector, rest = data[0], data[1:]
    content_type = list(ContentType)[selector % 3]
    body = EncodedBody(data=rest, content_type=content_type, body_type="mesh.v1.Frame")
    _ignore_mesh_errors(decode_body, body, peer_pb2.Frame if selector & 4 else None)
    compression = list(Compression)[(selector >> 3) % 3]
    _ignore_mesh_errors(Compressor().decompress, rest, compression, 16 * 1024)


def identity(data: bytes) -> None:
    """An identity record as a neighbour floods it."""
    record = peer_pb2.IdentityRecord()
    try:
        record.ParseFromString(data)
    except ProtobufDecodeError:
        return
    directory = IdentityDirectory(make_identity_record(_identity("a"), 1))
    _ignore_mesh_errors(directory.offer, record)


def _load(loader: Callable[[Path], object], data: bytes) -> None:
    path = _scratch() / "doc.yaml"
    path.write_bytes(data)
    _ignore_mesh_errors(loader, path)


def topology(data: bytes) -> None:
    """A topology file."""
    _load(load_topology, data)


def node_config(data: bytes) -> None:
    """A node config file."""
    _load(load_node_config, data)


def scenario(data: bytes) -> None:
    """A scenario file (it may name the topology.yaml beside it)."""
    (_scratch() / "topology.yaml").write_text(
        "mesh: lab\nnodes: {a: {}, b: {}}\nlinks: [{a: a, b: b}]\n"
    )
    _load(load_scenario, data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frame": frame,
    "core-link-state": core_link_state,
    "core-distance-vector": core_distance_vector,
    "envelope": envelope,
    "codec": codec,
    "identity": identity,
    "topology": topology,
    "node-config": node_config,
    "scenario": scenario,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs for ``target``: a corpus to start from, so mutations begin deep inside."""
    if target in ("frame", "core-link-state", "core-distance-vector"):
        engine = "distance-vector" if target.endswith("vector") else "link-state"
        _, b, now = _pair.__wrapped__(engine)  # a pair of its own: the fuzzer's stays as it is
        frames = [b.hello(now, 1), *(peer_pb2.Frame(identity=r) for r in b.directory)]
        _, actions = b.submit("a", encode_body({"seed": 1}), now)
        frames += [x.frame for x in actions if isinstance(x, SendFrame)]
        frames += [x.frame for x in b.tick(now + 0.3) if isinstance(x, SendFrame)]
        return [f.SerializeToString() for f in frames]
    if target == "envelope":
        ring = KeyRing(_identity("a"), random_bytes=random.Random("a").randbytes)
        ring.add_peer(_identity("c").public)
        header = Header(
            message_id=bytes(16),
            source="a",
            destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
            destination="c",
            recipient="c",
            created_ms=NOW_MS,
        )
        return [
            Sealer(ring, sign=sign).seal(header, encode_body(body)).SerializeToString()
            for sign in (False, True)
            for body in ({"k": 1}, bytes(1000))
        ]
    if target == "codec":
        return [b"\x02" + b'{"a": [1, 2]}', b"\x08" + zlib.compress(bytes(100)), b"\x10"]
    if target == "identity":
        return [make_identity_record(_identity("b"), 3).SerializeToString()]
    docs = {
        "topology": "mesh: lab\nnodes: {a: {port: 7001}, b: {}}\nlinks: [{a: a, b: b, cost: 2}]\n",
        "node-config": "node_id: a\nmesh: lab\nstate_dir: s\ninsecure: true\n"
        "neighbours: [{node: b, address: '127.0.0.1:7002'}]\n",
        "scenario": "topology: topology.yaml\nduration_s: 2\ntraffic: [{to: b}]\n"
        "events: [{at_s: 1, cut: [a, b]}]\n",
    }
    return [docs[target].encode()]


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "--seeds" and argv[2] in TARGETS:
        corpus = Path(argv[3])
        corpus.mkdir(parents=True, exist_ok=True)
        for index, data in enumerate(seeds(argv[2])):
            (corpus / f"seed-{index}").write_bytes(data)
        return 0
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(
            f"usage: {argv[0]} TARGET [libFuzzer options] | --seeds TARGET CORPUS_DIR\n"
            f"TARGET one of {', '.join(TARGETS)}"
        )
        return 2
    if atheris is None:
        print("atheris is not installed: .venv/bin/pip install atheris")
        return 2
    atheris.Setup([argv[0], *argv[2:]], TARGETS[argv[1]])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
