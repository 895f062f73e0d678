"""Loss recovery for acknowledged messages: each recipient's RTO, and when a timeout means loss.

Over a chain of TCP links an end-to-end copy is lost only when something
really loses it: a link torn down with the copy queued on it, a node that
crashed, a hop that dropped it. A path that is merely slow (TCP
retransmitting under packet loss, a backlog at a forwarder) loses nothing,
and a retransmission sent there is a spurious copy that joins the very queue
it is waiting behind, which makes the path slower still. So a retransmission
timer that fires is not, by itself, a reason to resend. The source asks
:meth:`Recovery.judge`, which answers:

- ``RESEND``: a copy sent *later* to the same recipient has been acked, so the
  path delivers and this one was lost (RACK, RFC 8985, without its reordering
  window: the timer has already waited a whole RTO);
- ``WAIT``: acks from the recipient arrived within the last RTO, none for a
  later copy: the path is draining and this one is behind them;
- ``DEFER``: the path is silent, and another message is already out as its
  probe: wait for the probe's answer rather than pile on;
- ``PROBE``: the path is silent and nothing probes it: this message is resent
  as the probe, and the RTO backs off (one per silent path, as TCP resends one
  segment when its retransmission timer fires).

When the probe's *own* copy is acked, the path delivers again and what was sent
before the probe never arrived: :meth:`Recovery.acked` says so, and the source
resends all of it at once (paced). When the probe's *original* is acked
instead, the path was only slow and nothing is released.

That needs to know which copy an ack is for. Each copy carries its
transmission number (``Envelope.attempt``) and the ack echoes it
(``acked_attempt``), as TCP timestamps echo theirs (RFC 7323): every ack is
then a round-trip sample, retransmitted or not, with no Karn ambiguity.

The RTO itself is RFC 6298's in Linux's form (srtt + max(4 rttvar, floor)),
doubled once per probe until an ack gives a fresh sample.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_RTO_DOUBLINGS = 6
"""A recipient's RTO backs off at most 64x (still capped by the ceiling)."""


class Verdict(enum.Enum):
    """What to do with a message whose retransmission timer fired."""

    RESEND = "resend"
    """Lost: a later copy was acked. Resend now."""
    PROBE = "probe"
    """The path is silent: resend this one as its probe."""
    WAIT = "wait"
    """Acks still arrive: this one is queued behind them. Re-arm, do not resend."""
    DEFER = "defer"
    """A probe is out on the silent path: wait for its answer."""


@dataclass(slots=True)
class _Path:
    """What the source knows of its path to one recipient."""

    srtt: float | None = None
    rttvar: float = 0.0
    doublings: int = 0
    """Backoff kept since the last round-trip sample."""
    doubled_at: float = float("-inf")
    last_ack_at: float = float("-inf")
    """When any ack from the recipient last arrived."""
    delivered_sent_at: float = float("-inf")
    """The latest send time of any copy the recipient acked (RACK's ``xmit_ts``)."""
    probe: bytes | None = None
    """The message out as the probe of a silent path, if any."""
    probe_at: float = float("-inf")


class Recovery:
    """Per-recipient round-trip estimates, backoff and loss evidence (pure: times are passed in)."""

    def __init__(self, floor_s: float, ceiling_s: float) -> None:
        self._floor = floor_s
        self._ceiling = ceiling_s
        self._paths: dict[str, _Path] = {}

    def _path(self, recipient: str) -> _Path:
        path = self._paths.get(recipient)
        if path is None:
            path = self._paths[recipient] = _Path()
        return path

    def measured_rto(self, recipient: str) -> float:
        """RFC 6298's RTO from acked round trips; the variance term is at least the
        floor, so a steady path (rttvar ~ 0) does not get an RTO equal to its RTT,
        which any jitter exceeds."""
        path = self._paths.get(recipient)
        if path is None or path.srtt is None:
            return self._floor
        return path.srtt + max(4 * path.rttvar, self._floor)

    def rto(self, recipient: str) -> float:
        """The measured RTO doubled once per probe since the last sample, capped."""
        path = self._paths.get(recipient)
        doublings = 0 if path is None else path.doublings
        return min(self._ceiling, self.measured_rto(recipient) * 2.0**doublings)

    def judge(self, recipient: str, message_id: bytes, sent_at: float, now: float) -> Verdict:
        """What to do now that the timer of ``message_id`` (its latest copy sent at
        ``sent_at``) fired; see the module docstring."""
        path = self._path(recipient)
        if path.delivered_sent_at > sent_at:
            return Verdict.RESEND
        rto = self.rto(recipient)
        if now - path.last_ack_at < rto:
            return Verdict.WAIT
        if path.probe is not None and path.probe != message_id and now - path.probe_at < rto:
            return Verdict.DEFER
        return Verdict.PROBE

    def probing(self, recipient: str, message_id: bytes, now: float) -> None:
        """``message_id`` goes out as the probe of a silent path: back the RTO off.

        One doubling per RTO, as TCP has one timer per connection: messages
        timing out together are one timeout, not fifty.
        """
        self.timed_out(recipient, now)
        path = self._path(recipient)
        path.probe = message_id
        path.probe_at = now

    def timed_out(self, recipient: str, now: float) -> None:
        """A timer fired where no probe logic applies (a message re-targeted or
        waiting for a route): back the RTO off all the same."""
        path = self._path(recipient)
        if now - path.doubled_at >= self.rto(recipient) and path.doublings < MAX_RTO_DOUBLINGS:
            path.doublings += 1
            path.doubled_at = now

    def acked(
        self,
        recipient: str,
        message_id: bytes,
        sent_at: float | None,
        now: float,
        *,
        retransmission: bool,
    ) -> float | None:
        """An ack arrived for ``message_id``, for the copy sent at ``sent_at`` (None:
        not known which). Returns the probe's send time when this acks the probe's
        own retransmission, so the caller releases everything sent before it."""
        path = self._path(recipient)
        path.last_ack_at = now
        if sent_at is not None:
            self._sample(path, now - sent_at)
            path.delivered_sent_at = max(path.delivered_sent_at, sent_at)
        if path.probe != message_id:
            return None
        path.probe = None
        return sent_at if retransmission and sent_at is not None else None

    def forget(self, recipient: str, message_id: bytes) -> None:
        """``message_id`` is given up: it no longer probes anything."""
        path = self._paths.get(recipient)
        if path is not None and path.probe == message_id:
            path.probe = None

    @staticmethod
    def _sample(path: _Path, rtt: float) -> None:
        path.doublings = 0  # a fresh sample ends the backoff (RFC 6298 5.7)
        if path.srtt is None:
            path.srtt, path.rttvar = rtt, rtt / 2
            return
        path.rttvar = 0.75 * path.rttvar + 0.25 * abs(path.srtt - rtt)
        path.srtt = 0.875 * path.srtt + 0.125 * rtt


__all__ = ["MAX_RTO_DOUBLINGS", "Recovery", "Verdict"]
