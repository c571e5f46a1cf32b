"""Lab control API (placeholder, filled in below)."""
from __future__ import annotations
from typing import Any

def install(routes: dict[str, Any]) -> None:
    routes["health"] = lambda m, p, q, b: (200, {"ok": True})

def reset_lab_files() -> None:
    pass

def shutdown() -> None:
    pass
