"""Readings taken from outside a node process: its memory.

The battery judges "memory grows by less than 50 MB" from what the operating
system says, not from the node's word for it. (The outbox cannot be read the
same way: the node holds its SQLite store under an exclusive lock, so the
battery asks the node's Stats for its ``pending`` gauge instead.)
"""

from __future__ import annotations

from pathlib import Path


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(f"no VmRSS for pid {pid}")
