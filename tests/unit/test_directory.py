"""Signed identity records and the directory that keeps them."""

from __future__ import annotations

import pytest

from mesh.crypto import NodeIdentity
from mesh.directory import IdentityDirectory, make_identity_record
from mesh.errors import AuthenticationFailed, Malformed, TooLarge
from mesh.routing.errors import StaleUpdate
from mesh.v1 import peer_pb2
from tests.unit.conftest import identity


def directory(**options: object) -> IdentityDirectory:
    return IdentityDirectory(make_identity_record(identity("a"), 1), **options)  # type: ignore[arg-type]


def test_a_new_record_is_learned_once() -> None:
    held = directory()
    record = make_identity_record(identity("b"), 1)
    public = held.offer(record)
    assert public is not None and public == identity("b").public
    assert held.offer(record) is None
    assert len(held) == 2


def test_a_newer_record_replaces_an_older_one_and_an_older_is_stale() -> None:
    held = directory()
    held.offer(make_identity_record(identity("b"), 5))
    assert held.offer(make_identity_record(identity("b"), 6)) is not None
    with pytest.raises(StaleUpdate):
        held.offer(make_identity_record(identity("b"), 4))


def test_a_forged_record_is_refused_and_changes_nothing() -> None:
    held = directory()
    record = make_identity_record(identity("b"), 1)
    record.agreement_key = identity("c").public.agreement_key
    with pytest.raises(AuthenticationFailed, match="not signed by its own key"):
        held.offer(record)
    assert held.get("b") is None


def test_a_new_key_for_a_known_node_needs_a_ca() -> None:
    held = directory()
    held.offer(make_identity_record(identity("b"), 1))
    usurper = make_identity_record(NodeIdentity.generate("b"), 2)
    with pytest.raises(AuthenticationFailed, match="without a CA"):
        held.offer(usurper)
    assert held.get("b") is not None and held.get("b").sequence == 1  # type: ignore[union-attr]


def test_the_certificate_check_is_applied() -> None:
    def refuse(record: peer_pb2.IdentityRecord) -> None:
        raise AuthenticationFailed(f"certificate of {record.node_id!r} is not the mesh CA's")

    held = directory(check_certificate=refuse)
    with pytest.raises(AuthenticationFailed, match="mesh CA"):
        held.offer(make_identity_record(identity("b"), 1))


def test_bad_shapes_and_a_full_directory_are_refused() -> None:
    held = directory(max_records=2)
    with pytest.raises(Malformed):
        held.offer(peer_pb2.IdentityRecord(node_id="", signing_key=b"x"))
    with pytest.raises(Malformed):
        held.offer(peer_pb2.IdentityRecord(node_id="z", signing_key=b"short"))
    with pytest.raises(TooLarge):
        held.offer(make_identity_record(identity("b"), 1, certificate=b"c" * 10_000))
    held.offer(make_identity_record(identity("b"), 1))
    with pytest.raises(TooLarge, match="full"):
        held.offer(make_identity_record(identity("c"), 1))
