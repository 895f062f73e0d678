"""Make `mesh` the package, not bench/mesh.py, for every benchmark script.

`python bench/X.py` puts bench/ first on sys.path, where bench/mesh.py (the
end-to-end benchmark the issue names) would shadow the `mesh` package. Each
script imports this module before anything from `mesh`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))
