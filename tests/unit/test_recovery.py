"""Loss recovery: when a retransmission timer that fired means loss (mesh.recovery)."""

from __future__ import annotations

import pytest

from mesh.recovery import MAX_RTO_DOUBLINGS, Recovery, Verdict

FLOOR, CEILING = 0.2, 5.0


def fresh() -> Recovery:
    return Recovery(FLOOR, CEILING)


def test_a_silent_path_gets_one_probe_and_the_rest_wait_for_its_answer() -> None:
    recovery = fresh()
    assert recovery.judge("c", b"m1", sent_at=0.0, now=1.0) is Verdict.PROBE
    recovery.probing("c", b"m1", now=1.0)
    assert recovery.rto("c") == pytest.approx(2 * FLOOR)  # backed off once
    for message in (b"m2", b"m3", b"m4"):
        assert recovery.judge("c", message, sent_at=0.1, now=1.1) is Verdict.DEFER
    # The probe's own timer: still silent, so it goes again (and backs off again).
    assert recovery.judge("c", b"m1", sent_at=1.0, now=1.4) is Verdict.PROBE
    # Another message once the probe has outlived its RTO: it becomes the probe.
    assert recovery.judge("c", b"m2", sent_at=0.1, now=1.41) is Verdict.PROBE


def test_acks_still_coming_mean_the_message_is_queued_behind_them() -> None:
    recovery = fresh()
    recovery.acked("c", b"m1", sent_at=0.0, now=0.9, retransmission=False)
    # Nothing sent after m2 was acked, but the path answered 0.1 s ago: it is
    # draining a queue, and m2 is in it.
    assert recovery.judge("c", b"m2", sent_at=0.0, now=1.0) is Verdict.WAIT
    # Once the path has been quiet for an RTO, that is no longer so.
    quiet = 0.9 + recovery.rto("c") + 0.01
    assert recovery.judge("c", b"m2", sent_at=0.0, now=quiet) is Verdict.PROBE


def test_an_ack_for_a_copy_sent_later_means_this_one_was_lost() -> None:
    recovery = fresh()
    recovery.acked("c", b"m2", sent_at=0.5, now=0.6, retransmission=False)
    assert recovery.judge("c", b"m1", sent_at=0.4, now=0.8) is Verdict.RESEND
    assert recovery.judge("c", b"m3", sent_at=0.5, now=0.8) is Verdict.WAIT  # not later


def test_the_probes_own_copy_arriving_releases_what_was_sent_before_it() -> None:
    recovery = fresh()
    recovery.probing("c", b"m1", now=2.0)
    released = recovery.acked("c", b"m1", sent_at=2.0, now=2.05, retransmission=True)
    assert released == 2.0  # the path delivers: everything sent before 2.0 was lost


def test_the_probes_original_arriving_means_the_path_was_only_slow() -> None:
    recovery = fresh()
    recovery.probing("c", b"m1", now=2.0)
    # The ack echoes attempt 0: the first copy, sent at 0.5, made it after all.
    assert recovery.acked("c", b"m1", sent_at=0.5, now=2.3, retransmission=False) is None
    assert recovery.judge("c", b"m2", sent_at=0.6, now=2.4) is Verdict.WAIT


def test_every_echoed_ack_is_a_sample_and_ends_the_backoff() -> None:
    recovery = fresh()
    assert recovery.measured_rto("c") == FLOOR
    for n in range(MAX_RTO_DOUBLINGS + 3):
        recovery.probing("c", b"m", now=100.0 * n)
    assert recovery.rto("c") == CEILING  # doubled as far as the cap
    # A retransmission's ack is a sample too: the echo says which copy it was.
    recovery.acked("c", b"m", sent_at=1000.0, now=1000.3, retransmission=True)
    assert recovery.measured_rto("c") == pytest.approx(0.3 + 4 * 0.15)
    assert recovery.rto("c") == recovery.measured_rto("c")


def test_one_doubling_per_rto_however_many_messages_time_out_together() -> None:
    recovery = fresh()
    recovery.timed_out("c", now=1.0)
    recovery.timed_out("c", now=1.1)
    recovery.timed_out("c", now=1.2)
    assert recovery.rto("c") == pytest.approx(2 * FLOOR)
    recovery.timed_out("c", now=1.41)  # one (backed-off) RTO later
    assert recovery.rto("c") == pytest.approx(4 * FLOOR)


def test_a_probe_given_up_probes_nothing() -> None:
    recovery = fresh()
    recovery.probing("c", b"m1", now=1.0)
    recovery.forget("c", b"m1")
    assert recovery.judge("c", b"m2", sent_at=0.5, now=1.1) is Verdict.PROBE
