"""Identities, key files, pair keys and nonces."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mesh.crypto import (
    AGREEMENT_KEY_FILE,
    SIGNING_KEY_FILE,
    Cipher,
    KeyRing,
    NodeIdentity,
    PublicIdentity,
    derive_pair_key,
    write_private_key,
)
from mesh.errors import (
    AuthenticationFailed,
    KeyExhausted,
    KeyFileError,
    Malformed,
    UnknownRecipient,
    UnknownSender,
)
from tests.unit.conftest import identity, keyring


def test_keys_round_trip_through_pem_files_with_mode_0600(tmp_path: Path) -> None:
    node = NodeIdentity.generate("n1")
    node.save(tmp_path / "keys")
    for name in (SIGNING_KEY_FILE, AGREEMENT_KEY_FILE):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    loaded = NodeIdentity.load("n1", tmp_path / "keys")
    assert loaded.public == node.public


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        NodeIdentity.load("n1", tmp_path)


def test_key_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    write_private_key(tmp_path / SIGNING_KEY_FILE, X25519PrivateKey.generate())
    with pytest.raises(KeyFileError, match="expected Ed25519PrivateKey"):
        NodeIdentity.load("n1", tmp_path)


def test_key_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SIGNING_KEY_FILE
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        NodeIdentity.load("n1", tmp_path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    NodeIdentity.generate("n1").save(tmp_path)
    (tmp_path / SIGNING_KEY_FILE).chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        NodeIdentity.load("n1", tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of mode")
def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    NodeIdentity.generate("n1").save(tmp_path)
    (tmp_path / SIGNING_KEY_FILE).chmod(0o000)
    with pytest.raises(KeyFileError):
        NodeIdentity.load("n1", tmp_path)


def test_signatures_verify_and_forgeries_do_not() -> None:
    node = identity("a")
    signature = node.sign(b"advert")
    node.public.verify(b"advert", signature)
    with pytest.raises(AuthenticationFailed):
        node.public.verify(b"advert!", signature)
    with pytest.raises(AuthenticationFailed):
        identity("b").public.verify(b"advert", signature)


def test_public_identity_with_bad_key_sizes_is_malformed() -> None:
    with pytest.raises(Malformed):
        PublicIdentity("x", b"\0" * 31, b"\0" * 32)


@pytest.mark.parametrize("cipher", list(Cipher))
def test_both_ends_derive_the_same_pair_key(cipher: Cipher) -> None:
    a, c = identity("a"), identity("c")
    session = b"s" * 16
    sent = derive_pair_key(
        a.agreement_key,
        c.public.agreement,
        session=session,
        source="a",
        destination="c",
        cipher=cipher,
    )
    received = derive_pair_key(
        c.agreement_key,
        a.public.agreement,
        session=session,
        source="a",
        destination="c",
        cipher=cipher,
    )
    assert sent == received and len(sent) == 32


def test_pair_keys_differ_by_direction_session_and_cipher() -> None:
    a, c = identity("a"), identity("c")

    def key(source: str, destination: str, session: bytes, cipher: Cipher) -> bytes:
        return derive_pair_key(
            a.agreement_key,
            c.public.agreement,
            session=session,
            source=source,
            destination=destination,
            cipher=cipher,
        )

    base = key("a", "c", b"1" * 16, Cipher.AES_256_GCM)
    assert base != key("c", "a", b"1" * 16, Cipher.AES_256_GCM)
    assert base != key("a", "c", b"2" * 16, Cipher.AES_256_GCM)
    assert base != key("a", "c", b"1" * 16, Cipher.CHACHA20_POLY1305)


def test_nonces_never_repeat_and_the_key_rotates_when_exhausted() -> None:
    ring = KeyRing(identity("a"), random_bytes=os.urandom, max_messages_per_key=3)
    ring.add_peer(identity("c").public)
    first = ring.sealing_session("c", Cipher.AES_256_GCM)
    nonces = [first.next_nonce() for _ in range(3)]
    assert len(set(nonces)) == 3
    with pytest.raises(KeyExhausted):
        first.next_nonce()
    second = ring.sealing_session("c", Cipher.AES_256_GCM)
    assert second.key_id != first.key_id
    assert second.next_nonce() == nonces[0]  # same counter value, but under a new key


def test_sealing_to_an_unknown_node_is_refused() -> None:
    with pytest.raises(UnknownRecipient, match="'zed'"):
        keyring("a").sealing_session("zed", Cipher.AES_256_GCM)


def test_opening_from_an_unknown_node_is_refused() -> None:
    with pytest.raises(UnknownSender, match="'zed'"):
        keyring("c").opening_aead("zed", b"k" * 16, Cipher.AES_256_GCM)


def test_replacing_a_peer_identity_forgets_keys_derived_from_the_old_one() -> None:
    ring = keyring("a")
    old = ring.sealing_session("c", Cipher.AES_256_GCM)
    ring.add_peer(NodeIdentity.generate("c").public)
    assert ring.sealing_session("c", Cipher.AES_256_GCM).key_id != old.key_id


def test_opening_key_cache_is_bounded() -> None:
    ring = KeyRing(identity("c"), random_bytes=os.urandom, max_cached_keys=2)
    ring.add_peer(identity("a").public)
    for n in range(5):
        ring.opening_aead("a", bytes([n]) * 16, Cipher.AES_256_GCM)
    assert len(ring._opening) == 2


def test_rings_can_share_one_directory_of_peers() -> None:
    # The simulator's 10,000 rings share one map instead of holding 10,000 copies.
    directory = {"b": identity("b").public}
    a, c = keyring("a", known=()), keyring("c", known=())
    a.share_directory(directory)
    c.share_directory(directory)
    assert set(directory) == {"a", "b", "c"}
    assert a.peer("c") == identity("c").public  # learnt through the shared map
    a.sealing_session("b", Cipher.AES_256_GCM)
    c.add_peer(identity("d").public)
    assert a.peer("d") == identity("d").public
