"""The application-side CLI on the demo mesh: built-in echo handlers, balancing, pub/sub."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from nodes.launcher import MeshHandle
from tests.integration.conftest import cli_json, run_cli


def test_requests_to_builtin_echo_follow_the_weights(
    mesh_factory: Callable[..., MeshHandle],
) -> None:
    handle = mesh_factory("demo.yaml")  # echo on c (weight 1) and e (weight 2)
    state = str(handle.state_dir)
    one = cli_json("request", "echo", '{"n": 1}', "--node", "a", "--state", state)
    assert one["body"]["echo"] == {"n": 1}
    summary = cli_json(
        "request",
        "echo",
        '{"n": 2}',
        "--node",
        "a",
        "--state",
        state,
        "--count",
        "60",
        "--concurrency",
        "8",
        "--policy",
        "weighted",
    )
    assert summary["ok"] == 60 and summary["errors"] == 0
    assert summary["by_instance"] == {"c/echo/echo": 20, "e/echo/echo": 40}
    assert summary["rtt_ms"]["p50"] is not None


def test_publish_reaches_a_cli_subscriber(mesh_factory: Callable[..., MeshHandle]) -> None:
    handle = mesh_factory("demo.yaml")
    state = str(handle.state_dir)
    subscriber = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodes.cli",
            "subscribe",
            "demo.>",
            "--node",
            "d",
            "--state",
            state,
            "--count",
            "1",
            "--timeout",
            "20",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Publish until the subscription is advertised and the copy arrives.
        for _ in range(40):
            published = cli_json(
                "publish", "demo.alerts", '{"level": 1}', "--node", "a", "--state", state
            )
            if published["copies"] >= 1 and subscriber.poll() is not None:
                break
            try:
                subscriber.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        out, err = subscriber.communicate(timeout=25)
        assert subscriber.returncode == 0, err
        assert '"subject": "demo.alerts"' in out
    finally:
        subscriber.kill()


def test_serve_needs_a_handler() -> None:
    result = run_cli("serve", "thing", "--node", "a", "--state", "/nonexistent")
    assert result.returncode != 0
    assert "--echo" in result.stderr or "--echo" in result.stdout
