"""Fixtures of the netns suite: labs made with nodes.lab, always removed again.

The suite needs root and ``ip netns`` (iproute2), and nftables for link loss
on kernels without netem. As root it installs what is missing with
``apt-get install -y iproute2 nftables`` (CI also does this in its set-up);
anywhere else the whole suite is skipped with the reason. Every lab is made
into a pytest temp dir and torn down (``nodes.lab.down``) in the fixture's
finally, even when a test fails; waits are bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodes import lab

CONVERGE_TIMEOUT = 40.0
APT_PACKAGES = ("iproute2", "nftables")


def _install_missing() -> None:
    missing = [
        pkg for pkg, tool in zip(APT_PACKAGES, ("ip", "nft"), strict=True) if not shutil.which(tool)
    ]
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def unavailable() -> str | None:
    """Why the suite cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs tests/netns as root)"
    _install_missing()
    try:
        lab.check_environment()
    except lab.LabError as exc:
        return f"`ip netns` is unavailable: {exc}"
    if shutil.which("nft") is None:
        return "nftables is missing (apt-get install -y nftables) and the kernel has no netem"
    return None


REASON = unavailable()


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lab_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str, str], lab.Lab]]:
    """``make(name, topology_yaml) -> Lab`` (converged); every lab is removed at module end."""
    made: list[Path] = []

    def make(name: str, text: str) -> lab.Lab:
        directory = tmp_path_factory.mktemp(name)
        topology = write(directory, f"{name}.yaml", text)
        state_dir = directory / "lab"
        made.append(state_dir)
        return lab.up(topology, state_dir, timeout=CONVERGE_TIMEOUT)

    try:
        yield make
    finally:
        for state_dir in made:
            lab.down(state_dir)
