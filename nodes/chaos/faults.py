"""Faults that need more than a signal: a node whose clock is off.

Kill -9, SIGSTOP/SIGCONT and link cuts are methods of
:class:`nodes.launcher.MeshHandle` (and :class:`nodes.lab.Lab` on the
namespace testbed). A wrong clock is injected the way Jepsen does it: the node
process runs under libfaketime (Debian package ``faketime``), which shifts
``CLOCK_REALTIME`` for that process only. Monotonic clocks are left alone, so
timers, asyncio and gRPC's own deadlines behave; only what the node believes
the date is changes, which is what clock skew between machines looks like.
"""

from __future__ import annotations

import glob
from pathlib import Path

from mesh.errors import LocalError

FAKETIME_GLOBS = (
    "/usr/lib/*-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
INSTALL_HINT = "apt-get install faketime"


class FaultUnavailable(LocalError):
    """This machine cannot inject the fault (a tool is missing)."""


def faketime_library() -> Path | None:
    """The multi-threaded libfaketime (gRPC runs threads), if installed."""
    for pattern in FAKETIME_GLOBS:
        for found in sorted(glob.glob(pattern)):
            return Path(found)
    return None


def skewed_clock_env(offset_s: float) -> dict[str, str]:
    """Environment that starts a process with its wall clock ``offset_s`` seconds off.

    Raises:
        FaultUnavailable: libfaketime is not installed.
    """
    library = faketime_library()
    if library is None:
        raise FaultUnavailable(f"libfaketime is not installed ({INSTALL_HINT})")
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset_s:+.0f}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
