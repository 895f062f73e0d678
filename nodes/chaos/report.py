"""Figures from battery runs, one JSON file per check, and the table they make.

Tests judge correctness (the checker's counts); how fast things happened is
measured and written here, never asserted (the project's rule: speed is
measured, not asserted in tests). ``python -m nodes.chaos.report`` prints every
recorded check as one table, which is what docs/reliability.md quotes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPORT_DIR_ENV = "MESH_CHAOS_REPORT"
DEFAULT_DIR = Path("build/chaos")


def report_dir() -> Path:
    """Where figures go: ``$MESH_CHAOS_REPORT`` or build/chaos under the working directory."""
    return Path(os.environ.get(REPORT_DIR_ENV) or DEFAULT_DIR)


def record(check: str, figures: Mapping[str, Any], directory: Path | None = None) -> Path:
    """Write ``figures`` for ``check`` (a short name, e.g. ``kill-forwarder``); returns the file."""
    target = (directory or report_dir()) / f"{check}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"check": check, **figures}, indent=2, sort_keys=True) + "\n")
    return target


def load(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded check, sorted by name."""
    root = directory or report_dir()
    return [json.loads(path.read_text()) for path in sorted(root.glob("*.json"))]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(checks: list[dict[str, Any]]) -> Table:
    """Check, the four counts, then every other figure as ``key=value``."""
    out = Table(title="reliability battery")
    for column in ("check", "delivered", "lost", "dup", "unexpected", "figures"):
        out.add_column(column, justify="left" if column in ("check", "figures") else "right")
    counted = ("delivered", "lost", "duplicated", "unexpected")
    for entry in checks:
        counts = entry.get("counts", {})
        rest = {k: v for k, v in entry.items() if k not in ("check", "counts")}
        out.add_row(
            entry["check"],
            *(_cell(counts.get(name, "")) for name in counted),
            ", ".join(f"{k}={_cell(v)}" for k, v in sorted(rest.items())),
        )
    return out


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else None
    checks = load(directory)
    if not checks:
        print(f"no figures under {directory or report_dir()}", file=sys.stderr)
        return 1
    Console(width=200).print(table(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
