"""Sort every message of a run: delivered, lost, duplicated, unexpected.

A run passes only when nothing was lost, duplicated or unexpected. The
checker is deliberately ignorant of the mesh: it compares two ledgers of
application ids. Senders record each id *before* asking the node to send it
(``attempt``) and again when the node accepted it (``accepted``); receivers
record each id the application got. An id whose send was attempted but never
confirmed (a timeout, a crash of the sending app) may arrive or not: it is
"indeterminate" (Jepsen's word), counted apart and never a failure. An id that
arrives without ever having been attempted is "unexpected": the mesh made it up
or delivered someone else's message.

Ledgers are JSON lines, so a sender and a receiver in different processes (or
a killed and restarted one: each line is flushed as written) can be checked
afterwards with ``python -m nodes.chaos.checker SENT RECEIVED``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ATTEMPT = "attempt"
ACCEPTED = "accepted"
REFUSED = "refused"
RECEIVED = "received"
EVENTS = (ATTEMPT, ACCEPTED, REFUSED, RECEIVED)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The four counts of a run (plus what cannot be judged), with the ids behind them."""

    accepted: int
    """Ids the senders were told were accepted: each must arrive exactly once."""
    delivered: int
    """Accepted ids that reached the application (once or more)."""
    lost: tuple[str, ...]
    """Accepted ids that never arrived."""
    duplicated: tuple[str, ...]
    """Ids that reached the application more than once (accepted or not)."""
    unexpected: tuple[str, ...]
    """Ids that arrived but no sender ever attempted."""
    indeterminate: int = 0
    """Attempted, never confirmed (refused or unanswered) ids; they may or may not arrive."""
    indeterminate_delivered: int = 0
    """Of those, how many arrived anyway (a timeout after the node had stored it)."""

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def counts(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "delivered": self.delivered,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "indeterminate": self.indeterminate,
            "indeterminate_delivered": self.indeterminate_delivered,
        }

    def summary(self) -> str:
        """One line with the four counts, and the first few ids of each failure."""
        text = (
            f"delivered {self.delivered}/{self.accepted} · lost {len(self.lost)} · "
            f"duplicated {len(self.duplicated)} · unexpected {len(self.unexpected)}"
        )
        if self.indeterminate:
            arrived = self.indeterminate_delivered
            text += f" · indeterminate {self.indeterminate} ({arrived} arrived)"
        for name, ids in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("unexpected", self.unexpected),
        ):
            if ids:
                shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
                text += f"\n  {name}: {shown}"
        return text


def check(
    accepted: Iterable[str],
    received: Iterable[str],
    *,
    attempted: Iterable[str] | None = None,
) -> Verdict:
    """Judge a run from the ids senders had accepted and the ids receivers got.

    ``attempted`` (default: the accepted ids) are the ids any sender tried;
    those never accepted are indeterminate rather than unexpected when they arrive.
    """
    accepted_ids = set(accepted)
    attempted_ids = set(attempted) | accepted_ids if attempted is not None else accepted_ids
    arrivals = Counter(received)
    delivered = sum(1 for message in accepted_ids if arrivals[message])
    indeterminate = attempted_ids - accepted_ids
    return Verdict(
        accepted=len(accepted_ids),
        delivered=delivered,
        lost=tuple(sorted(accepted_ids - arrivals.keys())),
        duplicated=tuple(sorted(message for message, n in arrivals.items() if n > 1)),
        unexpected=tuple(sorted(arrivals.keys() - attempted_ids)),
        indeterminate=len(indeterminate),
        indeterminate_delivered=sum(1 for message in indeterminate if arrivals[message]),
    )


@dataclass(slots=True)
class Ledger:
    """What one side of a run saw, in order; optionally appended to a JSON-lines file.

    Each record is ``{"event": ..., "id": ..., **fields}``. With a ``path``
    every record is written and flushed at once, so a ledger survives the
    death of the process that keeps it (it is the application's record,
    not the mesh's).
    """

    path: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    _file: IO[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            if self._file.tell() and not self.path.read_bytes().endswith(b"\n"):
                self._file.write("\n")  # end a line torn by a kill, so ours starts clean

    def record(self, event: str, message_id: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown ledger event {event!r}; expected one of {EVENTS}")
        entry = {"event": event, "id": message_id, **fields}
        self.records.append(entry)
        if self._file is not None:
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._file.flush()

    def ids(self, event: str) -> list[str]:
        return [entry["id"] for entry in self.records if entry["event"] == event]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @classmethod
    def read(cls, path: Path) -> Ledger:
        """Load a ledger file (a torn last line, from a kill mid-write, is skipped)."""
        return cls(records=list(_read_lines(path)))


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("event") in EVENTS and "id" in entry:
                yield entry


def check_ledgers(senders: Iterable[Ledger], receivers: Iterable[Ledger]) -> Verdict:
    """:func:`check` over any number of sender and receiver ledgers."""
    sender_list = list(senders)
    return check(
        (message for ledger in sender_list for message in ledger.ids(ACCEPTED)),
        (message for ledger in receivers for message in ledger.ids(RECEIVED)),
        attempted=(message for ledger in sender_list for message in ledger.ids(ATTEMPT)),
    )


def main(argv: list[str]) -> int:
    """``python -m nodes.chaos.checker SENT.jsonl [...] -- RECEIVED.jsonl [...]``.

    With exactly two files the ``--`` may be left out. Exit status 0 only when
    the run passes.
    """
    if "--" in argv:
        split = argv.index("--")
        sent, received = argv[:split], argv[split + 1 :]
    elif len(argv) == 2:
        sent, received = argv[:1], argv[1:]
    else:
        print(main.__doc__, file=sys.stderr)
        return 2
    verdict = check_ledgers(
        (Ledger.read(Path(p)) for p in sent), (Ledger.read(Path(p)) for p in received)
    )
    print(verdict.summary())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
