"""Identities, key agreement, pair keys and the AEAD.

A node has two long-lived keys: Ed25519 to sign what it originates (adverts,
identity records, optionally envelopes) and X25519 to agree keys with other
nodes. A source never encrypts under the static shared secret itself: for each
recipient it picks a fresh random 16-byte session id and derives the pair key
with HKDF-SHA256 (salt = session id, info = cipher + source + destination).
Nonces are a 96-bit counter under that key, so a (key, nonce) pair can never
repeat: the counter only grows, and a restarted node starts a new session with a
new random id instead of resuming a counter. docs/protocol.md states the limits.

The only randomness here is key generation (from the OS, via cryptography) and
session ids, which come from a ``random_bytes`` callable the caller injects.
"""

from __future__ import annotations

import enum
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.errors import (
    AuthenticationFailed,
    InvalidArgument,
    KeyExhausted,
    KeyFileError,
    Malformed,
    UnknownRecipient,
    UnknownSender,
)
from mesh.v1 import envelope_pb2

KEY_ID_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

MAX_MESSAGES_PER_KEY = 2**32
"""Messages one pair key may seal before the sender rotates to a new session.

Counter nonces make reuse impossible well past this; the bound is the one NIST
SP 800-38D gives for invocations of GCM under one key, kept for ChaCha too.
"""

SIGNING_KEY_FILE = "signing.pem"
AGREEMENT_KEY_FILE = "agreement.pem"

_PAIR_KEY_INFO = b"meshwork/v1 pair key"


class Cipher(enum.IntEnum):
    """AEADs an envelope may be sealed with (values are the wire enum)."""

    AES_256_GCM = envelope_pb2.CIPHER_AES_256_GCM
    CHACHA20_POLY1305 = envelope_pb2.CIPHER_CHACHA20_POLY1305


Aead = AESGCM | ChaCha20Poly1305
K = TypeVar("K", Ed25519PrivateKey, X25519PrivateKey)
RandomBytes = Callable[[int], bytes]


def _aead(cipher: Cipher, key: bytes) -> Aead:
    if cipher is Cipher.AES_256_GCM:
        return AESGCM(key)
    return ChaCha20Poly1305(key)


def _length_prefixed(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


# --- public identities ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What every node learns about another: its id and two public keys."""

    node_id: str
    """The node's id, as bound by its certificate."""
    signing_key: bytes
    """Raw 32-byte Ed25519 public key."""
    agreement_key: bytes
    """Raw 32-byte X25519 public key."""
    _signing: Ed25519PublicKey = field(init=False, repr=False, compare=False)
    _agreement: X25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.signing_key) != PUBLIC_KEY_SIZE or len(self.agreement_key) != PUBLIC_KEY_SIZE:
            raise Malformed(
                f"identity of {self.node_id!r}: public keys must be {PUBLIC_KEY_SIZE} bytes, "
                f"got {len(self.signing_key)} and {len(self.agreement_key)}"
            )
        try:
            object.__setattr__(
                self, "_signing", Ed25519PublicKey.from_public_bytes(self.signing_key)
            )
            object.__setattr__(
                self, "_agreement", X25519PublicKey.from_public_bytes(self.agreement_key)
            )
        except ValueError as exc:
            raise Malformed(f"identity of {self.node_id!r}: bad public key: {exc}") from exc

    def verify(self, data: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature by this node.

        Raises:
            AuthenticationFailed: the signature is not this node's over ``data``.
        """
        try:
            self._signing.verify(signature, data)
        except InvalidSignature:
            raise AuthenticationFailed(f"bad signature from {self.node_id!r}") from None

    @property
    def agreement(self) -> X25519PublicKey:
        """The X25519 key as a cryptography object."""
        return self._agreement


# --- private identities and their files -------------------------------------


def write_private_key(path: Path, key: Ed25519PrivateKey | X25519PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by the owner only.

    The file is created with mode 0600 before any key byte is written, so the
    key is never world-readable, not even for an instant.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(pem)


def read_private_key(path: Path, kind: type[K]) -> K:
    """Read a PEM private key of the given kind.

    Raises:
        KeyFileError: the file is missing, unreadable, open to other users, not
            PEM, or holds another kind of key.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            "chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, kind):
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__.lstrip('_')}, expected {kind.__name__}"
        )
    return key


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's private keys; never leaves the node."""

    node_id: str
    signing_key: Ed25519PrivateKey
    agreement_key: X25519PrivateKey
    public: PublicIdentity = field(init=False)

    def __post_init__(self) -> None:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        object.__setattr__(
            self,
            "public",
            PublicIdentity(
                self.node_id,
                self.signing_key.public_key().public_bytes(*raw),
                self.agreement_key.public_key().public_bytes(*raw),
            ),
        )

    @classmethod
    def generate(cls, node_id: str) -> NodeIdentity:
        """Make fresh keys (from the OS's randomness, via cryptography)."""
        return cls(node_id, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data``."""
        return self.signing_key.sign(data)

    def save(self, directory: Path) -> None:
        """Write both keys into ``directory`` (created 0700 if missing)."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyFileError(f"cannot create key directory {directory}: {exc.strerror}") from exc
        write_private_key(directory / SIGNING_KEY_FILE, self.signing_key)
        write_private_key(directory / AGREEMENT_KEY_FILE, self.agreement_key)

    @classmethod
    def load(cls, node_id: str, directory: Path) -> NodeIdentity:
        """Read the keys :meth:`save` wrote.

        Raises:
            KeyFileError: a key file is missing, unreadable or of the wrong kind.
        """
        return cls(
            node_id,
            read_private_key(directory / SIGNING_KEY_FILE, Ed25519PrivateKey),  # type: ignore[type-abstract]
            read_private_key(directory / AGREEMENT_KEY_FILE, X25519PrivateKey),  # type: ignore[type-abstract]
        )


# --- pair keys -------------------------------------------------------------------


def derive_pair_key(
    own: X25519PrivateKey,
    peer: X25519PublicKey,
    *,
    session: bytes,
    source: str,
    destination: str,
    cipher: Cipher,
) -> bytes:
    """Derive the 32-byte key ``source`` uses to seal to ``destination``.

    Both ends compute the same key: the X25519 shared secret is symmetric, and
    the direction (source, destination) and the cipher are bound in the HKDF
    info, so the two directions and the two ciphers never share a key.

    Raises:
        AuthenticationFailed: the peer's public key is a low-order point.
    """
    try:
        shared = own.exchange(peer)
    except ValueError as exc:  # all-zero shared secret from a small-order point
        raise AuthenticationFailed(f"key agreement with {destination!r} failed: {exc}") from exc
    info = (
        _PAIR_KEY_INFO + bytes([cipher]) + _length_prefixed(source) + _length_prefixed(destination)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=session, info=info).derive(shared)


@dataclass(slots=True)
class SealingSession:
    """One pair key in use by a source: its id, the AEAD, and the nonce counter."""

    recipient: str
    cipher: Cipher
    key_id: bytes
    aead: Aead
    limit: int
    sealed: int = 0

    def next_nonce(self) -> bytes:
        """The next never-used nonce under this key.

        Raises:
            KeyExhausted: the key has sealed ``limit`` messages.
        """
        if self.sealed >= self.limit:
            raise KeyExhausted(
                f"pair key {self.key_id.hex()} to {self.recipient!r} sealed {self.sealed} "
                "messages; rotate"
            )
        nonce = self.sealed.to_bytes(NONCE_SIZE, "big")
        self.sealed += 1
        return nonce


class KeyRing:
    """A node's identity, the public identities it knows, and derived pair keys.

    Sealing sessions are created on first use per (recipient, cipher) and
    rotated when exhausted; opening keys are cached in a bounded LRU, because
    X25519 + HKDF costs ~45 us and a hop should pay it once per session, not per
    message.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        random_bytes: RandomBytes,
        max_messages_per_key: int = MAX_MESSAGES_PER_KEY,
        max_cached_keys: int = 4096,
    ) -> None:
        if max_messages_per_key < 1 or max_cached_keys < 1:
            raise InvalidArgument("key limits must be positive")
        self.identity = identity
        self._random_bytes = random_bytes
        self._limit = max_messages_per_key
        self._max_cached = max_cached_keys
        self._peers: dict[str, PublicIdentity] = {identity.node_id: identity.public}
        self._sealing: dict[tuple[str, Cipher], SealingSession] = {}
        self._opening: OrderedDict[tuple[str, bytes, Cipher], Aead] = OrderedDict()
        self._last_opened: tuple[tuple[str, bytes, Cipher] | None, Aead | None] = (None, None)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def add_peer(self, peer: PublicIdentity) -> None:
        """Learn (or replace) a node's public identity; forgets keys derived from the old one."""
        old = self._peers.get(peer.node_id)
        self._peers[peer.node_id] = peer
        if old is not None and old != peer:
            self._forget(peer.node_id)

    def share_directory(self, directory: dict[str, PublicIdentity]) -> None:
        """Use ``directory`` as this ring's peer map, shared rather than copied.

        For a simulator holding thousands of rings in one process: one map of
        N identities instead of N maps of N (about 3 GB at 10,000 nodes). The
        ring's own identity is added to it; keys already derived are forgotten.
        """
        directory[self.identity.node_id] = self.identity.public
        self._peers = directory
        self._sealing.clear()
        self._opening.clear()
        self._last_opened = (None, None)

    def remove_peer(self, node_id: str) -> None:
        self._peers.pop(node_id, None)
        self._forget(node_id)

    def peer(self, node_id: str) -> PublicIdentity | None:
        return self._peers.get(node_id)

    def _forget(self, node_id: str) -> None:
        self._last_opened = (None, None)
        for key in [k for k in self._sealing if k[0] == node_id]:
            del self._sealing[key]
        for okey in [k for k in self._opening if k[0] == node_id]:
            del self._opening[okey]

    def sealing_session(self, recipient: str, cipher: Cipher) -> SealingSession:
        """The session to seal the next message to ``recipient`` with.

        Raises:
            UnknownRecipient: no public identity is known for ``recipient``.
        """
        session = self._sealing.get((recipient, cipher))
        if session is not None and session.sealed < session.limit:
            return session
        peer = self._peers.get(recipient)
        if peer is None:
            raise UnknownRecipient(f"no public identity known for node {recipient!r}")
        key_id = self._random_bytes(KEY_ID_SIZE)
        key = derive_pair_key(
            self.identity.agreement_key,
            peer.agreement,
            session=key_id,
            source=self.node_id,
            destination=recipient,
            cipher=cipher,
        )
        session = SealingSession(recipient, cipher, key_id, _aead(cipher, key), self._limit)
        self._sealing[(recipient, cipher)] = session
        return session

    def opening_aead(self, source: str, key_id: bytes, cipher: Cipher) -> Aead:
        """The AEAD for an envelope ``source`` sealed to us under session ``key_id``.

        Raises:
            UnknownSender: no public identity is known for ``source``.
            Malformed: the key id has the wrong length.
        """
        cache_key = (source, key_id, cipher)
        last_key, last_aead = self._last_opened
        if last_aead is not None and cache_key == last_key:  # the common case: same session
            return last_aead
        aead = self._opening.get(cache_key)
        if aead is not None:
            self._opening.move_to_end(cache_key)
            self._last_opened = (cache_key, aead)
            return aead
        if len(key_id) != KEY_ID_SIZE:
            raise Malformed(f"key id must be {KEY_ID_SIZE} bytes, got {len(key_id)}")
        peer = self._peers.get(source)
        if peer is None:
            raise UnknownSender(f"no public identity known for source node {source!r}")
        key = derive_pair_key(
            self.identity.agreement_key,
            peer.agreement,
            session=key_id,
            source=source,
            destination=self.node_id,
            cipher=cipher,
        )
        aead = _aead(cipher, key)
        self._opening[cache_key] = aead
        if len(self._opening) > self._max_cached:
            self._opening.popitem(last=False)
        self._last_opened = (cache_key, aead)
        return aead


def decrypt(aead: Aead, nonce: bytes, ciphertext: bytes, associated: bytes, what: str) -> bytes:
    """AEAD-decrypt, turning a bad tag into :class:`AuthenticationFailed` naming ``what``."""
    try:
        return aead.decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise AuthenticationFailed(
            f"{what}: AEAD tag does not verify (wrong key or tampered)"
        ) from None


__all__ = [
    "KEY_ID_SIZE",
    "MAX_MESSAGES_PER_KEY",
    "NONCE_SIZE",
    "Cipher",
    "KeyRing",
    "NodeIdentity",
    "PublicIdentity",
    "SealingSession",
    "decrypt",
    "derive_pair_key",
    "read_private_key",
    "write_private_key",
]
