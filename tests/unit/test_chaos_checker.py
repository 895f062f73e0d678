"""The battery's checker: every id sorted into delivered, lost, duplicated, unexpected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes.chaos import checker, report
from nodes.chaos.checker import ACCEPTED, ATTEMPT, RECEIVED, REFUSED, Ledger, check
from nodes.chaos.workload import percentile


def test_a_clean_run_passes() -> None:
    verdict = check(["a", "b", "c"], ["c", "a", "b"])
    assert verdict.ok
    assert verdict.counts() == {
        "accepted": 3,
        "delivered": 3,
        "lost": 0,
        "duplicated": 0,
        "unexpected": 0,
        "indeterminate": 0,
        "indeterminate_delivered": 0,
    }


def test_each_failure_is_sorted_into_its_own_count() -> None:
    verdict = check(["a", "b", "c", "d"], ["a", "a", "c", "zzz"], attempted=["a", "b", "c", "d"])
    assert not verdict.ok
    assert verdict.lost == ("b", "d")
    assert verdict.duplicated == ("a",)
    assert verdict.unexpected == ("zzz",)
    assert verdict.delivered == 2
    assert "lost 2" in verdict.summary() and "zzz" in verdict.summary()


def test_an_attempted_but_unconfirmed_id_is_indeterminate_either_way() -> None:
    # A send that timed out may have been stored by the node: its arrival is
    # neither a loss nor "unexpected"; a second arrival is still a duplicate.
    verdict = check(["a"], ["a", "t1"], attempted=["a", "t1", "t2"])
    assert verdict.ok
    assert (verdict.indeterminate, verdict.indeterminate_delivered) == (2, 1)
    assert not check(["a"], ["a", "t1", "t1"], attempted=["a", "t1"]).ok


def test_ledgers_survive_a_torn_last_line_and_check_from_files(tmp_path: Path, capsys) -> None:
    sent, received = tmp_path / "sent.jsonl", tmp_path / "received.jsonl"
    sender, receiver = Ledger(sent), Ledger(received)
    for message in ("r-1", "r-2", "r-3"):
        sender.record(ATTEMPT, message)
        sender.record(ACCEPTED, message)
    sender.record(ATTEMPT, "r-4")
    sender.record(REFUSED, "r-4", status="RESOURCE_EXHAUSTED")
    for message in ("r-1", "r-2", "r-3"):
        receiver.record(RECEIVED, message)
    sender.close()
    receiver.close()
    with received.open("a") as torn:
        torn.write('{"event": "received", "id": "r-')  # killed mid-write
    assert checker.main([str(sent), str(received)]) == 0
    assert "delivered 3/3" in capsys.readouterr().out

    Ledger(received).record(RECEIVED, "r-2")
    assert checker.main([str(sent), "--", str(received)]) == 1


def test_a_ledger_refuses_unknown_events() -> None:
    with pytest.raises(ValueError, match="unknown ledger event"):
        Ledger().record("sent", "x")


def test_figures_are_recorded_and_tabled(tmp_path: Path) -> None:
    verdict = check(["a"], ["a"])
    path = report.record("kill", {"counts": verdict.counts(), "reroute_s": 1.25}, tmp_path)
    assert json.loads(path.read_text())["reroute_s"] == 1.25
    [entry] = report.load(tmp_path)
    assert entry["check"] == "kill"
    assert report.table([entry]).row_count == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0
