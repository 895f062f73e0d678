"""Pub/sub subjects and NATS-style wildcard patterns.

A subject is dot-separated tokens (``orders.eu.created``). A pattern may use
``*`` for exactly one token and ``>`` (last token only) for one or more
remaining tokens, as NATS does: ``orders.*.created`` and ``orders.>`` both
match ``orders.eu.created``; ``orders.>`` does not match ``orders``.
"""

from __future__ import annotations

import re

from mesh.errors import InvalidArgument

_TOKEN = re.compile(r"^[A-Za-z0-9_\-:=@$%+]+$")
MAX_SUBJECT_BYTES = 255
QUEUE_SEPARATOR = " "
"""Separates a pattern from its queue group in what a node advertises."""


def check_subject(subject: str) -> str:
    """A concrete subject (no wildcards) or InvalidArgument."""
    _check(subject, wildcards=False)
    return subject


def check_pattern(pattern: str) -> str:
    """A subscription pattern (wildcards allowed) or InvalidArgument."""
    _check(pattern, wildcards=True)
    return pattern


def _check(text: str, *, wildcards: bool) -> None:
    if not text or len(text.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidArgument(f"subject {text[:64]!r} must be 1..{MAX_SUBJECT_BYTES} bytes")
    tokens = text.split(".")
    for i, token in enumerate(tokens):
        if wildcards and token == "*":
            continue
        if wildcards and token == ">" and i == len(tokens) - 1:
            continue
        if not _TOKEN.match(token):
            what = "pattern" if wildcards else "subject"
            raise InvalidArgument(f"{what} {text!r}: bad token {token!r}")


def matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` is matched by ``pattern``."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


def offer(pattern: str, queue: str | None) -> str:
    """What a node advertises for a subscription: the pattern, and its queue group."""
    check_pattern(pattern)
    if not queue:
        return pattern
    if not _TOKEN.match(queue):
        raise InvalidArgument(f"queue group {queue!r} has characters outside [A-Za-z0-9_-:=@$%+]")
    return f"{pattern}{QUEUE_SEPARATOR}{queue}"


def parse_offer(advertised: str) -> tuple[str, str | None]:
    """The (pattern, queue group) a node advertised."""
    pattern, _, queue = advertised.partition(QUEUE_SEPARATOR)
    return pattern, queue or None


__all__ = ["check_pattern", "check_subject", "matches", "offer", "parse_offer"]
